"""CAD-PE loader on format-exact NRRD fixtures (``<id>.nrrd`` + ``<id>RefStd.nrrd``, non-identity directions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from eden_lib.data.cad_pe import CADPE, emboli_table, emboli_voxels, split_of
from eden_lib.data.subvolumes import hu_to_unit
from eden_lib.evaluation.froc import froc

SHAPE = (12, 10, 6)  # X, Y, Z
SPACING = (0.7, 0.8, 1.5)
ORIGIN = (-50.0, 20.0, -300.0)
DIRECTION = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # flipped and permuted
KNOWN = (9, 2, 4)  # (x, y, z) voxel with a known HU


def _write(path, xyz: np.ndarray, spacing=SPACING) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))
    image.SetSpacing(spacing), image.SetOrigin(ORIGIN), image.SetDirection(tuple(DIRECTION.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _scan(emboli: dict[int, tuple[slice, slice, slice]]) -> tuple[np.ndarray, np.ndarray]:
    hu = np.full(SHAPE, -900, np.int16)
    hu[KNOWN] = 250
    ref = np.zeros(SHAPE, np.uint16)
    for label, box in emboli.items():
        ref[box] = label
    return hu, ref


SCANS = {
    "001": {1: np.s_[1:3, 1:3, 1:2], 3: np.s_[6:7, 5:8, 2:4]},  # labels 1 and 3: two emboli, a gap in the numbering
    "005": {1: np.s_[4:5, 4:5, 4:5]},
    "021": {1: np.s_[0:2, 0:1, 0:1]},
    "031": {},                                                   # no embolus
    "e0032": {2: np.s_[3:4, 3:4, 3:4], 1: np.s_[8:10, 8:10, 5:6]},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cadpe")
    for scan_id, emboli in SCANS.items():
        hu, ref = _scan(emboli)
        folder = ("images", "rs") if scan_id == "e0032" else ("", "")  # separate folders for one scan
        _write(root / folder[0] / f"{scan_id}.nrrd", hu)
        _write(root / folder[1] / f"{scan_id}RefStd.nrrd", ref)
    (root / "README.txt").write_text("not a scan")
    return root


def test_splits_and_meta(root):
    assert len(CADPE(root)) == 5
    assert CADPE(root, "train").meta["patient_id"].tolist() == ["001", "005"]
    assert CADPE(root, "test").meta["patient_id"].tolist() == ["021", "031"]
    assert CADPE(root, ["train", "post_challenge"]).meta["patient_id"].tolist() == ["001", "005", "e0032"]
    assert [split_of(s) for s in ("001", "020", "021", "040", "041", "e0833", "x1")] == [
        "train", "train", "test", "test", "other", "post_challenge", "other"]
    with pytest.raises(ValueError, match="split"):
        CADPE(root, "validation")


def test_item_axes_values_and_geometry(root):
    ds = CADPE(root)
    item = ds[0]
    assert item["patient_id"] == "001" and item["image"].shape == (1, *SHAPE) and item["emboli"].shape == SHAPE
    assert item["image"][0][KNOWN] == pytest.approx(float(hu_to_unit(np.array(250.0))))
    assert item["image"][0, 0, 0, 0] == pytest.approx(0.05)
    assert item["emboli"][1, 1, 1] == 1 and item["emboli"][6, 6, 3] == 3 and item["emboli"][0, 0, 0] == 0
    assert item["n_emboli"] == 2 and item["label"].tolist() == [1.0]
    assert (item["sex"], item["age"]) == (None, None)
    np.testing.assert_allclose(item["spacing"], SPACING)
    np.testing.assert_allclose(item["origin"], ORIGIN)
    np.testing.assert_allclose(item["direction"], DIRECTION)
    raw = CADPE(root, "test", hu_window=None)
    assert raw[0]["image"][0][KNOWN] == 250.0
    free = raw[1]
    assert free["patient_id"] == "031" and free["n_emboli"] == 0 and free["label"].tolist() == [0.0]


def test_emboli_helpers(root):
    ds = CADPE(root)
    _, emboli, geometry = ds.read(0)
    voxels = emboli_voxels(emboli)
    assert sorted(voxels) == [1, 3]
    assert sorted(map(tuple, voxels[1])) == [(1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1)]
    assert sorted(map(tuple, voxels[3])) == [(6, y, z) for y in (5, 6, 7) for z in (2, 3)]
    table = emboli_table(emboli, geometry)
    assert table["label"].tolist() == [1, 3] and table["n_voxels"].tolist() == [4, 6]
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), [[1.5, 1.5, 1.0], [6.0, 6.0, 2.5]])
    np.testing.assert_allclose(table["volume_mm3"], np.array([4, 6]) * np.prod(SPACING))
    image = sitk.ReadImage(str(ds.meta["refstd_path"].iloc[0]))
    for row in table.itertuples():
        world = image.TransformContinuousIndexToPhysicalPoint((row.x, row.y, row.z))
        np.testing.assert_allclose([row.world_x, row.world_y, row.world_z], world)
    empty = emboli_table(np.zeros((2, 2, 2), np.int16))
    assert len(empty) == 0 and emboli_voxels(np.zeros((2, 2, 2), np.int16)) == {}


def test_froc_end_to_end(root):
    ds = CADPE(root, "test")
    refs, spacings = ds.reference_standards(), ds.spacings()
    assert list(refs) == ["021", "031"] and refs["021"][1, 0, 0] == 1
    np.testing.assert_allclose(spacings["031"], SPACING)
    markers = pd.DataFrame([("021", 1, 0, 0, 0.9), ("021", 5, 5, 5, 0.8), ("031", 2, 2, 2, 0.7)],
                           columns=["scan", "x", "y", "z", "confidence"])
    curve, sens = froc(markers, refs, spacings, fp_per_scan=(0.5, 1.0))
    assert curve["tp"].tolist() == [0, 1, 1, 1] and curve["fp"].tolist() == [0, 0, 1, 2]
    assert sens.tolist() == [1.0, 1.0]


def test_errors_name_the_file(tmp_path, root):
    hu, ref = _scan({1: np.s_[0:1, 0:1, 0:1]})
    _write(tmp_path / "a" / "007.nrrd", hu)
    with pytest.raises(FileNotFoundError, match="007.nrrd has no reference standard 007RefStd"):
        CADPE(tmp_path / "a")
    _write(tmp_path / "b" / "008RefStd.nrrd", ref)
    with pytest.raises(FileNotFoundError, match="008RefStd.nrrd has no image"):
        CADPE(tmp_path / "b")
    _write(tmp_path / "c" / "009.nrrd", hu)
    _write(tmp_path / "c" / "009RefStd.nrrd", ref, spacing=(0.7, 0.8, 3.0))
    with pytest.raises(ValueError, match="009RefStd.nrrd: grid"):
        CADPE(tmp_path / "c")[0]
    _write(tmp_path / "d" / "010.nrrd", hu)
    _write(tmp_path / "d" / "010RefStd.nrrd", -ref.astype(np.int16))
    with pytest.raises(ValueError, match="010RefStd.nrrd: labels range"):
        CADPE(tmp_path / "d")[0]
    _write(tmp_path / "e" / "011.nrrd", hu)
    _write(tmp_path / "e" / "011RefStd.nrrd", ref)
    path = tmp_path / "e" / "011.nrrd"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="011.nrrd: unreadable or truncated"):
        CADPE(tmp_path / "e")[0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CADPE(tmp_path / "nowhere")
