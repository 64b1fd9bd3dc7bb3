"""LUNA16 as a Dataset on a format-exact fixture: folds, world mm -> voxel through a flipped direction matrix."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from eden_lib.data import open_dataset
from eden_lib.data.luna16 import voxel_to_world


def _scan(root, subset: int, uid: str, direction: tuple) -> tuple:
    hu = np.arange(8 * 16 * 16, dtype=np.int16).reshape(8, 16, 16) - 1000  # (z, y, x)
    image = sitk.GetImageFromArray(hu)
    image.SetOrigin((-10.0, 20.0, -300.0))
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetDirection(direction)
    folder = root / f"subset{subset}"
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
    return image.GetOrigin(), image.GetSpacing(), direction


@pytest.fixture
def luna(tmp_path):
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    geo = {"1.2.3": _scan(tmp_path, 0, "1.2.3", flipped), "4.5.6": _scan(tmp_path, 7, "4.5.6", (1, 0, 0, 0, 1, 0, 0, 0, 1))}
    voxel = np.array([3.0, 5.0, 9.0])  # (z, y, x)
    xyz = voxel_to_world(voxel, *geo["1.2.3"])
    pd.DataFrame([["1.2.3", *xyz, 6.5]], columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]).to_csv(
        tmp_path / "annotations.csv", index=False)
    pd.DataFrame([["1.2.3", *xyz, 1], ["4.5.6", 0.0, 25.0, -290.0, 0]],
                 columns=["seriesuid", "coordX", "coordY", "coordZ", "class"]).to_csv(
        tmp_path / "candidates_V2.csv", index=False)
    return tmp_path, voxel


def test_folds_and_nodules_in_voxels_through_the_direction_matrix(luna):
    root, voxel = luna
    train = open_dataset("luna16", root, "train")
    assert len(train) == 1 and train.meta["subset"].tolist() == [0]
    item = train[0]
    assert item["image"].shape == (1, 8, 16, 16) and float(item["image"].min()) == -1000
    np.testing.assert_allclose(item["nodules"][0], [*voxel, 6.5], atol=1e-4)
    assert item["label"].tolist() == [1.0] and item["patient_id"] == "1.2.3"
    test = open_dataset("luna16", root, "test")
    assert test[0]["label"].tolist() == [0.0] and test[0]["nodules"].shape == (0, 4)
    assert test[0]["candidates"].shape == (1, 4)
    assert len(open_dataset("luna16", root)) == 2


def test_bad_split_and_missing_csv_are_named(luna):
    root, _ = luna
    with pytest.raises(ValueError, match="split='training'"):
        open_dataset("luna16", root, "training")
    (root / "annotations.csv").unlink()
    with pytest.raises(FileNotFoundError, match="annotations.csv"):
        open_dataset("luna16", root, "train")
