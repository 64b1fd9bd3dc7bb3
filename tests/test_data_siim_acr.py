"""SIIM-ACR loader on format-exact fixtures: nested study/series/SOP tree, train-rle.csv with the " EncodedPixels"
header, -1 rows, several regions per image, relative column-major RLE (round trip on known rectangles), the
absolute mode, the canvas parameter, splits and the error messages."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from eden_lib.data.dicom import DicomError, write_dicom
from eden_lib.data.siim_acr import LABELS, SIIMACRPneumothorax, parse_rle, rle_decode, rle_encode

CANVAS = 16
I1 = "1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090"  # train, two regions
I2 = "1.2.276.0.7230010.3.1.4.8323329.12515.1517875239.501137"  # train, -1
I3 = "1.2.276.0.7230010.3.1.4.8323329.4904.1517875185.355709"  # test folder, one region
I4 = "1.2.276.0.7230010.3.1.4.8323329.10000.1517875220.938530"  # train folder, no RLE row
PIX = (np.arange(CANVAS * CANVAS).reshape(CANVAS, CANVAS) % 256).astype(np.uint8)


def rectangle(rows: slice, cols: slice, shape=(CANVAS, CANVAS)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[rows, cols] = 1
    return mask


REGION_A = rectangle(slice(2, 6), slice(3, 8))
REGION_B = rectangle(slice(10, 13), slice(9, 15))
REGION_C = rectangle(slice(0, 16), slice(12, 14))


def write_siim(root, mode="relative", name="train-rle.csv", header="ImageId, EncodedPixels"):
    rows = [header, f"{I1},{rle_encode(REGION_A, mode)}", f"{I2}, -1", f"{I3},{rle_encode(REGION_C, mode)}",
            f"{I1},{rle_encode(REGION_B, mode)}"]
    (root / name).write_text("\n".join(rows) + "\n")
    for folder, uid, sex, age in (("dicom-images-train", I1, "M", "38"), ("dicom-images-train", I2, "F", "51"),
                                  ("dicom-images-test", I3, "F", ""), ("dicom-images-train", I4, "M", "20")):
        study, series = f"{uid}.1", f"{uid}.2"
        write_dicom(root / folder / study / series / f"{uid}.dcm", PIX, SOPInstanceUID=uid, PatientSex=sex,
                    PatientAge=age, ViewPosition="PA", PatientID=f"patient-{uid[-6:]}",
                    SeriesDescription="view: PA")


@pytest.fixture(scope="module")
def siim(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    write_siim(root)
    return root


@pytest.fixture
def copy(siim, tmp_path):
    return shutil.copytree(siim, tmp_path / "siim")


def test_rle_is_relative_and_column_major_on_a_known_rectangle():
    mask = rectangle(slice(1, 3), slice(1, 3), shape=(5, 4))  # rows 1-2, columns 1-2 of a 5 x 4 canvas
    # Column-major flat index x * H + y: column 1 -> 6, 7; column 2 -> 11, 12.
    assert rle_encode(mask) == "6 2 3 2"
    assert rle_encode(mask, "absolute") == "7 2 12 2"
    for mode in ("relative", "absolute"):
        np.testing.assert_array_equal(rle_decode(rle_encode(mask, mode), (5, 4), mode), mask)
    assert rle_encode(np.zeros((5, 4))) == "-1" and not rle_decode("-1", (5, 4)).any()
    for region in (REGION_A, REGION_B, REGION_C, REGION_A | REGION_B):
        np.testing.assert_array_equal(rle_decode(rle_encode(region), (CANVAS, CANVAS)), region)
    starts, lengths = parse_rle("6 2 3 2", 20)
    assert starts.tolist() == [6, 11] and lengths.tolist() == [2, 2]


@pytest.mark.parametrize("rle, mode, match", [
    ("6 2 3", "relative", "not an even number"),
    ("6 2 x 2", "relative", "not an even number"),
    ("6 -2", "relative", "not an even number"),
    ("6 0", "relative", "run of length 0"),
    ("6 2 3 20", "relative", "past the 20-pixel canvas"),
    ("12 2 7 2", "absolute", "not absolute RLE"),
    ("0 2", "absolute", "not absolute RLE"),
    ("7 2", "sideways", "mode='sideways'"),
])
def test_parse_rle_errors(rle, mode, match):
    with pytest.raises(ValueError, match=match):
        parse_rle(rle, 20, mode)


def test_items_masks_and_header_fields(siim):
    ds = SIIMACRPneumothorax(siim, canvas=CANVAS)
    assert ds.labels == LABELS and len(ds) == 3
    assert ds.meta["image_id"].tolist() == [I1, I2, I3]  # I4 has no RLE row
    assert ds.meta["split"].tolist() == ["train", "train", "test"] and ds.meta["n_regions"].tolist() == [2, 0, 1]
    assert list(ds.meta.columns) == ["image_id", "split", "patient_id", "n_regions", "sex", "age", "view"]
    one, two, three = ds[0], ds[1], ds[2]
    assert one["image"].shape == (1, CANVAS, CANVAS) and str(one["image"].dtype) == "torch.float32"
    np.testing.assert_allclose(one["image"][0].numpy(), PIX / 255.0, atol=1e-7)
    assert one["label"].tolist() == [1.0] and two["label"].tolist() == [0.0] and three["label"].tolist() == [1.0]
    assert one["mask"].dtype.is_floating_point is False and one["mask"].shape == (CANVAS, CANVAS)
    np.testing.assert_array_equal(one["mask"].numpy(), REGION_A | REGION_B)  # union of the two rows
    assert not two["mask"].any()
    np.testing.assert_array_equal(three["mask"].numpy(), REGION_C)
    assert (one["sex"], one["age"], one["view"], one["image_id"]) == ("M", 38, "PA", I1)
    assert one["patient_id"] == f"patient-{I1[-6:]}" and (three["sex"], three["age"]) == ("F", None)


def test_splits(siim):
    assert SIIMACRPneumothorax(siim, "train", canvas=CANVAS).meta["image_id"].tolist() == [I1, I2]
    assert SIIMACRPneumothorax(siim, "test", canvas=CANVAS).meta["image_id"].tolist() == [I3]
    with pytest.raises(ValueError, match="split='valid'"):
        SIIMACRPneumothorax(siim, "valid")
    with pytest.raises(ValueError, match="mode='rle'"):
        SIIMACRPneumothorax(siim, mode="rle")


def test_image_size_resizes_mask_nearest(siim):
    item = SIIMACRPneumothorax(siim, "train", canvas=CANVAS, image_size=8)[0]
    assert item["image"].shape == (1, 8, 8) and item["mask"].shape == (8, 8)
    np.testing.assert_array_equal(item["mask"].numpy(), (REGION_A | REGION_B)[1::2, 1::2])


def test_absolute_mode_stage_2_file(tmp_path):
    write_siim(tmp_path, "absolute", "stage_2_train.csv", "ImageId,EncodedPixels")
    ds = SIIMACRPneumothorax(tmp_path, rle_file="stage_2_train.csv", mode="absolute", canvas=CANVAS)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), REGION_A | REGION_B)
    np.testing.assert_array_equal(ds[2]["mask"].numpy(), REGION_C)
    # The wrong mode fails with the line: absolute starts read as offsets add up past the canvas.
    with pytest.raises(ValueError, match=rf"stage_2_train\.csv: line 2 \(ImageId {I1}\): .*past the 256-pixel"):
        SIIMACRPneumothorax(tmp_path, rle_file="stage_2_train.csv", canvas=CANVAS)


def test_relative_read_as_absolute_fails(siim):
    with pytest.raises(ValueError, match=rf"train-rle\.csv: line 2 \(ImageId {I1}\): .*not absolute RLE"):
        SIIMACRPneumothorax(siim, mode="absolute", canvas=CANVAS)


def test_canvas_must_match_the_image(siim):
    ds = SIIMACRPneumothorax(siim, canvas=32)  # the RLE fits in 32 x 32, but the images are 16 x 16
    with pytest.raises(ValueError, match=rf"{I1}\.dcm: image is 16x16 but the RLE canvas is 32x32"):
        ds[0]
    with pytest.raises(ValueError, match=r"past the 64-pixel canvas"):
        SIIMACRPneumothorax(siim, canvas=8)  # default 1024 would be wrong for these fixtures too


@pytest.mark.parametrize("old, new, match", [
    (f"{I2}, -1", f"{I2}, -1\n{I2},3 4", rf"train-rle\.csv: line 4 \(ImageId {I2}\): both -1 \(line 3\)"),
    (f"{I2}, -1", f"{I2}, 3 4 5", r"train-rle\.csv: line 3 .*not an even number"),
    (f"{I2}, -1", ", -1", r"train-rle\.csv: line 3 has an empty ImageId"),
    ("ImageId, EncodedPixels", "ImageId, Pixels", r"train-rle\.csv: missing column\(s\) \['EncodedPixels'\]"),
    (f"{I2}, -1", f"{I2}9, -1", rf"no {I2}9\.dcm under .* for ImageId {I2}9 \(train-rle\.csv line 3\)"),
])
def test_rle_file_errors(copy, old, new, match):
    path = copy / "train-rle.csv"
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        SIIMACRPneumothorax(copy, canvas=CANVAS)


def test_corrupt_and_missing_files(copy):
    path = next((copy / "dicom-images-test").rglob(f"{I3}.dcm"))
    path.write_bytes(path.read_bytes()[:-30])
    ds = SIIMACRPneumothorax(copy, "test", canvas=CANVAS)
    with pytest.raises(DicomError, match=rf"{I3}\.dcm: cannot decode the pixel data"):
        ds[0]
    path.write_text("garbage")
    with pytest.raises(DicomError, match=rf"{I3}\.dcm: not a DICOM file"):
        SIIMACRPneumothorax(copy, "test", canvas=CANVAS)
    shutil.rmtree(copy / "dicom-images-train")
    shutil.rmtree(copy / "dicom-images-test")
    with pytest.raises(FileNotFoundError, match="has none of"):
        SIIMACRPneumothorax(copy, canvas=CANVAS)
    (copy / "train-rle.csv").unlink()
    with pytest.raises(FileNotFoundError, match="train-rle.csv"):
        SIIMACRPneumothorax(copy, canvas=CANVAS)
