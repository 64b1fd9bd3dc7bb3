"""Training subsets for the few-shot protocols: by label fraction, by shots per class (classification) and by shot
count (segmentation).

Subsets depend only on the labels, the budget and the seed, so every method sees the same subset for the same seed
(paired seeds, STUDY §7.1). Label-fraction subsets are stratified: each finding keeps at least ``min_positives``
positives (and ``min_negatives`` negatives) where the pool has them (STUDY §6.1); the rest is a uniform random draw.
"""

from __future__ import annotations

import warnings

import numpy as np

from eden_lib.seed import rng


def label_fraction_subset(
    labels: np.ndarray, fraction: float, seed: int, min_positives: int = 2, min_negatives: int = 1
) -> np.ndarray:
    """Indices of a stratified random subset holding ``fraction`` of the pool's rows.

    Requirements are met rarest first (the positives or negatives of one label, whichever the pool holds fewest
    of), each by the earliest rows of one seeded permutation; the subset is then filled up to
    ``round(fraction * N)`` rows in the same order. If the requirements alone need more rows than that, the subset
    is larger than asked and a warning says so.

    Args:
        labels: ``(N, K)`` pool labels, 0/1 with NaN = unknown (unknown counts as neither class).
        fraction: in ``(0, 1]``; ``1.0`` returns every row.
        seed: same seed, same subset (for every method).
        min_positives: positives kept per label (or all of them if the pool has fewer).
        min_negatives: negatives kept per label (likewise), so a probe sees both classes.

    Returns:
        Sorted ``int64`` row indices into the pool.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"label_fraction_subset: labels must be (N, K), got shape {labels.shape}")
    bad = np.unique(labels[~np.isnan(labels) & (labels != 0) & (labels != 1)])
    if bad.size:
        raise ValueError(f"label_fraction_subset: labels must be 0, 1 or NaN; found {bad[:5].tolist()}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction_subset: fraction={fraction}; expected a value in (0, 1]")
    if min_positives < 0 or min_negatives < 0:
        raise ValueError(f"label_fraction_subset: min_positives={min_positives}, min_negatives={min_negatives}; "
                         "expected >= 0")
    n = labels.shape[0]
    if fraction == 1.0:
        return np.arange(n, dtype=np.int64)
    n_target = max(1, int(round(fraction * n)))
    perm = rng(seed, "label_fraction").permutation(n)
    selected = _required_rows(labels, min_positives, min_negatives, perm)
    if selected.sum() > n_target:
        warnings.warn(
            f"label_fraction_subset: keeping {min_positives} positives / {min_negatives} negatives per label needs "
            f"{int(selected.sum())} rows, more than fraction {fraction} of {n} ({n_target}); "
            f"using {int(selected.sum())}",
            UserWarning,
            stacklevel=2,
        )
    fill = perm[~selected[perm]][: max(0, n_target - int(selected.sum()))]
    selected[fill] = True
    return np.flatnonzero(selected).astype(np.int64)


def _required_rows(labels: np.ndarray, positives: int, negatives: int, perm: np.ndarray) -> np.ndarray:
    """Boolean mask ``(N,)`` of the rows that give every label ``positives`` positives and ``negatives`` negatives
    (or all the pool has), met rarest requirement first, each by the earliest rows of ``perm`` not yet taken."""
    n = labels.shape[0]
    position = np.empty(n, dtype=np.int64)
    position[perm] = np.arange(n)
    masks = np.concatenate([labels == 1, labels == 0], axis=1).T  # (2K, N): positives then negatives
    needs = np.repeat([positives, negatives], labels.shape[1])
    selected = np.zeros(n, dtype=bool)
    for j in np.argsort(masks.sum(axis=1), kind="stable"):
        short = min(needs[j], int(masks[j].sum())) - int((masks[j] & selected).sum())
        if short > 0:
            candidates = np.flatnonzero(masks[j] & ~selected)
            selected[candidates[np.argsort(position[candidates])[:short]]] = True
    return selected


def class_shot_subset(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of a k-shot classification subset: at least ``shots`` positives and ``shots`` negatives of
    every label (or all the pool has) and no row beyond what those requirements draw; a row drawn for one label also
    counts for the others, so in a multi-label pool a label may get a few more. Requirements are met rarest first by
    one seeded permutation, so for a seed the draw is the same for every method.

    Args:
        labels: ``(N, K)`` pool labels, 0/1 with NaN = unknown.
        shots: k >= 1.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"class_shot_subset: labels must be (N, K), got shape {labels.shape}")
    if shots < 1:
        raise ValueError(f"class_shot_subset: shots={shots}; expected >= 1")
    perm = rng(seed, "class_shots").permutation(labels.shape[0])
    return np.flatnonzero(_required_rows(labels, shots, shots, perm)).astype(np.int64)


def shot_subset(n_pool: int, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of ``shots`` training images drawn from a pool of ``n_pool`` (Adam's 3/6/12/24-shot).

    The draw is the first ``shots`` entries of one seeded permutation, so for a given seed the smaller budgets are
    nested in the larger ones (3 of the 6, 6 of the 12, ...).
    """
    if not 0 < shots <= n_pool:
        raise ValueError(f"shot_subset: shots={shots}; expected 1 <= shots <= n_pool={n_pool}")
    return np.sort(rng(seed, "shots").permutation(n_pool)[:shots]).astype(np.int64)


def group_holdout(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask ``(N,)`` of the rows whose group (e.g. the scan of a nodule cube) is held out: ``fraction`` of
    the distinct groups (at least one, never all) drawn by a seeded permutation; the draw does not depend on the
    method, so every method validates on the same scans."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"group_holdout: fraction={fraction}; expected a value in (0, 1)")
    names = np.unique(np.asarray(groups))
    if len(names) < 2:
        raise ValueError(f"group_holdout: {len(names)} group(s); at least 2 are needed to hold one out")
    n_out = min(len(names) - 1, max(1, int(round(fraction * len(names)))))
    held = names[rng(seed, "group_holdout").permutation(len(names))[:n_out]]
    return np.isin(groups, held)
