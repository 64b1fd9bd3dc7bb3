"""NLM tuberculosis chest X-ray sets (Montgomery County and Shenzhen): the real on-disk format and the loaders.

Layout (``reference/dataset_formats.md`` §7)::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png              138 images: "_0" normal, "_1" tuberculosis
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png  lung masks, one folder per side, same file names
    MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png
    MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt     "Patient's Sex: M", "Patient's Age: 036Y", finding

    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png          662 images: "_0" normal, "_1" tuberculosis
    ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt first line "male 35yrs" / "Female 23yr", finding
    shcxr-lung-mask/mask/CHNCXR_0001_0_mask.png          566 lung masks, a separate community set (``mask_root``)
    ShenzenCXR_{train,valid,test}_data.txt               JLiang Lab split lists, "CHNCXR_0402_1.png,1" per line

``root`` is the ``MontgomerySet`` / ``ChinaSet_AllFiles`` folder (or the folder just above it). References:
Jaeger et al., "Two public chest X-ray datasets for computer-aided screening of pulmonary diseases", Quant.
Imaging Med. Surg. 4(6):475-477 (2014); Stirenko et al. 2018 for the Shenzhen lung masks.

Choices and pitfalls handled:

- **Label** ``Tuberculosis`` is the file name suffix (``_0`` normal, ``_1`` TB); a PNG without it is an error.
- **RGB/RGBA/palette PNGs** become one channel and **16-bit PNGs** are scaled by 1/257 (``chestxray14.read_image``);
  the image is ``uint8 / 255`` in [0, 1]. Images keep their own (non-square, varying) size unless ``image_size``.
- **Two ClinicalReadings styles**, both parsed by ``parse_clinical_reading`` whatever the site: DICOM-like lines
  ``Patient's Sex: M`` / ``Patient's Age: 036Y`` (a DICOM age string: Y years, M months, W weeks, D days, ages
  under a year give 0), or a free-text first line ``male 35yrs`` with any case, spacing and commas
  (``Female,23yr``, ``male35yrs``). A reading that matches neither is an error naming the file; a site without a
  ``ClinicalReadings`` folder gives None for sex and age.
- **Montgomery masks are per side**: ``mask`` has two channels (``left lung``, ``right lung``; their union is
  ``mask.amax(0)``), nonzero = inside, resized (nearest) to the returned image.
- **Shenzhen masks are not in the NLM release** and cover only 566 of 662 images: with ``mask_root`` the dataset
  keeps only images that have one (``missing_mask="drop"``) or fails on the first missing (``"error"``).
- **Shenzhen split files** are spelled ``ShenzenCXR_*`` (no "h"), use CRLF or trailing spaces in some copies
  (lines are stripped) and repeat the label, which must agree with the file name suffix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from eden_lib.data.chestxray14 import read_image

TB_LABELS = ("Tuberculosis",)
MONTGOMERY_MASKS = {"left lung": "leftMask", "right lung": "rightMask"}
"""Montgomery mask channel name -> folder under ``ManualMask/``, in channel order."""
SHENZHEN_SPLITS = ("train", "valid", "test")
SHENZHEN_SPLIT_FILE = "ShenzenCXR_{}_data.txt"
MISSING_MASK_POLICIES = ("drop", "error")

_DICOM_SEX = re.compile(r"patient'?s?\s+sex\s*:[ \t]*(?P<value>[^\r\n]*)", re.IGNORECASE)
_DICOM_AGE = re.compile(r"patient'?s?\s+age\s*:[ \t]*(?P<value>[^\r\n]*)", re.IGNORECASE)
_DICOM_AGE_VALUE = re.compile(r"^0*(?P<n>\d+)\s*(?P<unit>[YMWD]?)$", re.IGNORECASE)
_FREE_TEXT = re.compile(r"^\W*(?P<sex>female|male)[\s,.;:]*(?:(?P<n>\d+)\s*(?P<unit>[a-z]*))?", re.IGNORECASE)
_FREE_UNITS = {"": 1, "y": 1, "yr": 1, "yrs": 1, "year": 1, "years": 1, "m": 12, "mo": 12, "mon": 12,
               "month": 12, "months": 12, "d": 365, "day": 365, "days": 365}
_DICOM_UNITS = {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}
_SEX_CODES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": None, "": None}


def parse_clinical_reading(text: str, source: str = "") -> tuple[str | None, int | None]:
    """``(sex, age in whole years)`` from a ClinicalReadings text in either NLM style (see the module docstring)."""
    text = text.lstrip("\ufeff")
    sex_match = _DICOM_SEX.search(text)
    if sex_match:
        value = sex_match["value"].strip().upper()
        if value not in _SEX_CODES:
            raise ValueError(f"{source}: \"Patient's Sex\" is {sex_match['value'].strip()!r}, expected M, F or O")
        age = None
        age_match = _DICOM_AGE.search(text)
        if age_match and age_match["value"].strip():
            parsed = _DICOM_AGE_VALUE.match(age_match["value"].strip())
            if not parsed:
                raise ValueError(f"{source}: \"Patient's Age\" is {age_match['value'].strip()!r}, expected a DICOM "
                                 f"age such as '036Y'")
            age = int(parsed["n"]) // _DICOM_UNITS[parsed["unit"].upper()]
        return _SEX_CODES[value], age
    first = next((line for line in text.splitlines() if line.strip()), "")
    free = _FREE_TEXT.match(first)
    if not free:
        raise ValueError(f"{source}: clinical reading starts with {first.strip()[:60]!r}, expected \"Patient's Sex: "
                         f"M\" / \"Patient's Age: 036Y\" lines or a first line such as 'male 35yrs'")
    if free["n"] is None:
        return _SEX_CODES[free["sex"].upper()], None
    unit = free["unit"].lower()
    if unit not in _FREE_UNITS:
        raise ValueError(f"{source}: age {free['n'] + free['unit']!r} in {first.strip()!r}, expected years such as "
                         f"'35yrs' (or months/days)")
    return _SEX_CODES[free["sex"].upper()], int(free["n"]) // _FREE_UNITS[unit]


def _site_root(root: Path, folder: str) -> Path:
    for candidate in (root, root / folder):
        if (candidate / "CXR_png").is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: no CXR_png/ folder (expected the {folder}/ layout: {folder}/CXR_png/*.png)")


def _read_png(path: Path, size: int | None = None, resample: int = Image.BILINEAR) -> np.ndarray:
    """``read_image`` with the file named in any decoding error (truncated or corrupt PNG)."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return read_image(path, size, resample)
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"{path}: cannot read image ({err}); truncated or corrupt?") from err


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Binary uint8 mask (nonzero = 1) resized with nearest-neighbour to ``shape`` ``(H, W)``."""
    mask = _read_png(path)
    if mask.shape != shape:
        mask = np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.NEAREST))
    return (mask > 0).astype(np.uint8)


class _NLMTB(Dataset):
    """Shared loader of the two NLM TB sets; the subclasses fix the folder, file prefix, splits and masks."""

    folder: str
    prefix: str

    def __init__(self, root: Path | str, names: list[str] | None, image_size: int | None) -> None:
        self.root = _site_root(Path(root), self.folder)
        self.image_size = image_size
        self.labels = TB_LABELS
        pattern = re.compile(rf"^(?P<pid>{self.prefix}_\d+)_(?P<label>[01])$")
        png_dir = self.root / "CXR_png"
        found = {p.name: p for p in sorted(png_dir.iterdir()) if p.suffix.lower() == ".png"}
        if names is not None:
            missing = [n for n in names if n not in found]
            if missing:
                raise FileNotFoundError(f"{type(self).__name__}: image {png_dir / missing[0]} not found; "
                                        f"{len(missing)} missing in all")
        names = sorted(found) if names is None else names
        rows = []
        for name in names:
            m = pattern.match(Path(name).stem)
            if not m:
                raise ValueError(f"{png_dir / name}: unexpected file name, expected {self.prefix}_NNNN_0.png "
                                 f"(normal) or {self.prefix}_NNNN_1.png (tuberculosis)")
            rows.append({"image_id": Path(name).stem, "patient_id": m["pid"], "tb": int(m["label"]),
                         "path": str(found[name])})
        meta = pd.DataFrame(rows, columns=["image_id", "patient_id", "tb", "path"])
        readings = self.root / "ClinicalReadings"
        sexes, ages = [], []
        for image_id in meta["image_id"]:
            sex = age = None
            if readings.is_dir():
                path = readings / f"{image_id}.txt"
                if not path.is_file():
                    raise FileNotFoundError(f"{type(self).__name__}: clinical reading {path} not found")
                sex, age = parse_clinical_reading(path.read_text(encoding="utf-8", errors="replace"), str(path))
            sexes.append(sex)
            ages.append(age)
        meta["sex"] = pd.Series(sexes, dtype=object)
        meta["age"] = pd.array(ages, dtype="Int64")
        self.meta = meta
        self.mask_names: tuple[str, ...] = ()
        self.mask_files: list[tuple[Path, ...]] = []  # per row of meta, one file per mask_names channel

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        image = _read_png(Path(row["path"]), self.image_size)
        item = {
            "image": torch.from_numpy(image.astype(np.float32) / 255.0)[None],
            "label": torch.tensor([float(row["tb"])], dtype=torch.float32),
            "sex": row["sex"] if isinstance(row["sex"], str) else None,  # a missing meta cell is NaN
            "age": None if pd.isna(row["age"]) else int(row["age"]),
            "patient_id": row["patient_id"],
            "image_id": row["image_id"],
        }
        if self.mask_names:
            item["mask"] = torch.from_numpy(np.stack([_read_mask(p, image.shape) for p in self.mask_files[i]]))
        return item


class Montgomery(_NLMTB):
    """NLM Montgomery County TB set as a map-style dataset.

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1], ``label`` float32 ``(1,)``
    (``Tuberculosis``), ``sex`` (``"M"``/``"F"``/None), ``age`` (int years or None), ``patient_id``
    (``"MCUCXR_0001"``), ``image_id`` (``"MCUCXR_0001_0"``), and with ``ManualMask/`` ``mask`` uint8
    ``(2, H, W)`` 0/1, channels ``mask_names`` = (``left lung``, ``right lung``).

    Args:
        root: the ``MontgomerySet`` folder (or its parent).
        split: None only (the dataset has no official split).
        image_size: resize to ``image_size`` squared (bilinear; masks nearest); None keeps each stored size.
    """

    folder = "MontgomerySet"
    prefix = "MCUCXR"

    def __init__(self, root: Path | str, split: str | None = None, image_size: int | None = None) -> None:
        if split is not None:
            raise ValueError(f"Montgomery: split={split!r}, but the dataset has no official split; expected None")
        super().__init__(root, None, image_size)
        mask_dir = self.root / "ManualMask"
        if mask_dir.is_dir():
            self.mask_names = tuple(MONTGOMERY_MASKS)
            self.mask_files = [tuple(mask_dir / folder / f"{name}.png" for folder in MONTGOMERY_MASKS.values())
                               for name in self.meta["image_id"]]
            missing = next((p for files in self.mask_files for p in files if not p.is_file()), None)
            if missing is not None:
                raise FileNotFoundError(f"Montgomery: mask {missing} not found")


class Shenzhen(_NLMTB):
    """NLM Shenzhen (ChinaSet) TB set as a map-style dataset.

    Items as ``Montgomery``'s (``patient_id`` ``"CHNCXR_0001"``), and with ``mask_root`` ``mask`` uint8
    ``(1, H, W)`` 0/1 (both lungs, ``mask_names`` = (``lungs``,)).

    Args:
        root: the ``ChinaSet_AllFiles`` folder (or its parent).
        split: ``"train"``, ``"valid"``, ``"test"`` (the JLiang Lab lists ``ShenzenCXR_<split>_data.txt``) or None
            (every PNG).
        image_size: resize to ``image_size`` squared (bilinear; masks nearest); None keeps each stored size.
        split_dir: folder of the split lists; default ``root``.
        mask_root: the ``shcxr-lung-mask`` folder (or its ``mask/`` folder) of ``<image_id>_mask.png`` files.
        missing_mask: with ``mask_root``, ``"drop"`` keeps only images with a mask, ``"error"`` fails.
    """

    folder = "ChinaSet_AllFiles"
    prefix = "CHNCXR"

    def __init__(self, root: Path | str, split: str | None = None, image_size: int | None = None,
                 split_dir: Path | str | None = None, mask_root: Path | str | None = None,
                 missing_mask: str = "drop") -> None:
        if split is not None and split not in SHENZHEN_SPLITS:
            raise ValueError(f"Shenzhen: split={split!r}, expected one of {list(SHENZHEN_SPLITS)} or None")
        if missing_mask not in MISSING_MASK_POLICIES:
            raise ValueError(f"Shenzhen: missing_mask={missing_mask!r}, expected one of {list(MISSING_MASK_POLICIES)}")
        names = None
        if split is not None:
            site = _site_root(Path(root), self.folder)
            names = read_shenzhen_split(Path(split_dir or site) / SHENZHEN_SPLIT_FILE.format(split))
        super().__init__(root, names, image_size)
        if mask_root is not None:
            mask_root = Path(mask_root)
            mask_dir = mask_root / "mask" if (mask_root / "mask").is_dir() else mask_root
            if not mask_dir.is_dir():
                raise FileNotFoundError(f"Shenzhen: mask folder {mask_dir} not found")
            files = [mask_dir / f"{name}_mask.png" for name in self.meta["image_id"]]
            has = np.array([p.is_file() for p in files], dtype=bool)
            if missing_mask == "error" and not has.all():
                raise FileNotFoundError(f"Shenzhen: mask {files[int(np.flatnonzero(~has)[0])]} not found; "
                                        f"{int((~has).sum())} missing in all (missing_mask='drop' keeps the rest)")
            self.meta = self.meta[has].reset_index(drop=True)
            self.mask_names = ("lungs",)
            self.mask_files = [(p,) for p, ok in zip(files, has) if ok]


def read_shenzhen_split(path: Path) -> list[str]:
    """PNG names of a JLiang Lab Shenzhen list (``CHNCXR_0402_1.png,1`` per line), checking each label."""
    if not path.is_file():
        raise FileNotFoundError(f"Shenzhen: split list {path} not found")
    names = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        m = re.match(r"^CHNCXR_\d+_(?P<label>[01])\.png$", fields[0])
        if len(fields) != 2 or not m or fields[1] not in ("0", "1"):
            raise ValueError(f"{path}: line {lineno} is {line.strip()!r}, expected 'CHNCXR_NNNN_L.png,L' with L 0 or 1")
        if fields[1] != m["label"]:
            raise ValueError(f"{path}: line {lineno} gives label {fields[1]} for {fields[0]}, whose suffix says "
                             f"{m['label']}")
        names.append(fields[0])
    return names
