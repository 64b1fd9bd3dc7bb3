"""DICOM radiographs for the real-data loaders (VinDr-CXR, RSNA Pneumonia, SIIM-ACR): pixels, header fields, CSVs.

Rules (``reference/dataset_formats.md`` §0.2):

- Pixels come from pydicom's ``pixel_array``, so any transfer syntax pydicom can decode works (uncompressed, RLE
  Lossless, and JPEG Baseline ``1.2.840.10008.1.2.4.50`` through Pillow, which the real SIIM and probably the RSNA
  files use); none is assumed. A file pydicom cannot read or decode fails with :class:`DicomError` naming the file.
- Values are mapped to [0, 1] over the range the header allows: the stored range of ``BitsStored`` bits (signed when
  ``PixelRepresentation`` is 1), passed through ``RescaleSlope``/``RescaleIntercept`` when present (a linear map,
  so only a negative slope, which flips the scale, changes the result; :func:`modality_values` gives the rescaled
  values themselves, HU for CT), then ``MONOCHROME1`` is inverted so that high is bright. For unsigned data without
  rescale this is ``((2**BitsStored - 1) - x) / (2**BitsStored - 1)`` for MONOCHROME1 and
  ``x / (2**BitsStored - 1)`` for MONOCHROME2 (8-bit data is ``x / 255``, as for the NIH PNGs). VOI windowing
  (``WindowCenter``/``WindowWidth``, VOI LUT) is a display choice and is not applied; a Modality LUT Sequence is
  rejected rather than ignored.
- ``PatientSex`` ``M``/``F`` (or ``MALE``/``FEMALE``) give ``"M"``/``"F"``; ``O``, empty or absent give None.
  ``PatientAge`` is a DICOM age string (``"045Y"``, ``"018M"``, ``"010W"``, ``"100D"``) or a plain number string
  (RSNA, SIIM); it becomes whole years. Empty, unparseable or impossible ages (above ``MAX_AGE``; RSNA has 148-155)
  give None.

Also here: :func:`write_dicom` (uncompressed Explicit VR Little Endian files, for fixtures), :func:`index_files`
(find files by stem in a nested tree) and :func:`read_csv_lines` (a CSV with exact 1-based line numbers, shared by
the three loaders' metadata readers).
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image
from pydicom.dataset import Dataset as PydicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MAX_AGE = 120
"""Ages above this many years are impossible and read as None."""

HEADER_TAGS = ("PatientID", "PatientSex", "PatientAge", "ViewPosition")
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_AGE = re.compile(r"^(\d+)\s*([DWMY]?)$")
_PER_YEAR = {"D": 365, "W": 52, "M": 12, "Y": 1}


class DicomError(ValueError):
    """A DICOM file that cannot be read or decoded, or whose pixels cannot be mapped to [0, 1]."""


@dataclass(frozen=True)
class DicomInfo:
    """Header fields of one file: ``sex`` ``"M"``/``"F"``/None, ``age`` whole years or None, ``view``
    (``ViewPosition``, e.g. ``"PA"``) or None, ``patient_id`` (``PatientID``) or None."""

    sex: str | None
    age: int | None
    view: str | None
    patient_id: str | None


def parse_sex(value: object) -> str | None:
    """``"M"``/``"F"`` from a ``PatientSex`` value; ``O`` (other/unknown), empty or None give None."""
    text = "" if value is None else str(value).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


def parse_age(value: object, max_age: int = MAX_AGE) -> int | None:
    """Whole years from a ``PatientAge`` value: ``"045Y"`` -> 45, ``"018M"`` -> 1, ``"58"`` -> 58.

    Empty, None, unparseable or above ``max_age`` give None.
    """
    text = "" if value is None else str(value).strip().upper()
    match = _AGE.match(text)
    if match is None:
        return None
    years = int(match[1]) // _PER_YEAR[match[2] or "Y"]
    return years if years <= max_age else None


def _text(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _dcmread(path: Path, **kwargs) -> PydicomDataset:
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as e:
        raise DicomError(f"{path}: not a DICOM file (no 'DICM' preamble/file meta): {e}") from e
    except (OSError, EOFError, ValueError, KeyError, struct.error) as e:
        raise DicomError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e


def read_info(path: Path | str) -> DicomInfo:
    """Sex, age, view and patient ID from the header of ``path`` (pixel data is not read)."""
    ds = _dcmread(Path(path), stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    return DicomInfo(sex=parse_sex(ds.get("PatientSex")), age=parse_age(ds.get("PatientAge")),
                     view=_text(ds.get("ViewPosition")), patient_id=_text(ds.get("PatientID")))


def header_frame(paths: Sequence[Path], workers: int = 4) -> pd.DataFrame:
    """:func:`read_info` of every path as columns ``sex, age`` (nullable ``Int64``) ``, view, dicom_patient_id``,
    one row per path in order (read with threads: the work is file I/O)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        infos = list(pool.map(read_info, paths))
    return pd.DataFrame({
        "sex": pd.Series([i.sex for i in infos], dtype=object),
        "age": pd.array([i.age for i in infos], dtype="Int64"),
        "view": pd.Series([i.view for i in infos], dtype=object),
        "dicom_patient_id": pd.Series([i.patient_id for i in infos], dtype=object),
    })


def optional_int(value: object) -> int | None:
    """``int(value)``, or None for a missing value (``pd.NA``, NaN, None)."""
    return None if pd.isna(value) else int(value)


def modality_values(stored: np.ndarray, ds: PydicomDataset, source: str = "") -> tuple[np.ndarray, float, float]:
    """Stored values -> ``stored * RescaleSlope + RescaleIntercept`` (float64; HU for CT) and the lowest and highest
    value the header allows (the ``BitsStored`` range, signed when ``PixelRepresentation`` is 1, rescaled)."""
    if "ModalityLUTSequence" in ds:
        raise DicomError(f"{source}: has a Modality LUT Sequence, which is not supported (only RescaleSlope/"
                         f"RescaleIntercept)")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    if bits < 1:
        raise DicomError(f"{source}: no BitsStored/BitsAllocated, cannot tell the value range")
    if int(ds.get("PixelRepresentation") or 0) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1.0
    else:
        lo, hi = 0.0, 2.0 ** bits - 1.0
    slope = float(ds.get("RescaleSlope") if ds.get("RescaleSlope") not in (None, "") else 1.0)
    intercept = float(ds.get("RescaleIntercept") if ds.get("RescaleIntercept") not in (None, "") else 0.0)
    if slope == 0.0:
        raise DicomError(f"{source}: RescaleSlope is 0")
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return stored.astype(np.float64) * slope + intercept, lo, hi


def stored_to_unit(stored: np.ndarray, ds: PydicomDataset, source: str = "") -> np.ndarray:
    """Stored pixel values ``(H, W)`` -> float32 in [0, 1], high = bright (rescale, MONOCHROME1 inversion)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{source}: PhotometricInterpretation {photometric!r}, expected MONOCHROME1 or MONOCHROME2")
    if stored.ndim != 2:
        raise DicomError(f"{source}: pixel array of shape {stored.shape}, expected one grayscale frame (rows, cols)")
    values, lo, hi = modality_values(stored, ds, source)
    if photometric == "MONOCHROME1":
        values = (lo + hi) - values
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def read_pixels(path: Path | str) -> np.ndarray:
    """The image of a DICOM file as float32 ``(H, W)`` in [0, 1] (see the module docstring for the mapping)."""
    path = Path(path)
    ds = _dcmread(path)
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no PixelData element (truncated or not an image)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        stored = ds.pixel_array
    # pydicom reports truncated data, missing decoders and bad headers with several exception types.
    except Exception as e:
        raise DicomError(f"{path}: cannot decode the pixel data (transfer syntax {syntax}): "
                         f"{type(e).__name__}: {e}") from e
    return stored_to_unit(stored, ds, str(path))


def to_image_tensor(pixels: np.ndarray, size: int | None = None) -> torch.Tensor:
    """float32 ``(H, W)`` in [0, 1] -> ``(1, H, W)`` tensor, resized bilinearly to ``size`` squared when given."""
    if size is not None and pixels.shape != (size, size):
        pixels = np.asarray(Image.fromarray(pixels.astype(np.float32)).resize((size, size), Image.BILINEAR))
        pixels = np.clip(pixels, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]


def scale_boxes(boxes: np.ndarray, native: tuple[int, int], size: int | None) -> torch.Tensor:
    """``(N, 4)`` ``(x_min, y_min, x_max, y_max)`` boxes in native pixels of an ``(H, W)`` image -> float32 tensor
    in pixels of the returned image (``size`` squared, or native when None)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    if size is not None:
        out[:, [0, 2]] *= size / native[1]
        out[:, [1, 3]] *= size / native[0]
    return torch.from_numpy(out)


def write_dicom(path: Path | str, stored: np.ndarray, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, **attributes: object) -> Path:
    """Write a single-frame grayscale CR image as an uncompressed Explicit VR Little Endian DICOM file.

    Args:
        path: output file (parents are created).
        stored: unsigned integer ``(H, W)`` stored values (uint8 -> 8 bits allocated, else 16).
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        bits_stored: ``BitsStored``; default all allocated bits. Values must fit.
        **attributes: further elements by keyword (``PatientSex="F"``, ``PatientAge="045Y"``, ``SOPInstanceUID``).
    """
    path = Path(path)
    stored = np.asarray(stored)
    if stored.ndim != 2 or stored.dtype.kind != "u":
        raise ValueError(f"write_dicom: stored has dtype {stored.dtype} shape {stored.shape}, expected unsigned (H, W)")
    allocated = 8 if stored.dtype.itemsize == 1 else 16
    bits = allocated if bits_stored is None else int(bits_stored)
    if not 1 <= bits <= allocated or (stored.size and int(stored.max()) >= 2 ** bits):
        raise ValueError(f"write_dicom: values up to {int(stored.max())} do not fit BitsStored={bits} "
                         f"({allocated} allocated)")
    ds = PydicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    with warnings.catch_warnings():
        # Written as given, like the real files: RSNA/SIIM ages are plain numbers, which VR AS does not allow.
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint8 if allocated == 8 else "<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def index_files(folders: Iterable[Path], suffix: str) -> dict[str, Path]:
    """Map file stem -> path for every ``*suffix`` file under ``folders`` (recursively); a stem found twice fails."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob(f"*{suffix}")):
            if path.stem in found:
                raise ValueError(f"{path}: the same file name is also at {found[path.stem]}; names must be unique")
            found[path.stem] = path
    return found


def read_csv_lines(path: Path | str, required: Sequence[str], aliases: Mapping[str, str] | None = None,
                   what: str = "CSV") -> pd.DataFrame:
    """A CSV as stripped strings, with its exact 1-based file line in column ``line``.

    Column names are stripped (SIIM's ``" EncodedPixels"``) and renamed by ``aliases``; every column of
    ``required`` must exist. Blank lines are skipped. Nothing is parsed: empty cells stay ``""``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    df = df.rename(columns=dict(aliases or {}))
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}, expected {list(required)}")
    df = df.apply(lambda column: column.str.strip())
    df["line"] = np.arange(len(df)) + 2
    return df[(df.drop(columns="line") != "").any(axis=1)].reset_index(drop=True)
