"""RSNA Pneumonia Detection Challenge (Kaggle 2018; Shih et al., "Augmenting the National Institutes of Health Chest
Radiograph Dataset with Expert Annotations of Possible Pneumonia", Radiology: AI 2019) as a map-style dataset.

Layout (``reference/dataset_formats.md`` §5; ``root`` is the competition folder)::

    stage_2_train_images/<patientId>.dcm     26,684 files, 1024 x 1024, 8-bit MONOCHROME2
    stage_2_test_images/<patientId>.dcm      3,000 files, labels not released
    stage_2_train_labels.csv                 patientId,x,y,width,height,Target        one row per box
    stage_2_detailed_class_info.csv          patientId,class                          duplicated per box

Labels: the three classes of ``stage_2_detailed_class_info.csv`` (``RSNA_CLASSES``, the JLiang Lab order 0/1/2 of
``RSNAPneumonia_*.txt``), one-hot; ``labels=("Lung Opacity",)`` gives the binary pneumonia task. Test images have
NaN labels and no boxes.

Pitfalls handled:

- ``stage_2_train_labels.csv`` has one row per box (a patient with two opacities has two ``Target`` 1 rows): rows are
  grouped by ``patientId`` into one label and a list of boxes ``(x, y, width, height)`` -> ``(x_min, y_min, x_max,
  y_max)``, in pixels of the shipped 1024 x 1024 image. ``Target`` 0 rows must have empty coordinates, ``Target`` 1
  rows four numbers with positive width and height; a patient with both fails.
- The class file repeats each patient once per box: it is deduplicated by ``patientId``, and repeated rows must
  agree. Class strings are matched with the spaces around ``/`` normalised (``No Lung Opacity / Not Normal`` in the
  file, ``No Lung Opacity/Not Normal`` in the JLiang Lab description). ``Lung Opacity`` must coincide with
  ``Target`` 1, and both files must list the same patients.
- Sex, age and view come from the DICOM header (``PatientSex``, ``PatientAge`` as a plain number string,
  ``ViewPosition`` PA/AP). Five ages (148-155) are impossible and read as None (``eden_lib.data.dicom.MAX_AGE``).
  ``PixelSpacing`` describes the original film, not the 1024 x 1024 image, and is not used.
- The pixel data is probably JPEG Baseline in the real files; decoding goes through pydicom and assumes no transfer
  syntax. The JLiang Lab trains on PNG conversions with its own random re-split (``RSNAPneumonia_*.txt``), which are
  not part of the release and not read here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.dicom import (
    header_frame,
    index_files,
    optional_int,
    read_csv_lines,
    read_pixels,
    scale_boxes,
    to_image_tensor,
)

RSNA_CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
"""The three classes in the JLiang Lab order (class index 0, 1, 2)."""
LUNG_OPACITY = "Lung Opacity"
LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGE_DIRS = {"train": "stage_2_train_images", "test": "stage_2_test_images"}
BOX_COLUMNS = ("x", "y", "width", "height")


def canonical_class(name: str) -> str | None:
    """The file spelling of a class name (spaces around ``/`` normalised), or None when it is not a class."""
    text = re.sub(r"\s*/\s*", " / ", name.strip())
    return text if text in RSNA_CLASSES else None


def read_train_labels(root: Path | str) -> pd.DataFrame:
    """Both CSVs of ``root`` -> one row per patient (order of ``stage_2_train_labels.csv``): ``patient_id``,
    ``class``, ``target`` (0/1) and ``boxes`` (float32 ``(N, 4)`` ``x_min, y_min, x_max, y_max``)."""
    root = Path(root)
    path = root / LABELS_FILE
    df = read_csv_lines(path, ["patientId", *BOX_COLUMNS, "Target"], what="RSNA train labels")
    for row in df.itertuples(index=False):
        where = f"{path}: line {row.line} (patientId {row.patientId or '<empty>'})"
        if not row.patientId:
            raise ValueError(f"{where}: empty patientId")
        if row.Target not in ("0", "1"):
            raise ValueError(f"{where}: Target {row.Target!r}, expected 0 or 1")
        coords = [getattr(row, c) for c in BOX_COLUMNS]
        if row.Target == "0" and any(coords):
            raise ValueError(f"{where}: Target 0 with box {coords}, expected empty x, y, width, height")
        if row.Target == "1":
            numbers = pd.to_numeric(pd.Series(coords), errors="coerce")
            if numbers.isna().any() or numbers.iloc[2] <= 0 or numbers.iloc[3] <= 0:
                raise ValueError(f"{where}: Target 1 with box {coords}, expected numbers x, y, width > 0, height > 0")
    mixed = df.groupby("patientId", sort=False)["Target"].nunique() > 1
    if mixed.any():
        line = df[df["patientId"] == mixed[mixed].index[0]]["line"].tolist()
        raise ValueError(f"{path}: patientId {mixed[mixed].index[0]} has both Target 0 and 1 rows (lines {line})")
    positive = df[df["Target"] == "1"]
    xywh = positive[list(BOX_COLUMNS)].astype(np.float32).to_numpy()
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    box_rows = pd.Series(range(len(positive)), index=positive["patientId"].to_numpy()).groupby(level=0).indices
    patients = df.drop_duplicates("patientId")
    out = pd.DataFrame({"patient_id": patients["patientId"].to_numpy(),
                        "target": patients["Target"].astype(np.int64).to_numpy()})
    out["boxes"] = [xyxy[box_rows[p]] if p in box_rows else np.zeros((0, 4), np.float32) for p in out["patient_id"]]
    out["class"] = _read_classes(root / CLASS_FILE, out, path)
    return out


def _read_classes(path: Path, patients: pd.DataFrame, labels_path: Path) -> list[str]:
    """The class of each patient in ``patients`` from the (per-box duplicated) class file, checked against Target."""
    df = read_csv_lines(path, ["patientId", "class"], what="RSNA detailed class info")
    classes = df["class"].map(canonical_class)
    bad = classes.isna()
    if bad.any():
        row = df[bad].iloc[0]
        raise ValueError(f"{path}: line {row['line']} (patientId {row['patientId']}) has class {row['class']!r}, "
                         f"expected one of {list(RSNA_CLASSES)}")
    df = df.assign(canonical=classes)
    conflict = df.groupby("patientId", sort=False)["canonical"].nunique() > 1
    if conflict.any():
        lines = df[df["patientId"] == conflict[conflict].index[0]]["line"].tolist()
        raise ValueError(f"{path}: patientId {conflict[conflict].index[0]} has different classes on lines {lines}")
    first = df.drop_duplicates("patientId").set_index("patientId")
    extra = first.index.difference(patients["patient_id"])
    if len(extra):
        raise ValueError(f"{path}: line {first.loc[extra[0], 'line']} has patientId {extra[0]}, which is not in "
                         f"{labels_path.name}")
    missing = pd.Index(patients["patient_id"]).difference(first.index)
    if len(missing):
        raise ValueError(f"{path}: no class for patientId {missing[0]} (listed in {labels_path.name})")
    out = first.loc[patients["patient_id"], "canonical"].tolist()
    for patient, target, name in zip(patients["patient_id"], patients["target"], out):
        if (name == LUNG_OPACITY) != bool(target):
            raise ValueError(f"{path}: patientId {patient} has class {name!r} but Target {target} in "
                             f"{labels_path.name}; expected 'Lung Opacity' exactly when Target is 1")
    return out


class RSNAPneumonia(Dataset):
    """RSNA Pneumonia Detection (stage 2) as a map-style dataset.

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1], ``label`` float32 ``(K,)`` one-hot over
    ``labels`` (NaN for test images), ``sex`` ``"M"``/``"F"``/None, ``age`` int or None, ``patient_id`` (the
    ``patientId`` UUID, one image per patient), ``view`` (``"PA"``/``"AP"``/None) and ``boxes`` float32 ``(N, 4)``
    ``(x_min, y_min, x_max, y_max)`` lung-opacity boxes in pixels of the returned image (``N`` = 0 for negatives and
    for test images; ``N`` varies, so batch with a collate that keeps lists).

    ``meta`` has one row per item: ``patient_id, split, class`` (None for test) ``, target`` (0/1, <NA> for test)
    ``, n_boxes, sex, age, view``.

    Args:
        root: the competition folder.
        split: ``"train"`` (the labelled stage-2 train set), ``"test"`` (stage-2 test, unlabelled) or None (both).
        labels: class names (spaces around ``/`` free), default all three ``RSNA_CLASSES``.
        image_size: resize to ``image_size`` squared (bilinear; boxes scale with it); None keeps 1024.
        workers: threads reading the DICOM headers for ``meta`` at construction.
    """

    def __init__(self, root: Path | str, split: str | None = None, labels: Sequence[str] = RSNA_CLASSES,
                 image_size: int | None = None, workers: int = 4) -> None:
        self.root = Path(root)
        if split is not None and split not in IMAGE_DIRS:
            raise ValueError(f"RSNAPneumonia: split={split!r}, expected one of {list(IMAGE_DIRS)} or None")
        names = [canonical_class(lab) for lab in labels]
        if not names or None in names:
            raise ValueError(f"RSNAPneumonia: labels={list(labels)}, expected names from {list(RSNA_CLASSES)}")
        self.labels = tuple(names)
        self.image_size = image_size
        parts = []
        for name in IMAGE_DIRS if split is None else (split,):
            folder = self.root / IMAGE_DIRS[name]
            if name == "train":
                part = read_train_labels(self.root)
                paths = [folder / f"{p}.dcm" for p in part["patient_id"]]
                missing = next((p for p in paths if not p.is_file()), None)
                if missing is not None:
                    raise FileNotFoundError(f"RSNAPneumonia: image {missing} not found for patientId {missing.stem} "
                                            f"(listed in {LABELS_FILE})")
            else:
                if not folder.is_dir():
                    raise FileNotFoundError(f"RSNAPneumonia: test image folder {folder} not found")
                found = index_files([folder], ".dcm")
                part = pd.DataFrame({"patient_id": sorted(found), "target": pd.NA, "class": None})
                part["boxes"] = [np.zeros((0, 4), np.float32)] * len(part)
                paths = [found[p] for p in part["patient_id"]]
            parts.append(part.assign(split=name, path=paths))
        table = pd.concat(parts, ignore_index=True)
        self.paths: list[Path] = table["path"].tolist()
        self._boxes: list[np.ndarray] = table["boxes"].tolist()
        self.targets = np.array([[np.nan if c is None else float(c == lab) for lab in self.labels]
                                 for c in table["class"]], np.float32).reshape(len(table), len(self.labels))
        headers = header_frame(self.paths, workers)
        self.meta = pd.DataFrame({
            "patient_id": table["patient_id"], "split": table["split"], "class": table["class"],
            "target": pd.array(table["target"], dtype="Int64"), "n_boxes": [len(b) for b in self._boxes],
        }).join(headers[["sex", "age", "view"]])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        pixels = read_pixels(self.paths[i])
        return {
            "image": to_image_tensor(pixels, self.image_size),
            "label": torch.from_numpy(self.targets[i].copy()),
            "sex": row["sex"],
            "age": optional_int(row["age"]),
            "patient_id": row["patient_id"],
            "view": row["view"],
            "boxes": scale_boxes(self._boxes[i], pixels.shape, self.image_size),
        }
