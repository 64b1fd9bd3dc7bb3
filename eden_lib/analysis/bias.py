"""Gender-bias study on frozen features (Ark, MICCAI 2023; adam_ark.md §3.7; STUDY §7).

Linear probes are trained on a male-only, a female-only and a balanced (half/half) training set of the same size,
and each is evaluated on the male and on the female test patients separately. The gap is male AUC minus female
AUC, with a percentile bootstrap CI from resampling test patients within each sex (one count matrix per sex, shared
by the three training sets; every replicate at once through :func:`weighted_auc`). With features carrying no sex
effect the CI covers 0 at about the nominal rate (measured 94 % at 95 %); STUDY §6.1 turns the synthetic sex
effect up from 0 to make the gap appear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from eden_lib.evaluation.linear_probe import fit_predict_linear_probe
from eden_lib.evaluation.metrics import bootstrap_counts, rank_auc, weighted_auc
from eden_lib.evaluation.statistics import percentile_ci
from eden_lib.seed import rng

SEXES = ("M", "F")
TRAIN_SETS = ("male", "female", "balanced")


def _mean_over_defined(auc: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Mean over the labels whose point AUC is defined (NaN replicates left out); (..., K) -> (...)."""
    a = np.where(defined, auc, np.nan)
    count = (~np.isnan(a)).sum(axis=-1)
    return np.where(count > 0, np.nansum(a, axis=-1) / np.maximum(count, 1), np.nan)


def _training_sets(train_m: np.ndarray, train_f: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """Male-only, female-only and balanced (n//2 male + rest female) index sets of size n, seeded."""
    g = rng(seed, "bias_train")
    return {
        "male": g.choice(train_m, n, replace=False),
        "female": g.choice(train_f, n, replace=False),
        "balanced": np.concatenate([g.choice(train_m, n // 2, replace=False),
                                    g.choice(train_f, n - n // 2, replace=False)]),
    }


def bias_study(
    features: np.ndarray,
    labels: np.ndarray,
    sex: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    n_train_per_sex: int | None = None,
    C: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    label_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Train probes per training population, evaluate AUC per sex, and bootstrap the male - female gap.

    Args:
        features: ``(N, D)`` frozen features of every image.
        labels: ``(N, K)`` labels 0/1, NaN = unknown.
        sex: ``(N,)`` ``"M"`` or ``"F"`` for every row in ``train_idx`` and ``test_idx`` (filter out "Unknown").
        train_idx, test_idx: disjoint row indices (patient-level split).
        seed: seeds the training subsamples and the bootstrap.
        n_train_per_sex: size of every training set (male-only, female-only, balanced); default the size of the
            smaller sex in ``train_idx``.
        C: inverse L2 strength of the probes.
        n_boot: bootstrap replicates; ``level``: CI level.
        label_names: K names; default the column index.

    Returns:
        Tidy frame, one row per training set (``male``, ``female``, ``balanced``) and label (plus ``"mean"``, the
        mean over labels with a defined AUC): ``train_set, label, n_train, auc_male, auc_male_ci_low,
        auc_male_ci_high, auc_female, auc_female_ci_low, auc_female_ci_high, gap`` (male - female),
        ``gap_ci_low, gap_ci_high, n_test_male, n_test_female, n_pos_male, n_pos_female, prevalence_male,
        prevalence_female`` (test set, known labels; counts summed over labels on the ``"mean"`` row),
        ``prevalence_train`` and ``note`` (why an AUC is NaN).
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    sex = np.asarray(sex).astype(str)
    train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
    n, k = labels.shape if labels.ndim == 2 else (None, None)
    if labels.ndim != 2 or features.ndim != 2 or features.shape[0] != n or sex.shape != (n,):
        raise ValueError(f"bias_study: features {features.shape}, labels {labels.shape}, sex {sex.shape} must be "
                         "(N, D), (N, K), (N,)")
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("bias_study: train_idx and test_idx overlap; expected a patient-level split")
    used = np.concatenate([train_idx, test_idx])
    bad = sorted({str(v) for v in np.unique(sex[used])} - set(SEXES))
    if bad:
        raise ValueError(f"bias_study: sex values {bad} in train/test rows; expected only {SEXES}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(k)]
    if len(names) != k:
        raise ValueError(f"bias_study: {len(names)} label_names for {k} labels")

    train_m, train_f = train_idx[sex[train_idx] == "M"], train_idx[sex[train_idx] == "F"]
    n_train = n_train_per_sex if n_train_per_sex is not None else min(train_m.size, train_f.size)
    if not 2 <= n_train <= min(train_m.size, train_f.size):
        raise ValueError(f"bias_study: n_train_per_sex={n_train}; expected 2 <= n <= min(male={train_m.size}, "
                         f"female={train_f.size}) training rows")
    test = {s: test_idx[sex[test_idx] == s] for s in SEXES}
    for s in SEXES:
        if test[s].size < 2:
            raise ValueError(f"bias_study: {test[s].size} test rows with sex {s!r}; expected at least 2")
    counts = {s: bootstrap_counts(test[s].size, n_boot, rng(seed, "bias_boot", s)) for s in SEXES}
    y_test = {s: labels[test[s]] for s in SEXES}
    n_pos = {s: (y_test[s] == 1).sum(axis=0) for s in SEXES}
    n_known = {s: (~np.isnan(y_test[s])).sum(axis=0) for s in SEXES}

    frames = []
    for name, rows in _training_sets(train_m, train_f, n_train, seed).items():
        scores = fit_predict_linear_probe(features[rows], labels[rows], features[test_idx], C=C, seed=seed,
                                          label_names=names)
        score = {s: scores[sex[test_idx] == s] for s in SEXES}
        point = {s: rank_auc(y_test[s].T, score[s].T) for s in SEXES}
        boot = {s: weighted_auc(y_test[s], score[s], counts[s]) for s in SEXES}
        defined = ~np.isnan(point["M"]) & ~np.isnan(point["F"])
        point = {s: np.append(point[s], _mean_over_defined(point[s], defined)) for s in SEXES}
        boot = {s: np.column_stack([boot[s], _mean_over_defined(boot[s], defined)]) for s in SEXES}
        ci = {s: percentile_ci(boot[s], level) for s in SEXES}
        gap_lo, gap_hi = percentile_ci(boot["M"] - boot["F"], level)
        train_y = labels[rows]
        note = np.where(((train_y == 1).any(axis=0) & (train_y == 0).any(axis=0)), "", "one class in training set")
        for s, word in (("M", "male"), ("F", "female")):
            one = (n_pos[s] == 0) | (n_pos[s] == n_known[s])
            note = np.where(one & (note == ""), f"one class in {word} test", note)
        frames.append(pd.DataFrame({
            "train_set": name, "label": names + ["mean"], "n_train": n_train,
            "auc_male": point["M"], "auc_male_ci_low": ci["M"][0], "auc_male_ci_high": ci["M"][1],
            "auc_female": point["F"], "auc_female_ci_low": ci["F"][0], "auc_female_ci_high": ci["F"][1],
            "gap": point["M"] - point["F"], "gap_ci_low": gap_lo, "gap_ci_high": gap_hi,
            "n_test_male": test["M"].size, "n_test_female": test["F"].size,
            "n_pos_male": np.append(n_pos["M"], n_pos["M"].sum()),
            "n_pos_female": np.append(n_pos["F"], n_pos["F"].sum()),
            "prevalence_male": np.append(n_pos["M"] / np.maximum(n_known["M"], 1), np.nan),
            "prevalence_female": np.append(n_pos["F"] / np.maximum(n_known["F"], 1), np.nan),
            "prevalence_train": np.append((train_y == 1).sum(axis=0) / np.maximum((~np.isnan(train_y)).sum(axis=0), 1),
                                          np.nan),
            "note": np.append(note, ""),
        }))
    return pd.concat(frames, ignore_index=True)


def mean_abs_gap(per_training_set: Mapping[str, Mapping[str, Any]]) -> float:
    """Mean over training sets and findings of |AUC(male) - AUC(female)|: how large the gaps are, whatever their sign.

    Args:
        per_training_set: ``{"male" | "female" | "balanced": {"per_finding": {finding: {"gap": float, ...}}}}``
            (one entry of the fidelity benchmark's ``sex_effect_sweep``).
    """
    return float(np.mean([abs(v["gap"]) for ts in per_training_set.values() for v in ts["per_finding"].values()]))
