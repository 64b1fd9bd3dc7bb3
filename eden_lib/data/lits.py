"""LiTS 2017, the Liver Tumor Segmentation benchmark (Bilic et al., Med. Image Anal. 84, 2023; CodaLab/MICCAI 2017).

Layout (``reference/dataset_formats.md`` §9): NIfTI ``volume-N.nii`` with ``segmentation-N.nii`` (N = 0..130, the
original "Training Batch 1" 0-27 and "Training Batch 2" 28-130) and ``test-volume-N.nii`` (70, no labels), ``.nii``
or ``.nii.gz``, anywhere below ``root`` (flat, per batch folder or the Kaggle ``volume_pt*/`` + ``segmentations/``
split). Intensities are HU (int16, some volumes stored as float). Segmentation labels: 0 background, 1 liver,
2 tumour.

Splits: ``"train"`` (every ``volume-N``), ``"test"`` (every ``test-volume-N``), and the Models Genesis LCS folds
``"genesis_train"`` (volumes 0-99), ``"genesis_val"`` (100-114), ``"genesis_test"`` (115-129); None = train + test.

Pitfalls handled: in-plane orientation and flips vary between source centres, so volumes are reoriented by their
affine to ``orientation`` (``ct3d.read_nifti_group``; the segmentation follows its volume's grid); volumes sort by
their number, not lexically (``volume-10`` after ``volume-2``); float-stored segmentations are checked to be whole
labels in {0, 1, 2}; a volume without its segmentation (or the reverse) is an error naming the file; the same case
found twice is an error naming both files.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.ct3d import read_nifti_group, scale_hu
from eden_lib.data.subvolumes import HU_WINDOW

LABELS = ("tumour",)
SEGMENTATION_LABELS = {0: "background", 1: "liver", 2: "tumour"}
GENESIS_SPLITS = {"genesis_train": range(100), "genesis_val": range(100, 115), "genesis_test": range(115, 130)}
SPLITS = ("train", "test", *GENESIS_SPLITS)
_NAME = re.compile(r"(test-volume|volume|segmentation)-(\d+)\.nii(\.gz)?")


def _find(root: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    for path in sorted(root.rglob("*.nii*")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            continue
        kind, number = match.group(1), int(match.group(2))
        if number in found[kind]:
            raise ValueError(f"LiTS: {kind}-{number} found twice: {found[kind][number]} and {path}")
        found[kind][number] = path
    return found


class LiTS(Dataset):
    """LiTS 2017 CT volumes with liver/tumour segmentations.

    Each item: ``image`` float32 ``(1, X, Y, Z)`` (HU windowed to [0, 1]; raw HU if ``hu_window`` is None),
    ``label`` float32 ``(1,)`` (``tumour``: 1 when the segmentation has label 2; NaN for test volumes), ``sex`` and
    ``age`` None (LiTS has neither), ``patient_id`` (``volume-N`` / ``test-volume-N``), ``origin``/``spacing``/
    ``direction`` (LPS, ``ct3d``) and, for training volumes only, ``mask`` uint8 ``(X, Y, Z)`` in {0, 1, 2}.

    Args:
        root: folder holding the NIfTI files (searched recursively).
        split: one of ``SPLITS`` or None (train + test).
        hu_window: HU range mapped to [0, 1].
        orientation: axis codes the volumes are reoriented to (None keeps the file's axis order).
    """

    labels = LABELS

    def __init__(self, root: Path | str, split: str | None = None,
                 hu_window: tuple[float, float] | None = HU_WINDOW, orientation: str | None = "LPS") -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"LiTS: split={split!r}, expected one of {list(SPLITS)} or None")
        if not self.root.is_dir():
            raise FileNotFoundError(f"LiTS root {self.root} does not exist")
        self.hu_window, self.orientation = hu_window, orientation
        found = _find(self.root)
        for a, b in (("volume", "segmentation"), ("segmentation", "volume")):
            lonely = sorted(set(found[a]) - set(found[b]))
            if lonely:
                raise FileNotFoundError(f"LiTS: {found[a][lonely[0]]} has no {b}-{lonely[0]}.nii[.gz] under "
                                        f"{self.root}")
        rows = [{"patient_id": f"volume-{n}", "number": n, "split": "train", "batch": 1 if n <= 27 else 2,
                 "volume_path": found["volume"][n], "segmentation_path": found["segmentation"][n]}
                for n in sorted(found["volume"])]
        rows += [{"patient_id": f"test-volume-{n}", "number": n, "split": "test", "batch": np.nan,
                  "volume_path": found["test-volume"][n], "segmentation_path": None}
                 for n in sorted(found["test-volume"])]
        meta = pd.DataFrame(rows, columns=["patient_id", "number", "split", "batch", "volume_path",
                                           "segmentation_path"])
        if split in GENESIS_SPLITS:
            keep = meta["number"].isin(GENESIS_SPLITS[split]) & (meta["split"] == "train")
            missing = sorted(set(GENESIS_SPLITS[split]) - set(meta.loc[keep, "number"]))
            if missing:
                raise FileNotFoundError(f"LiTS: split {split!r} needs volume-{missing[0]} ({len(missing)} missing) "
                                        f"under {self.root}")
            meta = meta[keep]
        elif split is not None:
            meta = meta[meta["split"] == split]
        self.meta = meta.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        paths = [row["volume_path"]] + ([row["segmentation_path"]] if row["segmentation_path"] else [])
        arrays, geometry = read_nifti_group(paths, self.orientation)
        item = {"image": scale_hu(arrays[0], self.hu_window), "label": torch.full((1,), float("nan")),
                "sex": None, "age": None, "patient_id": row["patient_id"], **geometry.as_tensors()}
        if len(arrays) == 2:
            seg = arrays[1]
            if not np.isin(seg, tuple(SEGMENTATION_LABELS)).all():
                bad = np.unique(seg[~np.isin(seg, tuple(SEGMENTATION_LABELS))])[:5]
                raise ValueError(f"{row['segmentation_path']}: labels {bad.tolist()} found, expected "
                                 f"{SEGMENTATION_LABELS}")
            mask = seg.astype(np.uint8)
            item["mask"] = torch.from_numpy(mask)
            item["label"] = torch.tensor([float((mask == 2).any())], dtype=torch.float32)
        return item
