"""VinDr-CXR loader on format-exact fixtures of the PhysioNet layout (and the Kaggle variant): reader aggregation
rules, label-name normalisation, boxes, DICOM pixels and header fields, splits, and the error messages."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from eden_lib.data.dicom import DicomError, write_dicom
from eden_lib.data.vindr_cxr import (
    JLIANG_GLOBAL_ONE,
    VINDR_LABELS,
    VinDrCXR,
    aggregate_readers,
    canonical_label,
)


def image_id(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()  # 32 hex characters, as in the release


A, B, C, D, E = (image_id(n) for n in "ABCDE")
PE, NF, NM, PNA, TB, OD = ("Pleural effusion", "No finding", "Nodule/Mass", "Pneumonia", "Tuberculosis",
                           "Other diseases")
PIX_A = (np.arange(8 * 6).reshape(8, 6) * 85).astype(np.uint16)  # MONOCHROME1, 12 bits
PIX_B = (np.arange(8 * 6).reshape(8, 6) * 300).astype(np.uint16)  # MONOCHROME2, 14 bits
PIX_8 = (np.arange(8 * 6).reshape(8, 6) * 5).astype(np.uint8)

# (image, reader) -> the labels that reader marked 1; "" marks an empty cell.
TRAIN_READERS = [
    (A, "R1", {PE: "1"}), (A, "R2", {}), (A, "R3", {}),
    (B, "R4", {NF: "1"}), (B, "R5", {NF: "1"}), (B, "R17", {NM: "1"}),
    (C, "R1", {TB: "1", NF: ""}), (C, "R2", {TB: "1", PNA: ""}), (C, "R3", {TB: ""}),
]
TEST_ROWS = [(D, {OD: "1", "Aortic enlargement": "1"}), (E, {NF: "1"})]
TRAIN_BOXES = [
    (A, "R1", PE, "1", "2", "4", "5"), (A, "R2", NF, "", "", "", ""), (A, "R3", NF, "", "", "", ""),
    (B, "R4", NF, "", "", "", ""), (B, "R5", NF, "", "", "", ""), (B, "R17", NM, "0.5", "1.5", "3", "4.5"),
    (C, "R1", "Other lesion", "0", "0", "2", "2"),
]


def write_train_labels(path, rows, rad_column="rad_id"):
    lines = [",".join(["image_id", rad_column, *VINDR_LABELS])]
    for iid, rad, marks in rows:
        lines.append(",".join([iid, rad] + [marks.get(lab, "0") for lab in VINDR_LABELS]))
    path.write_text("\n".join(lines) + "\n")


def write_vindr(root):
    ann = root / "annotations"
    ann.mkdir(parents=True)
    write_train_labels(ann / "image_labels_train.csv", TRAIN_READERS)
    test_header = [lab if lab != OD else "Other disease" for lab in VINDR_LABELS]  # the singular spelling
    lines = [",".join(["image_id", *test_header])]
    lines += [",".join([iid] + [marks.get(lab, "0") for lab in VINDR_LABELS]) for iid, marks in TEST_ROWS]
    (ann / "image_labels_test.csv").write_text("\n".join(lines) + "\n")
    box_header = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max"
    (ann / "annotations_train.csv").write_text("\n".join([box_header] + [",".join(r) for r in TRAIN_BOXES]) + "\n")
    (ann / "annotations_test.csv").write_text(  # rad_id is optional in the test file
        f"image_id,class_name,x_min,y_min,x_max,y_max\n{D},Aortic enlargement,1,1,3,3\n{E},No finding,,,,\n")
    write_dicom(root / "train" / f"{A}.dicom", PIX_A, "MONOCHROME1", bits_stored=12, PatientSex="F",
                PatientAge="045Y")
    write_dicom(root / "train" / f"{B}.dicom", PIX_B, bits_stored=14, PatientSex="M", PatientAge="")
    write_dicom(root / "train" / f"{C}.dicom", PIX_8, PatientSex="O")
    write_dicom(root / "test" / f"{D}.dicom", PIX_8, PatientSex="M", PatientAge="062Y")
    write_dicom(root / "test" / f"{E}.dicom", PIX_8)


@pytest.fixture(scope="module")
def vindr(tmp_path_factory):
    root = tmp_path_factory.mktemp("vindr") / "1.0.0"
    write_vindr(root)
    return root


@pytest.fixture
def copy(vindr, tmp_path):
    return shutil.copytree(vindr, tmp_path / "1.0.0")


def col(name):
    return VINDR_LABELS.index(name)


def test_train_any_rule_items(vindr):
    ds = VinDrCXR(vindr, "train")
    assert len(ds) == 3 and ds.labels == VINDR_LABELS and ds.variant == "physionet"
    assert ds.meta["image_id"].tolist() == [A, B, C] and ds.meta["n_readers"].tolist() == [3, 3, 3]
    a, b, c = ds[0], ds[1], ds[2]
    assert a["image"].shape == (1, 8, 6) and a["label"].shape == (28,) and str(a["label"].dtype) == "torch.float32"
    # MONOCHROME1 with BitsStored 12 is inverted over 0..4095.
    np.testing.assert_allclose(a["image"][0].numpy(), (4095 - PIX_A) / 4095, atol=1e-6)
    np.testing.assert_allclose(b["image"][0].numpy(), PIX_B / 16383, atol=1e-6)
    assert a["label"][col(PE)] == 1 and a["label"].sum() == 1  # one reader of three is enough
    # The JLiang Lab pitfall: No finding = 1 together with a finding.
    assert b["label"][col(NF)] == 1 and b["label"][col(NM)] == 1 and b["label"].sum() == 2
    # An empty cell is unknown unless another reader marked the label.
    assert c["label"][col(TB)] == 1 and c["label"][[col(PNA), col(NF)]].isnan().all()
    assert (a["sex"], a["age"], b["sex"], b["age"], c["sex"], c["age"]) == ("F", 45, "M", None, None, None)
    assert a["patient_id"] == a["image_id"] == A
    np.testing.assert_allclose(a["boxes"].numpy(), [[1, 2, 4, 5]])
    assert a["box_labels"].tolist() == [col(PE)] and a["box_rad_ids"] == ["R1"]
    assert b["boxes"].shape == (1, 4) and b["box_labels"].tolist() == [col(NM)] and b["box_rad_ids"] == ["R17"]
    assert ds.meta["n_boxes"].tolist() == [1, 1, 1]


def test_majority_rule(vindr):
    ds = VinDrCXR(vindr, "train", rule="majority")
    a, b, c = (ds.targets[i] for i in range(3))
    assert a[col(PE)] == 0 and b[col(NM)] == 0 and b[col(NF)] == 1
    assert c[col(TB)] == 1 and c[col(PNA)] == 0 and c[col(NF)] == 0  # readers with a value decide


def test_aggregate_readers_rules():
    values = np.array([[1, 0], [0, np.nan], [0, 0], [np.nan, np.nan]], np.float64)
    ids, out, readers = aggregate_readers(["x", "x", "y", "z"], values, "any")
    assert ids == ["x", "y", "z"] and readers.tolist() == [2, 1, 1]
    np.testing.assert_array_equal(out, [[1, np.nan], [0, 0], [np.nan, np.nan]])
    _, out, _ = aggregate_readers(["x", "x", "y", "z"], values, "majority")
    np.testing.assert_array_equal(out, [[0, 0], [0, 0], [np.nan, np.nan]])
    with pytest.raises(ValueError, match="rule='vote'"):
        aggregate_readers(["x"], values[:1], "vote")


def test_test_split_other_disease_spelling(vindr):
    ds = VinDrCXR(vindr, "test")
    assert ds.meta["image_id"].tolist() == [D, E] and ds.meta["n_readers"].tolist() == [1, 1]
    d, e = ds[0], ds[1]
    assert d["label"][col(OD)] == 1 and d["label"][col("Aortic enlargement")] == 1 and d["label"].sum() == 2
    assert e["label"][col(NF)] == 1 and e["label"].sum() == 1
    assert d["box_rad_ids"] == [""] and e["boxes"].shape == (0, 4) and e["box_labels"].shape == (0,)
    assert (d["sex"], d["age"], e["sex"], e["age"]) == ("M", 62, None, None)


def test_all_splits_and_label_subsets(vindr):
    ds = VinDrCXR(vindr, labels=JLIANG_GLOBAL_ONE)
    assert len(ds) == 5 and ds.meta["split"].tolist() == ["train"] * 3 + ["test"] * 2
    assert ds.labels == (PE, "Lung tumor", PNA, TB, OD, NF)
    np.testing.assert_array_equal(ds.targets[0], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ds.targets[3], [0, 0, 0, 0, 1, 0])
    assert list(ds.meta.columns) == ["image_id", "split", "patient_id", "n_readers", "n_boxes", "sex", "age", "view"]
    assert ds[4]["boxes"].shape == (0, 4) and ds[3]["boxes"].shape == (1, 4)
    assert VinDrCXR(vindr, "test", labels=["other disease", " No finding "]).labels == (OD, NF)
    assert canonical_label("Other disease") == OD and canonical_label("lung opacity") == "Lung Opacity"


def test_non_consecutive_rows_and_rad_ID(copy):
    write_train_labels(copy / "annotations" / "image_labels_train.csv", TRAIN_READERS[::-1], rad_column="rad_ID")
    ds = VinDrCXR(copy, "train")
    assert ds.meta["image_id"].tolist() == [C, B, A]
    assert ds.targets[2][col(PE)] == 1 and ds.targets[1][col(NM)] == 1 and ds.targets[0][col(TB)] == 1


def test_image_size_scales_boxes(vindr):
    item = VinDrCXR(vindr, "train", image_size=12)[0]
    assert item["image"].shape == (1, 12, 12)
    np.testing.assert_allclose(item["boxes"].numpy(), [[2, 3, 8, 7.5]])  # x * 12/6, y * 12/8


def test_kaggle_variant(tmp_path):
    root = tmp_path / "vinbigdata"
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max",
            f"{A},Pleural effusion,10,R1,1,2,4,5", f"{A},Cardiomegaly,3,R1,0,3,5,6", f"{A},No finding,14,R2,,,,",
            f"{A},No finding,14,R3,,,,", f"{B},No finding,14,R8,,,,", f"{B},No finding,14,R9,,,,",
            f"{B},No finding,14,R10,,,,"]
    root.mkdir()
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    write_dicom(root / "train" / f"{A}.dicom", PIX_A, "MONOCHROME1", bits_stored=12)
    write_dicom(root / "train" / f"{B}.dicom", PIX_8)
    write_dicom(root / "test" / f"{E}.dicom", PIX_8)
    ds = VinDrCXR(root)
    assert ds.variant == "kaggle" and ds.meta["image_id"].tolist() == [A, B, E]
    a = ds.targets[0]
    assert a[col(PE)] == 1 and a[col("Cardiomegaly")] == 1 and a[col(NF)] == 1 and a[col("Atelectasis")] == 0
    assert np.isnan(a[col(PNA)]) and np.isnan(a[col("Rib fracture")])  # not in the Kaggle classes
    assert ds.targets[1][col(NF)] == 1 and np.nansum(ds.targets[1]) == 1
    assert np.isnan(ds.targets[2]).all() and ds.meta["n_readers"].tolist() == [3, 3, 0]
    item = ds[0]
    assert item["boxes"].shape == (2, 4) and item["box_rad_ids"] == ["R1", "R1"]
    assert item["box_labels"].tolist() == [col(PE), col("Cardiomegaly")] and ds[2]["boxes"].shape == (0, 4)
    shutil.rmtree(root / "test")
    assert len(VinDrCXR(root, "train")) == 2
    with pytest.raises(FileNotFoundError, match="test image folder .*test not found"):
        VinDrCXR(root, "test")


def test_errors_name_the_file_and_row(copy):
    labels_csv = copy / "annotations" / "image_labels_train.csv"
    text = labels_csv.read_text()
    lines = text.splitlines()
    lines[3] = lines[3].replace(",0,", ",2,", 1)
    labels_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"image_labels_train\.csv: line 4 \(image_id {A}\) column .* has '2', "
                                         r"expected 0, 1 or empty"):
        VinDrCXR(copy, "train")
    labels_csv.write_text(text.replace(",Pneumothorax,", ",Pneumothorac,"))
    with pytest.raises(ValueError, match=r"image_labels_train\.csv: missing label column\(s\) \['Pneumothorax'\]"):
        VinDrCXR(copy, "train")
    assert len(VinDrCXR(copy, "train", labels=[PE])) == 3  # only the requested labels are needed
    labels_csv.write_text(text)

    boxes_csv = copy / "annotations" / "annotations_train.csv"
    boxes = boxes_csv.read_text()
    boxes_csv.write_text(boxes.replace("Other lesion", "Other lesions"))
    with pytest.raises(ValueError, match=rf"annotations_train\.csv: line 8 \(image_id {C}\) has class_name "
                                         r"'Other lesions'"):
        VinDrCXR(copy, "train")
    boxes_csv.write_text(boxes.replace(f"{A},R1,{PE},1,2,4,5", f"{A},R1,{PE},1,,4,5"))
    with pytest.raises(ValueError, match=r"annotations_train\.csv: line 2 .* expected four numbers"):
        VinDrCXR(copy, "train")
    boxes_csv.write_text(boxes.replace(f"{A},R1,{PE},1,2,4,5", f"{A},R1,{PE},5,2,4,5"))
    with pytest.raises(ValueError, match=r"annotations_train\.csv: line 2 .* x_min <= x_max"):
        VinDrCXR(copy, "train")
    boxes_csv.write_text(boxes + f"{'f' * 32},R1,No finding,,,,\n")
    with pytest.raises(ValueError, match=r"annotations_train\.csv: line 9 has image_id f+, which is not in "
                                         r"image_labels_train\.csv"):
        VinDrCXR(copy, "train")
    boxes_csv.write_text(boxes)

    (copy / "train" / f"{B}.dicom").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{B}\.dicom not found for image_id {B} "
                                                r"\(image_labels_train\.csv line 5\)"):
        VinDrCXR(copy, "train")


def test_corrupt_dicom_and_bad_arguments(copy):
    path = copy / "test" / f"{D}.dicom"
    path.write_bytes(path.read_bytes()[:-10])
    ds = VinDrCXR(copy, "test")  # the header is intact; the truncated pixel data fails on access
    with pytest.raises(DicomError, match=rf"{D}\.dicom: cannot decode the pixel data"):
        ds[0]
    with pytest.raises(ValueError, match="split='val'"):
        VinDrCXR(copy, "val")
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['PE'\]"):
        VinDrCXR(copy, labels=["PE"])
    with pytest.raises(FileNotFoundError, match="neither annotations/"):
        VinDrCXR(copy / "train")
