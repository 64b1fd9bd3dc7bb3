"""Adam-v2's claim of emergent interpolation and extrapolation in the embedding (Taher et al., CVPR 2024 / Adam-v2;
adam_ark.md §2.8 (3)).

For two landmarks A, B of one radiograph and ``t`` in (0, 1), the patch centred on C = (1 - t) A + t B should embed
near the same mix of the landmarks' embeddings, ``(1 - t) E_A + t E_B`` ("interpolation"), and the patch centred on
D = B + t (B - A), past B, near ``E_B + t (E_B - E_A)`` ("extrapolation"). The fact sheet writes the mix as
``t E_A + (1 - t) E_B`` with ``t = d_AC / d_AB``, which weights the far landmark more; we use the mix that matches
the geometry.

As for compositionality, raw cosines of pooled ReLU features are high for any network, so every cosine is taken on
centred features (the mean over every embedding of the analysis subtracted) and scored against a control: the same
prediction compared with the true patch of another pair (a random derangement). The score is matched minus
mismatched; a bootstrap over pairs gives its 95 % CI, and methods are compared paired over pairs.
"""

from __future__ import annotations

import numpy as np

from eden_lib.analysis.compositionality import _unit, derangement
from eden_lib.evaluation.statistics import percentile_ci
from eden_lib.seed import rng


def line_points(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """C = (1 - t) A + t B for point pairs ``(N, 2)``: ``(N, 2)``."""
    return (1 - t) * np.asarray(a, float) + t * np.asarray(b, float)


def beyond_points(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """D = B + t (B - A), on the line past B, for point pairs ``(N, 2)``: ``(N, 2)``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return b + t * (b - a)


def predicted(e_a: np.ndarray, e_b: np.ndarray, t: float, mode: str) -> np.ndarray:
    """The embedding the claim predicts: ``(1 - t) E_A + t E_B`` (``interpolate``) or ``E_B + t (E_B - E_A)``
    (``extrapolate``), ``(N, D)``."""
    if mode == "interpolate":
        return (1 - t) * e_a + t * e_b
    if mode == "extrapolate":
        return e_b + t * (e_b - e_a)
    raise ValueError(f"mode {mode!r}: expected 'interpolate' or 'extrapolate'")


def cosines(prediction: np.ndarray, truth: np.ndarray, centre: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Per pair, ``cos(pred_i, true_i) - cos(pred_i, true_partner(i))`` on features minus ``centre``: ``(N,)``."""
    p, y = _unit(prediction - centre), _unit(truth - centre)
    return (p * y).sum(axis=1) - (p * y[partner]).sum(axis=1)


def pair_scores(e_a: np.ndarray, e_b: np.ndarray, targets: dict[float, np.ndarray], mode: str, seed: int = 0
                ) -> np.ndarray:
    """Matched-minus-mismatched cosine of every pair averaged over the ``t`` values: ``(N,)``.

    Args:
        e_a, e_b: ``(N, D)`` embeddings of the two landmark patches.
        targets: ``{t: (N, D)}`` embeddings of the true patches at C (interpolate) or D (extrapolate).
        mode: ``interpolate`` or ``extrapolate``.
        seed: draws the mismatched partners (the same for every method, so methods pair up).
    """
    e_a, e_b = np.asarray(e_a, np.float64), np.asarray(e_b, np.float64)
    every = np.concatenate([e_a, e_b, *[np.asarray(v, np.float64) for v in targets.values()]])
    centre = every.mean(axis=0)
    partner = derangement(len(e_a), rng(seed, "interpolation"))
    per_t = [cosines(predicted(e_a, e_b, t, mode), np.asarray(y, np.float64), centre, partner)
             for t, y in targets.items()]
    return np.mean(per_t, axis=0)


def bootstrap_mean(values: np.ndarray, seed: int = 0, n_bootstrap: int = 1000) -> dict[str, float]:
    """``{"score", "ci_low", "ci_high"}``: the mean of ``values`` with its percentile bootstrap 95 % CI."""
    v = np.asarray(values, float)
    draws = rng(seed, "interpolation_bootstrap").integers(0, len(v), size=(n_bootstrap, len(v)))
    low, high = percentile_ci(v[draws].mean(axis=1))
    return {"score": float(v.mean()), "ci_low": float(low), "ci_high": float(high)}
