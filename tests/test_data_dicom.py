"""Shared DICOM reading: pixel mapping (MONOCHROME1/2, BitsStored, rescale, signed), transfer syntaxes, header
fields, fixture writer, file index, CSV reader, and the error messages for bad files."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from eden_lib.data.dicom import (
    DicomError,
    header_frame,
    index_files,
    modality_values,
    optional_int,
    parse_age,
    parse_sex,
    read_csv_lines,
    read_info,
    read_pixels,
    scale_boxes,
    to_image_tensor,
    write_dicom,
)

RAMP12 = (np.arange(6 * 5).reshape(6, 5) * 141).astype(np.uint16)  # 0 .. 4089, fits 12 bits
RAMP8 = (np.arange(6 * 5).reshape(6, 5) * 8 + 7).astype(np.uint8)


@pytest.mark.parametrize("value, expected", [("M", "M"), ("F", "F"), (" f ", "F"), ("Female", "F"), ("MALE", "M"),
                                             ("O", None), ("", None), (None, None)])
def test_parse_sex(value, expected):
    assert parse_sex(value) == expected


@pytest.mark.parametrize("value, expected", [("045Y", 45), ("58", 58), (" 7 ", 7), ("018M", 1), ("011M", 0),
                                             ("104W", 2), ("400D", 1), ("120", 120), ("155", None), ("148Y", None),
                                             ("", None), (None, None), ("Y", None), ("45.5", None)])
def test_parse_age(value, expected):
    assert parse_age(value) == expected


def test_monochrome1_12_bit_is_inverted_over_the_stored_range(tmp_path):
    path = write_dicom(tmp_path / "a.dicom", RAMP12, "MONOCHROME1", bits_stored=12)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian and not ds.is_implicit_VR
    assert ds.BitsAllocated == 16 and ds.BitsStored == 12
    out = read_pixels(path)
    assert out.dtype == np.float32 and out.shape == (6, 5)
    np.testing.assert_allclose(out, (4095 - RAMP12.astype(np.float64)) / 4095, rtol=0, atol=1e-7)
    assert out[0, 0] == 1.0  # stored 0 is white in MONOCHROME1


def test_monochrome2_8_and_14_bit(tmp_path):
    np.testing.assert_allclose(read_pixels(write_dicom(tmp_path / "b.dcm", RAMP8)), RAMP8 / 255.0, atol=1e-7)
    ramp14 = (RAMP12.astype(np.uint16) * 4).astype(np.uint16)
    out = read_pixels(write_dicom(tmp_path / "c.dcm", ramp14, bits_stored=14))
    np.testing.assert_allclose(out, ramp14 / 16383.0, atol=1e-7)


def test_rescale_slope_and_intercept(tmp_path):
    # A positive linear rescale keeps the unit mapping; a negative slope flips the scale.
    same = write_dicom(tmp_path / "p.dcm", RAMP8, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_allclose(read_pixels(same), RAMP8 / 255.0, atol=1e-6)
    ds = pydicom.dcmread(same)
    values, lo, hi = modality_values(ds.pixel_array, ds)
    np.testing.assert_array_equal(values, RAMP8 * 2.0 - 100)
    assert (lo, hi) == (-100.0, 410.0)
    flipped = write_dicom(tmp_path / "n.dcm", RAMP8, RescaleSlope=-1, RescaleIntercept=255)
    np.testing.assert_allclose(read_pixels(flipped), (255 - RAMP8) / 255.0, atol=1e-6)


def test_signed_pixels(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", np.zeros((2, 3), np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    stored = np.array([[-2048, -1, 0], [1, 1000, 2047]], np.int16)
    ds.PixelRepresentation = 1
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(read_pixels(path), (stored + 2048.0) / 4095.0, atol=1e-6)


def test_compressed_transfer_syntaxes_decode(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", RAMP12, "MONOCHROME1", bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_pixels(tmp_path / "rle.dcm"), read_pixels(path))
    # JPEG Baseline, as in the real SIIM (and likely RSNA) files.
    flat = np.full((16, 16), 100, np.uint8)
    flat[4:12, 4:12] = 200
    buf = io.BytesIO()
    Image.fromarray(flat).save(buf, format="JPEG", quality=95)
    ds = pydicom.dcmread(write_dicom(tmp_path / "j.dcm", flat))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    np.testing.assert_allclose(read_pixels(tmp_path / "jpeg.dcm"), flat / 255.0, atol=8 / 255)


def test_header_fields(tmp_path):
    a = write_dicom(tmp_path / "a.dcm", RAMP8, PatientSex="F", PatientAge="045Y", ViewPosition="PA", PatientID="p1")
    b = write_dicom(tmp_path / "b.dcm", RAMP8, PatientSex="O", PatientAge="")
    c = write_dicom(tmp_path / "c.dcm", RAMP8)
    info = read_info(a)
    assert (info.sex, info.age, info.view, info.patient_id) == ("F", 45, "PA", "p1")
    frame = header_frame([a, b, c], workers=2)
    assert frame["sex"].tolist() == ["F", None, None] and frame["view"].tolist() == ["PA", None, None]
    assert [optional_int(v) for v in frame["age"]] == [45, None, None]
    assert frame["dicom_patient_id"].tolist() == ["p1", None, None]


def test_resize_and_box_scaling():
    pixels = np.linspace(0, 1, 6 * 4, dtype=np.float32).reshape(6, 4)
    assert to_image_tensor(pixels).shape == (1, 6, 4)
    out = to_image_tensor(pixels, 8)
    assert out.shape == (1, 8, 8) and out.dtype.is_floating_point and 0 <= out.min() and out.max() <= 1
    boxes = scale_boxes(np.array([[1.0, 3.0, 2.0, 6.0]]), (6, 4), 8)
    np.testing.assert_allclose(boxes.numpy(), [[2.0, 4.0, 4.0, 8.0]])
    assert scale_boxes(np.zeros((0, 4)), (6, 4), None).shape == (0, 4)


def test_index_files(tmp_path):
    write_dicom(tmp_path / "t" / "s1" / "x" / "1.2.3.dcm", RAMP8)
    write_dicom(tmp_path / "u" / "1.2.4.dcm", RAMP8)
    found = index_files([tmp_path / "t", tmp_path / "u"], ".dcm")
    assert sorted(found) == ["1.2.3", "1.2.4"] and found["1.2.3"].parent.name == "x"
    write_dicom(tmp_path / "u" / "deep" / "1.2.3.dcm", RAMP8)
    with pytest.raises(ValueError, match=r"1\.2\.3\.dcm.*also at"):
        index_files([tmp_path / "t", tmp_path / "u"], ".dcm")


def test_read_csv_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ImageId, EncodedPixels\n a ,-1\n\nb, 1 2\n")
    df = read_csv_lines(path, ["ImageId", "EncodedPixels"])
    assert df["ImageId"].tolist() == ["a", "b"] and df["EncodedPixels"].tolist() == ["-1", "1 2"]
    assert df["line"].tolist() == [2, 4]
    with pytest.raises(ValueError, match=r"t\.csv: missing column\(s\) \['Target'\]"):
        read_csv_lines(path, ["ImageId", "Target"])
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_csv_lines(tmp_path / "nothere.csv", ["a"])


def test_bad_files_name_the_file(tmp_path):
    good = write_dicom(tmp_path / "good.dicom", RAMP12, "MONOCHROME1", bits_stored=12).read_bytes()
    with pytest.raises(FileNotFoundError, match="missing.dicom"):
        read_pixels(tmp_path / "missing.dicom")
    (tmp_path / "text.dicom").write_text("not a dicom file at all")
    with pytest.raises(DicomError, match="text.dicom: not a DICOM file"):
        read_pixels(tmp_path / "text.dicom")
    with pytest.raises(DicomError, match="text.dicom"):
        read_info(tmp_path / "text.dicom")
    (tmp_path / "cut.dicom").write_bytes(good[:-20])
    with pytest.raises(DicomError, match="cut.dicom: cannot decode the pixel data"):
        read_pixels(tmp_path / "cut.dicom")
    (tmp_path / "head.dicom").write_bytes(good[:200])
    with pytest.raises(DicomError, match="head.dicom"):
        read_pixels(tmp_path / "head.dicom")


def test_unsupported_images_fail_clearly(tmp_path):
    path = write_dicom(tmp_path / "rgb.dcm", RAMP8)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "RGB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match="rgb.dcm: PhotometricInterpretation 'RGB'"):
        read_pixels(path)
    path = write_dicom(tmp_path / "lut.dcm", RAMP8)
    ds = pydicom.dcmread(path)
    ds.ModalityLUTSequence = [pydicom.Dataset()]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match="lut.dcm: has a Modality LUT Sequence"):
        read_pixels(path)
    with pytest.raises(ValueError, match="do not fit BitsStored=12"):
        write_dicom(tmp_path / "x.dcm", np.full((2, 2), 4096, np.uint16), bits_stored=12)
