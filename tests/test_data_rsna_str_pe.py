"""RSNA-STR PE loader on a format-exact study/series/SOP DICOM tree with train.csv and test.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eden_lib.data.ct3d import write_ct_slice
from eden_lib.data.rsna_str_pe import EXAM_LABELS, IMAGE_LABEL, RSNASTRPE, SCORED_EXAM_LABELS, UID_COLUMNS
from eden_lib.data.subvolumes import hu_to_unit

SHAPE = (6, 5, 4)  # X (columns), Y (rows), Z
PIXEL_SPACING = (0.6, 0.7)  # [row spacing (Y), column spacing (X)]
DZ = 1.25
ORIGIN = (-100.0, -80.0, -300.0)


def _hu(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).integers(-512, 512, SHAPE) * 2).astype(np.int16)


def _write_series(root, split: str, study: str, series: str, hu: np.ndarray, sops: list[str], **tags) -> None:
    """Slice k (ascending z) gets SOP ``sops[k]``; InstanceNumbers are shuffled; slope/intercept vary by slice."""
    n = hu.shape[2]
    for k in range(n):
        slope, intercept = (2.0, -1024.0) if k % 2 else (1.0, 0.0)
        stored = ((hu[:, :, k].T.astype(np.float64) - intercept) / slope).astype(np.int16)
        write_ct_slice(root / split / study / series / f"{sops[k]}.dcm", stored,
                       position=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + DZ * k), sop_uid=sops[k], series_uid=series,
                       study_uid=study, pixel_spacing=PIXEL_SPACING, slope=slope, intercept=intercept,
                       instance_number=(3, 1, 4, 2)[k], **tags)


STUDIES = {"1.2.3.1": ("1.2.3.1.1", 0), "1.2.3.2": ("1.2.3.2.1", 1)}
PE_ON_IMAGE = {"1.2.3.1": [0, 1, 1, 0], "1.2.3.2": [0, 0, 0, 0]}
EXAM = {"1.2.3.1": {"rightsided_pe": 1, "central_pe": 1, "rv_lv_ratio_gte_1": 1},
        "1.2.3.2": {"negative_exam_for_pe": 1, "rv_lv_ratio_lt_1": 0, "qa_motion": 1}}


def _sops(study: str) -> list[str]:
    return [f"{study}.9.{k}" for k in (3, 1, 0, 2)]  # file names do not follow z


def _train_rows() -> pd.DataFrame:
    rows = []
    for study, (series, _) in STUDIES.items():
        for k, sop in enumerate(_sops(study)):
            rows.append({"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop,
                         IMAGE_LABEL: PE_ON_IMAGE[study][k], **{c: EXAM[study].get(c, 0) for c in EXAM_LABELS}})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # CSV rows in no particular order


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna_pe")
    for study, (series, seed) in STUDIES.items():
        _write_series(root, "train", study, series, _hu(seed), _sops(study), PatientSex="F" if seed else "",
                      PatientAge="063Y" if seed else "")
    _train_rows().to_csv(root / "train.csv", index=False)
    _write_series(root, "test", "1.2.4.1", "1.2.4.1.1", _hu(5), _sops("1.2.4.1"))
    pd.DataFrame([("1.2.4.1", "1.2.4.1.1", s) for s in _sops("1.2.4.1")], columns=list(UID_COLUMNS)) \
        .to_csv(root / "test.csv", index=False)
    return root


def test_train_item_orders_slices_by_position(root):
    ds = RSNASTRPE(root, "train")
    assert ds.labels == SCORED_EXAM_LABELS and ds.meta["study_uid"].tolist() == list(STUDIES)
    item = ds[0]
    assert item["image"].shape == (1, *SHAPE)
    np.testing.assert_allclose(item["image"][0].numpy(), hu_to_unit(_hu(0)), atol=1e-6)
    assert item["sop_uids"] == _sops("1.2.3.1")
    assert item["slice_labels"].tolist() == PE_ON_IMAGE["1.2.3.1"]
    expected = [float(EXAM["1.2.3.1"].get(c, 0)) for c in SCORED_EXAM_LABELS]
    assert item["label"].tolist() == expected
    assert (item["patient_id"], item["series_uid"], item["sex"], item["age"]) == ("1.2.3.1", "1.2.3.1.1", None, None)
    np.testing.assert_allclose(item["spacing"], (PIXEL_SPACING[1], PIXEL_SPACING[0], DZ))
    np.testing.assert_allclose(item["origin"], ORIGIN)
    np.testing.assert_allclose(item["direction"], np.eye(3))
    other = ds[1]
    assert (other["sex"], other["age"]) == ("F", 63)
    raw = RSNASTRPE(root, "train", labels=("qa_motion", "negative_exam_for_pe"), hu_window=None)[1]
    np.testing.assert_array_equal(raw["image"][0].numpy(), _hu(1).astype(np.float32))
    assert raw["label"].tolist() == [1.0, 1.0]


def test_test_split_and_all(root):
    test = RSNASTRPE(root, "test")
    item = test[0]
    assert len(test) == 1 and np.isnan(item["label"].numpy()).all() and np.isnan(item["slice_labels"].numpy()).all()
    np.testing.assert_allclose(item["image"][0].numpy(), hu_to_unit(_hu(5)), atol=1e-6)
    both = RSNASTRPE(root)
    assert both.meta["split"].tolist() == ["test", "train", "train"] and both.meta["n_images"].tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="split"):
        RSNASTRPE(root, "val")
    with pytest.raises(ValueError, match="pe_present"):
        RSNASTRPE(root, labels=("pe_present",))


@pytest.fixture
def copy(root, tmp_path):
    import shutil

    shutil.copytree(root, tmp_path / "pe")
    return tmp_path / "pe"


def test_csv_errors_name_the_line(copy):
    rows = _train_rows()
    bad = rows.copy()
    bad.loc[bad["SOPInstanceUID"] == "1.2.3.1.9.0", "central_pe"] = 0
    bad.to_csv(copy / "train.csv", index=False)
    with pytest.raises(ValueError, match="train.csv: exam-level column central_pe differs .* study 1.2.3.1"):
        RSNASTRPE(copy, "train")
    bad = rows.astype(str)
    bad.iloc[2, bad.columns.get_loc(IMAGE_LABEL)] = "2"
    bad.to_csv(copy / "train.csv", index=False)
    with pytest.raises(ValueError, match=rf"train.csv: line 4 \({bad['SOPInstanceUID'].iloc[2]}\) has pe_present"):
        RSNASTRPE(copy, "train")
    rows.drop(columns=["indeterminate"]).to_csv(copy / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train.csv: missing column\(s\) \['indeterminate'\]"):
        RSNASTRPE(copy, "train")
    pd.concat([rows, rows.iloc[:1]]).to_csv(copy / "train.csv", index=False)
    with pytest.raises(ValueError, match="train.csv: line 10 repeats SOPInstanceUID"):
        RSNASTRPE(copy, "train")


def test_file_errors_name_the_file(copy):
    folder = copy / "train" / "1.2.3.1" / "1.2.3.1.1"
    (folder / "1.2.3.1.9.0.dcm").write_bytes((folder / "1.2.3.1.9.0.dcm").read_bytes()[:-20])
    with pytest.raises(ValueError, match="1.2.3.1.9.0.dcm: pixel data cannot be decoded"):
        RSNASTRPE(copy, "train")[0]
    (folder / "1.2.3.1.9.0.dcm").unlink()
    with pytest.raises(FileNotFoundError, match="1.2.3.1.9.0.dcm does not exist"):
        RSNASTRPE(copy, "train")[0]
    folder = copy / "train" / "1.2.3.2" / "1.2.3.2.1"
    write_ct_slice(folder / "1.2.3.2.9.1.dcm", np.zeros(SHAPE[1::-1], np.int16), position=ORIGIN,
                   sop_uid="1.2.3.2.9.1", series_uid="1.2.3.2.1", study_uid="1.2.3.2", pixel_spacing=PIXEL_SPACING)
    with pytest.raises(ValueError, match="two slices at the same position"):
        RSNASTRPE(copy, "train")[1]
