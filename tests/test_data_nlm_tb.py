"""Montgomery County and Shenzhen loaders on format-exact fixtures: `_0`/`_1` PNGs (8-bit, RGBA, 16-bit), both
ClinicalReadings styles, Montgomery's per-side masks, the community Shenzhen masks and the JLiang Lab split lists."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from eden_lib.data.nlm_tb import TB_LABELS, Montgomery, Shenzhen, parse_clinical_reading

H, W = 12, 20  # non-square, as the real portrait/landscape images


def ramp(k: int) -> np.ndarray:
    return ((np.arange(H * W).reshape(H, W) * 3 + 17 * k) % 256).astype(np.uint8)


def rect(r0: int, r1: int, c0: int, c1: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[r0:r1, c0:c1] = 255
    return m


LEFT, RIGHT = (2, 10, 11, 18), (2, 10, 2, 9)


@pytest.fixture
def montgomery(tmp_path):
    root = tmp_path / "MontgomerySet"
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask", "ClinicalReadings"):
        (root / sub).mkdir(parents=True)
    names = ["MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0005_1"]
    Image.fromarray(ramp(0)).save(root / "CXR_png" / f"{names[0]}.png")
    rgba = np.stack([ramp(1), ramp(1), ramp(1), np.full((H, W), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(root / "CXR_png" / f"{names[1]}.png")  # pitfall: RGBA grayscale
    Image.fromarray(ramp(2).astype(np.uint16) * 257).save(root / "CXR_png" / f"{names[2]}.png")  # 16-bit
    for name in names:
        Image.fromarray(rect(*LEFT)).save(root / "ManualMask" / "leftMask" / f"{name}.png")
        Image.fromarray(rect(*RIGHT)).save(root / "ManualMask" / "rightMask" / f"{name}.png")
    readings = {names[0]: "Patient's Sex: M\nPatient's Age: 036Y\n\nnormal\n",
                names[1]: "Patient's Sex: F\r\nPatient's Age: 070Y\r\n\r\nright upper lobe cavity\r\n",
                names[2]: "Patient's Sex: O\nPatient's Age: 008M\nbilateral infiltrates\n"}
    for name, text in readings.items():
        (root / "ClinicalReadings" / f"{name}.txt").write_text(text)
    return root


SHENZHEN = {"CHNCXR_0001_0": "male 35yrs\nnormal\n", "CHNCXR_0002_1": "Female 23yr\nPTB in the left upper field\n",
            "CHNCXR_0003_0": "  male,61yrs \n\nnormal\n", "CHNCXR_0004_1": "female35yrs\r\nSTB\r\n"}


@pytest.fixture
def shenzhen(tmp_path):
    root = tmp_path / "ChinaSet_AllFiles"
    (root / "CXR_png").mkdir(parents=True)
    (root / "ClinicalReadings").mkdir()
    masks = tmp_path / "shcxr-lung-mask" / "mask"
    masks.mkdir(parents=True)
    for k, (name, text) in enumerate(SHENZHEN.items()):
        Image.fromarray(ramp(k)).convert("RGB").save(root / "CXR_png" / f"{name}.png")  # pitfall: RGB PNGs
        (root / "ClinicalReadings" / f"{name}.txt").write_text(text)
        if k != 2:  # the community set misses some images
            big = np.repeat(np.repeat(rect(*LEFT), 2, 0), 2, 1) | np.repeat(np.repeat(rect(*RIGHT), 2, 0), 2, 1)
            Image.fromarray(big).save(masks / f"{name}_mask.png")  # masks at another resolution
    (root / "ShenzenCXR_train_data.txt").write_bytes(b"CHNCXR_0002_1.png,1 \r\nCHNCXR_0001_0.png,0 \r\n")
    (root / "ShenzenCXR_valid_data.txt").write_text("CHNCXR_0003_0.png,0\n")
    (root / "ShenzenCXR_test_data.txt").write_text("CHNCXR_0004_1.png,1\n\n")
    return root


@pytest.mark.parametrize("text, expected", [
    ("Patient's Sex: M\nPatient's Age: 036Y\nnormal", ("M", 36)),
    ("Patient's Sex: F\r\nPatient's Age: 070Y\r\n", ("F", 70)),
    ("\ufeffPatients Sex: f\nPatient's Age: 45\n", ("F", 45)),
    ("Patient's Sex: O\nPatient's Age: 018M\n", (None, 1)),
    ("Patient's Sex: M\n", ("M", None)),
    ("male 35yrs\nnormal", ("M", 35)),
    ("Female 23yr\n", ("F", 23)),
    ("  MALE , 61 yrs,\n", ("M", 61)),
    ("female35yrs", ("F", 35)),
    ("\nmale 8months\n", ("M", 0)),
    ("Male\nnormal", ("M", None)),
])
def test_parse_clinical_reading_both_styles(text, expected):
    assert parse_clinical_reading(text, "x.txt") == expected


@pytest.mark.parametrize("text, message", [
    ("Patient's Sex: X\nPatient's Age: 036Y", "Patient's Sex\" is 'X'"),
    ("Patient's Sex: M\nPatient's Age: old", "Patient's Age\" is 'old'"),
    ("35 yrs male\n", "starts with '35 yrs male'"),
    ("male 35 lightyears\n", "age '35lightyears'"),
])
def test_parse_clinical_reading_errors_name_the_file(text, message):
    with pytest.raises(ValueError, match=re.escape("x.txt: ") + ".*" + re.escape(message)):
        parse_clinical_reading(text, "x.txt")


def test_montgomery_items_on_known_values(montgomery):
    ds = Montgomery(montgomery)
    assert len(ds) == 3 and ds.labels == TB_LABELS == ("Tuberculosis",)
    items = [ds[i] for i in range(3)]
    assert set(items[0]) == {"image", "label", "sex", "age", "patient_id", "image_id", "mask"}
    for k, item in enumerate(items):
        assert item["image"].shape == (1, H, W) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"][0].numpy(), ramp(k) / 255.0, atol=1e-6)  # RGBA, 16-bit -> L
    assert [it["label"].tolist() for it in items] == [[0.0], [1.0], [1.0]]
    assert [(it["sex"], it["age"]) for it in items] == [("M", 36), ("F", 70), (None, 0)]
    assert [it["patient_id"] for it in items] == ["MCUCXR_0001", "MCUCXR_0002", "MCUCXR_0005"]
    assert items[1]["image_id"] == "MCUCXR_0002_1"
    assert ds.meta["tb"].tolist() == [0, 1, 1]


def test_montgomery_masks_per_side(montgomery):
    ds = Montgomery(montgomery)
    mask = ds[0]["mask"]
    assert ds.mask_names == ("left lung", "right lung") and mask.shape == (2, H, W) and mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask[0].numpy(), rect(*LEFT) // 255)
    np.testing.assert_array_equal(mask[1].numpy(), rect(*RIGHT) // 255)
    np.testing.assert_array_equal(mask.amax(0).numpy(), (rect(*LEFT) | rect(*RIGHT)) // 255)
    small = Montgomery(montgomery.parent, image_size=6)[0]  # the parent folder works as root too
    assert small["image"].shape == (1, 6, 6) and small["mask"].shape == (2, 6, 6)
    assert set(np.unique(small["mask"].numpy())) <= {0, 1}
    shutil.rmtree(montgomery / "ManualMask")
    assert "mask" not in Montgomery(montgomery)[0]


def test_montgomery_has_no_split(montgomery):
    with pytest.raises(ValueError, match="no official split"):
        Montgomery(montgomery, split="train")


def test_no_clinical_readings_gives_none(montgomery):
    shutil.rmtree(montgomery / "ClinicalReadings")
    item = Montgomery(montgomery)[1]
    assert item["sex"] is None and item["age"] is None


def test_montgomery_errors_name_the_file(montgomery):
    (montgomery / "ManualMask" / "rightMask" / "MCUCXR_0002_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("rightMask/MCUCXR_0002_1.png")):
        Montgomery(montgomery)
    shutil.rmtree(montgomery / "ManualMask")
    (montgomery / "ClinicalReadings" / "MCUCXR_0005_1.txt").write_text("Patient's Sex: M\nPatient's Age: ?\n")
    with pytest.raises(ValueError, match=re.escape("MCUCXR_0005_1.txt: \"Patient's Age\" is '?'")):
        Montgomery(montgomery)
    (montgomery / "ClinicalReadings" / "MCUCXR_0005_1.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("MCUCXR_0005_1.txt")):
        Montgomery(montgomery)
    shutil.rmtree(montgomery / "ClinicalReadings")
    png = montgomery / "CXR_png" / "MCUCXR_0002_1.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated PNG
    ds = Montgomery(montgomery)
    with pytest.raises(OSError, match=re.escape("MCUCXR_0002_1.png: cannot read image")):
        ds[1]
    (montgomery / "CXR_png" / "MCUCXR_0003.png").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape("MCUCXR_0003.png: unexpected file name")):
        Montgomery(montgomery)
    shutil.rmtree(montgomery / "CXR_png")
    with pytest.raises(FileNotFoundError, match="no CXR_png"):
        Montgomery(montgomery)


def test_shenzhen_items_and_free_text_readings(shenzhen):
    ds = Shenzhen(shenzhen)
    assert len(ds) == 4 and "mask" not in ds[0]
    got = [(ds[i]["sex"], ds[i]["age"], ds[i]["label"].item(), ds[i]["patient_id"]) for i in range(4)]
    assert got == [("M", 35, 0.0, "CHNCXR_0001"), ("F", 23, 1.0, "CHNCXR_0002"), ("M", 61, 0.0, "CHNCXR_0003"),
                   ("F", 35, 1.0, "CHNCXR_0004")]
    np.testing.assert_allclose(ds[2]["image"][0].numpy(), ramp(2) / 255.0, atol=1e-6)  # RGB -> one channel


def test_shenzhen_splits(shenzhen, tmp_path):
    assert Shenzhen(shenzhen, split="train").meta["image_id"].tolist() == ["CHNCXR_0002_1", "CHNCXR_0001_0"]
    assert Shenzhen(shenzhen, split="valid").meta["image_id"].tolist() == ["CHNCXR_0003_0"]
    assert Shenzhen(shenzhen, split="test").meta["tb"].tolist() == [1]
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    shutil.move(shenzhen / "ShenzenCXR_valid_data.txt", elsewhere)
    assert len(Shenzhen(shenzhen, split="valid", split_dir=elsewhere)) == 1
    with pytest.raises(FileNotFoundError, match="ShenzenCXR_valid_data.txt"):
        Shenzhen(shenzhen, split="valid")
    with pytest.raises(ValueError, match="'train', 'valid', 'test'"):
        Shenzhen(shenzhen, split="val")


def test_shenzhen_split_errors_name_file_and_line(shenzhen):
    path = shenzhen / "ShenzenCXR_test_data.txt"
    path.write_text("CHNCXR_0004_1.png,1\nCHNCXR_0001_0.png,1\n")
    with pytest.raises(ValueError, match=r"ShenzenCXR_test_data\.txt: line 2 gives label 1 for CHNCXR_0001_0\.png"):
        Shenzhen(shenzhen, split="test")
    path.write_text("CHNCXR_0004_1.png 1\n")
    with pytest.raises(ValueError, match=r"ShenzenCXR_test_data\.txt: line 1 is 'CHNCXR_0004_1\.png 1'"):
        Shenzhen(shenzhen, split="test")
    path.write_text("CHNCXR_0009_1.png,1\n")
    with pytest.raises(FileNotFoundError, match=re.escape("CXR_png/CHNCXR_0009_1.png not found")):
        Shenzhen(shenzhen, split="test")


def test_shenzhen_masks_drop_or_error(shenzhen, tmp_path):
    ds = Shenzhen(shenzhen, mask_root=tmp_path / "shcxr-lung-mask")
    assert ds.meta["image_id"].tolist() == ["CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0004_1"]
    mask = ds[1]["mask"]
    assert ds.mask_names == ("lungs",) and mask.shape == (1, H, W)  # resized (nearest) to the image
    np.testing.assert_array_equal(mask[0].numpy(), (rect(*LEFT) | rect(*RIGHT)) // 255)
    assert len(Shenzhen(shenzhen, split="train", mask_root=tmp_path / "shcxr-lung-mask" / "mask")) == 2
    with pytest.raises(FileNotFoundError, match=re.escape("CHNCXR_0003_0_mask.png not found; 1 missing")):
        Shenzhen(shenzhen, mask_root=tmp_path / "shcxr-lung-mask", missing_mask="error")
    with pytest.raises(ValueError, match="missing_mask"):
        Shenzhen(shenzhen, mask_root=tmp_path / "shcxr-lung-mask", missing_mask="empty")


def test_shenzhen_malformed_reading_names_the_file(shenzhen):
    (shenzhen / "ClinicalReadings" / "CHNCXR_0003_0.txt").write_text("unknown\nnormal\n")
    with pytest.raises(ValueError, match=re.escape("CHNCXR_0003_0.txt: clinical reading starts with 'unknown'")):
        Shenzhen(shenzhen)
