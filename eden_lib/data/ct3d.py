"""Shared readers of the 3D loaders (``lidc_idri``, ``lits``, ``brats``, ``rsna_str_pe``, ``cad_pe``).

Conventions (``reference/dataset_formats.md`` §0, §9):

* Volumes are ``(X, Y, Z)`` arrays: for DICOM, X runs along the image rows' direction cosine
  (``ImageOrientationPatient[0:3]``, i.e. the pixel column index), Y along ``ImageOrientationPatient[3:6]`` (the row
  index), Z along the slice normal with slices in ascending position. Items carry them channel first, ``(C, X, Y, Z)``.
* Geometry is in the DICOM/ITK world frame, LPS mm: ``origin`` ``(3,)`` is the world position of voxel ``(0, 0, 0)``,
  ``spacing`` ``(3,)`` the voxel size along X, Y, Z and ``direction`` ``(3, 3)`` has the world direction of voxel
  axis ``k`` in column ``k``. These are the quantities ``luna16.world_to_voxel`` / ``voxel_to_world`` take (they
  index ``(z, y, x)``: reverse the last axis to index our ``(X, Y, Z)`` arrays).
* NIfTI affines are RAS; ``read_nifti_group`` converts them to LPS and, by default, reorients the voxel axes to the
  closest ``orientation`` (``"LPS"``: X towards the patient's left, Y posterior, Z superior) so that volumes from
  centres that store flipped or permuted axes (a LiTS pitfall) come out alike.

Pitfalls handled here: slices are ordered by ``ImagePositionPatient`` projected on the slice normal (for axial CT the
same as sorting by ``ImagePositionPatient[2]``), never by ``InstanceNumber`` or file name; HU is ``pixel *
RescaleSlope + RescaleIntercept`` slice by slice (slopes and intercepts may differ between slices); ``PixelSpacing``
is ``[row spacing, column spacing]``, i.e. ``[Y, X]``; duplicate slice positions are an error; the Z spacing is the
median gap, the positions themselves are kept (``DicomSeries.positions``); label files co-registered with an image
take the image's geometry (a label header that disagrees is warned about, never used to move the labels).
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eden_lib.data.subvolumes import hu_to_unit


@dataclass
class Geometry:
    """Voxel -> world (LPS mm) map of an ``(X, Y, Z)`` volume."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    def as_tensors(self) -> dict[str, torch.Tensor]:
        """``origin`` ``(3,)``, ``spacing`` ``(3,)`` and ``direction`` ``(3, 3)`` float64 tensors (item keys)."""
        return {"origin": torch.tensor(self.origin, dtype=torch.float64),
                "spacing": torch.tensor(self.spacing, dtype=torch.float64),
                "direction": torch.tensor(self.direction, dtype=torch.float64)}


@dataclass
class DicomSeries:
    """A CT series read slice by slice: ``hu`` ``(X, Y, Z)`` float32; ``files`` and ``sop_uids`` in Z order;
    ``positions`` ``(Z,)`` slice positions along the normal (mm); ``ipp`` ``(Z, 3)`` ``ImagePositionPatient``;
    ``header`` the first slice's dataset (no pixels)."""

    hu: np.ndarray
    geometry: Geometry
    files: list[Path]
    sop_uids: list[str]
    positions: np.ndarray
    ipp: np.ndarray
    header: object = field(repr=False)


def read_dicom_header(path: Path, pixels: bool = False):
    """``pydicom.dcmread`` with an error that names the file (pixels are not decoded here)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file {path} does not exist")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,):
        raise ValueError(f"{path}: {keyword} is {value!r}; expected {n} numbers")
    return out


def _pixels_hu(ds, path: Path) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for truncated or undecodable pixel data
        raise ValueError(f"{path}: pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one 2D CT slice, got pixel array of shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_dicom_series(files: Sequence[Path]) -> DicomSeries:
    """Read one CT series (one file per slice) into HU, ordered along the slice normal.

    Raises:
        ValueError: naming the file, for unreadable files, missing/malformed geometry tags, slices whose size,
            orientation or pixel spacing differ from the first slice, or two slices at the same position.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("read_dicom_series: no files given")
    datasets = [read_dicom_header(f, pixels=True) for f in files]
    first, path0 = datasets[0], files[0]
    iop = _floats(first, "ImageOrientationPatient", 6, path0)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = _floats(first, "PixelSpacing", 2, path0)
    ipp = np.stack([_floats(ds, "ImagePositionPatient", 3, f) for ds, f in zip(datasets, files)])
    for ds, f in zip(datasets[1:], files[1:]):
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
            raise ValueError(f"{f}: ImageOrientationPatient differs from {path0} ({iop.tolist()})")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, f), pixel_spacing, atol=1e-6):
            raise ValueError(f"{f}: PixelSpacing differs from {path0} ({pixel_spacing.tolist()})")
    positions = ipp @ normal
    order = np.argsort(positions, kind="stable")
    positions, ipp = positions[order], ipp[order]
    gaps = np.diff(positions)
    if (gaps < 1e-4).any():
        k = int(np.flatnonzero(gaps < 1e-4)[0])
        raise ValueError(f"{files[order[k]]} and {files[order[k + 1]]}: two slices at the same position "
                         f"{positions[k]:.4f} mm along the normal (duplicate slice)")
    slices = []
    for k in order:
        hu = _pixels_hu(datasets[k], files[k])
        if slices and hu.shape != slices[0].shape:
            raise ValueError(f"{files[k]}: slice of {hu.shape} pixels, expected {slices[0].shape} as in "
                             f"{files[order[0]]}")
        slices.append(hu)
    volume = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))  # (rows, cols, Z) -> (X, Y, Z)
    dz = float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness", 1.0) or 1.0)
    geometry = Geometry(origin=ipp[0].copy(), spacing=np.array([pixel_spacing[1], pixel_spacing[0], dz]),
                        direction=np.column_stack([row_dir, col_dir, normal]))
    header = datasets[order[0]]
    del header.PixelData
    return DicomSeries(hu=volume, geometry=geometry, files=[files[k] for k in order],
                       sop_uids=[str(datasets[k].get("SOPInstanceUID", "")) for k in order], positions=positions,
                       ipp=ipp, header=header)


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stored array (file axis order, scaling applied) and RAS affine; errors name the file."""
    import nibabel as nib

    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file {path} does not exist")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise ValueError(f"{path}: unreadable or truncated NIfTI file ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, np.asarray(image.affine, dtype=float)


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_nifti_group(paths: Sequence[Path], orientation: str | None = "LPS") -> tuple[list[np.ndarray], Geometry]:
    """Read co-registered NIfTI volumes (an image and its labels, or MR modalities) on the first one's grid.

    Every file must have the first file's stored shape. All arrays get the first file's reorientation (axis
    permutation and flips to the closest ``orientation`` axis codes, e.g. ``"LPS"`` or ``"RAS"``; None keeps the file
    order), so label voxels stay on their image voxels even when a label header is wrong; a header that disagrees
    with the first file's affine by more than 1e-3 mm raises a warning naming both files.

    Returns:
        The arrays in their stored dtypes, ``(X, Y, Z)``, and the LPS geometry of the (reoriented) first file.
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    paths = [Path(p) for p in paths]
    loaded = [_load_nifti(p) for p in paths]
    (ref, affine), ref_path = loaded[0], paths[0]
    for (data, aff), p in zip(loaded[1:], paths[1:]):
        if data.shape != ref.shape:
            raise ValueError(f"{p}: shape {data.shape} differs from {ref.shape} of {ref_path}")
        if not np.allclose(aff, affine, atol=1e-3):
            warnings.warn(f"{p}: affine differs from {ref_path}; using the geometry of {ref_path}", stacklevel=2)
    arrays = [data for data, _ in loaded]
    if orientation is not None:
        codes = tuple(orientation.upper())
        axes = sorted(next((k for k, pair in enumerate(("LR", "PA", "IS")) if c in pair), -1) for c in codes)
        if axes != [0, 1, 2]:
            raise ValueError(f"orientation={orientation!r}: expected three axis codes such as 'LPS' or 'RAS'")
        transform = ornt_transform(io_orientation(affine), axcodes2ornt(codes))
        arrays = [np.ascontiguousarray(apply_orientation(a, transform)) for a in arrays]
        affine = affine @ inv_ornt_aff(transform, ref.shape)
    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return arrays, Geometry(origin=lps[:3, 3].copy(), spacing=spacing, direction=lps[:3, :3] / spacing)


def scale_hu(hu: np.ndarray, window: tuple[float, float] | None) -> torch.Tensor:
    """``(1, X, Y, Z)`` float32: HU clipped to ``window`` and scaled to [0, 1] (``hu_to_unit``); raw HU if None."""
    out = np.asarray(hu, dtype=np.float32) if window is None else hu_to_unit(hu, window)
    return torch.from_numpy(np.ascontiguousarray(out))[None]


def minmax_unit(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max to [0, 1] float32 (the Models Genesis advice for MR, issue #36); a constant volume -> 0."""
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    return np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_DAYS = {"": 365.25, "Y": 365.25, "M": 365.25 / 12, "W": 7.0, "D": 1.0}


def parse_age(value) -> int | None:
    """Age in whole years from a DICOM ``PatientAge`` (``"045Y"``, ``"018M"``, ``"003W"``, ``"010D"``), a plain
    number or number string (floored); None for empty or unparseable values."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    match = _AGE.match(str(value))
    if match is None:
        return None
    days = float(match.group(1)) * _AGE_UNIT_DAYS[match.group(2).upper()]
    return int(np.floor(days / 365.25 + 1e-9))


def dicom_sex(ds) -> str | None:
    """``PatientSex`` as ``"M"``/``"F"``; None when absent, empty, ``"O"`` or de-identified."""
    value = str(ds.get("PatientSex", "") or "").strip().upper()
    return value if value in ("M", "F") else None


def write_ct_slice(path: Path, stored: np.ndarray, *, position: Sequence[float], sop_uid: str, series_uid: str,
                   study_uid: str, orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
                   pixel_spacing: Sequence[float] = (1.0, 1.0), slope: float = 1.0, intercept: float = 0.0,
                   instance_number: int = 1, **tags) -> None:
    """Write one uncompressed (Explicit VR Little Endian) CT slice; ``stored`` is ``(rows, cols)`` int16 stored
    values (HU = stored * slope + intercept). ``tags`` are extra keywords (``PatientID``, ``PatientSex`` ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    pixels = np.asarray(stored)
    if pixels.ndim != 2 or pixels.dtype != np.int16:
        raise ValueError(f"write_ct_slice: stored must be a 2D int16 array, got {pixels.dtype} {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.InstanceNumber = "CT", int(instance_number)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.RescaleSlope, ds.RescaleIntercept = float(slope), float(intercept)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<i2").tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
