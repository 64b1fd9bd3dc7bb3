"""VinDr-CXR (Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's annotations",
Scientific Data 2022; PhysioNet ``vindr-cxr`` v1.0.0) as a map-style dataset of DICOM images.

PhysioNet layout (``reference/dataset_formats.md`` §4; ``root`` is the ``1.0.0`` folder)::

    annotations/image_labels_train.csv   image_id,rad_id,<28 labels>   one row per (image, radiologist), 3 per image
    annotations/image_labels_test.csv    image_id,<28 labels>          one 5-radiologist consensus row per image
    annotations/annotations_train.csv    image_id,rad_id,class_name,x_min,y_min,x_max,y_max   (boxes, DICOM pixels)
    annotations/annotations_test.csv     the same; rad_id optional
    train/<image_id>.dicom   test/<image_id>.dicom                 (files end in .dicom, not .dcm)

Kaggle "VinBigData Chest X-ray Abnormalities Detection" variant (``root`` holding ``train.csv``, no
``annotations/``): ``train.csv`` has only boxes, ``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``, in
15 classes (``KAGGLE_CLASSES``; ``No finding`` rows have no box), and no global labels; test labels are not public.
The layout is detected from the files. Per radiologist, a Kaggle class is 1 when that reader drew a box of it
(``No finding`` when the reader's row says so) and 0 otherwise; labels the variant lacks (the 6 global ones and 7
local ones) are NaN. Kaggle test images come from ``test/*.dicom`` with NaN labels and no boxes.

Choices and pitfalls handled:

- Readers are aggregated per image by ``rule``: ``"any"`` (default) is 1 when any radiologist marked the label, the
  JLiang Lab "global_one" rule (Ark, Adam; it reproduces ``VinDrCXR_train_pe_global_one.txt`` for all 15,000
  images, so 93 train images have ``No finding`` = 1 together with a finding); ``"majority"`` is 1 when strictly
  more than half of the readers with a value marked it. The test file is already one consensus row per image.
  Rows are grouped by ``image_id``, not by position, so the loader does not rely on the triples being consecutive.
- ``rad_id`` is also accepted as ``rad_ID`` (VinDr-PCXR); label columns are matched after stripping, ignoring case,
  and ``Other disease`` (singular, in some test CSV copies) is read as ``Other diseases``.
- ``No finding`` annotation rows (and any row with all four coordinates empty) carry no box; a row with only some
  coordinates, a non-number or ``x_max < x_min`` fails naming the line.
- Pixels: MONOCHROME1 (many VinDr files) is inverted and BitsStored (10-16) sets the range
  (``eden_lib.data.dicom``). Sex is ``PatientSex`` (``O`` and empty are None), age ``PatientAge`` (``"045Y"``,
  often empty). There is no patient identifier in the release, so ``patient_id`` is the ``image_id``.
- The JPEG conversions the JLiang Lab trains on (``train_jpeg/``) are not part of the release and are not read;
  ``JLIANG_GLOBAL_ONE`` gives their six labels ("PE" there is pleural effusion) in their order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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

VINDR_LOCAL = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion",
)
"""The 22 local (boxed) labels, in file order."""
VINDR_GLOBAL = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
"""The 6 global (image-level) labels, in file order."""
VINDR_LABELS = VINDR_LOCAL + VINDR_GLOBAL
"""All 28 labels in the order of ``image_labels_*.csv``; also the class list that ``box_labels`` index."""
JLIANG_GLOBAL_ONE = ("Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
"""The labels of the JLiang Lab ``VinDrCXR_*_pe_global_one.txt`` files, in their order."""
KAGGLE_CLASSES = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "No finding",
)
"""The 15 classes of the Kaggle variant, by ``class_id`` 0-14."""
NO_FINDING = "No finding"
SPLITS = ("train", "test")
RULES = ("any", "majority")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
_ALIASES = {"rad_ID": "rad_id"}
_CANONICAL = {name.lower(): name for name in VINDR_LABELS} | {"other disease": "Other diseases"}


def canonical_label(name: str) -> str | None:
    """The VinDr-CXR spelling of a label name (stripped, any case, ``Other disease`` -> ``Other diseases``), or None
    when ``name`` is not a VinDr-CXR label."""
    return _CANONICAL.get(name.strip().lower())


def aggregate_readers(keys: Sequence[str], values: np.ndarray, rule: str = "any") -> tuple[list[str], np.ndarray,
                                                                                            np.ndarray]:
    """Per-reader label rows -> one row per key, keys in order of first appearance.

    Args:
        keys: ``(R,)`` image id of each row.
        values: ``(R, K)`` 0/1 with NaN where the reader gave no value.
        rule: ``"any"``: 1 if any reader has 1, else 0 if every reader has a value, else NaN. ``"majority"``: 1 if
            more than half of the readers with a value have 1, NaN if none has a value.

    Returns:
        ``(ids, labels float32 (M, K), readers int (M,))``, ``readers`` the number of rows per id.
    """
    if rule not in RULES:
        raise ValueError(f"VinDr-CXR: rule={rule!r}, expected one of {list(RULES)}")
    codes, uniques = pd.factorize(pd.Series(list(keys), dtype=object))
    m, k = len(uniques), values.shape[1]
    readers = np.bincount(codes, minlength=m)
    positive, known = np.zeros((m, k)), np.zeros((m, k))
    np.add.at(positive, codes, values == 1)
    np.add.at(known, codes, ~np.isnan(values))
    if rule == "any":
        out = np.where(positive > 0, 1.0, np.where(known == readers[:, None], 0.0, np.nan))
    else:
        out = np.where(known == 0, np.nan, (2 * positive > known).astype(np.float64))
    return [str(u) for u in uniques], out.astype(np.float32), readers


def _binary(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = df[column].map({"": np.nan, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0})
    bad = values.isna() & (df[column] != "")
    if bad.any():
        row = df[bad].iloc[0]
        raise ValueError(f"{path}: line {row['line']} (image_id {row['image_id']}) column {column!r} has "
                         f"{row[column]!r}, expected 0, 1 or empty")
    return values.to_numpy(np.float64)


def _check_ids(df: pd.DataFrame, path: Path) -> None:
    empty = df["image_id"] == ""
    if empty.any():
        raise ValueError(f"{path}: line {df[empty]['line'].iloc[0]} has an empty image_id")


def read_image_labels(path: Path | str, labels: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a PhysioNet ``image_labels_*.csv``: the rows (``image_id``, ``line``) and their ``(R, K)`` values for
    ``labels`` (canonical names), 0/1 or NaN for an empty cell. ``rad_id``/``rad_ID`` is not needed."""
    path = Path(path)
    df = read_csv_lines(path, ["image_id"], _ALIASES, "VinDr-CXR image labels")
    _check_ids(df, path)
    columns: dict[str, str] = {}
    for column in df.columns:
        name = canonical_label(column)
        if name is not None and name in columns:
            raise ValueError(f"{path}: columns {columns[name]!r} and {column!r} are both label {name!r}")
        if name is not None:
            columns[name] = column
    missing = [lab for lab in labels if lab not in columns]
    if missing:
        raise ValueError(f"{path}: missing label column(s) {missing}; found {list(df.columns)}")
    values = np.stack([_binary(df, columns[lab], path) for lab in labels], axis=1)
    return df[["image_id", "line"]], values


def _boxes(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Annotation rows -> one row per box: ``image_id, rad_id, class_index, x_min, y_min, x_max, y_max, line``."""
    classes = df["class_name"].map(canonical_label)
    unknown = classes.isna()
    if unknown.any():
        row = df[unknown].iloc[0]
        raise ValueError(f"{path}: line {row['line']} (image_id {row['image_id']}) has class_name "
                         f"{row['class_name']!r}, expected one of {list(VINDR_LABELS)}")
    coords = df[list(BOX_COLUMNS)]
    given = (coords != "").sum(axis=1)
    numbers = coords.apply(pd.to_numeric, errors="coerce")
    bad = ((given > 0) & ((given < 4) | numbers.isna().any(axis=1) | (numbers["x_max"] < numbers["x_min"])
                          | (numbers["y_max"] < numbers["y_min"])))
    if bad.any():
        row = df[bad].iloc[0]
        raise ValueError(f"{path}: line {row['line']} (image_id {row['image_id']}) has box "
                         f"{[row[c] for c in BOX_COLUMNS]}, expected four numbers with x_min <= x_max and "
                         f"y_min <= y_max, or all four empty")
    keep = (given == 4).to_numpy()
    out = numbers[keep].astype(np.float32)
    out.insert(0, "class_index", classes[keep].map(VINDR_LABELS.index).astype(np.int64))
    out.insert(0, "rad_id", df["rad_id"][keep] if "rad_id" in df.columns else "")
    out.insert(0, "image_id", df["image_id"][keep])
    out["line"] = df["line"][keep]
    return out.reset_index(drop=True)


def _kaggle_reader_labels(df: pd.DataFrame, labels: Sequence[str], path: Path) -> tuple[list[str], np.ndarray]:
    """Kaggle box rows -> one label row per (image, reader): 1 for the classes the reader used, 0 for the other
    Kaggle classes, NaN for labels the variant does not have."""
    classes = df["class_name"].map(canonical_label)
    outside = ~classes.isin(KAGGLE_CLASSES)
    if outside.any():
        row = df[outside].iloc[0]
        raise ValueError(f"{path}: line {row['line']} (image_id {row['image_id']}) has class_name "
                         f"{row['class_name']!r}, expected one of {list(KAGGLE_CLASSES)}")
    pairs, pair_keys = pd.factorize(df["image_id"] + "\t" + df["rad_id"])
    values = np.where(np.isin(labels, KAGGLE_CLASSES), 0.0, np.nan)[None].repeat(len(pair_keys), axis=0)
    col = {lab: k for k, lab in enumerate(labels)}
    for pair, name in zip(pairs, classes):
        if name in col:
            values[pair, col[name]] = 1.0
    return [key.split("\t")[0] for key in pair_keys], values


@dataclass
class _Split:
    """One split: image ids, aggregated labels ``(M, K)``, reader counts, box rows, and for error messages the
    metadata file and each id's first line in it."""

    ids: list[str]
    targets: np.ndarray
    readers: np.ndarray
    boxes: pd.DataFrame
    source: Path | None
    first_line: dict[str, int]


def _physionet_split(root: Path, split: str, labels: Sequence[str], rule: str) -> _Split:
    labels_file = root / "annotations" / f"image_labels_{split}.csv"
    rows, values = read_image_labels(labels_file, labels)
    ids, targets, readers = aggregate_readers(rows["image_id"].tolist(), values, rule)
    boxes_file = root / "annotations" / f"annotations_{split}.csv"
    ann = read_csv_lines(boxes_file, ["image_id", "class_name", *BOX_COLUMNS], _ALIASES, "VinDr-CXR annotations")
    _check_ids(ann, boxes_file)
    stray = ~ann["image_id"].isin(set(ids))
    if stray.any():
        raise ValueError(f"{boxes_file}: line {ann[stray]['line'].iloc[0]} has image_id "
                         f"{ann[stray]['image_id'].iloc[0]}, which is not in {labels_file.name}")
    first = rows.drop_duplicates("image_id").set_index("image_id")["line"].to_dict()
    return _Split(ids, targets, readers, _boxes(ann, boxes_file), labels_file, first)


def _kaggle_split(root: Path, split: str, labels: Sequence[str], rule: str) -> _Split:
    if split == "test":
        if not (root / "test").is_dir():
            raise FileNotFoundError(f"VinDrCXR: Kaggle test image folder {root / 'test'} not found")
        ids = sorted(index_files([root / "test"], ".dicom"))
        empty = _boxes(pd.DataFrame(columns=["image_id", "rad_id", "class_name", *BOX_COLUMNS, "line"]), root)
        return _Split(ids, np.full((len(ids), len(labels)), np.nan, np.float32), np.zeros(len(ids), np.int64),
                      empty, None, {})
    path = root / "train.csv"
    df = read_csv_lines(path, ["image_id", "class_name", "rad_id", *BOX_COLUMNS], _ALIASES, "VinDr-CXR Kaggle train")
    _check_ids(df, path)
    keys, values = _kaggle_reader_labels(df, labels, path)
    ids, targets, readers = aggregate_readers(keys, values, rule)
    first = df.drop_duplicates("image_id").set_index("image_id")["line"].to_dict()
    return _Split(ids, targets, readers, _boxes(df, path), path, first)


class VinDrCXR(Dataset):
    """VinDr-CXR (PhysioNet layout, or the Kaggle variant) as a map-style dataset.

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1] (high = bright), ``label`` float32 ``(K,)`` (NaN
    where unknown), ``sex`` ``"M"``/``"F"``/None, ``age`` int or None, ``patient_id`` and ``image_id`` (the same
    32-hex id), ``boxes`` float32 ``(N, 4)`` ``(x_min, y_min, x_max, y_max)`` in pixels of the returned image (every
    reader's boxes; ``N`` varies, so batch with a collate that keeps lists), ``box_labels`` int64 ``(N,)`` indices
    into ``VINDR_LABELS`` and ``box_rad_ids`` list of ``N`` reader ids (``""`` where the file has none).

    ``meta`` has one row per item: ``image_id, split, patient_id, n_readers, n_boxes, sex, age, view``.

    Args:
        root: the PhysioNet ``1.0.0`` folder, or the Kaggle competition folder.
        split: ``"train"``, ``"test"`` or None (train then test).
        labels: label names (any spelling ``canonical_label`` accepts), default all 28 ``VINDR_LABELS``;
            ``JLIANG_GLOBAL_ONE`` gives the JLiang Lab task.
        rule: reader aggregation, ``"any"`` (JLiang Lab) or ``"majority"``.
        image_size: resize to ``image_size`` squared (bilinear; boxes scale with it); None keeps the DICOM size.
        workers: threads reading the DICOM headers for ``meta`` at construction.
    """

    box_classes = VINDR_LABELS

    def __init__(self, root: Path | str, split: str | None = None, labels: Sequence[str] = VINDR_LABELS,
                 rule: str = "any", image_size: int | None = None, workers: int = 4) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"VinDrCXR: split={split!r}, expected one of {list(SPLITS)} or None")
        names = [canonical_label(lab) for lab in labels]
        if not names or None in names:
            raise ValueError(f"VinDrCXR: unknown label(s) {[l for l, n in zip(labels, names) if n is None]}; "
                             f"expected names from {list(VINDR_LABELS)}")
        self.labels = tuple(names)
        self.image_size = image_size
        if (self.root / "annotations").is_dir():
            self.variant, read_split = "physionet", _physionet_split
        elif (self.root / "train.csv").is_file():
            self.variant, read_split = "kaggle", _kaggle_split
        else:
            raise FileNotFoundError(f"VinDrCXR: {self.root} has neither annotations/ (PhysioNet layout) nor train.csv "
                                    f"(Kaggle layout)")
        parts, paths, targets, boxes = [], [], [], []
        for name in SPLITS if split is None else (split,):
            part = read_split(self.root, name, self.labels, rule)
            position = {image_id: len(paths) + k for k, image_id in enumerate(part.ids)}
            for image_id in part.ids:
                path = self.root / name / f"{image_id}.dicom"
                if not path.is_file():
                    where = f" ({part.source.name} line {part.first_line[image_id]})" if part.source else ""
                    raise FileNotFoundError(f"VinDrCXR: image {path} not found for image_id {image_id}{where}")
                paths.append(path)
            boxes.append(part.boxes.assign(item=part.boxes["image_id"].map(position)))
            n_boxes = part.boxes["image_id"].value_counts().reindex(part.ids, fill_value=0).to_numpy()
            parts.append(pd.DataFrame({"image_id": part.ids, "split": name, "patient_id": part.ids,
                                       "n_readers": part.readers, "n_boxes": n_boxes}))
            targets.append(part.targets)
        self.paths = paths
        self.targets = np.concatenate(targets).astype(np.float32)
        headers = header_frame(paths, workers)
        self.meta = pd.concat([pd.concat(parts, ignore_index=True), headers[["sex", "age", "view"]]], axis=1)
        self._boxes = pd.concat(boxes, ignore_index=True)
        self._box_rows = {int(k): v for k, v in self._boxes.groupby("item").indices.items()}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        pixels = read_pixels(self.paths[i])
        rows = self._boxes.iloc[self._box_rows.get(i, np.zeros(0, np.int64))]
        return {
            "image": to_image_tensor(pixels, self.image_size),
            "label": torch.from_numpy(self.targets[i].copy()),
            "sex": row["sex"],
            "age": optional_int(row["age"]),
            "patient_id": row["patient_id"],
            "image_id": row["image_id"],
            "boxes": scale_boxes(rows[list(BOX_COLUMNS)].to_numpy(), pixels.shape, self.image_size),
            "box_labels": torch.tensor(rows["class_index"].to_numpy(np.int64)),
            "box_rad_ids": rows["rad_id"].tolist(),
        }
