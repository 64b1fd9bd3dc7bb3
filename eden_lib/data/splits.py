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


def patient_holdout(patient_ids: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a random patient-level hold-out: ``test_fraction`` of the patients are test.

    Args:
        patient_ids: ``(N,)`` patient of each image.
        test_fraction: fraction of the patients (not images) held out, in (0, 1).
        seed: seeds the patient draw.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    patients = np.unique(patient_ids)
    held = rng(seed, "patient_holdout").permutation(patients)[: int(round(test_fraction * len(patients)))]
    test = np.isin(patient_ids, held)
    return np.flatnonzero(~test), np.flatnonzero(test)
