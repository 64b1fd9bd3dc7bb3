"""CheXpert v1.0 and v1.0-small: the real on-disk format, its label states and uncertainty policies, and the loader.

Dataset: Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison",
AAAI 2019 (arXiv:1901.07031). Layout (``reference/dataset_formats.md`` §2)::

    CheXpert-v1.0-small/                   (or CheXpert-v1.0/ at full resolution, or a renamed copy)
      train.csv  valid.csv                 one row per image
      train/patient00001/study1/view1_frontal.jpg
      valid/patient64541/study1/view1_frontal.jpg

Both CSVs have the header ``Path,Sex,Age,Frontal/Lateral,AP/PA`` followed by the 14 observations (``CHEXPERT14``).
Each observation cell holds one of four states: ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, and blank =
not mentioned in the report. A blank is *not* a 0.0, so cells are read with pandas' default NA handling and each
state is converted explicitly (``read_states``, then ``apply_policy``; the MIMIC-CXR loader reuses both).

Choices and pitfalls handled here:

- ``Path`` values start with the dataset folder name (``CheXpert-v1.0-small/train/...``), and re-releases rename
  that folder. Paths are therefore resolved from their ``train``/``valid``/``test`` component onward, under ``root``.
  This works for v1.0, v1.0-small and renamed copies alike.
- ``policy`` for uncertain (-1.0) cells, after the CheXpert paper: ``"ones"`` (U-Ones, -1 -> 1), ``"zeros"``
  (U-Zeros, -1 -> 0) or ``"ignore"`` (U-Ignore, -1 -> NaN, i.e. masked out of the loss). The paper's names
  (``"U-Ones"``...) are accepted too. Default ``"ones"``: U-Ones is the deterministic form of the JLiang Lab default
  (``LSR-Ones``, uniform in [0.55, 0.85]) and what Ark uses for MIMIC-CXR. The random LSR variants are not offered.
- ``blank`` for not-mentioned cells: ``"zeros"`` (blank -> 0) or ``"ignore"`` (blank -> NaN). Default ``"zeros"``,
  as in the JLiang Lab loaders (``unknown_label=0``) and the CheXpert paper's training: blank is the majority state
  of every observation, so reading it as NaN would drop most negatives and leave labels biased towards positives.
  ``valid.csv`` has no blanks and no -1.0 (radiologist consensus), so the evaluation labels do not depend on either.
- ``views``: keep rows whose ``Frontal/Lateral`` value (``Frontal``, ``Lateral``) or ``AP/PA`` value (``AP``,
  ``PA``, ``LL``, ``RL``) is listed. Lateral rows have a blank ``AP/PA``: it is read as ``""`` (never a float NaN),
  so ``views=("PA",)`` keeps only frontal PA images and ``views=("Lateral",)`` every lateral.
- ``Sex`` is ``Male``/``Female``/``Unknown`` (one ``Unknown`` in train): ``Unknown`` becomes None.
- ``Age`` is an integer capped at 90; three train rows have 0, which is kept as given (filter ``meta.age > 0`` to
  drop them). A blank age becomes None.
- ``patient_id`` is the ``patientNNNNN`` folder of the path (train and valid patients do not overlap).
- Splits: ``"train"`` (``train.csv``), ``"valid"`` (``valid.csv``), None = both, train first. The later
  radiologist-labelled test set (no Sex/Age/view columns; sex only in a separate demographics sheet) is not read.
- Image files are checked when an item is read, not up front (223k stats); a missing or undecodable file raises an
  error naming the file and its CSV line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.chestxray14 import read_image

CHEXPERT14 = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observations in CSV order."""

COMPETITION5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The 5 CheXpert competition labels (Ark's ``test_diseases_name``)."""

SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv"}
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
POLICIES: Mapping[str, float] = {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}
"""Value given to an uncertain (-1.0) cell under each policy."""
BLANKS: Mapping[str, float] = {"zeros": 0.0, "ignore": math.nan}
"""Value given to a blank (not mentioned) cell."""
SEXES = {"Male": "M", "Female": "F", "Unknown": None}
VIEWS = ("Frontal", "Lateral", "AP", "PA", "LL", "RL")
_SPLIT_DIRS = ("train", "valid", "test")
_PATIENT = re.compile(r"patient\d+")
_STUDY = re.compile(r"study\d+")


def _option(value: str, options: Mapping[str, float], name: str) -> float:
    key = str(value).lower().removeprefix("u-")
    if key not in options:
        raise ValueError(f"{name}={value!r}, expected one of {list(options)}")
    return options[key]


def read_states(table: pd.DataFrame, labels: Sequence[str], source: str) -> np.ndarray:
    """Raw label states float32 ``(N, K)``: 1, 0, -1, and NaN for a blank cell.

    ``table`` is a CSV read with pandas' default NA handling and a ``_line`` column (1-based file line, header = 1);
    a cell that is not 1.0, 0.0, -1.0 or blank raises an error naming ``source``, the line and the column.
    """
    missing = [lab for lab in labels if lab not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing label column(s) {missing}; found {list(table.columns)}")
    out = np.empty((len(table), len(labels)), np.float32)
    for k, lab in enumerate(labels):
        raw = table[lab]
        values = pd.to_numeric(raw, errors="coerce")
        bad = (raw.notna() & ~values.isin([1.0, 0.0, -1.0])).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{source}: line {table['_line'].iloc[i]} column {lab!r} has {str(raw.iloc[i])!r}, "
                             "expected 1.0, 0.0, -1.0 or blank")
        out[:, k] = values.to_numpy(np.float32)
    return out


def apply_policy(states: np.ndarray, policy: str = "ones", blank: str = "zeros") -> np.ndarray:
    """Labels float32 from raw states: -1 -> ``POLICIES[policy]``, blank (NaN) -> ``BLANKS[blank]``."""
    uncertain, not_mentioned = _option(policy, POLICIES, "policy"), _option(blank, BLANKS, "blank")
    out = states.astype(np.float32, copy=True)
    out[states == -1.0] = uncertain
    out[np.isnan(states)] = not_mentioned
    return out


def check_labels(labels: Sequence[str], known: Sequence[str], owner: str) -> tuple[str, ...]:
    """``labels`` as a tuple, or an error naming the unknown ones."""
    unknown = [lab for lab in labels if lab not in known]
    if unknown:
        raise ValueError(f"{owner}: unknown label(s) {unknown}; expected names from {list(known)}")
    return tuple(labels)


def line_of(table: pd.DataFrame, mask: np.ndarray | pd.Series) -> int:
    """1-based file line of the first row where ``mask`` is true."""
    return int(table["_line"].to_numpy()[np.flatnonzero(np.asarray(mask))[0]])


def read_csv_lines(path: Path, required: Sequence[str], dtype: Mapping[str, type] | None = None) -> pd.DataFrame:
    """A CSV (plain or ``.gz``) with pandas' default NA handling, a ``_line`` column, and its required columns."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    table = pd.read_csv(path, dtype=dtype, keep_default_na=True, skip_blank_lines=False)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(table.columns)}, expected {list(required)}")
    table["_line"] = np.arange(len(table)) + 2  # blank lines are kept while numbering, then dropped
    return table[table[list(table.columns[:-1])].notna().any(axis=1)].reset_index(drop=True)


def load_image(path: Path, size: int | None, source: str) -> torch.Tensor:
    """One radiograph as float32 ``(1, H, W)`` in [0, 1]; errors name the file and ``source`` (its CSV row)."""
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found ({source})")
    try:
        image = read_image(path, size)
    except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified, truncated or malformed file
        raise ValueError(f"image {path} ({source}) cannot be decoded: {err}") from err
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None]


def _parse_path(value: object, source: str) -> tuple[str, str, str]:
    """``(relative path from the split folder, patient folder, study folder)`` of one ``Path`` cell."""
    parts = PurePosixPath(str(value).strip().replace("\\", "/")).parts if isinstance(value, str) else ()
    start = next((k for k, part in enumerate(parts) if part in _SPLIT_DIRS), None)
    tail = parts[start:] if start is not None else ()
    if len(tail) != 4 or not _PATIENT.fullmatch(tail[1]) or not _STUDY.fullmatch(tail[2]):
        raise ValueError(f"{source}: Path {value!r}, expected "
                         "'[<dataset folder>/]{train|valid|test}/patientNNNNN/studyN/viewK_<frontal|lateral>.jpg'")
    return "/".join(tail), tail[1], tail[2]


def read_chexpert_csv(path: Path | str, labels: Sequence[str] = CHEXPERT14) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse a CheXpert ``train.csv``/``valid.csv``: ``(meta, states)``.

    ``meta`` has one row per CSV row, columns ``path`` (the ``Path`` cell), ``file`` (relative to the dataset folder),
    ``patient_id``, ``study``, ``sex`` ("M"/"F"/None), ``age`` (nullable Int64), ``view`` (``Frontal``/``Lateral``),
    ``projection`` (``AP``/``PA``/``LL``/``RL`` or ``""``) and ``line`` (1-based CSV line). ``states`` is
    ``read_states`` of ``labels``.
    """
    path = Path(path)
    text = {c: str for c in ("Path", "Sex", "Frontal/Lateral", "AP/PA")}
    table = read_csv_lines(path, META_COLUMNS, dtype=text)
    parsed = [_parse_path(v, f"{path} line {n}") for v, n in zip(table["Path"], table["_line"], strict=True)]
    sex = table["Sex"].map(lambda v: v.strip() if isinstance(v, str) else v)
    bad = ~sex.isin(list(SEXES))
    if bad.any():
        raise ValueError(f"{path}: line {line_of(table, bad)} has Sex {str(sex[bad].iloc[0])!r}, "
                         f"expected one of {list(SEXES)}")
    age = pd.to_numeric(table["Age"], errors="coerce")
    bad = (table["Age"].notna() & (age.isna() | (age % 1 != 0) | (age < 0))).to_numpy()
    if bad.any():
        raise ValueError(f"{path}: line {line_of(table, bad)} has Age {str(table['Age'][bad].iloc[0])!r}, "
                         "expected a non-negative integer or blank")
    view = table["Frontal/Lateral"].fillna("").str.strip()
    bad = ~view.isin(["Frontal", "Lateral"])
    if bad.any():
        raise ValueError(f"{path}: line {line_of(table, bad)} has Frontal/Lateral {view[bad].iloc[0]!r}, "
                         "expected 'Frontal' or 'Lateral'")
    meta = pd.DataFrame({
        "path": table["Path"].str.strip(),
        "file": [p[0] for p in parsed],
        "patient_id": [p[1] for p in parsed],
        "study": [p[2] for p in parsed],
        "sex": pd.Series([SEXES[v] for v in sex], dtype=object),  # Unknown -> None, not NaN
        "age": age.astype("Int64"),
        "view": view,
        "projection": table["AP/PA"].fillna("").str.strip(),  # blank for every Lateral row
        "line": table["_line"],
    })
    return meta, read_states(table, labels, str(path))


class CheXpert(Dataset):
    """CheXpert v1.0 / v1.0-small as a map-style dataset (see the module docstring for every choice).

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1], ``label`` float32 ``(K,)`` (NaN where the
    policies say unknown), ``sex`` ("M"/"F"/None), ``age`` (int or None), ``patient_id`` (``"patientNNNNN"``) and
    ``path`` (the CSV ``Path`` value).

    Args:
        root: the dataset folder (``CheXpert-v1.0-small/``, ``CheXpert-v1.0/`` or a renamed copy) holding the CSVs.
        split: ``"train"``, ``"valid"`` or None (both, train rows first).
        labels: observation columns, default all ``CHEXPERT14``.
        policy: uncertain (-1.0) cells: ``"ones"`` (default), ``"zeros"`` or ``"ignore"`` (NaN).
        blank: not-mentioned (blank) cells: ``"zeros"`` (default) or ``"ignore"`` (NaN).
        views: keep rows whose ``Frontal/Lateral`` or ``AP/PA`` value is listed (from ``VIEWS``); None keeps all.
        image_size: resize to ``image_size`` squared (bilinear); None keeps the stored size.
    """

    def __init__(self, root: Path | str, split: str | None = None, labels: Sequence[str] = CHEXPERT14,
                 policy: str = "ones", blank: str = "zeros", views: Sequence[str] | None = None,
                 image_size: int | None = None) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLIT_FILES:
            raise ValueError(f"CheXpert: split={split!r}, expected one of {list(SPLIT_FILES)} or None")
        self.labels = check_labels(labels, CHEXPERT14, "CheXpert")
        views = (views,) if isinstance(views, str) else views
        if views is not None:
            unknown = [v for v in views if v not in VIEWS]
            if unknown:
                raise ValueError(f"CheXpert: views {unknown}, expected names from {list(VIEWS)}")
        metas, targets = [], []
        for name in SPLIT_FILES if split is None else (split,):
            meta, states = read_chexpert_csv(self.root / SPLIT_FILES[name], self.labels)
            meta.insert(0, "split", name)
            if views is not None:
                keep = (meta["view"].isin(views) | meta["projection"].isin(views)).to_numpy()
                meta, states = meta[keep], states[keep]
            metas.append(meta)
            targets.append(apply_policy(states, policy, blank))
        self.meta = pd.concat(metas, ignore_index=True)
        self.targets = np.concatenate(targets)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        source = f"{SPLIT_FILES[row['split']]} line {row['line']}"
        return {
            "image": load_image(self.root / row["file"], self.image_size, source),
            "label": torch.from_numpy(self.targets[i].copy()),
            "sex": row["sex"],
            "age": None if pd.isna(row["age"]) else int(row["age"]),
            "patient_id": row["patient_id"],
            "path": row["path"],
        }
