"""Classification and segmentation metrics: rank-based AUC (batched, bootstrapped) and Dice.

AUC is computed from ranks (the Mann-Whitney U statistic, ties counted as 1/2), so it is exact, equal to
scikit-learn's ``roc_auc_score``, and vectorises: :func:`rank_auc` is one ``rankdata`` call along the last axis of
an array of any leading shape; :func:`weighted_auc` scores every bootstrap replicate from one sort per label
(1,000 replicates of N=2,000 in about 0.1 s on 2 CPU cores, against 2.8 s for a loop over ``roc_auc_score``). Labels are ``0``/``1`` with ``NaN`` for unknown (the Ark
convention for partial and uncertain labels, adam_ark.md §3.4); unknown rows are left out per label.

A metric that is undefined on a subset (one class only) is ``NaN`` with a warning naming the label; it never
raises (STUDY §6.1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from eden_lib.seed import rng


def _check_labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    bad = np.unique(y[~np.isnan(y) & (y != 0) & (y != 1)])
    if bad.size:
        raise ValueError(f"{name}: labels must be 0, 1 or NaN (unknown); found {bad[:5].tolist()}")
    return y


def rank_auc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC along the last axis, batched over every leading axis.

    Args:
        y: labels, shape ``(..., N)``, values 0/1, NaN = unknown (left out).
        scores: same shape as ``y``; higher means more likely positive. A NaN score makes that AUC NaN.

    Returns:
        AUC of shape ``y.shape[:-1]``; NaN where the known rows hold one class only or a score is NaN.
        No warning is issued (callers that report per label use :func:`auc_per_label`).
    """
    y = _check_labels(y, "rank_auc")
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape:
        raise ValueError(f"rank_auc: labels {y.shape} and scores {scores.shape} must have the same shape")
    known = ~np.isnan(y)
    bad_score = (known & np.isnan(scores)).any(axis=-1)
    ranks = rankdata(np.where(known, scores, np.nan), axis=-1, nan_policy="omit")
    pos = known & (y == 1)
    n_pos = pos.sum(axis=-1)
    n_neg = known.sum(axis=-1) - n_pos
    rank_sum = np.where(pos, ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0) & ~bad_score, auc, np.nan)


def binary_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one binary label. ``y``, ``scores``: shape ``(N,)``; NaN labels are left out.

    Returns NaN with a warning when the known rows hold one class only.
    """
    y, scores = np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"binary_auc: labels must be 1-D (N,), got shape {y.shape}")
    return float(auc_per_label(y[:, None], scores[:, None])[0])


def auc_per_label(
    y_true: np.ndarray, scores: np.ndarray, label_names: Sequence[str] | None = None
) -> np.ndarray:
    """ROC AUC of each label of a multi-label task.

    Args:
        y_true: ``(N, K)`` labels 0/1, NaN = unknown (those rows are left out for that label).
        scores: ``(N, K)`` scores (probabilities or logits).
        label_names: K names used in the warning; defaults to the column index.

    Returns:
        ``(K,)`` AUCs. A label whose known rows hold one class only (or whose scores are NaN, e.g. a probe that
        could not be trained) is NaN, and one ``UserWarning`` lists those labels with the reason.
    """
    y_true = _check_labels(y_true, "auc_per_label")
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(
            f"auc_per_label: y_true {y_true.shape} and scores {scores.shape} must both be (N, K) and equal"
        )
    names = list(label_names) if label_names is not None else [str(k) for k in range(y_true.shape[1])]
    if len(names) != y_true.shape[1]:
        raise ValueError(f"auc_per_label: {len(names)} label_names for {y_true.shape[1]} labels")
    auc = rank_auc(y_true.T, scores.T)
    known = ~np.isnan(y_true)
    n_pos = (y_true == 1).sum(axis=0)
    n_neg = (y_true == 0).sum(axis=0)
    notes = []
    for k in np.flatnonzero(np.isnan(auc)):
        if n_pos[k] == 0 or n_neg[k] == 0:
            notes.append(f"{names[k]} (one class only: {n_pos[k]} positive, {n_neg[k]} negative)")
        elif np.isnan(scores[known[:, k], k]).any():
            notes.append(f"{names[k]} (NaN scores)")
    if notes:
        warnings.warn("AUC undefined, reported as NaN for: " + "; ".join(notes), UserWarning, stacklevel=2)
    return auc


def mean_auc(aucs: np.ndarray) -> float:
    """Mean of per-label AUCs ignoring NaN (undefined labels); NaN if every label is undefined."""
    aucs = np.asarray(aucs, dtype=np.float64)
    return float(np.mean(aucs[~np.isnan(aucs)])) if (~np.isnan(aucs)).any() else float("nan")


def bootstrap_counts(n_rows: int, n_boot: int, generator: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_rows)`` counts of each row in each bootstrap resample (rows drawn with replacement)."""
    idx = generator.integers(0, n_rows, size=(n_boot, n_rows))
    flat = (np.arange(n_boot)[:, None] * n_rows + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n_rows).reshape(n_boot, n_rows)


def weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of K labels under B row weightings at once (bootstrap counts: the AUC of each resample).

    Rows are sorted once per label, not once per replicate: with row weights ``w``, U = sum over positives of
    ``w_i * (negative weight scoring below i + half the negative weight tied with i)``, read off one cumulative
    sum per replicate. Equal to :func:`rank_auc` on the resampled rows.

    Args:
        y: ``(N, K)`` labels 0/1, NaN = unknown (weight ignored).
        scores: ``(N, K)``.
        weights: ``(B, N)`` non-negative row weights (e.g. :func:`bootstrap_counts`).

    Returns:
        ``(B, K)``; NaN where a weighting leaves one class only, or a known row's score is NaN.
    """
    y = _check_labels(y, "weighted_auc")
    scores, weights = np.asarray(scores, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if y.ndim != 2 or y.shape != scores.shape or weights.ndim != 2 or weights.shape[1] != y.shape[0]:
        raise ValueError(f"weighted_auc: y {y.shape}, scores {scores.shape}, weights {weights.shape} must be "
                         "(N, K), (N, K), (B, N)")
    out = np.full((weights.shape[0], y.shape[1]), np.nan)
    for k in range(y.shape[1]):  # per label; vectorised over replicates and rows
        known = ~np.isnan(y[:, k])
        if np.isnan(scores[known, k]).any():
            continue
        order = np.argsort(scores[known, k], kind="stable")
        s, pos, w = scores[known, k][order], y[known, k][order] == 1, weights[:, known][:, order]
        first = np.r_[True, s[1:] != s[:-1]]
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        ends = np.r_[starts[1:], s.size][group]  # one past the last row tied with each row
        neg_cum = np.zeros((w.shape[0], s.size + 1))
        np.cumsum(w * ~pos, axis=1, out=neg_cum[:, 1:])
        below = neg_cum[:, starts[group]]
        tied = neg_cum[:, ends] - below
        u = (w[:, pos] * (below[:, pos] + 0.5 * tied[:, pos])).sum(axis=1)
        n_pos, n_neg = w[:, pos].sum(axis=1), neg_cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return out


def bootstrap_auc(y: np.ndarray, scores: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of a binary AUC, all at once.

    Rows are resampled with replacement as one ``(n, N)`` count matrix and every replicate's AUC comes from
    :func:`weighted_auc` (one sort, no Python loop per replicate).

    Args:
        y: ``(N,)`` labels 0/1 (NaN = unknown, left out).
        scores: ``(N,)`` scores.
        n: number of replicates.
        seed: seeds the resampling (same seed, same replicates).

    Returns:
        ``(n,)`` AUCs; a replicate that drew one class only is NaN (use ``np.nanpercentile``).
    """
    y, scores = np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != scores.shape:
        raise ValueError(f"bootstrap_auc: y {y.shape} and scores {scores.shape} must both be (N,) and equal")
    if n < 1:
        raise ValueError(f"bootstrap_auc: n must be >= 1, got {n}")
    keep = ~np.isnan(y)
    counts = bootstrap_counts(int(keep.sum()), n, rng(seed, "bootstrap_auc"))
    return weighted_auc(y[keep, None], scores[keep, None], counts)[:, 0]


def dice_per_class(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice per class, averaged over images (MONAI ``DiceMetric`` semantics, vectorised).

    Args:
        pred: ``(N, C, *spatial)`` boolean masks (any number of spatial dims: 2D or 3D).
        target: same shape, boolean ground truth.

    Returns:
        ``(C,)`` mean Dice over the N images. An image where both masks of a class are empty scores 1, an empty
        target with a non-empty prediction scores 0 (``DiceMetric(include_background=True, ignore_empty=False)``,
        which loops per image and channel in Python; this is one reduction).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim < 3:
        raise ValueError(f"dice_per_class: pred {pred.shape} and target {target.shape} must both be (N, C, *spatial)")
    for name, a in (("pred", pred), ("target", target)):
        if a.dtype != bool:
            raise ValueError(f"dice_per_class: {name} must be boolean masks, got dtype {a.dtype}")
    axes = tuple(range(2, pred.ndim))
    inter = np.logical_and(pred, target).sum(axis=axes, dtype=np.int64)
    denom = pred.sum(axis=axes, dtype=np.int64) + target.sum(axis=axes, dtype=np.int64)
    dice = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)
    return dice.mean(axis=0)
