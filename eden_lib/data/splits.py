"""Patient-level splits: no patient contributes images to two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from eden_lib.seed import rng


def carve_validation(meta: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Split labels ``train`` / ``val`` / ``test``: ``val`` takes a fraction of the non-test patients.

    Args:
        meta: one row per image with ``patient_id`` and ``split`` in {``train_val``, ``test``}.
        val_fraction: fraction of the ``train_val`` patients moved to ``val``.
        seed: seeds the patient draw.
    """
    if not set(meta["split"]) <= {"train_val", "test"}:
        raise ValueError(f"split column must hold 'train_val' / 'test', got {sorted(set(meta['split']))}")
    pool = np.unique(meta.loc[meta["split"] == "train_val", "patient_id"].to_numpy())
    n_val = int(round(val_fraction * len(pool)))
    val_patients = rng(seed, "val_split").choice(pool, size=n_val, replace=False) if n_val else []
    split = meta["split"].map({"train_val": "train", "test": "test"})
    split[meta["patient_id"].isin(val_patients)] = "val"
    return split
