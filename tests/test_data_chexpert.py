"""CheXpert loader on format-exact fixtures: v1.0 / v1.0-small / renamed roots, every label state and policy, splits,
views, demographics and every error message."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from eden_lib.data.chexpert import (
    CHEXPERT14,
    COMPETITION5,
    CheXpert,
    apply_policy,
    read_chexpert_csv,
)

HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT14)
SIZE = (20, 24)  # PIL (width, height): items are (1, 24, 20)

# (path after the dataset folder, Sex, Age, Frontal/Lateral, AP/PA, {observation: cell}, grey value); other cells blank
TRAIN = [
    ("train/patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP",
     {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0", "Support Devices": "1.0"}, 40),
    ("train/patient00001/study1/view2_lateral.jpg", "Female", "68", "Lateral", "",
     {"Cardiomegaly": "1.0", "Edema": "-1.0"}, 80),
    ("train/patient00002/study2/view1_frontal.jpg", "Unknown", "0", "Frontal", "PA", {"No Finding": "1.0"}, 120),
    ("train/patient00003/study1/view1_frontal.jpg", "Male", "90", "Frontal", "PA",
     {"Atelectasis": "-1.0", "Fracture": "0.0", "Lung Opacity": "1.0"}, 160),
]
VALID = [
    ("valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "AP",
     {lab: "1.0" if lab in ("Cardiomegaly", "Edema") else "0.0" for lab in CHEXPERT14}, 200),
]


def csv_line(prefix: str, row: tuple) -> str:
    path, sex, age, view, projection, cells, _ = row
    return ",".join([f"{prefix}/{path}", sex, age, view, projection, *(cells.get(lab, "") for lab in CHEXPERT14)])


def make_chexpert(parent, folder="CheXpert-v1.0-small", prefix=None):
    """A dataset folder under ``parent``; ``prefix`` is the folder name the ``Path`` cells start with."""
    root = parent / folder
    root.mkdir()
    for name, rows in (("train.csv", TRAIN), ("valid.csv", VALID)):
        lines = [HEADER] + [csv_line(prefix or folder, row) for row in rows]
        (root / name).write_text("\n".join(lines) + "\n")
        for row in rows:
            (root / row[0]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", SIZE, row[6]).save(root / row[0], quality=100)
    return root


def expected_states(rows) -> np.ndarray:
    return np.array([[float(cells[lab]) if lab in cells else np.nan for lab in CHEXPERT14]
                     for *_, cells, _ in rows], np.float32)


@pytest.fixture
def root(tmp_path):
    return make_chexpert(tmp_path)


@pytest.mark.parametrize("folder, prefix", [("CheXpert-v1.0-small", None), ("CheXpert-v1.0", None),
                                            ("chexpert_renamed", "CheXpert-v1.0-small")])
def test_items_on_known_values(tmp_path, folder, prefix):
    ds = CheXpert(make_chexpert(tmp_path, folder, prefix))
    assert len(ds) == 5 and ds.labels == CHEXPERT14
    for i, row in enumerate(TRAIN + VALID):
        item = ds[i]
        assert set(item) == {"image", "label", "sex", "age", "patient_id", "path"}
        assert item["image"].shape == (1, 24, 20) and str(item["image"].dtype) == "torch.float32"
        np.testing.assert_allclose(item["image"].numpy(), row[6] / 255.0, atol=1.5 / 255)
        assert item["label"].shape == (14,) and str(item["label"].dtype) == "torch.float32"
        assert item["path"] == f"{prefix or folder}/{row[0]}"
        assert item["patient_id"] == row[0].split("/")[1]
    assert [ds[i]["sex"] for i in range(5)] == ["F", "F", None, "M", "M"]  # Unknown -> None
    assert [ds[i]["age"] for i in range(5)] == [68, 68, 0, 90, 73]  # age 0 is kept as given
    assert ds.meta["study"].tolist() == ["study1", "study1", "study2", "study1", "study1"]
    assert ds.meta["line"].tolist() == [2, 3, 4, 5, 2]


def test_label_states_and_policies(root):
    _, states = read_chexpert_csv(root / "train.csv")
    np.testing.assert_array_equal(states, expected_states(TRAIN))  # 1, 0, -1 and blank -> NaN, nothing else
    assert set(np.unique(states[~np.isnan(states)])) == {-1.0, 0.0, 1.0}
    row = {lab: k for k, lab in enumerate(CHEXPERT14)}
    c, e, p, nf = row["Cardiomegaly"], row["Edema"], row["Pleural Effusion"], row["No Finding"]
    for policy, uncertain in (("ones", 1.0), ("zeros", 0.0), ("ignore", math.nan), ("U-Ones", 1.0)):
        for blank, not_mentioned in (("zeros", 0.0), ("ignore", math.nan)):
            out = apply_policy(states, policy, blank)
            assert out.dtype == np.float32
            np.testing.assert_array_equal(out[0, [c, e, p, nf]], [1.0, uncertain, 0.0, not_mentioned])
            ds = CheXpert(root, split="train", policy=policy, blank=blank)
            np.testing.assert_array_equal(ds[0]["label"].numpy(), out[0])
    # defaults: U-Ones and blank -> 0, so nothing is NaN; valid.csv holds only 0/1 under every policy
    np.testing.assert_array_equal(CheXpert(root).targets, apply_policy(expected_states(TRAIN + VALID), "ones", "zeros"))
    valid = CheXpert(root, split="valid", policy="ignore", blank="ignore")
    np.testing.assert_array_equal(valid[0]["label"].numpy(), expected_states(VALID)[0])


def test_label_subset_is_selected_by_name(root):
    ds = CheXpert(root, split="train", labels=COMPETITION5, policy="ignore", blank="ignore")
    assert ds.labels == COMPETITION5
    np.testing.assert_array_equal(ds[0]["label"].numpy(), [np.nan, 1.0, np.nan, np.nan, 0.0])
    np.testing.assert_array_equal(ds[3]["label"].numpy(), [np.nan] * 5)  # Atelectasis -1.0 under ignore


def test_splits(root):
    assert len(CheXpert(root, split="train")) == 4
    valid = CheXpert(root, split="valid")
    assert len(valid) == 1 and valid[0]["patient_id"] == "patient64541"
    both = CheXpert(root)
    assert both.meta["split"].tolist() == ["train"] * 4 + ["valid"]
    assert not set(both.meta["patient_id"][:4]) & set(both.meta["patient_id"][4:])


def test_views_and_blank_projection_of_laterals(root):
    meta, _ = read_chexpert_csv(root / "train.csv")
    assert meta["projection"].tolist() == ["AP", "", "PA", "PA"]  # Lateral: blank AP/PA read as "", not NaN
    frontal = CheXpert(root, views=("Frontal",))
    assert frontal.meta["path"].str.contains("frontal").all() and len(frontal) == 4
    lateral = CheXpert(root, views=("Lateral",))
    assert lateral.meta["path"].tolist() == [f"CheXpert-v1.0-small/{TRAIN[1][0]}"]
    pa = CheXpert(root, split="train", views=("PA",))
    assert pa.meta["patient_id"].tolist() == ["patient00002", "patient00003"]
    assert len(CheXpert(root, views=("AP", "Lateral"))) == 3
    assert len(CheXpert(root, views="Lateral")) == 1 and len(CheXpert(root, split="valid", views=("PA",))) == 0


def test_image_size(root):
    item = CheXpert(root, split="valid", image_size=16)[0]
    assert item["image"].shape == (1, 16, 16)
    np.testing.assert_allclose(item["image"].numpy(), 200 / 255.0, atol=1.5 / 255)


def rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


def test_missing_files_and_columns(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "train.csv"))):
        CheXpert(tmp_path / "nowhere")
    rewrite(root / "valid.csv", "Frontal/Lateral", "View")
    with pytest.raises(ValueError, match=r"valid\.csv: missing column\(s\) \['Frontal/Lateral'\]"):
        CheXpert(root)
    rewrite(root / "train.csv", ",Fracture,", ",Fractures,")
    with pytest.raises(ValueError, match=r"train\.csv: missing label column\(s\) \['Fracture'\]"):
        CheXpert(root, split="train")
    CheXpert(root, split="train", labels=COMPETITION5)  # only the requested label columns are required


@pytest.mark.parametrize("old, new, message", [
    (",AP,,,1.0,", ",AP,,,2.0,", r"train\.csv: line 2 column 'Cardiomegaly' has '2\.0'"),
    ("Lateral,,,,1.0", "Lateral,,,,yes", r"train\.csv: line 3 column 'Cardiomegaly' has 'yes'"),
    ("Unknown,0", "Other,0", r"train\.csv: line 4 has Sex 'Other'"),
    ("Male,90", "Male,ninety", r"train\.csv: line 5 has Age 'ninety'"),
    ("Lateral,,", "Side,,", r"train\.csv: line 3 has Frontal/Lateral 'Side'"),
    ("train/patient00002/study2/", "train/p2/study2/", r"train\.csv line 4: Path '.*/train/p2/study2/"),
    ("CheXpert-v1.0-small/train/patient00003", "CheXpert-v1.0-small/patient00003",
     r"train\.csv line 5: Path 'CheXpert-v1\.0-small/patient00003"),
])
def test_malformed_cells_name_file_and_line(root, old, new, message):
    rewrite(root / "train.csv", old, new)
    with pytest.raises(ValueError, match=message):
        CheXpert(root)


def test_blank_lines_keep_line_numbers(root):
    path = root / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n\n")  # a blank line 3 and a trailing one
    assert CheXpert(root, split="train").meta["line"].tolist() == [2, 4, 5, 6]
    rewrite(path, "Unknown,0", "Other,0")
    with pytest.raises(ValueError, match=r"train\.csv: line 5 has Sex 'Other'"):
        CheXpert(root)


def test_missing_and_corrupt_images_are_named(root):
    ds = CheXpert(root)
    (root / TRAIN[1][0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"view2_lateral\.jpg not found \(train\.csv line 3\)"):
        ds[1]
    jpeg = root / TRAIN[2][0]
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ValueError, match=r"patient00002/study2/view1_frontal\.jpg \(train\.csv line 4\) cannot"):
        ds[2]
    (root / TRAIN[3][0]).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"patient00003/study1/view1_frontal\.jpg \(train\.csv line 5\) cannot"):
        ds[3]
    assert ds[0]["image"].shape == (1, 24, 20)


def test_bad_arguments(root):
    with pytest.raises(ValueError, match=r"split='test'.*\['train', 'valid'\]"):
        CheXpert(root, split="test")
    with pytest.raises(ValueError, match=r"policy='LSR-Ones', expected one of \['ones', 'zeros', 'ignore'\]"):
        CheXpert(root, policy="LSR-Ones")
    with pytest.raises(ValueError, match=r"blank='ones', expected one of \['zeros', 'ignore'\]"):
        CheXpert(root, blank="ones")
    with pytest.raises(ValueError, match="Effusion"):
        CheXpert(root, labels=("Effusion",))
    with pytest.raises(ValueError, match="frontal"):
        CheXpert(root, views=("frontal",))
