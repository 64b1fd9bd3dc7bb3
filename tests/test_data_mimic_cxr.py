"""MIMIC-CXR-JPG loader on format-exact fixtures: gz CSVs, the p1X/p1XXXXXXX/s5XXXXXXX JPEG tree, the per-study label
join (alphabetical columns, a study without labels), splits, views, MIMIC-IV demographics (one subject missing on
purpose) and every error message."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
from PIL import Image

from eden_lib.data.chexpert import CHEXPERT14
from eden_lib.data.mimic_cxr import MIMIC14, MIMICCXR, read_patients

SIZE = (18, 22)  # PIL (width, height): items are (1, 22, 18)
METADATA_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                   "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                   "PatientOrientationCodeSequence_CodeMeaning")


def dicom(k: int) -> str:
    return "-".join(f"{(k * 0x1F3A5 + g * 0x9E3779B1) & 0xFFFFFFFF:08x}" for g in range(5))


# (dicom_id, subject_id, study_id, split, ViewPosition, grey value), in split-file order
IMAGES = [
    (dicom(1), 10000032, 50414267, "train", "PA", 30),
    (dicom(2), 10000032, 50414267, "train", "LATERAL", 60),
    (dicom(3), 10000032, 53189527, "train", "AP", 90),
    (dicom(4), 11000011, 54000001, "validate", "PA", 120),
    (dicom(5), 19999987, 55000002, "test", "", 150),  # blank ViewPosition; study without a label row
    (dicom(6), 12000001, 56000003, "train", "LL", 180),  # subject missing from patients.csv.gz
]
# per study {label: cell}, other cells blank; written in a different order than the images
STUDIES = {
    (11000011, 54000001): {"No Finding": "1.0"},
    (10000032, 50414267): {"Atelectasis": "-1.0", "Cardiomegaly": "1.0", "Edema": "0.0", "Support Devices": "1.0"},
    (12000001, 56000003): {"Pneumothorax": "1.0", "Pleural Effusion": "-1.0", "Fracture": "0.0"},
    (10000032, 53189527): {"Lung Opacity": "1.0", "Pneumonia": "-1.0"},
}
PATIENTS = (  # MIMIC-IV hosp/patients: subject 12000001 is left out on purpose
    "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n"
    "19999987,F,30,2150,2008 - 2010,\n"
    "10000032,F,52,2180,2014 - 2016,2180-09-09\n"
    "11000011,M,91,2130,2017 - 2019,\n"
)


def write_gz(path, text: str) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(text)


def rewrite_gz(path, old: str, new: str) -> None:
    with gzip.open(path, "rt", newline="") as fh:
        text = fh.read()
    assert old in text
    write_gz(path, text.replace(old, new, 1))


def make_mimic(root):
    root.mkdir(exist_ok=True)
    write_gz(root / "mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\n" + "".join(
        f"{d},{st},{su},{sp}\n" for d, su, st, sp, _, _ in IMAGES))
    write_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER + "\n" + "".join(
        f"{d},{su},{st},CHEST (PA AND LAT),{v},{SIZE[1]},{SIZE[0]},21800506,213014.531,"
        f"Chest 2 Views,{'lateral' if v == 'LATERAL' else 'postero-anterior'},Erect\n"
        for d, su, st, _, v, _ in reversed(IMAGES)))
    write_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "subject_id,study_id," + ",".join(MIMIC14) + "\n" + "".join(
        f"{su},{st}," + ",".join(cells.get(lab, "") for lab in MIMIC14) + "\n" for (su, st), cells in STUDIES.items()))
    write_gz(root / "patients.csv.gz", PATIENTS)
    for d, su, st, _, _, value in IMAGES:
        folder = root / "files" / f"p{str(su)[:2]}" / f"p{su}" / f"s{st}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", SIZE, value).save(folder / f"{d}.jpg", quality=100)
    return root


def expected(labels=MIMIC14, uncertain=1.0, blank=0.0) -> np.ndarray:
    values = {"1.0": 1.0, "0.0": 0.0, "-1.0": uncertain}
    rows = []
    for _, su, st, *_ in IMAGES:
        cells = STUDIES.get((su, st))
        rows.append([np.nan] * len(labels) if cells is None else
                    [values[cells[lab]] if lab in cells else blank for lab in labels])
    return np.array(rows, np.float32)


@pytest.fixture
def root(tmp_path):
    return make_mimic(tmp_path / "mimic-cxr-jpg")


def test_items_on_known_values(root):
    ds = MIMICCXR(root, patients=root / "patients.csv.gz")
    assert len(ds) == 6 and ds.labels == MIMIC14 == tuple(sorted(CHEXPERT14))
    assert ds.meta["file"][0] == f"files/p10/p10000032/s50414267/{IMAGES[0][0]}.jpg"
    assert ds.meta["file"][5] == f"files/p12/p12000001/s56000003/{IMAGES[5][0]}.jpg"
    for i, (d, su, *_, value) in enumerate(IMAGES):
        item = ds[i]
        assert set(item) == {"image", "label", "sex", "age", "patient_id", "dicom_id"}
        assert item["image"].shape == (1, 22, 18) and str(item["image"].dtype) == "torch.float32"
        np.testing.assert_allclose(item["image"].numpy(), value / 255.0, atol=1.5 / 255)
        assert (item["dicom_id"], item["patient_id"]) == (d, str(su))
        assert str(item["label"].dtype) == "torch.float32"
        np.testing.assert_array_equal(item["label"].numpy(), expected()[i])
    assert ds.meta["split"].tolist() == [im[3] for im in IMAGES]
    assert ds.meta["view"].tolist() == [im[4] for im in IMAGES]  # blank ViewPosition -> ""
    assert ds.meta["study_id"].tolist() == [im[2] for im in IMAGES]


def test_sex_and_age_from_mimic_iv_with_a_missing_subject(root):
    ds = MIMICCXR(root, patients=root / "patients.csv.gz")
    assert [ds[i]["sex"] for i in range(6)] == ["F", "F", "F", "M", "F", None]  # 12000001 is not in MIMIC-IV
    assert [ds[i]["age"] for i in range(6)] == [52, 52, 52, 91, 30, None]
    assert ds.meta["sex"].tolist() == ["F", "F", "F", "M", "F", None]
    plain = MIMICCXR(root)
    assert all(plain[i]["sex"] is None and plain[i]["age"] is None for i in range(6))
    table = read_patients(root / "patients.csv.gz")
    assert table["subject_id"].tolist() == [19999987, 10000032, 11000011] and table["sex"].tolist() == ["F", "F", "M"]


def test_label_states_policies_and_study_without_labels(root):
    for policy, uncertain in (("ones", 1.0), ("zeros", 0.0), ("ignore", np.nan), ("U-Zeros", 0.0)):
        for blank, not_mentioned in (("zeros", 0.0), ("ignore", np.nan)):
            ds = MIMICCXR(root, policy=policy, blank=blank)
            np.testing.assert_array_equal(ds.targets, expected(MIMIC14, uncertain, not_mentioned))
            assert np.isnan(ds.targets[4]).all()  # no label row for study 55000002: unknown under every policy
    ds = MIMICCXR(root)
    np.testing.assert_array_equal(ds.targets[0], ds.targets[1])  # labels are per study: both images share them


def test_labels_are_selected_by_name_not_position(root):
    ds = MIMICCXR(root, labels=CHEXPERT14, policy="ignore", blank="ignore")
    assert ds.labels == CHEXPERT14
    np.testing.assert_array_equal(ds.targets, expected(CHEXPERT14, np.nan, np.nan))
    item = ds[0]["label"].numpy()
    assert item[CHEXPERT14.index("Cardiomegaly")] == 1.0 and item[CHEXPERT14.index("Edema")] == 0.0
    two = MIMICCXR(root, labels=("Pneumothorax", "Fracture"))
    np.testing.assert_array_equal(two.targets[5], [1.0, 0.0])


def test_splits(root):
    train = MIMICCXR(root, split="train")
    assert train.meta["dicom_id"].tolist() == [IMAGES[k][0] for k in (0, 1, 2, 5)]
    assert MIMICCXR(root, split="validate").meta["patient_id"].tolist() == ["11000011"]
    test = MIMICCXR(root, split="test")
    assert len(test) == 1 and np.isnan(test[0]["label"].numpy()).all()


def test_views(root):
    assert MIMICCXR(root, views=("PA", "AP")).meta["dicom_id"].tolist() == [IMAGES[k][0] for k in (0, 2, 3)]
    lateral = MIMICCXR(root, split="train", views=("LATERAL", "LL"))
    assert lateral.meta["view"].tolist() == ["LATERAL", "LL"]
    assert MIMICCXR(root, views=("",)).meta["split"].tolist() == ["test"]
    assert len(MIMICCXR(root, views="PA")) == 2 and len(MIMICCXR(root, split="test", views=("PA",))) == 0


def test_image_size_and_uncompressed_copies(root):
    for name in ("split", "metadata", "chexpert"):
        gz = root / f"mimic-cxr-2.0.0-{name}.csv.gz"
        (root / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    item = MIMICCXR(root, split="validate", image_size=16)[0]
    assert item["image"].shape == (1, 16, 16)
    np.testing.assert_allclose(item["image"].numpy(), 120 / 255.0, atol=1.5 / 255)


def test_missing_files_and_columns(root):
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv\.gz not found"):
        MIMICCXR(root)
    rewrite_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPosition", "View")
    with pytest.raises(ValueError, match=r"metadata\.csv\.gz: missing column\(s\) \['ViewPosition'\]"):
        MIMICCXR(root)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "nope.csv.gz"))):
        read_patients(root / "nope.csv.gz")


@pytest.mark.parametrize("name, old, new, message", [
    ("chexpert", "54000001,,,,,,,,,1.0", "54000001,,,,,,,,,yes",
     r"chexpert\.csv\.gz: line 2 column 'No Finding' has 'yes'"),
    ("chexpert", "10000032,53189527", "10000032,5318952x",
     r"chexpert\.csv\.gz: line 5 column 'study_id' has '5318952x'"),
    ("chexpert", "12000001,56000003", "10000032,50414267",
     r"chexpert\.csv\.gz: line 4 repeats \{'subject_id': 10000032, 'study_id': 50414267\}"),
    ("split", ",test\n", ",testing\n", r"split\.csv\.gz: line 6 has split 'testing'"),
    ("split", f"{dicom(3)},", f"{dicom(1)},", rf"split\.csv\.gz: line 4 repeats \{{'dicom_id': '{dicom(1)}'\}}"),
    ("metadata", f"{dicom(4)},", "0000-dropped,",
     rf"metadata\.csv\.gz: no row for dicom_id {dicom(4)} \(mimic-cxr-2\.0\.0-split\.csv\.gz line 5\)"),
    ("metadata", f"{dicom(3)},10000032", f"{dicom(3)},10000033",
     (rf"metadata\.csv\.gz: dicom_id {dicom(3)} has subject/study 10000033/53189527, but "
      r"mimic-cxr-2\.0\.0-split\.csv\.gz line 4 says 10000032/53189527")),
])
def test_malformed_rows_name_file_and_line(root, name, old, new, message):
    rewrite_gz(root / f"mimic-cxr-2.0.0-{name}.csv.gz", old, new)
    with pytest.raises(ValueError, match=message):
        MIMICCXR(root)


def test_malformed_patients_rows(root):
    rewrite_gz(root / "patients.csv.gz", "11000011,M,", "11000011,U,")
    with pytest.raises(ValueError, match=r"patients\.csv\.gz: line 4 has gender 'U', expected 'M' or 'F'"):
        MIMICCXR(root, patients=root / "patients.csv.gz")
    rewrite_gz(root / "patients.csv.gz", "10000032,F,52", "10000032,F,old")
    with pytest.raises(ValueError, match=r"patients\.csv\.gz: line 3 column 'anchor_age' has 'old'"):
        read_patients(root / "patients.csv.gz")


def test_missing_and_corrupt_images_are_named(root):
    ds = MIMICCXR(root)
    path = root / ds.meta["file"][1]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(dicom(2))}\.jpg not found \(dicom_id {dicom(2)}\)"):
        ds[1]
    jpeg = root / ds.meta["file"][3]
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ValueError, match=rf"p11000011/s54000001/{dicom(4)}\.jpg \(dicom_id {dicom(4)}\) cannot"):
        ds[3]
    assert ds[0]["image"].shape == (1, 22, 18)


def test_bad_arguments(root):
    with pytest.raises(ValueError, match=r"split='valid'.*\['train', 'validate', 'test'\]"):
        MIMICCXR(root, split="valid")
    with pytest.raises(ValueError, match="Effusion"):
        MIMICCXR(root, labels=("Effusion",))
    with pytest.raises(ValueError, match=r"policy='LSR-Ones'"):
        MIMICCXR(root, policy="LSR-Ones")
