"""RSNA-STR Pulmonary Embolism Detection (Kaggle 2020; Colak et al., Radiol. Artif. Intell. 3(2), 2021): CTPA series.

Layout (``reference/dataset_formats.md`` §9)::

    root/train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm     512 x 512 CT slices
    root/test/...                                                              same tree, no labels
    root/train.csv    one row per image: the 3 UIDs, pe_present_on_image and 13 exam-level 0/1 columns
    root/test.csv     the 3 UID columns only

One item per series (one series per study in practice). ``labels`` are exam-level columns (default the nine scored
ones, ``SCORED_EXAM_LABELS``; any of ``EXAM_LABELS`` may be asked for, the informational ``qa_motion``,
``qa_contrast``, ``flow_artifact``, ``true_filling_defect_not_pe`` included); the image-level
``pe_present_on_image`` comes as ``slice_labels`` in the volume's Z order. Test items have NaN labels.
``patient_id`` is the ``StudyInstanceUID`` (the data are de-identified; no patient key exists). Sex and age are read
from the DICOM header when present (mostly removed).

Splits: ``"train"``, ``"test"``; None = both (those whose CSV exists).

Pitfalls handled: slices are ordered by ``ImagePositionPatient`` along the normal, never by ``InstanceNumber`` or file
name, and ``slice_labels`` / ``sop_uids`` follow that order; HU = pixel * RescaleSlope + RescaleIntercept per
slice (``ct3d``); exam-level labels repeated on every image row must agree within a study (an error naming the
study and column otherwise); label cells must be 0 or 1 (an error naming the CSV line and SOPInstanceUID); a
duplicated SOPInstanceUID row is an error; a listed image missing on disk is an error naming the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.ct3d import dicom_sex, parse_age, read_dicom_series, scale_hu
from eden_lib.data.subvolumes import HU_WINDOW

UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
IMAGE_LABEL = "pe_present_on_image"
EXAM_LABELS = ("negative_exam_for_pe", "qa_motion", "qa_contrast", "flow_artifact", "rv_lv_ratio_gte_1",
               "rv_lv_ratio_lt_1", "leftsided_pe", "chronic_pe", "true_filling_defect_not_pe", "rightsided_pe",
               "acute_and_chronic_pe", "central_pe", "indeterminate")
"""The exam-level columns of ``train.csv``, in file order."""
INFORMATIONAL = ("qa_motion", "qa_contrast", "flow_artifact", "true_filling_defect_not_pe")
SCORED_EXAM_LABELS = tuple(c for c in EXAM_LABELS if c not in INFORMATIONAL)
SPLITS = ("train", "test")


def read_labels_csv(path: Path, split: str) -> pd.DataFrame:
    """Read ``train.csv`` (UIDs + 14 label columns, checked 0/1 and consistent per study) or ``test.csv`` (UIDs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RSNA-STR PE: {path} does not exist")
    table = pd.read_csv(path, dtype={c: str for c in UID_COLUMNS})
    table.columns = [str(c).strip() for c in table.columns]
    columns = list(UID_COLUMNS) + ([IMAGE_LABEL, *EXAM_LABELS] if split == "train" else [])
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {columns}")
    table = table[columns].copy()
    for c in UID_COLUMNS:
        table[c] = table[c].str.strip()
    empty = table[list(UID_COLUMNS)].isna().any(axis=1) | (table[list(UID_COLUMNS)] == "").any(axis=1)
    if empty.any():
        raise ValueError(f"{path}: line {int(np.flatnonzero(empty.to_numpy())[0]) + 2} has an empty UID cell")
    duplicated = table["SOPInstanceUID"].duplicated()
    if duplicated.any():
        k = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ValueError(f"{path}: line {k + 2} repeats SOPInstanceUID {table['SOPInstanceUID'].iloc[k]}")
    for c in columns[3:]:
        values = pd.to_numeric(table[c], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: line {k + 2} ({table['SOPInstanceUID'].iloc[k]}) has {c}={table[c].iloc[k]!r}, "
                             f"expected 0 or 1")
        table[c] = values.astype(np.float32)
    if split == "train":
        varying = table.groupby("StudyInstanceUID")[list(EXAM_LABELS)].nunique() > 1
        if varying.to_numpy().any():
            study, column = next((s, c) for s, row in varying.iterrows() for c in EXAM_LABELS if row[c])
            raise ValueError(f"{path}: exam-level column {column} differs between the images of study {study}; "
                             f"expected one value per study")
    return table


class RSNASTRPE(Dataset):
    """RSNA-STR PE CTPA series (one item per series).

    Each item: ``image`` float32 ``(1, X, Y, Z)`` (HU windowed to [0, 1]; raw HU if ``hu_window`` is None),
    ``label`` float32 ``(K,)`` exam-level (NaN for test), ``slice_labels`` float32 ``(Z,)`` ``pe_present_on_image``
    (NaN for test), ``sop_uids`` (list of Z strings, volume order), ``sex``, ``age``, ``patient_id``
    (StudyInstanceUID), ``study_uid``, ``series_uid``, ``origin``/``spacing``/``direction`` (LPS, ``ct3d``).

    Args:
        root: the competition folder (``train.csv``, ``train/``, ``test.csv``, ``test/``).
        split: ``"train"``, ``"test"`` or None (both, where present).
        labels: exam-level label columns, from ``EXAM_LABELS``.
        hu_window: HU range mapped to [0, 1].
    """

    def __init__(self, root: Path | str, split: str | None = None, labels: Sequence[str] = SCORED_EXAM_LABELS,
                 hu_window: tuple[float, float] | None = HU_WINDOW) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"RSNASTRPE: split={split!r}, expected one of {list(SPLITS)} or None")
        unknown = [c for c in labels if c not in EXAM_LABELS]
        if unknown:
            raise ValueError(f"RSNASTRPE: unknown label(s) {unknown}; expected names from {list(EXAM_LABELS)}")
        self.labels, self.hu_window = tuple(labels), hu_window
        wanted = SPLITS if split is None else (split,)
        present = [s for s in wanted if split is not None or (self.root / f"{s}.csv").is_file()]
        if not present:
            raise FileNotFoundError(f"RSNASTRPE: neither train.csv nor test.csv under {self.root}")
        images = pd.concat([read_labels_csv(self.root / f"{s}.csv", s).assign(split=s) for s in present],
                           ignore_index=True)
        for c in (IMAGE_LABEL, *EXAM_LABELS):
            if c not in images:
                images[c] = np.float32(np.nan)
        self.images = images
        self._groups = images.groupby(["split", "StudyInstanceUID", "SeriesInstanceUID"], sort=True).indices
        keys = list(self._groups)
        first = [self._groups[k][0] for k in keys]
        self.meta = pd.DataFrame({
            "patient_id": [k[1] for k in keys], "study_uid": [k[1] for k in keys], "series_uid": [k[2] for k in keys],
            "split": [k[0] for k in keys], "n_images": [len(self._groups[k]) for k in keys],
            **{c: images[c].to_numpy()[first] for c in self.labels}})

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        rows = self.images.iloc[self._groups[(row["split"], row["study_uid"], row["series_uid"])]]
        folder = self.root / row["split"] / row["study_uid"] / row["series_uid"]
        files = [folder / f"{sop}.dcm" for sop in rows["SOPInstanceUID"]]
        series = read_dicom_series(files)
        by_file = dict(zip(files, rows[IMAGE_LABEL].to_numpy(np.float32)))
        sop_by_file = dict(zip(files, rows["SOPInstanceUID"]))
        return {"image": scale_hu(series.hu, self.hu_window),
                "label": torch.tensor(row[list(self.labels)].to_numpy(np.float32)),
                "slice_labels": torch.tensor(np.array([by_file[f] for f in series.files], np.float32)),
                "sop_uids": [sop_by_file[f] for f in series.files],
                "sex": dicom_sex(series.header), "age": parse_age(series.header.get("PatientAge")),
                "patient_id": row["patient_id"], "study_uid": row["study_uid"], "series_uid": row["series_uid"],
                **series.geometry.as_tensors()}
