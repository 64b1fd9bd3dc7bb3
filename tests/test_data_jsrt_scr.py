"""JSRT + SCR loader on format-exact fixtures: raw big-endian 12-bit .IMG files, half-resolution SCR GIFs in folders
with spaces, and the two tab-separated clinical tables."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from eden_lib.data.jsrt_scr import JSRT, JSRT_LABELS, SCR_STRUCTURES, read_clinical_table, read_jsrt_image

SIZE = 16  # fixture side; the real files are 2048
NAMES = {"fold1": ("JPCLN001", "JPCNN001"), "fold2": ("JPCLN002", "JPCNN002")}
# one rectangle per structure on the half-resolution (8 x 8) SCR grid: (row0, row1, col0, col1)
RECTS = {"left lung": (1, 6, 4, 7), "right lung": (1, 6, 1, 3), "heart": (4, 7, 3, 6),
         "left clavicle": (0, 1, 4, 8), "right clavicle": (0, 1, 0, 4)}


def raw_values(k: int) -> np.ndarray:
    """Stored values of fixture image ``k``: a ramp over 0..4095, one pixel above 12 bits, one value whose two bytes
    differ (0x0102), so a little-endian read or a missing clip would show."""
    arr = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 16 + k) % 4096
    arr[0, 0], arr[0, 1] = 5000, 0x0102
    return arr.astype(np.uint16)


def rect_mask(structure: str, side: int = SIZE // 2) -> np.ndarray:
    r0, r1, c0, c1 = RECTS[structure]
    m = np.zeros((side, side), np.uint8)
    m[r0:r1, c0:c1] = 255
    return m


@pytest.fixture
def jsrt(tmp_path):
    root = tmp_path / "JSRT"
    (root / "All247images").mkdir(parents=True)
    for k, name in enumerate(sorted(n for names in NAMES.values() for n in names)):
        raw_values(k).astype(">u2").tofile(root / "All247images" / f"{name}.IMG")
        fold = next(f for f, names in NAMES.items() if name in names)
        for structure in SCR_STRUCTURES:
            folder = root / "scratch" / fold / "masks" / structure
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rect_mask(structure)).save(folder / f"{name}.gif")
    (root / "CLNDAT_EN.txt").write_text(
        "JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\tlung cancer\r\n"
        "JPCLN002.IMG\t5\t30\t?\tFemale\t1000\t800\tbenign\tr.lower lobe\thamartoma\r\n")
    (root / "CNNDAT_EN.TXT").write_text("JPCNN001.IMG\t40\tfemale\tnon-nodule\n")
    return root


def test_items_on_known_values(jsrt):
    ds = JSRT(jsrt, native_size=SIZE)
    assert len(ds) == 4 and ds.labels == JSRT_LABELS == ("Nodule",)
    assert ds.meta["image_id"].tolist() == ["JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002"]
    item = ds[0]
    assert set(item) == {"image", "label", "sex", "age", "patient_id", "image_id", "mask"}
    assert item["image"].shape == (1, SIZE, SIZE) and item["image"].dtype == torch.float32
    expected = (4095 - np.minimum(raw_values(0), 4095).astype(np.float32)) / 4095
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
    # pitfalls: the 5000 pixel is clipped to 12 bits (-> black after inversion), 0x0102 is read big-endian
    assert item["image"][0, 0, 0] == 0.0
    assert item["image"][0, 0, 1].item() == pytest.approx((4095 - 0x0102) / 4095)
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert (item["sex"], item["age"], item["patient_id"], item["image_id"]) == ("M", 53, "JPCLN001", "JPCLN001")
    assert item["label"].tolist() == [1.0]
    assert ds[2]["label"].tolist() == [0.0]


def test_sex_and_age_from_both_tables(jsrt):
    ds = JSRT(jsrt, native_size=SIZE)
    got = [(ds[i]["sex"], ds[i]["age"]) for i in range(len(ds))]
    # JPCLN002 has age '?' and sex 'Female' (any case); JPCNN002 is not in CNNDAT_EN.TXT
    assert got == [("M", 53), ("F", None), ("F", 40), (None, None)]
    assert ds.meta["sex"].fillna("?").tolist() == ["M", "F", "F", "?"]  # meta keeps pandas' missing marker


def test_no_tables_and_no_scr_gives_none_and_no_mask(jsrt):
    shutil.rmtree(jsrt / "scratch")
    (jsrt / "CLNDAT_EN.txt").unlink()
    (jsrt / "CNNDAT_EN.TXT").unlink()
    ds = JSRT(jsrt, native_size=SIZE)
    item = ds[1]
    assert "mask" not in item and item["sex"] is None and item["age"] is None
    assert ds.meta["fold"].isna().all()
    with pytest.raises(FileNotFoundError, match="needs the SCR folds"):
        JSRT(jsrt, split="fold1", native_size=SIZE)


def test_header_line_in_clinical_table_is_skipped(jsrt):
    path = jsrt / "CNNDAT_EN.TXT"
    path.write_text("filename\tage\tsex\tnodule\n" + path.read_text())
    assert read_clinical_table(path, 1, 2) == {"JPCNN001": ("F", 40)}


def test_splits_are_scr_folds(jsrt):
    for fold, names in NAMES.items():
        ds = JSRT(jsrt, split=fold, native_size=SIZE)
        assert tuple(ds.meta["image_id"]) == names and set(ds.meta["fold"]) == {fold}
    assert JSRT(jsrt, native_size=SIZE).meta["fold"].tolist() == ["fold1", "fold2", "fold1", "fold2"]
    with pytest.raises(ValueError, match="fold1"):
        JSRT(jsrt, split="train", native_size=SIZE)


def test_masks_on_known_rectangles(jsrt):
    ds = JSRT(jsrt, native_size=SIZE)
    mask = ds[0]["mask"]
    assert ds.mask_names == SCR_STRUCTURES and mask.shape == (5, SIZE, SIZE) and mask.dtype == torch.uint8
    for c, structure in enumerate(SCR_STRUCTURES):
        r0, r1, c0, c1 = RECTS[structure]
        expected = np.zeros((SIZE, SIZE), np.uint8)
        expected[2 * r0:2 * r1, 2 * c0:2 * c1] = 1  # half resolution -> nearest upsampling by 2
        np.testing.assert_array_equal(mask[c].numpy(), expected)
    # on the SCR grid (image_size = native / 2) the mask is the GIF itself and the image is resized
    small = JSRT(jsrt, native_size=SIZE, image_size=SIZE // 2, structures=("heart", "left lung"))
    item = small[3]
    assert item["image"].shape == (1, SIZE // 2, SIZE // 2) and small.mask_names == ("heart", "left lung")
    np.testing.assert_array_equal(item["mask"][0].numpy(), rect_mask("heart") // 255)
    np.testing.assert_array_equal(item["mask"][1].numpy(), rect_mask("left lung") // 255)
    assert "mask" not in JSRT(jsrt, native_size=SIZE, structures=())[0]
    with pytest.raises(ValueError, match="unknown structure"):
        JSRT(jsrt, native_size=SIZE, structures=("lungs",))


def test_scr_root_elsewhere(jsrt, tmp_path):
    shutil.move(jsrt / "scratch", tmp_path / "SCR")
    ds = JSRT(jsrt, split="fold2", native_size=SIZE, scr_root=tmp_path / "SCR")
    assert tuple(ds.meta["image_id"]) == NAMES["fold2"] and ds[0]["mask"].shape == (5, SIZE, SIZE)


def test_truncated_or_wrong_size_image_names_the_file(jsrt):
    path = jsrt / "All247images" / "JPCNN002.IMG"
    path.write_bytes(path.read_bytes()[:-10])
    ds = JSRT(jsrt, native_size=SIZE)
    with pytest.raises(ValueError, match=r"JPCNN002\.IMG.*expected 512"):
        ds[3]
    with pytest.raises(ValueError, match=r"JPCLN001\.IMG: 512 bytes, expected 8388608 \(2048x2048"):
        read_jsrt_image(jsrt / "All247images" / "JPCLN001.IMG")  # the default size is the real 2048


def test_missing_image_names_the_file(jsrt):
    (jsrt / "All247images" / "JPCLN002.IMG").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPCLN002\.IMG"):
        JSRT(jsrt, native_size=SIZE)


def test_unexpected_image_name(jsrt):
    (jsrt / "All247images" / "scan7.IMG").write_bytes(b"")
    with pytest.raises(ValueError, match=r"scan7\.IMG"):
        JSRT(jsrt, native_size=SIZE)


def test_missing_and_corrupt_masks_name_the_file(jsrt):
    (jsrt / "scratch" / "fold2" / "masks" / "heart" / "JPCNN002.gif").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("heart/JPCNN002.gif")):
        JSRT(jsrt, native_size=SIZE)
    ds = JSRT(jsrt, native_size=SIZE, structures=("left lung",))
    gif = jsrt / "scratch" / "fold1" / "masks" / "left lung" / "JPCNN001.gif"
    gif.write_bytes(gif.read_bytes()[:20])
    with pytest.raises(OSError, match=re.escape("left lung/JPCNN001.gif")):
        ds[2]


def test_malformed_clinical_cells_name_file_and_line(jsrt):
    path = jsrt / "CLNDAT_EN.txt"
    path.write_text(path.read_text().replace("Female", "X"))
    with pytest.raises(ValueError, match=r"CLNDAT_EN\.txt: line 2 \(JPCLN002\): sex cell 'X'"):
        JSRT(jsrt, native_size=SIZE)
    path.write_text("JPCLN001.IMG\t3\t15\tfifty\tmale\n")
    with pytest.raises(ValueError, match=r"CLNDAT_EN\.txt: line 1 \(JPCLN001\): age cell 'fifty'"):
        JSRT(jsrt, native_size=SIZE)
    path.write_text("JPCLN001.IMG\t3\t15\n")
    with pytest.raises(ValueError, match=r"CLNDAT_EN\.txt: line 1 \(JPCLN001\) has 3 field"):
        JSRT(jsrt, native_size=SIZE)
