"""RSNA Pneumonia loader on format-exact fixtures: several box rows per patient, the per-box duplicated class file
with its three class strings, 8-bit MONOCHROME2 DICOMs with sex/age/view, splits and the error messages."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from eden_lib.data.dicom import DicomError, write_dicom
from eden_lib.data.rsna_pneumonia import RSNA_CLASSES, RSNAPneumonia, canonical_class, read_train_labels

P1 = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"  # two opacity boxes
P2 = "00313ee0-9eaa-42f4-b0ab-c148ed3241cd"  # Normal, impossible age
P3 = "00322d4d-1c29-4943-afc9-b6754be640eb"  # No Lung Opacity / Not Normal
T1 = "000924cf-0f8d-42bd-9158-1af53881a557"  # stage-2 test
LABELS_CSV = f"""patientId,x,y,width,height,Target
{P2},,,,,0
{P1},2.0,3.0,10.0,12.0,1
{P1},18.0,4.0,8.0,20.0,1
{P3},,,,,0
"""
CLASS_CSV = f"""patientId,class
{P2},Normal
{P1},Lung Opacity
{P1},Lung Opacity
{P3},No Lung Opacity / Not Normal
"""
PIX = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    (root / "stage_2_train_labels.csv").write_text(LABELS_CSV)
    (root / "stage_2_detailed_class_info.csv").write_text(CLASS_CSV)
    train = root / "stage_2_train_images"
    for pid, sex, age, view in ((P1, "M", "58", "PA"), (P2, "F", "148", "AP"), (P3, "M", "7", "AP")):
        write_dicom(train / f"{pid}.dcm", PIX, PatientID=pid, PatientSex=sex, PatientAge=age, ViewPosition=view,
                    BodyPartExamined="CHEST", ConversionType="WSD")
    write_dicom(root / "stage_2_test_images" / f"{T1}.dcm", PIX, PatientID=T1, PatientSex="F", PatientAge="33",
                ViewPosition="PA")
    return root


@pytest.fixture
def copy(rsna, tmp_path):
    return shutil.copytree(rsna, tmp_path / "rsna")


def test_train_items(rsna):
    ds = RSNAPneumonia(rsna, "train")
    assert len(ds) == 3 and ds.labels == RSNA_CLASSES
    assert ds.meta["patient_id"].tolist() == [P2, P1, P3]  # order of the labels file, one row per patient
    assert ds.meta["class"].tolist() == ["Normal", "Lung Opacity", "No Lung Opacity / Not Normal"]
    assert ds.meta["target"].tolist() == [0, 1, 0] and ds.meta["n_boxes"].tolist() == [0, 2, 0]
    normal, opacity, other = ds[0], ds[1], ds[2]
    assert opacity["image"].shape == (1, 32, 32) and str(opacity["image"].dtype) == "torch.float32"
    np.testing.assert_allclose(opacity["image"][0].numpy(), PIX / 255.0, atol=1e-7)
    assert normal["label"].tolist() == [1, 0, 0] and other["label"].tolist() == [0, 1, 0]
    assert opacity["label"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(opacity["boxes"].numpy(), [[2, 3, 12, 15], [18, 4, 26, 24]])
    assert normal["boxes"].shape == (0, 4)
    assert (opacity["sex"], opacity["age"], opacity["view"], opacity["patient_id"]) == ("M", 58, "PA", P1)
    assert (normal["sex"], normal["age"], normal["view"]) == ("F", None, "AP")  # age 148 is impossible
    assert other["age"] == 7


def test_label_subsets_and_spellings(rsna):
    ds = RSNAPneumonia(rsna, "train", labels=["Lung Opacity"])
    assert ds.targets[:, 0].tolist() == [0, 1, 0]
    ds = RSNAPneumonia(rsna, "train", labels=["No Lung Opacity/Not Normal"])
    assert ds.labels == ("No Lung Opacity / Not Normal",) and ds.targets[:, 0].tolist() == [0, 0, 1]
    assert canonical_class("No Lung Opacity/ Not Normal") == RSNA_CLASSES[1] and canonical_class("normal") is None
    with pytest.raises(ValueError, match="labels=\\['Pneumonia'\\]"):
        RSNAPneumonia(rsna, labels=["Pneumonia"])


def test_test_split_and_all(rsna):
    test = RSNAPneumonia(rsna, "test")
    assert test.meta["patient_id"].tolist() == [T1] and test.meta["class"].tolist() == [None]
    item = test[0]
    assert item["label"].isnan().all() and item["boxes"].shape == (0, 4) and item["age"] == 33
    both = RSNAPneumonia(rsna)
    assert both.meta["split"].tolist() == ["train"] * 3 + ["test"] and len(both) == 4
    assert list(both.meta.columns) == ["patient_id", "split", "class", "target", "n_boxes", "sex", "age", "view"]
    assert both.meta["target"].isna().tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="split='val'"):
        RSNAPneumonia(rsna, "val")


def test_image_size_scales_boxes(rsna):
    item = RSNAPneumonia(rsna, "train", image_size=16)[1]
    assert item["image"].shape == (1, 16, 16)
    np.testing.assert_allclose(item["boxes"].numpy(), [[1, 1.5, 6, 7.5], [9, 2, 13, 12]])


def test_read_train_labels_table(rsna):
    table = read_train_labels(rsna)
    assert list(table.columns) == ["patient_id", "target", "boxes", "class"]
    assert table["boxes"].iloc[1].dtype == np.float32 and table["boxes"].iloc[1].shape == (2, 4)


@pytest.mark.parametrize("old, new, match", [
    (f"{P3},,,,,0", f"{P3},,,,,2", (rf"stage_2_train_labels\.csv: line 5 \(patientId {P3}\): Target '2', "
                                   r"expected 0 or 1")),
    (f"{P3},,,,,0", f"{P3},1,2,3,4,0", r"line 5 .*Target 0 with box \['1', '2', '3', '4'\], expected empty"),
    (f"{P1},18.0,4.0,8.0,20.0,1", f"{P1},18.0,4.0,8.0,,1", r"line 4 .*Target 1 with box .*expected numbers"),
    (f"{P1},18.0,4.0,8.0,20.0,1", f"{P1},18.0,4.0,-8.0,20.0,1", r"line 4 .*width > 0"),
    (f"{P1},18.0,4.0,8.0,20.0,1", f"{P1},,,,,0", rf"patientId {P1} has both Target 0 and 1 rows \(lines \[3, 4\]\)"),
    ("Target", "Label", r"stage_2_train_labels\.csv: missing column\(s\) \['Target'\]"),
])
def test_label_file_errors(copy, old, new, match):
    path = copy / "stage_2_train_labels.csv"
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(ValueError, match=match):
        RSNAPneumonia(copy, "train")


@pytest.mark.parametrize("old, new, match", [
    (f"{P3},No Lung Opacity / Not Normal", f"{P3},Abnormal",
     rf"stage_2_detailed_class_info\.csv: line 5 \(patientId {P3}\) has class 'Abnormal'"),
    (f"{P1},Lung Opacity\n{P1},Lung Opacity", f"{P1},Lung Opacity\n{P1},Normal",
     rf"patientId {P1} has different classes on lines \[3, 4\]"),
    (f"{P2},Normal", f"{P2},Lung Opacity", rf"patientId {P2} has class 'Lung Opacity' but Target 0"),
    (f"{P3},No Lung Opacity / Not Normal\n", "", rf"no class for patientId {P3}"),
    (f"{P2},Normal", f"{P2},Normal\n{T1},Normal", (rf"line 3 has patientId {T1}, which is not in "
                                                   r"stage_2_train_labels\.csv")),
])
def test_class_file_errors(copy, old, new, match):
    path = copy / "stage_2_detailed_class_info.csv"
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(ValueError, match=match):
        RSNAPneumonia(copy, "train")


def test_missing_and_corrupt_images(copy):
    (copy / "stage_2_train_images" / f"{P3}.dcm").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{P3}\.dcm not found for patientId {P3}"):
        RSNAPneumonia(copy, "train")
    (copy / "stage_2_train_images" / f"{P3}.dcm").write_bytes(b"\x89PNG\r\n\x1a\n not a dicom")
    with pytest.raises(DicomError, match=rf"{P3}\.dcm: not a DICOM file"):
        RSNAPneumonia(copy, "train")
    path = copy / "stage_2_test_images" / f"{T1}.dcm"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DicomError, match=rf"{T1}\.dcm: cannot decode the pixel data"):
        RSNAPneumonia(copy, "test")[0]
    shutil.rmtree(copy / "stage_2_test_images")
    with pytest.raises(FileNotFoundError, match="stage_2_test_images not found"):
        RSNAPneumonia(copy, "test")
