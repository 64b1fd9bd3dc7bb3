"""Zero-shot embedding analysis (STUDY §7; adam_ark.md §1.7 and §2.8, the "Eve" analyses).

Features of patches centred on anatomical landmarks, across patients, are projected to 2D (t-SNE, UMAP) for plots
and scored by numbers: kNN landmark-identification accuracy, silhouette, and cross-patient landmark matching. The
raw-pixel floor (STUDY §7.1) is :func:`pca_floor`. Everything is deterministic per seed on CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from eden_lib.seed import rng

_CHUNK = 2048  # query rows per similarity block (bounds memory at _CHUNK x N floats)


def _check_features(features: np.ndarray, name: str, ndim: int = 2) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != ndim:
        raise ValueError(f"{name}: features must have {ndim} dims, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return features


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis (zero vectors stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def embed_2d(
    features: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0, n_neighbors: int = 15
) -> np.ndarray:
    """2D map of ``(N, D)`` features for plotting: ``"tsne"`` (PCA init) or ``"umap"``, fixed ``random_state``.

    ``perplexity`` is capped at ``(N - 1) / 3`` and ``n_neighbors`` at ``N - 1`` so small sets work. Returns
    ``(N, 2)``.
    """
    features = _check_features(features, "embed_2d")
    n = features.shape[0]
    if n < 3:
        raise ValueError(f"embed_2d: needs at least 3 points, got {n}")
    if method == "tsne":
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(perplexity, (n - 1) / 3))
        return tsne.fit_transform(features)
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), random_state=seed, n_jobs=1)
        with warnings.catch_warnings():  # umap notes that a seed forces one thread: intended here
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            return np.asarray(reducer.fit_transform(features), dtype=np.float64)
    raise ValueError(f"embed_2d: method={method!r}; expected 'tsne' or 'umap'")


def knn_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    k: int = 5,
    folds: int | str = 5,
    metric: str = "cosine",
    seed: int = 0,
) -> float:
    """Cross-validated k-nearest-neighbour accuracy (e.g. landmark identification from patch embeddings).

    Every row is classified by majority vote of its ``k`` most similar rows outside its own fold (ties go to the
    class with the larger summed similarity). Folds are a seeded random assignment; ``folds="loo"`` is
    leave-one-out. Computed in blocks of query rows against all rows (one matrix product per block).

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` class of each row (any hashable values).
        k: neighbours per vote.
        folds: number of folds, or ``"loo"``.
        metric: ``"cosine"`` or ``"euclidean"``.
        seed: seeds the fold assignment.

    Returns:
        Fraction of rows whose predicted class equals their label.
    """
    features = _check_features(features, "knn_accuracy")
    labels = np.asarray(labels)
    n = features.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"knn_accuracy: labels must be (N,) = ({n},), got shape {labels.shape}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"knn_accuracy: metric={metric!r}; expected 'cosine' or 'euclidean'")
    if folds == "loo":
        fold = np.arange(n)
    elif isinstance(folds, int) and 2 <= folds <= n:
        fold = rng(seed, "knn_folds").permutation(np.arange(n) % folds)
    else:
        raise ValueError(f"knn_accuracy: folds={folds!r}; expected 'loo' or an int in [2, N={n}]")
    n_out = n - np.bincount(fold).max()
    if not 1 <= k <= n_out:
        raise ValueError(f"knn_accuracy: k={k}; expected 1 <= k <= {n_out} (rows outside the largest fold)")
    classes, y = np.unique(labels, return_inverse=True)
    x = _unit(features) if metric == "cosine" else features
    sq = np.square(x).sum(axis=1)
    correct = 0
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(n, start + _CHUNK))
        sim = x[rows] @ x.T
        if metric == "euclidean":
            sim = 2 * sim - sq[rows, None] - sq[None, :]  # minus squared distance
        sim[fold[rows, None] == fold[None, :]] = -np.inf
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nn_sim = np.take_along_axis(sim, nn, axis=1)
        if metric == "euclidean":  # map to (0, 1] so the tie-break term stays below one vote
            nn_sim = np.exp(nn_sim - nn_sim.max(axis=1, keepdims=True))
        votes = np.zeros((nn.shape[0], classes.size))
        np.add.at(votes, (np.arange(nn.shape[0])[:, None], y[nn]), 1.0 + nn_sim / (2 * k + 1))
        correct += int((votes.argmax(axis=1) == y[rows]).sum())
    return correct / n


def silhouette(features: np.ndarray, labels: np.ndarray, metric: str = "cosine") -> float:
    """Mean silhouette score of the labelled clusters (scikit-learn, cosine by default); in ``[-1, 1]``.

    NaN with a warning when undefined (fewer than 2 classes, or every row its own class).
    """
    from sklearn.metrics import silhouette_score

    features = _check_features(features, "silhouette")
    labels = np.asarray(labels)
    n_classes = np.unique(labels).size
    if not 2 <= n_classes <= features.shape[0] - 1:
        warnings.warn(f"silhouette: undefined for {n_classes} classes over {features.shape[0]} rows; NaN",
                      UserWarning, stacklevel=2)
        return float("nan")
    return float(silhouette_score(features, labels, metric=metric))


def landmark_matching_error(
    features: np.ndarray,
    coords: np.ndarray | None = None,
    landmark_names: Sequence[str] | None = None,
    metric: str = "cosine",
) -> pd.DataFrame:
    """Cross-patient landmark correspondence by nearest embedding (the "Eve" matching, adam_ark.md §1.7).

    For every ordered pair of distinct patients (A, B) and every landmark l of A, the landmark of B whose feature
    is most similar to A's feature of l is its match; the match is correct when it is l itself.

    Args:
        features: ``(P, L, D)`` feature of each landmark of each patient.
        coords: optional ``(P, L, S)`` landmark coordinates (pixels, S spatial dims); the error of a match is the
            distance in B between the matched landmark and the true one (0 when correct).
        landmark_names: L names; default the landmark index.
        metric: ``"cosine"`` or ``"euclidean"``.

    Returns:
        One row per landmark: ``landmark, accuracy`` (fraction of the P(P-1) pairs matched correctly),
        ``pixel_error`` (mean distance, NaN without ``coords``) and ``n_pairs``.
    """
    features = _check_features(features, "landmark_matching_error", ndim=3)
    p, n_landmarks, _ = features.shape
    if p < 2:
        raise ValueError(f"landmark_matching_error: needs at least 2 patients, got {p}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"landmark_matching_error: metric={metric!r}; expected 'cosine' or 'euclidean'")
    names = list(landmark_names) if landmark_names is not None else list(range(n_landmarks))
    if len(names) != n_landmarks:
        raise ValueError(f"landmark_matching_error: {len(names)} landmark_names for {n_landmarks} landmarks")
    x = _unit(features) if metric == "cosine" else features
    sim = np.einsum("ald,bmd->ablm", x, x)  # (P, P, L, L): A's landmark l vs B's landmark m
    if metric == "euclidean":
        sq = np.square(x).sum(axis=-1)
        sim = 2 * sim - sq[:, None, :, None] - sq[None, :, None, :]
    match = sim.argmax(axis=-1)  # (P, P, L)
    off_diag = ~np.eye(p, dtype=bool)
    correct = (match == np.arange(n_landmarks))[off_diag]  # (P(P-1), L)
    error = np.full(correct.shape, np.nan)
    if coords is not None:
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape[:2] != (p, n_landmarks) or coords.ndim != 3:
            raise ValueError(
                f"landmark_matching_error: coords {coords.shape} must be (P, L, S) = ({p}, {n_landmarks}, S)"
            )
        b = np.broadcast_to(np.arange(p)[None, :, None], match.shape)
        matched_xy = coords[b, match]  # (P, P, L, S): where in B the match lies
        true_xy = np.broadcast_to(coords[None], matched_xy.shape)
        error = np.linalg.norm(matched_xy - true_xy, axis=-1)[off_diag]
    return pd.DataFrame(
        {"landmark": names, "accuracy": correct.mean(axis=0), "pixel_error": error.mean(axis=0),
         "n_pairs": p * (p - 1)}
    )


def pca_floor(pixels: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Raw-pixel floor features: PCA of flattened pixels to ``dim`` components (fixed ``random_state``).

    Args:
        pixels: ``(N, H*W)`` or ``(N, *spatial)`` (flattened here).
        dim: number of components, at most ``min(N, H*W)``.

    Returns:
        ``(N, dim)`` component scores, usable wherever a method's features are.
    """
    from sklearn.decomposition import PCA

    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim < 2:
        raise ValueError(f"pca_floor: pixels must be (N, H*W) or (N, *spatial), got shape {pixels.shape}")
    flat = pixels.reshape(pixels.shape[0], -1)
    if not 1 <= dim <= min(flat.shape):
        raise ValueError(f"pca_floor: dim={dim}; expected 1 <= dim <= min(N, pixels)={min(flat.shape)}")
    return PCA(n_components=dim, random_state=seed).fit_transform(flat)
