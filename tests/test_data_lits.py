"""LiTS 2017 loader on format-exact NIfTI fixtures stored with different orientations (non-identity affines)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from eden_lib.data.lits import LiTS
from eden_lib.data.subvolumes import hu_to_unit

SHAPE = (8, 6, 4)  # LPS voxel axes
SPACING = (0.8, 0.7, 2.5)
TUMOUR = np.s_[5:7, 1:3, 2:3]  # a known box, in LPS voxel axes
LIVER = np.s_[3:8, 0:4, 1:4]


def _canonical(seed: int):
    """The ground truth on an LPS voxel grid: HU, labels and the RAS affine of that grid."""
    hu = np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(np.int16)
    seg = np.zeros(SHAPE, np.uint8)
    seg[LIVER] = 1
    seg[TUMOUR] = 2
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # i -> L, j -> P, k -> S, in RAS
    affine[:3, 3] = (40.0, 30.0, -100.0)
    return hu, seg, affine


def _store(array: np.ndarray, affine: np.ndarray, codes: str, path, dtype=None) -> None:
    """Save ``array`` (LPS voxel axes) reoriented to ``codes`` storage, as nibabel would read it back."""
    image = nib.Nifti1Image(array if dtype is None else array.astype(dtype), affine)
    image = image.as_reoriented(ornt_transform(axcodes2ornt(tuple("LPS")), axcodes2ornt(tuple(codes))))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


STORAGE = {0: "LPS", 1: "RAS", 2: "PLS", 10: "RPI"}  # flipped and permuted in-plane axes, as across centres


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lits")
    for n, codes in STORAGE.items():
        hu, seg, affine = _canonical(n)
        folder = root / ("Training Batch 1" if n <= 27 else "Training Batch 2")
        ext = ".nii.gz" if n == 10 else ".nii"
        _store(hu, affine, codes, folder / f"volume-{n}{ext}", dtype=np.float32 if n == 1 else None)
        _store(seg, affine, codes, folder / f"segmentation-{n}{ext}", dtype=np.float32 if n == 2 else None)
    hu, seg, affine = _canonical(7)
    _store(hu, affine, "LPS", root / "Testing" / "test-volume-3.nii")
    return root


@pytest.mark.parametrize("n", sorted(STORAGE))
def test_reoriented_item_matches_ground_truth(root, n):
    ds = LiTS(root, "train")
    item = ds[ds.meta["number"].tolist().index(n)]
    hu, seg, _ = _canonical(n)
    assert item["patient_id"] == f"volume-{n}" and item["image"].shape == (1, *SHAPE)
    np.testing.assert_allclose(item["image"][0].numpy(), hu_to_unit(hu), atol=1e-6)
    np.testing.assert_array_equal(item["mask"].numpy(), seg)
    assert item["mask"].dtype.is_floating_point is False and item["label"].tolist() == [1.0]
    assert (item["sex"], item["age"]) == (None, None)
    np.testing.assert_allclose(item["spacing"], SPACING)
    np.testing.assert_allclose(item["direction"], np.eye(3), atol=1e-9)
    np.testing.assert_allclose(item["origin"], (-40.0, -30.0, -100.0))  # LPS = RAS with x, y negated


def test_stored_order_and_raw_hu(root):
    ds = LiTS(root, "train", hu_window=None, orientation=None)
    item = ds[ds.meta["number"].tolist().index(1)]  # stored RAS: x and y flipped
    hu, seg, _ = _canonical(1)
    np.testing.assert_array_equal(item["image"][0].numpy(), hu[::-1, ::-1].astype(np.float32))
    np.testing.assert_array_equal(item["mask"].numpy(), seg[::-1, ::-1])
    np.testing.assert_allclose(item["direction"], np.diag([-1.0, -1.0, 1.0]), atol=1e-9)


def test_splits_numeric_order_and_test_items(root):
    ds = LiTS(root)
    assert ds.meta["patient_id"].tolist() == ["volume-0", "volume-1", "volume-2", "volume-10", "test-volume-3"]
    assert ds.meta["batch"].tolist()[:4] == [1, 1, 1, 1]
    test = LiTS(root, "test")
    item = test[0]
    assert len(test) == 1 and item["patient_id"] == "test-volume-3" and "mask" not in item
    assert np.isnan(item["label"].numpy()).all()
    with pytest.raises(FileNotFoundError, match="volume-3 "):
        LiTS(root, "genesis_train")
    with pytest.raises(ValueError, match="split"):
        LiTS(root, "val")


def test_genesis_folds(tmp_path):
    hu, seg, affine = _canonical(0)
    for n in range(95, 120):
        _store(hu[:2, :2, :2], affine, "LPS", tmp_path / f"volume-{n}.nii")
        _store(seg[:2, :2, :2], affine, "LPS", tmp_path / f"segmentation-{n}.nii")
    assert LiTS(tmp_path, "genesis_val").meta["number"].tolist() == list(range(100, 115))
    with pytest.raises(FileNotFoundError, match="volume-120"):
        LiTS(tmp_path, "genesis_test")


def test_label_header_disagreement_warns_and_follows_the_volume(tmp_path):
    hu, seg, affine = _canonical(0)
    _store(hu, affine, "RAS", tmp_path / "volume-4.nii")
    shifted = affine.copy()
    shifted[0, 0] *= -1  # the label file claims the opposite x direction
    nib.save(nib.Nifti1Image(seg[::-1, ::-1].copy(), shifted), str(tmp_path / "segmentation-4.nii"))
    with pytest.warns(UserWarning, match="segmentation-4.nii: affine differs"):
        item = LiTS(tmp_path)[0]
    np.testing.assert_array_equal(item["mask"].numpy(), seg)


def test_errors_name_the_file(tmp_path):
    hu, seg, affine = _canonical(0)
    _store(hu, affine, "LPS", tmp_path / "a" / "volume-5.nii")
    with pytest.raises(FileNotFoundError, match="volume-5.nii has no segmentation-5"):
        LiTS(tmp_path / "a")
    _store(seg, affine, "LPS", tmp_path / "a" / "segmentation-5.nii")
    _store(seg, affine, "LPS", tmp_path / "a" / "x" / "segmentation-5.nii.gz")
    with pytest.raises(ValueError, match="segmentation-5 found twice"):
        LiTS(tmp_path / "a")
    bad = seg.copy()
    bad[0, 0, 0] = 3
    _store(hu, affine, "LPS", tmp_path / "b" / "volume-6.nii")
    _store(bad, affine, "LPS", tmp_path / "b" / "segmentation-6.nii")
    with pytest.raises(ValueError, match=r"segmentation-6.nii: labels \[3\]"):
        LiTS(tmp_path / "b")[0]
    _store(hu, affine, "LPS", tmp_path / "c" / "volume-7.nii.gz")
    _store(seg, affine, "LPS", tmp_path / "c" / "segmentation-7.nii.gz")
    path = tmp_path / "c" / "volume-7.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(ValueError, match="volume-7.nii.gz: unreadable or truncated"):
        LiTS(tmp_path / "c")[0]
    _store(hu[:, :, :3], affine, "LPS", tmp_path / "d" / "volume-8.nii")
    _store(seg, affine, "LPS", tmp_path / "d" / "segmentation-8.nii")
    with pytest.raises(ValueError, match="segmentation-8.nii: shape"):
        LiTS(tmp_path / "d")[0]
