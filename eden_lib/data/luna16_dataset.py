"""LUNA16 scans as a map-style dataset, split into the Genesis papers' folds (dataset_formats.md §8).

The Models Genesis family pretrains on subsets 0-4 (``train``) and validates on 5-6 (``val``); 7-9 (``test``) are held
out. Each item is one scan read through :func:`eden_lib.data.luna16.read_scan` with its nodules and candidates mapped
from world millimetres to voxels through the scan's origin, spacing and direction matrix
(:func:`eden_lib.data.luna16.world_to_voxel`; a few real scans have flipped axes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.luna16 import LUNA16Index, read_scan, world_to_voxel

#: the Genesis papers' subset folds
SPLITS: dict[str, tuple[int, ...]] = {"train": (0, 1, 2, 3, 4), "val": (5, 6), "test": (7, 8, 9)}


class LUNA16(Dataset):
    """LUNA16 in its native layout (``subset{k}/<seriesuid>.mhd``, ``annotations.csv``, ``candidates_V2.csv``).

    Each item: ``image`` float32 ``(1, Z, Y, X)`` in HU (the stored int16 values), ``label`` float32 ``(1,)`` (1 when
    the scan has an annotated nodule), ``sex`` / ``age`` None (LUNA16 ships no demographics), ``patient_id`` (the
    seriesuid), ``spacing`` ``(3,)`` and ``origin`` ``(3,)`` in ``(x, y, z)`` mm, ``nodules`` float32 ``(N, 4)``
    (``z, y, x`` continuous voxel index, diameter mm) and ``candidates`` float32 ``(M, 4)`` (``z, y, x``, class).

    Args:
        root: the LUNA16 folder.
        split: ``train`` (subsets 0-4), ``val`` (5-6), ``test`` (7-9) or None (every subset present).
    """

    labels = ("Nodule",)

    def __init__(self, root: Path | str, split: str | None = None) -> None:
        if split is not None and split not in SPLITS:
            raise ValueError(f"LUNA16: split={split!r}; expected one of {sorted(SPLITS)} or None")
        self.index = LUNA16Index(root, None if split is None else SPLITS[split])
        self.uids = list(self.index.scans)
        annotations, candidates = self.index.read_annotations(), self.index.read_candidates()
        self.annotations = {uid: g for uid, g in annotations.groupby("seriesuid")}
        self.candidates = {uid: g for uid, g in candidates.groupby("seriesuid")}
        self.meta = pd.DataFrame({"seriesuid": self.uids, "subset": [self.index.subset_of[u] for u in self.uids],
                                  "n_nodules": [len(self.annotations.get(u, ())) for u in self.uids]})

    def __len__(self) -> int:
        return len(self.uids)

    def _voxels(self, table: pd.DataFrame | None, extra: str, scan) -> np.ndarray:
        if table is None or table.empty:
            return np.zeros((0, 4), np.float32)
        zyx = world_to_voxel(table[["coordX", "coordY", "coordZ"]].to_numpy(float), scan.origin, scan.spacing,
                             scan.direction)
        return np.column_stack([zyx, table[extra].to_numpy(float)]).astype(np.float32)

    def __getitem__(self, i: int) -> dict:
        uid = self.uids[i]
        scan = read_scan(self.index.scan_path(uid))
        nodules = self._voxels(self.annotations.get(uid), "diameter_mm", scan)
        return {
            "image": torch.from_numpy(scan.hu.astype(np.float32))[None],
            "label": torch.tensor([float(len(nodules) > 0)]),
            "sex": None,
            "age": None,
            "patient_id": uid,
            "spacing": scan.spacing.astype(np.float32),
            "origin": scan.origin.astype(np.float32),
            "nodules": nodules,
            "candidates": self._voxels(self.candidates.get(uid), "class", scan),
        }
