"""Linear centred kernel alignment (Kornblith et al., "Similarity of Neural Network Representations Revisited",
ICML 2019, https://arxiv.org/abs/1905.00414): how similar two representations of the same N samples are.

``CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with ``X_c``, ``Y_c`` the column-centred
``(N, D_x)`` and ``(N, D_y)`` feature matrices. It is 1 for representations equal up to an orthogonal transform and
an isotropic scaling, and near 0 for unrelated ones (CAiD's "feature reuse": pretrained against fine-tuned features,
per backbone stage).
"""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of ``x`` ``(N, D_x)`` and ``y`` ``(N, D_y)`` (the same N samples, in the same order)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"linear_cka: expected (N, D_x) and (N, D_y) with the same N >= 2, got {x.shape}, {y.shape}")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def bootstrap_cka(x: np.ndarray, y: np.ndarray, generator: np.random.Generator, n_bootstrap: int = 200
                  ) -> dict[str, float]:
    """``{"cka", "ci_low", "ci_high"}``: linear CKA with a percentile bootstrap 95 % CI over samples."""
    n = len(x)
    draws = [linear_cka(x[i], y[i]) for i in generator.integers(0, n, size=(n_bootstrap, n))]
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"cka": linear_cka(x, y), "ci_low": float(low), "ci_high": float(high)}
