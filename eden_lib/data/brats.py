"""BraTS 2018, the Multimodal Brain Tumor Segmentation challenge (Menze et al., IEEE TMI 34(10), 2015; Bakas et al.,
Sci. Data 4, 2017 and arXiv:1811.02629).

Layout (``reference/dataset_formats.md`` §9)::

    root/MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz
    root/MICCAI_BraTS_2018_Data_Training/survival_data.csv        ID, Age, Survival[, ResectionStatus]
    root/MICCAI_BraTS_2018_Data_Validation/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz   (no seg, no grade)
    root/MICCAI_BraTS_2018_Data_Validation/survival_evaluation.csv  ID, Age[, ResectionStatus]

``root`` may also be the training folder itself (holding ``HGG/`` and ``LGG/``). Cases are named
``Brats18_<institution>_<id>_1``; volumes are 240 x 240 x 155 at 1 mm, co-registered and skull-stripped.

Segmentation labels: 0 background, 1 necrotic and non-enhancing tumour core (NCR/NET), 2 peritumoral edema (ED),
4 GD-enhancing tumour (ET); 3 is unused. Evaluation regions: WT = {1, 2, 4}, TC = {1, 4}, ET = {4}.

Splits: ``"train"`` (the training folder, HGG + LGG) and ``"val"`` (the validation folder); None = both (those present).
``cases`` restricts to a list of case IDs or a one-ID-per-line file (the Models Genesis BMS ``fold_{1,2,3}.csv``, no
header). Label: ``HGG`` (1 high grade, 0 low grade, NaN for validation cases). Age comes from the survival CSVs
(whole years, floored; only the HGG cases with survival data have one); there is no sex field.

Image scaling: each modality is min-max scaled to [0, 1] per case (the Models Genesis advice for MR, issue #36).

Pitfalls handled: the survival CSVs have 3 or 4 columns with varying headers, so they are read by position (ID, age);
label 3 (or any value outside {0, 1, 2, 4}) is an error naming the seg file; all files of a case must share the first
modality's grid (``ct3d.read_nifti_group``); a missing modality file is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.ct3d import minmax_unit, parse_age, read_nifti_group

MODALITIES = ("t1", "t1ce", "t2", "flair")
SEG_LABELS = (0, 1, 2, 4)
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
LABELS = ("HGG",)
TRAIN_DIR, VAL_DIR = "MICCAI_BraTS_2018_Data_Training", "MICCAI_BraTS_2018_Data_Validation"
SURVIVAL_FILES = ("survival_data.csv", "survival_evaluation.csv")
SPLITS = ("train", "val")


def _split_dirs(root: Path) -> dict[str, Path]:
    dirs = {}
    if (root / TRAIN_DIR).is_dir():
        dirs["train"] = root / TRAIN_DIR
    elif (root / "HGG").is_dir() or (root / "LGG").is_dir():
        dirs["train"] = root
    if (root / VAL_DIR).is_dir():
        dirs["val"] = root / VAL_DIR
    return dirs


def _file(case_dir: Path, suffix: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        path = case_dir / f"{case_dir.name}_{suffix}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"BraTS: {case_dir / f'{case_dir.name}_{suffix}.nii.gz'} (or .nii) does not exist")


def read_ages(path: Path) -> dict[str, int | None]:
    """Case ID -> age (floored years) from a survival CSV, read by column position (ID first, age second)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if table.shape[1] < 2:
        raise ValueError(f"{path}: expected at least 2 columns (ID, Age, ...), got {list(table.columns)}")
    ages = {}
    for line, (case, cell) in enumerate(zip(table.iloc[:, 0], table.iloc[:, 1]), start=2):
        age = parse_age(cell) if cell.strip() else None
        if cell.strip() and age is None:
            raise ValueError(f"{path}: line {line} ({case}) has age {cell!r}, expected a number of years")
        ages[case.strip()] = age
    return ages


def _read_cases(cases: Sequence[str] | Path | str) -> list[str]:
    if isinstance(cases, (str, Path)):
        path = Path(cases)
        if not path.is_file():
            raise FileNotFoundError(f"BraTS: case list {path} does not exist")
        return [line.split(",")[0].strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(c) for c in cases]


class BraTS2018(Dataset):
    """BraTS 2018 multimodal MR cases with tumour segmentations.

    Each item: ``image`` float32 ``(C, X, Y, Z)`` (``modalities`` in order, each min-max scaled to [0, 1]),
    ``label`` float32 ``(1,)`` (``HGG``), ``sex`` None, ``age`` (int or None), ``patient_id`` (case ID), ``grade``
    (``"HGG"``/``"LGG"``/None), ``origin``/``spacing``/``direction`` (LPS, ``ct3d``), and for training cases ``mask``
    uint8 ``(X, Y, Z)`` with the raw labels {0, 1, 2, 4} and ``regions`` uint8 ``(3, X, Y, Z)`` (WT, TC, ET).

    Args:
        root: the folder holding ``MICCAI_BraTS_2018_Data_Training/`` (and/or ``..._Validation/``), or the training
            folder itself.
        split: ``"train"``, ``"val"`` or None (all present).
        modalities: subset and order of ``MODALITIES`` (Models Genesis BMS uses ``("flair",)``).
        cases: keep only these case IDs (a sequence, or a file with one ID per line); an unknown ID is an error.
        orientation: axis codes the volumes are reoriented to (None keeps the file's axis order).
    """

    labels = LABELS

    def __init__(self, root: Path | str, split: str | None = None, modalities: Sequence[str] = MODALITIES,
                 cases: Sequence[str] | Path | str | None = None, orientation: str | None = "LPS") -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"BraTS2018: split={split!r}, expected one of {list(SPLITS)} or None")
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"BraTS2018: modalities {list(modalities)}, expected a non-empty subset of {MODALITIES}")
        self.modalities, self.orientation = tuple(modalities), orientation
        dirs = _split_dirs(self.root)
        wanted = SPLITS if split is None else (split,)
        if not any(s in dirs for s in wanted):
            raise FileNotFoundError(f"BraTS2018: no {TRAIN_DIR if split != 'val' else VAL_DIR} (or HGG/, LGG/) "
                                    f"under {self.root}")
        rows = []
        for name in (s for s in wanted if s in dirs):
            folder = dirs[name]
            ages: dict[str, int | None] = {}
            for survival in SURVIVAL_FILES:
                if (folder / survival).is_file():
                    ages.update(read_ages(folder / survival))
            grades = ("HGG", "LGG") if name == "train" else (None,)
            for grade in grades:
                parent = folder / grade if grade else folder
                for case_dir in sorted(p for p in parent.glob("Brats18_*") if p.is_dir()):
                    rows.append({"patient_id": case_dir.name, "split": name, "grade": grade,
                                 "age": ages.get(case_dir.name), "case_dir": case_dir})
        meta = pd.DataFrame(rows, columns=["patient_id", "split", "grade", "age", "case_dir"])
        if cases is not None:
            ids = _read_cases(cases)
            missing = sorted(set(ids) - set(meta["patient_id"]))
            if missing:
                raise ValueError(f"BraTS2018: case {missing[0]} ({len(missing)} in all) from the case list is not "
                                 f"under {self.root} (split {split!r})")
            meta = meta.set_index("patient_id").loc[ids].reset_index()
        self.meta = meta.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        case_dir, has_seg = Path(row["case_dir"]), row["split"] == "train"
        paths = [_file(case_dir, m) for m in self.modalities] + ([_file(case_dir, "seg")] if has_seg else [])
        arrays, geometry = read_nifti_group(paths, self.orientation)
        image = np.stack([minmax_unit(a) for a in arrays[: len(self.modalities)]])
        grade = row["grade"] if isinstance(row["grade"], str) else None
        label = {"HGG": 1.0, "LGG": 0.0}.get(grade, float("nan"))
        item = {"image": torch.from_numpy(image), "label": torch.tensor([label], dtype=torch.float32), "sex": None,
                "age": None if pd.isna(row["age"]) else int(row["age"]), "patient_id": row["patient_id"],
                "grade": grade, **geometry.as_tensors()}
        if has_seg:
            seg = arrays[-1]
            valid = np.isin(seg, SEG_LABELS)
            if not valid.all():
                raise ValueError(f"{paths[-1]}: labels {np.unique(seg[~valid])[:5].tolist()} found, expected "
                                 f"{list(SEG_LABELS)} (3 is unused in BraTS 2018)")
            mask = seg.astype(np.uint8)
            item["mask"] = torch.from_numpy(mask)
            item["regions"] = torch.from_numpy(np.stack([np.isin(mask, v) for v in REGIONS.values()]).astype(np.uint8))
        return item
