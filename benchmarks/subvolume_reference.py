"""The official Models Genesis sub-volume acceptance score as a per-voxel loop: the reference that the benchmark
times and the tests check ``eden_lib.data.subvolumes`` against."""

from __future__ import annotations

import numpy as np


def official_loop_score(volume01: np.ndarray, corner, crop, threshold: float = 0.425, len_depth: int = 3) -> float:
    """The official pure-Python per-voxel loop (``infinite_generator_3D.py``), for its cost per candidate."""
    x0, y0, z0 = corner
    window = volume01[x0:x0 + crop[0], y0:y0 + crop[1], z0:z0 + crop[2] + len_depth]
    total = 0.0
    for d in range(crop[2]):
        for i in range(crop[0]):
            for j in range(crop[1]):
                k_hit = len_depth - 1
                for k in range(len_depth):
                    if window[i, j, d + k] >= threshold:
                        k_hit = k
                        break
                total += 1.0 - k_hit / (len_depth - 1)
    return total
