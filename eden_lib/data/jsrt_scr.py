"""JSRT chest radiographs with the SCR segmentation masks: the real on-disk format and its loader.

Layout (``reference/dataset_formats.md`` §7)::

    root/All247images/JPCLN001.IMG ... JPCLN154.IMG   154 images with a lung nodule
    root/All247images/JPCNN001.IMG ... JPCNN093.IMG    93 images without
    root/CLNDAT_EN.txt                                 clinical table of the nodule cases (tab-separated)
    root/CNNDAT_EN.TXT                                 clinical table of the non-nodule cases (tab-separated)
    scr_root/fold1/masks/{left lung,right lung,heart,left clavicle,right clavicle}/JPCLN001.gif
    scr_root/fold2/masks/...

The ``.IMG`` files may sit in any sub-folder of ``root`` (found recursively, name case ignored); ``scr_root``
defaults to ``root/scratch``. References: Shiraishi et al., AJR 174:71-74 (2000), JSRT database; van Ginneken,
Stegmann & Loog, Med. Image Anal. 10:19-40 (2006), SCR database.

Choices and pitfalls handled:

- **Raw, headerless, big-endian** images: ``np.fromfile(path, ">u2")`` reshaped to ``native_size`` squared
  (2048 by default; a parameter so tests stay small). A file of any other byte count (truncated or a different
  size) is an error naming the file.
- **12 bits used**: values are clipped to 4095 before scaling.
- **Reversed polarity**: stored values are dark-is-high, so the image is ``(4095 - x) / 4095`` (``invert=True``).
- **Label**: ``Nodule`` is 1 for ``JPCLN*`` and 0 for ``JPCNN*`` (always known, never NaN).
- **SCR folder names contain spaces** (``left lung``); each structure is a separate single-object binary GIF
  (nonzero = inside), so both lungs are two channels (their union is ``mask[:2].amax(0)``).
- **SCR masks are at half resolution** (1024 squared): they are resized to the returned image size with
  nearest-neighbour; ``image_size=1024`` puts the image on the mask grid with no mask interpolation.
- **Splits** are the SCR folds ``fold1`` / ``fold2``, read from which fold folder holds an image's masks (the SCR
  protocol trains on one fold and tests on the other); they need the SCR folders.
- **Sex and age** come from the clinical tables: ``CLNDAT_EN.txt`` fields filename, subtlety, size, age, sex, ...
  and ``CNNDAT_EN.TXT`` fields filename, age, sex, ...; ``male``/``female`` (any case) map to ``M``/``F``, and
  ``?`` or an empty cell is unknown (None). Without the tables, or for an image not listed, sex and age are None.
  Lines are split on tabs (on whitespace if a line has no tab); a first line that does not name a JSRT image is
  taken as a header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from eden_lib.data.chestxray14 import read_image

JSRT_LABELS = ("Nodule",)
SCR_STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
"""The SCR mask folders (names with spaces, as shipped), in the channel order of ``mask``."""
SCR_FOLDS = ("fold1", "fold2")
JSRT_SIZE = 2048
JSRT_MAX = 4095
CLINICAL_TABLES = {"CLNDAT_EN.TXT": (3, 4), "CNNDAT_EN.TXT": (1, 2)}
"""Clinical table (upper-cased name) -> 0-based (age, sex) field positions."""

_NAME = re.compile(r"^JPC(LN|NN)\d{3}$")
_SEX = {"male": "M", "m": "M", "female": "F", "f": "F"}
_UNKNOWN = {"", "?", "-", "unknown"}


def read_jsrt_image(path: Path | str, size: int = JSRT_SIZE, invert: bool = True) -> np.ndarray:
    """One JSRT ``.IMG`` as float32 ``(size, size)`` in [0, 1]: ``>u2`` raw, clipped to 12 bits, inverted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSRT image not found: {path}")
    expected = size * size * 2
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(f"{path}: {actual} bytes, expected {expected} ({size}x{size} big-endian uint16 '>u2'); "
                         f"truncated, or pass the right native_size")
    raw = np.fromfile(path, dtype=">u2").reshape(size, size)
    arr = np.minimum(raw, JSRT_MAX).astype(np.float32)
    if invert:
        arr = JSRT_MAX - arr
    return arr / JSRT_MAX


def _parse_sex(cell: str, where: str) -> str | None:
    value = cell.strip().lower()
    if value in _UNKNOWN:
        return None
    if value not in _SEX:
        raise ValueError(f"{where}: sex cell {cell!r}, expected 'male' or 'female' (or '?')")
    return _SEX[value]


def _parse_age(cell: str, where: str) -> int | None:
    value = cell.strip()
    if value.lower() in _UNKNOWN:
        return None
    if not value.isdigit():
        raise ValueError(f"{where}: age cell {cell!r}, expected an integer number of years (or '?')")
    return int(value)


def read_clinical_table(path: Path | str, age_col: int, sex_col: int) -> dict[str, tuple[str | None, int | None]]:
    """Parse one JSRT clinical table into ``{base name: (sex, age)}`` (base name like ``JPCLN001``)."""
    path = Path(path)
    out: dict[str, tuple[str | None, int | None]] = {}
    first = True
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else line.split())]
        name = fields[0].upper().removesuffix(".IMG")
        if not _NAME.match(name):
            if first:
                first = False
                continue
            raise ValueError(f"{path}: line {lineno} starts with {fields[0]!r}, expected a JSRT file name such as "
                             f"'JPCLN001.IMG'")
        first = False
        if len(fields) <= max(age_col, sex_col):
            raise ValueError(f"{path}: line {lineno} ({name}) has {len(fields)} field(s), expected at least "
                             f"{max(age_col, sex_col) + 1} (age in field {age_col + 1}, sex in field {sex_col + 1})")
        where = f"{path}: line {lineno} ({name})"
        out[name] = (_parse_sex(fields[sex_col], where), _parse_age(fields[age_col], where))
    return out


def _find_images(root: Path) -> dict[str, Path]:
    """Every ``JPC{LN,NN}nnn.IMG`` under ``root`` (recursive, case-insensitive), keyed by upper-case base name."""
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.upper() != ".IMG" or not p.is_file():
            continue
        name = p.stem.upper()
        if not _NAME.match(name):
            raise ValueError(f"{p}: unexpected .IMG name, expected JPCLNnnn.IMG (nodule) or JPCNNnnn.IMG (none)")
        if name in found:
            raise ValueError(f"{root}: image {name} found twice: {found[name]} and {p}")
        found[name] = p
    return found


def _scr_index(scr_root: Path, structures: Sequence[str]) -> tuple[dict[str, str], dict[tuple[str, str], Path]]:
    """Fold of every image and the GIF of every (image, structure), from the SCR folders."""
    fold_of: dict[str, str] = {}
    gifs: dict[tuple[str, str], Path] = {}
    for fold in SCR_FOLDS:
        masks = scr_root / fold / "masks"
        if not masks.is_dir():
            raise FileNotFoundError(f"SCR: folder {masks} not found, expected "
                                    f"{scr_root}/<fold1|fold2>/masks/<structure>/")
        per_structure: dict[str, dict[str, Path]] = {}
        for structure in SCR_STRUCTURES:
            folder = masks / structure
            files = sorted(folder.iterdir()) if folder.is_dir() else []
            per_structure[structure] = {p.stem.upper(): p for p in files if p.suffix.lower() == ".gif"}
        names = set().union(*per_structure.values())
        for name in sorted(names):
            if name in fold_of:
                raise ValueError(f"SCR: image {name} has masks in both {fold_of[name]} and {fold} under {scr_root}")
            fold_of[name] = fold
            for structure in structures:
                path = per_structure[structure].get(name)
                if path is None:
                    raise FileNotFoundError(f"SCR: mask {masks / structure / (name + '.gif')} not found "
                                            f"({name} has other masks in {fold})")
                gifs[name, structure] = path
    return fold_of, gifs


def _read_mask(path: Path, size: int) -> np.ndarray:
    try:
        return (read_image(path, size, Image.NEAREST) > 0).astype(np.uint8)
    except OSError as err:
        raise OSError(f"{path}: cannot read the SCR mask GIF ({err})") from err


class JSRT(Dataset):
    """JSRT radiographs (nodule / no nodule) with the SCR masks, as a map-style dataset.

    Each item is a dict: ``image`` float32 ``(1, S, S)`` in [0, 1] (display polarity), ``label`` float32 ``(1,)``
    (``Nodule``), ``sex`` (``"M"``/``"F"``/None), ``age`` (int or None), ``patient_id`` and ``image_id`` (both the
    base name, e.g. ``"JPCLN001"``: one image per patient), and with the SCR folders ``mask`` uint8
    ``(len(structures), S, S)`` with 0/1 values, channels in ``mask_names`` order. ``S`` is ``image_size`` or
    ``native_size``.

    Args:
        root: the JSRT folder (``.IMG`` files anywhere below it, clinical tables below it).
        split: ``"fold1"``, ``"fold2"`` (the SCR folds; need the SCR folders) or None (every image).
        image_size: resize to ``image_size`` squared (bilinear; masks nearest); None keeps ``native_size``.
        native_size: side of the raw ``.IMG`` files (2048 for the real data).
        scr_root: the folder holding ``fold1/`` and ``fold2/``; default ``root/scratch`` when it exists. Without
            it there are no masks and no splits.
        structures: SCR structures to return as mask channels, from ``SCR_STRUCTURES``.
        invert: turn the stored dark-is-high values into display polarity.
    """

    def __init__(self, root: Path | str, split: str | None = None, image_size: int | None = None,
                 native_size: int = JSRT_SIZE, scr_root: Path | str | None = None,
                 structures: Sequence[str] = SCR_STRUCTURES, invert: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"JSRT: root {self.root} not found")
        if split is not None and split not in SCR_FOLDS:
            raise ValueError(f"JSRT: split={split!r}, expected one of {list(SCR_FOLDS)} (the SCR folds) or None")
        bad = [s for s in structures if s not in SCR_STRUCTURES]
        if bad:
            raise ValueError(f"JSRT: unknown structure(s) {bad}, expected names from {list(SCR_STRUCTURES)}")
        self.labels = JSRT_LABELS
        self.mask_names = tuple(structures)
        self.image_size, self.native_size, self.invert = image_size, native_size, invert
        images = _find_images(self.root)
        if scr_root is None and (self.root / "scratch").is_dir():
            scr_root = self.root / "scratch"
        self.scr_root = Path(scr_root) if scr_root is not None else None
        fold_of: dict[str, str] = {}
        self._gifs: dict[tuple[str, str], Path] = {}
        if self.scr_root is not None:
            fold_of, self._gifs = _scr_index(self.scr_root, self.mask_names)
            missing = sorted(set(fold_of) - set(images))
            if missing:
                raise FileNotFoundError(f"JSRT: image {missing[0]}.IMG (listed by SCR {fold_of[missing[0]]}) not "
                                        f"found under {self.root}; {len(missing)} missing in all")
            absent = sorted(set(images) - set(fold_of))
            if absent:
                raise ValueError(f"JSRT: image {images[absent[0]]} has no SCR masks in {self.scr_root}/fold1 or fold2")
        elif split is not None:
            raise FileNotFoundError(f"JSRT: split={split!r} needs the SCR folds; no {self.root / 'scratch'} "
                                    f"(pass scr_root=<folder holding fold1/ and fold2/>)")
        clinical: dict[str, tuple[str | None, int | None]] = {}
        tables = {p.name.upper(): p for p in self.root.rglob("*") if p.name.upper() in CLINICAL_TABLES}
        for name, (age_col, sex_col) in CLINICAL_TABLES.items():
            if name in tables:
                clinical.update(read_clinical_table(tables[name], age_col, sex_col))
        names = [n for n in sorted(images) if split is None or fold_of[n] == split]
        self.meta = pd.DataFrame({
            "image_id": names,
            "patient_id": names,
            "nodule": [int(n.startswith("JPCLN")) for n in names],
            "fold": [fold_of.get(n) for n in names],
            "sex": [clinical.get(n, (None, None))[0] for n in names],
            "age": pd.array([clinical.get(n, (None, None))[1] for n in names], dtype="Int64"),
            "path": [str(images[n]) for n in names],
        })

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        image = read_jsrt_image(row["path"], self.native_size, self.invert)
        size = self.image_size or self.native_size
        if size != self.native_size:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32)
        item = {
            "image": torch.from_numpy(np.clip(image, 0.0, 1.0))[None],
            "label": torch.tensor([float(row["nodule"])], dtype=torch.float32),
            "sex": row["sex"] if isinstance(row["sex"], str) else None,  # a missing meta cell is NaN
            "age": None if pd.isna(row["age"]) else int(row["age"]),
            "patient_id": row["patient_id"],
            "image_id": row["image_id"],
        }
        if self.scr_root is not None and self.mask_names:
            masks = [_read_mask(self._gifs[row["image_id"], s], size) for s in self.mask_names]
            item["mask"] = torch.from_numpy(np.stack(masks))
        return item
