"""BraTS 2018 loader on format-exact fixtures (HGG/LGG/validation trees, survival CSVs, the BraTS affine)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from eden_lib.data.brats import MODALITIES, BraTS2018

SHAPE = (6, 5, 4)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # as in the released files: x and y decrease in RAS
AFFINE[:3, 3] = (0.0, -239.0, 0.0)
ET, ED, NCR = np.s_[1:2, 1:2, 1:2], np.s_[3:5, 2:4, 0:2], np.s_[4:5, 4:5, 3:4]
CASES = {"HGG": ["Brats18_2013_2_1", "Brats18_TCIA01_131_1"], "LGG": ["Brats18_TCIA09_141_1"]}
VAL_CASE = "Brats18_CBICA_AAM_1"


def _volumes(seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    out = {m: g.integers(0, 3000, SHAPE).astype(np.int16) for m in MODALITIES}
    seg = np.zeros(SHAPE, np.uint8)
    seg[ED], seg[NCR], seg[ET] = 2, 1, 4
    out["seg"] = seg
    return out


def _write_case(folder, case: str, seed: int, with_seg: bool = True, ext: str = ".nii.gz") -> None:
    (folder / case).mkdir(parents=True, exist_ok=True)
    for name, array in _volumes(seed).items():
        if name != "seg" or with_seg:
            nib.save(nib.Nifti1Image(array, AFFINE), str(folder / case / f"{case}_{name}{ext}"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    train = root / "MICCAI_BraTS_2018_Data_Training"
    for seed, (grade, case) in enumerate((g, c) for g, cases in CASES.items() for c in cases):
        _write_case(train / grade, case, seed, ext=".nii" if seed == 1 else ".nii.gz")
    (train / "survival_data.csv").write_text("BraTS18ID,Age,Survival\nBrats18_TCIA01_131_1,60.463,289\n")
    val = root / "MICCAI_BraTS_2018_Data_Validation"
    _write_case(val, VAL_CASE, 9, with_seg=False)
    (val / "survival_evaluation.csv").write_text(f"BraTS18ID,Age,ResectionStatus\n{VAL_CASE},71.2,GTR\n")
    return root


def test_training_item(root):
    ds = BraTS2018(root, "train")
    assert ds.meta["patient_id"].tolist() == [*CASES["HGG"], *CASES["LGG"]]
    assert ds.meta["grade"].tolist() == ["HGG", "HGG", "LGG"]
    item = ds[1]
    vols = _volumes(1)
    assert item["image"].shape == (4, *SHAPE) and item["image"].dtype.is_floating_point
    for c, m in enumerate(MODALITIES):
        v = vols[m].astype(np.float64)
        np.testing.assert_allclose(item["image"][c].numpy(), (v - v.min()) / (v.max() - v.min()), atol=1e-6)
    np.testing.assert_array_equal(item["mask"].numpy(), vols["seg"])
    wt, tc, et = item["regions"].numpy()
    np.testing.assert_array_equal(wt, vols["seg"] > 0)
    np.testing.assert_array_equal(tc, np.isin(vols["seg"], (1, 4)))
    assert et.sum() == 1 and et[1, 1, 1] == 1
    assert (item["label"].tolist(), item["grade"], item["age"], item["sex"]) == ([1.0], "HGG", 60, None)
    assert item["patient_id"] == "Brats18_TCIA01_131_1"
    np.testing.assert_allclose(item["direction"], np.eye(3))  # the BraTS affine is already LPS
    np.testing.assert_allclose(item["origin"], (0.0, 239.0, 0.0))
    lgg = ds[2]
    assert lgg["label"].tolist() == [0.0] and lgg["age"] is None


def test_validation_split_modalities_and_orientation(root):
    val = BraTS2018(root, "val", modalities=("flair",), orientation="RAS")
    item = val[0]
    assert item["image"].shape == (1, *SHAPE) and "mask" not in item and "regions" not in item
    assert np.isnan(item["label"].item()) and item["grade"] is None and item["age"] == 71
    flair = _volumes(9)["flair"].astype(np.float64)[::-1, ::-1]
    np.testing.assert_allclose(item["image"][0].numpy(), (flair - flair.min()) / (flair.max() - flair.min()),
                               atol=1e-6)
    assert len(BraTS2018(root)) == 4


def test_case_list_like_models_genesis_folds(root, tmp_path):
    fold = tmp_path / "fold_1.csv"
    fold.write_text("Brats18_TCIA09_141_1\nBrats18_2013_2_1\n")
    assert BraTS2018(root, "train", cases=fold).meta["patient_id"].tolist() == [
        "Brats18_TCIA09_141_1", "Brats18_2013_2_1"]
    with pytest.raises(ValueError, match="Brats18_nope_1"):
        BraTS2018(root, cases=["Brats18_nope_1"])
    assert len(BraTS2018(root / "MICCAI_BraTS_2018_Data_Training")) == 3  # the training folder as root


def test_errors_name_the_file(tmp_path):
    train = tmp_path / "HGG"
    _write_case(train, "Brats18_X_1_1", 0)
    seg_path = train / "Brats18_X_1_1" / "Brats18_X_1_1_seg.nii.gz"
    bad = _volumes(0)["seg"]
    bad[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(bad, AFFINE), str(seg_path))
    with pytest.raises(ValueError, match=r"Brats18_X_1_1_seg.nii.gz: labels \[3\]"):
        BraTS2018(tmp_path)[0]
    (train / "Brats18_X_1_1" / "Brats18_X_1_1_t2.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="Brats18_X_1_1_t2.nii.gz"):
        BraTS2018(tmp_path)[0]
    (tmp_path / "survival_data.csv").write_text("BraTS18ID,Age,Survival\nBrats18_X_1_1,sixty,100\n")
    with pytest.raises(ValueError, match=r"survival_data.csv: line 2 \(Brats18_X_1_1\)"):
        BraTS2018(tmp_path)
    with pytest.raises(FileNotFoundError, match="MICCAI_BraTS_2018_Data_Validation"):
        BraTS2018(tmp_path, "val")
    with pytest.raises(ValueError, match="modalities"):
        BraTS2018(tmp_path, modalities=("dwi",))
