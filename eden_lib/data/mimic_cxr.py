"""MIMIC-CXR-JPG v2.0.0 (v2.1.0 keeps the file names): the real on-disk format and its loader.

Dataset: Johnson et al., "MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs"
(arXiv:1901.07042; PhysioNet, credentialed access). Layout (``reference/dataset_formats.md`` §3)::

    mimic-cxr-jpg/2.0.0/
      mimic-cxr-2.0.0-chexpert.csv.gz      one row per study: subject_id,study_id + 14 labels (alphabetical)
      mimic-cxr-2.0.0-split.csv.gz         one row per image: dicom_id,study_id,subject_id,split
      mimic-cxr-2.0.0-metadata.csv.gz      one row per image: dicom_id,subject_id,study_id,...,ViewPosition,...
      files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

Image path: ``files/p{first 2 digits of subject_id}/p{subject_id}/s{study_id}/{dicom_id}.jpg``. Sex and age are not
in MIMIC-CXR-JPG; they come from MIMIC-IV ``hosp/patients.csv.gz`` (``subject_id, gender, anchor_age, ...``) when
its path is given as ``patients``.

Choices and pitfalls handled here:

- The label columns are in **alphabetical** order, unlike CheXpert (Ark's YAML lists them in CheXpert order by
  mistake). Labels are always selected by name from the CSV header; the default ``labels`` is ``MIMIC14``, the file's
  own alphabetical order (pass ``CHEXPERT14`` for the CheXpert order).
- Label cells have CheXpert's four states (1.0, 0.0, -1.0, blank) and take the same ``policy``/``blank`` arguments
  with the same defaults (U-Ones, blank -> 0; reasons in ``eden_lib.data.chexpert``).
- Labels are per study: images join the chexpert table on (``subject_id``, ``study_id``). An image whose study has
  no label row (some do) gets an all-NaN label, whatever the policies: nothing is known about it.
- The CSVs are gzip-compressed (an uncompressed ``.csv`` copy is read too). Every image of the split file must be
  in the metadata file with the same subject and study, or the files are from different releases: an error.
- Splits: ``"train"``, ``"validate"``, ``"test"`` (the ``split`` column; patient-disjoint), None = every image.
- ``views`` filters on ``ViewPosition`` (mostly ``PA``, ``AP``, ``LATERAL``, ``LL``; rarer values exist, and blanks,
  read as ``""``). Values are matched exactly and not checked against a list; ``("PA", "AP")`` keeps frontal images.
- ``sex`` is MIMIC-IV ``gender`` (``M``/``F``) and ``age`` is ``anchor_age`` (the age in the patient's anchor year,
  capped at 91 for anyone over 89), both None without ``patients`` or for a subject missing from it (not every
  MIMIC-CXR subject is in MIMIC-IV): unknown sex stays its own category.
- ``patient_id`` is the ``subject_id`` as a string. Image files are checked when an item is read, not up front
  (377k stats); a missing or undecodable file raises an error naming the file and its ``dicom_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.chexpert import (
    CHEXPERT14,
    apply_policy,
    check_labels,
    line_of,
    load_image,
    read_csv_lines,
    read_states,
)

MIMIC14 = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
"""The 14 labels in the column order of ``mimic-cxr-2.0.0-chexpert.csv`` (alphabetical; same names as CheXpert)."""

SPLITS = ("train", "validate", "test")
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age")
_IDS = ("subject_id", "study_id")


def _csv_file(root: Path, name: str) -> Path:
    """``root/name`` (``.csv.gz``), or its uncompressed ``.csv`` copy."""
    for path in (root / name, root / name.removesuffix(".gz")):
        if path.is_file():
            return path
    raise FileNotFoundError(f"MIMIC-CXR: {root / name} not found (nor an uncompressed {name.removesuffix('.gz')})")


def _ints(table: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    """Parse ``columns`` of ``table`` to int64 in place, or name the first line that holds something else."""
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = (values.isna() | (values % 1 != 0)).to_numpy()
        if bad.any():
            raise ValueError(f"{path}: line {line_of(table, bad)} column {column!r} has "
                             f"{str(table[column][bad].iloc[0])!r}, expected an integer")
        table[column] = values.astype(np.int64)


def _first_duplicate(table: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Name the first line whose ``keys`` repeat an earlier line's."""
    dup = table.duplicated(keys).to_numpy()
    if dup.any():
        key = dict(zip(keys, table.loc[dup, keys].iloc[0].tolist(), strict=True))
        raise ValueError(f"{path}: line {line_of(table, dup)} repeats {key}, expected one row each")


def read_patients(path: Path | str) -> pd.DataFrame:
    """MIMIC-IV ``patients.csv(.gz)`` as ``subject_id`` (int64), ``sex`` ("M"/"F"), ``age`` (``anchor_age``, int64)."""
    path = Path(path)
    table = read_csv_lines(path, PATIENT_COLUMNS, dtype={"gender": str})
    _ints(table, ("subject_id", "anchor_age"), path)
    gender = table["gender"].fillna("").str.strip()
    bad = ~gender.isin(["M", "F"])
    if bad.any():
        raise ValueError(f"{path}: line {line_of(table, bad)} has gender {gender[bad].iloc[0]!r}, expected 'M' or 'F'")
    _first_duplicate(table, ["subject_id"], path)
    return pd.DataFrame({"subject_id": table["subject_id"], "sex": gender, "age": table["anchor_age"]})


class MIMICCXR(Dataset):
    """MIMIC-CXR-JPG as a map-style dataset, one item per JPEG (see the module docstring for every choice).

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1], ``label`` float32 ``(K,)`` (NaN where unknown),
    ``sex`` ("M"/"F"/None), ``age`` (int or None), ``patient_id`` (``subject_id`` as a string) and ``dicom_id``.
    ``meta`` has one row per item: ``dicom_id, subject_id, study_id, split, view`` (``ViewPosition``),
    ``patient_id, sex, age, file`` (path relative to ``root``).

    Args:
        root: the folder with the three ``mimic-cxr-2.0.0-*.csv.gz`` files and ``files/``.
        split: ``"train"``, ``"validate"``, ``"test"`` or None (every image, in split-file order).
        labels: label names, default ``MIMIC14`` (the file's alphabetical order); any order of ``CHEXPERT14`` names.
        policy: uncertain (-1.0) cells: ``"ones"`` (default), ``"zeros"`` or ``"ignore"`` (NaN).
        blank: not-mentioned (blank) cells: ``"zeros"`` (default) or ``"ignore"`` (NaN).
        views: keep images whose ``ViewPosition`` is listed; None keeps all.
        patients: path of MIMIC-IV ``patients.csv.gz`` for sex and age; None leaves both None.
        image_size: resize to ``image_size`` squared (bilinear); None keeps the stored size.
    """

    def __init__(self, root: Path | str, split: str | None = None, labels: Sequence[str] = MIMIC14,
                 policy: str = "ones", blank: str = "zeros", views: Sequence[str] | None = None,
                 patients: Path | str | None = None, image_size: int | None = None) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"MIMICCXR: split={split!r}, expected one of {list(SPLITS)} or None")
        self.labels = check_labels(labels, CHEXPERT14, "MIMICCXR")
        self.image_size = image_size
        views = (views,) if isinstance(views, str) else views

        split_path = _csv_file(self.root, SPLIT_FILE)
        images = read_csv_lines(split_path, ("dicom_id", "study_id", "subject_id", "split"),
                                dtype={"dicom_id": str, "split": str})
        _ints(images, _IDS, split_path)
        images["dicom_id"] = images["dicom_id"].str.strip()
        images["split"] = images["split"].fillna("").str.strip()
        bad = ~images["split"].isin(SPLITS)
        if bad.any():
            raise ValueError(f"{split_path}: line {line_of(images, bad)} has split {images['split'][bad].iloc[0]!r}, "
                             f"expected one of {list(SPLITS)}")
        _first_duplicate(images, ["dicom_id"], split_path)

        meta_path = _csv_file(self.root, METADATA_FILE)
        metadata = read_csv_lines(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"),
                                  dtype={"dicom_id": str, "ViewPosition": str})
        _ints(metadata, _IDS, meta_path)
        metadata["dicom_id"] = metadata["dicom_id"].str.strip()
        _first_duplicate(metadata, ["dicom_id"], meta_path)
        joined = images.merge(metadata[["dicom_id", *_IDS, "ViewPosition"]], on="dicom_id", how="left",
                              suffixes=("", "_meta"), validate="one_to_one")
        absent = joined["subject_id_meta"].isna()
        if absent.any():
            raise ValueError(f"{meta_path}: no row for dicom_id {joined['dicom_id'][absent].iloc[0]} "
                             f"({split_path.name} line {line_of(joined, absent)}), expected one per image")
        differs = (joined["subject_id"] != joined["subject_id_meta"]) | (joined["study_id"] != joined["study_id_meta"])
        if differs.any():
            row = joined[differs].iloc[0]
            raise ValueError(f"{meta_path}: dicom_id {row['dicom_id']} has subject/study "
                             f"{int(row['subject_id_meta'])}/{int(row['study_id_meta'])}, but {split_path.name} line "
                             f"{row['_line']} says {row['subject_id']}/{row['study_id']}")
        joined["view"] = joined["ViewPosition"].fillna("").str.strip()  # blank ViewPosition -> ""
        if split is not None:
            joined = joined[joined["split"] == split]
        if views is not None:
            joined = joined[joined["view"].isin(list(views))]
        joined = joined.reset_index(drop=True)

        label_path = _csv_file(self.root, CHEXPERT_FILE)
        studies = read_csv_lines(label_path, _IDS)
        _ints(studies, _IDS, label_path)
        _first_duplicate(studies, list(_IDS), label_path)
        per_study = apply_policy(read_states(studies, self.labels, str(label_path)), policy, blank)
        row_of = pd.Series(np.arange(len(studies)), index=pd.MultiIndex.from_frame(studies[list(_IDS)]))
        found = row_of.reindex(pd.MultiIndex.from_frame(joined[list(_IDS)])).to_numpy()
        self.targets = np.full((len(joined), len(self.labels)), np.nan, np.float32)  # no label row -> unknown
        has = ~np.isnan(found)
        self.targets[has] = per_study[found[has].astype(np.int64)]

        sex = pd.Series([None] * len(joined), dtype=object)
        age = pd.Series([None] * len(joined), dtype="Int64")
        if patients is not None:
            demo = read_patients(patients).set_index("subject_id")
            known = joined["subject_id"].isin(demo.index).to_numpy()
            sex[known] = demo["sex"].reindex(joined["subject_id"][known]).to_numpy()
            age[known] = demo["age"].reindex(joined["subject_id"][known]).to_numpy()
        subject = joined["subject_id"].astype(str)
        self.meta = pd.DataFrame({
            "dicom_id": joined["dicom_id"],
            "subject_id": joined["subject_id"],
            "study_id": joined["study_id"],
            "split": joined["split"],
            "view": joined["view"],
            "patient_id": subject,
            "sex": sex,
            "age": age,
            "file": "files/p" + subject.str[:2] + "/p" + subject + "/s" + joined["study_id"].astype(str) + "/"
                    + joined["dicom_id"] + ".jpg",
        })

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        return {
            "image": load_image(self.root / row["file"], self.image_size, f"dicom_id {row['dicom_id']}"),
            "label": torch.from_numpy(self.targets[i].copy()),
            "sex": row["sex"],
            "age": None if pd.isna(row["age"]) else int(row["age"]),
            "patient_id": row["patient_id"],
            "dicom_id": row["dicom_id"],
        }
