"""CAiD's separability analysis (Taher et al., MIDL 2022; dira_caid_transfer_alice_cadpe.md §2.3 (i)): the
distribution of pairwise embedding distances; the paper reports CAiD shifting it up against its base method.

Distances are cosine distances ``1 - cos(f_i, f_j)`` between the frozen features of the same images for every
method, so two methods compare pair by pair; a bootstrap over images (all pairs among the drawn images) gives the
CI of the mean distance and of the difference between two methods.
"""

from __future__ import annotations

import numpy as np

from eden_lib.evaluation.statistics import bootstrap_difference


def pairwise_cosine_distances(features: np.ndarray) -> np.ndarray:
    """``(N, D)`` -> the ``N (N - 1) / 2`` cosine distances of the distinct pairs (upper triangle, row-major)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"pairwise_cosine_distances: expected (N, D) with N >= 2, got {f.shape}")
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    u = f / np.where(norm > 0, norm, 1.0)
    i, j = np.triu_indices(len(f), k=1)
    return 1.0 - np.einsum("nd,nd->n", u[i], u[j])


def _mean_over_images(d: np.ndarray, n: int, picks: np.ndarray) -> float:
    """Mean distance over the distinct pairs of the images ``picks`` (with repeats, as a bootstrap draws them)."""
    full = np.zeros((n, n))
    full[np.triu_indices(n, k=1)] = d
    full = full + full.T
    sub = full[np.ix_(picks, picks)]
    distinct = picks[:, None] != picks[None, :]
    return float(sub[distinct].mean())


def mean_distance_difference(a: np.ndarray, b: np.ndarray, generator: np.random.Generator,
                             n_bootstrap: int = 200) -> dict[str, float]:
    """Mean pairwise cosine distance of features ``a`` minus that of ``b`` (the same N images), with a percentile
    bootstrap 95 % CI over images and the two-sided bootstrap p of a zero difference."""
    n = len(a)
    da, db = pairwise_cosine_distances(a), pairwise_cosine_distances(b)
    diffs = []
    for _ in range(n_bootstrap):
        picks = generator.integers(0, n, size=n)
        diffs.append(_mean_over_images(da, n, picks) - _mean_over_images(db, n, picks))
    return bootstrap_difference(da.mean() - db.mean(), np.asarray(diffs))
