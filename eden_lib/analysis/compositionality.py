"""Part-whole compositionality of an embedding (Adam-v1 §1.7 (b), Adam-v2 §2.8 (2); STUDY §7.1).

The papers plot the cosine between the embedding of a whole patch and the aggregate (mean) of the embeddings of its
four parts (the 2x2 grid). Raw cosines of pooled ReLU features are high for any network, so the study reports them
on **centred** features (the mean over every whole and part of the analysis subtracted) and against a control: the
same whole scored against the parts of another patch (another landmark or patient). The score is

    compositionality = mean_i cos(w_i, mean_k p_ik) - mean_i cos(w_i, mean_k p_{pi(i),k}),

matched minus mismatched, with ``pi`` a random derangement; a bootstrap over wholes gives its 95 % CI.
"""

from __future__ import annotations

import numpy as np

from eden_lib.seed import rng


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def derangement(n: int, generator: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (``n >= 2``): the mismatched partner of each row.

    A cyclic shift along a random order: row ``order[i]`` is paired with ``order[i + 1]``.
    """
    if n < 2:
        raise ValueError(f"derangement: needs n >= 2, got {n}")
    order = generator.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def part_whole_cosines(wholes: np.ndarray, parts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Matched and mismatched cosines on centred features.

    Args:
        wholes: ``(N, D)`` embeddings of whole patches.
        parts: ``(N, 4, D)`` embeddings of each whole's parts (any number of parts per whole).
        seed: draws the mismatched partners.

    Returns:
        ``(matched (N,), mismatched (N,))``: ``cos(w_i, mean_k p_ik)`` and ``cos(w_i, mean_k p_{pi(i),k})``.
    """
    wholes, parts = np.asarray(wholes, dtype=np.float64), np.asarray(parts, dtype=np.float64)
    if wholes.ndim != 2 or parts.ndim != 3 or parts.shape[0] != wholes.shape[0] or parts.shape[2] != wholes.shape[1]:
        raise ValueError(f"part_whole_cosines: wholes (N, D) and parts (N, K, D) expected, got {wholes.shape} and "
                         f"{parts.shape}")
    centre = np.concatenate([wholes, parts.reshape(-1, parts.shape[2])]).mean(axis=0)
    w = _unit(wholes - centre)
    agg = _unit((parts - centre).mean(axis=1))
    partner = derangement(len(w), rng(seed, "compositionality"))
    return (w * agg).sum(axis=1), (w * agg[partner]).sum(axis=1)


def compositionality(wholes: np.ndarray, parts: np.ndarray, seed: int = 0, n_bootstrap: int = 1000) -> dict:
    """``{"matched", "mismatched", "score", "score_ci_low", "score_ci_high"}``: means of
    :func:`part_whole_cosines`, their difference and its percentile bootstrap 95 % CI over wholes (vectorised)."""
    matched, mismatched = part_whole_cosines(wholes, parts, seed)
    diff = matched - mismatched
    draws = rng(seed, "compositionality_bootstrap").integers(0, len(diff), size=(n_bootstrap, len(diff)))
    low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
    return {"matched": float(matched.mean()), "mismatched": float(mismatched.mean()), "score": float(diff.mean()),
            "score_ci_low": float(low), "score_ci_high": float(high)}
