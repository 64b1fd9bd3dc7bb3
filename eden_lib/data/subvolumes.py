"""Models Genesis sub-volume sampling (genesis_family.md §2.1, ``infinite_generator_3D.py``), vectorised.

The official generator draws a random corner, cuts a window of ``crop_z + len_depth`` slices and rejects the cube
when its "tissue score" exceeds ``max_tissue_fraction`` of its voxels. The score of voxel ``(i, j, d)`` is
``1 - k / (len_depth - 1)`` where ``k`` is the first of slices ``d .. d + len_depth - 1`` at or above the threshold
(``k = len_depth - 1`` if none): with the official ``len_depth = 3`` that is 1 if slice ``d`` is tissue, 0.5 if only
``d + 1`` is, else 0. Here the per-voxel score is computed once per volume, turned into a summed-volume table, and
every candidate corner is scored with 8 look-ups, all candidates in one batched operation. Scores are kept as
integers (times ``len_depth - 1``), so accept/reject decisions are exact.
"""

from __future__ import annotations

import numpy as np

HU_WINDOW = (-1000.0, 1000.0)


def hu_to_unit(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale to [0, 1] (Models Genesis: ``(HU + 1000) / 2000``); float32, same shape."""
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"hu window {window!r}: expected (low, high) with high > low")
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def min_volume_shape(crop: tuple[int, int, int] = (64, 64, 32), border_xy: int = 100, border_z: int = 30,
                     len_depth: int = 3) -> tuple[int, int, int]:
    """Smallest ``(x, y, z)`` volume that admits one corner (the official code skips smaller scans)."""
    cx, cy, cz = crop
    return cx + 1 + 2 * border_xy, cy + 1 + 2 * border_xy, cz + len_depth + 1 + 2 * border_z


def _corner_ranges(shape: tuple[int, ...], crop, border_xy: int, border_z: int, len_depth: int) -> np.ndarray:
    """Inclusive ``(3, 2)`` corner bounds: x, y in [b, n - c - 1 - b]; z in [bz, nz - cz - len_depth - 1 - bz]."""
    need = min_volume_shape(crop, border_xy, border_z, len_depth)
    if len(shape) != 3 or any(n < m for n, m in zip(shape, need)):
        raise ValueError(
            f"volume of shape {tuple(shape)} (x, y, z) is too small for crop {tuple(crop)} with border_xy={border_xy}, "
            f"border_z={border_z}, len_depth={len_depth}: expected at least {need}; lower the borders or the crop"
        )
    (nx, ny, nz), (cx, cy, cz) = shape, crop
    return np.array([[border_xy, nx - cx - 1 - border_xy], [border_xy, ny - cy - 1 - border_xy],
                     [border_z, nz - cz - len_depth - 1 - border_z]])


def tissue_score_table(volume01: np.ndarray, tissue_threshold: float = 0.425, len_depth: int = 3) -> np.ndarray:
    """Summed-volume table of the per-voxel tissue score times ``len_depth - 1`` (integers).

    Args:
        volume01: ``(X, Y, Z)`` volume in [0, 1].

    Returns:
        ``(X + 1, Y + 1, Z - len_depth + 2)`` int32 table ``T`` with ``T[i, j, k]`` the score sum over
        ``[0, i) x [0, j) x [0, k)``; slices past ``Z - len_depth`` have no full look-ahead and are not scored.
    """
    if len_depth < 2:
        raise ValueError(f"len_depth={len_depth}: expected >= 2 (slices d .. d + len_depth - 1 are inspected)")
    v = np.asarray(volume01)
    nz = v.shape[2] - len_depth + 1
    hit = v >= tissue_threshold
    score = np.zeros(v.shape[:2] + (nz,), dtype=np.int32)
    seen = np.zeros(score.shape, dtype=bool)
    for k in range(len_depth - 1):  # first hit at offset k scores (len_depth - 1 - k)
        first = hit[:, :, k:k + nz] & ~seen
        score += first * np.int32(len_depth - 1 - k)
        seen |= first
    table = np.zeros((v.shape[0] + 1, v.shape[1] + 1, nz + 1), dtype=np.int32)
    inner = table[1:, 1:, 1:]
    np.cumsum(score, axis=2, out=inner)
    np.cumsum(inner, axis=1, out=inner)
    np.cumsum(inner, axis=0, out=inner)
    return table


def cube_tissue_scores(table: np.ndarray, corners: np.ndarray, crop: tuple[int, int, int],
                       len_depth: int = 3) -> np.ndarray:
    """Tissue score (sum over the cube, in official units) of each corner ``(M, 3)`` ``(x, y, z)``: ``(M,)`` float64."""
    c = np.asarray(corners, dtype=np.int64)
    x0, y0, z0 = c[:, 0], c[:, 1], c[:, 2]
    x1, y1, z1 = x0 + crop[0], y0 + crop[1], z0 + crop[2]
    t = table
    total = (t[x1, y1, z1] - t[x0, y1, z1] - t[x1, y0, z1] - t[x1, y1, z0]
             + t[x0, y0, z1] + t[x0, y1, z0] + t[x1, y0, z0] - t[x0, y0, z0])
    return total / (len_depth - 1)


def sample_subvolume_corners(volume01: np.ndarray, n_cubes: int, rng: np.random.Generator,
                             crop: tuple[int, int, int] = (64, 64, 32), border_xy: int = 100, border_z: int = 30,
                             tissue_threshold: float = 0.425, max_tissue_fraction: float = 0.15,
                             max_tries_factor: int = 50, len_depth: int = 3) -> np.ndarray:
    """Corners ``(M, 3)`` ``(x, y, z)`` of up to ``n_cubes`` accepted cubes, in draw order.

    All ``max_tries_factor * n_cubes`` candidate corners are drawn at once (uniform over the official ranges), scored
    in one batched look-up and the first ``n_cubes`` accepted are kept; fewer come back when the tries run out, as in
    the official generator.
    """
    if n_cubes < 0 or max_tries_factor < 1:
        raise ValueError(f"n_cubes={n_cubes}, max_tries_factor={max_tries_factor}: expected n_cubes >= 0, factor >= 1")
    bounds = _corner_ranges(np.shape(volume01), crop, border_xy, border_z, len_depth)
    corners = rng.integers(bounds[:, 0], bounds[:, 1] + 1, size=(max_tries_factor * n_cubes, 3))
    lo, hi = bounds[:, 0], bounds[:, 1] + np.array(crop) + np.array([0, 0, len_depth - 1])
    reachable = np.asarray(volume01)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]  # borders never enter a cube
    scores = cube_tissue_scores(tissue_score_table(reachable, tissue_threshold, len_depth), corners - lo, crop,
                                len_depth)
    accepted = corners[scores <= max_tissue_fraction * float(np.prod(crop))]
    return accepted[:n_cubes]


def sample_subvolumes(volume01: np.ndarray, n_cubes: int, rng: np.random.Generator,
                      crop: tuple[int, int, int] = (64, 64, 32), border_xy: int = 100, border_z: int = 30,
                      tissue_threshold: float = 0.425, max_tissue_fraction: float = 0.15,
                      max_tries_factor: int = 50, len_depth: int = 3) -> np.ndarray:
    """Models Genesis pre-training cubes from one scan.

    Args:
        volume01: ``(X, Y, Z)`` volume in [0, 1] (``hu_to_unit`` of the HU array transposed from ``(z, y, x)``).
        n_cubes: cubes wanted (official ``scale`` = 32).
        rng: NumPy generator (e.g. ``eden_lib.seed.rng(seed, "genesis", scan_index)``).
        crop: cube size ``(X, Y, Z)`` (official 64 x 64 x 32).
        border_xy, border_z: margins excluded from the corner draw (official 100 and 30; the synthetic grid needs
            smaller ones, see ``min_volume_shape``).
        tissue_threshold: [0, 1] level of "tissue" (official 0.425, i.e. -150 HU).
        max_tissue_fraction: reject when the tissue score exceeds this fraction of the cube (official 0.15).
        max_tries_factor: at most ``factor * n_cubes`` draws (official 50).
        len_depth: look-ahead slices of the acceptance test (official 3).

    Returns:
        ``(M, X, Y, Z)`` float32 cubes, ``M <= n_cubes``.

    Raises:
        ValueError: when the volume is smaller than ``min_volume_shape(crop, border_xy, border_z, len_depth)``.
    """
    corners = sample_subvolume_corners(volume01, n_cubes, rng, crop, border_xy, border_z, tissue_threshold,
                                       max_tissue_fraction, max_tries_factor, len_depth)
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(volume01, dtype=np.float32), tuple(crop))
    return windows[corners[:, 0], corners[:, 1], corners[:, 2]].copy()
