"""2D and 2.5D views of 3D cubes, for applying 2D networks to 3D tasks (Models Genesis, MICCAI 2019: "3D beats 2D").

Cubes are ``(K, X, Y, Z)`` in [0, 1] with depth on the last axis (the study's 3D convention). A 2D network sees:

- ``slices(cubes, axis)``: every slice across ``axis`` (2 = axial, 1 = coronal, 0 = sagittal), ``(K * n, A, B)``
  cube-major;
- ``central_slices(cubes)``: the three orthogonal slices through each cube's centre (the 2.5D input), ``[(K, ., .)]
  * 3``;
- ``stack_slices(pred, k, axis)``: per-slice outputs back into cubes, the inverse of ``slices``.

Slices are resampled to a square network input with ``to_inputs`` and back with ``from_outputs`` (bilinear).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def slices(cubes: np.ndarray, axis: int) -> np.ndarray:
    """Every slice of ``cubes`` ``(K, X, Y, Z)`` across spatial ``axis`` (0, 1 or 2): ``(K * n_axis, ., .)``."""
    c = np.asarray(cubes)
    if c.ndim != 4 or axis not in (0, 1, 2):
        raise ValueError(f"slices: expected cubes (K, X, Y, Z) and axis 0, 1 or 2, got {c.shape} and {axis}")
    moved = np.moveaxis(c, axis + 1, 1)  # (K, n, ., .)
    return moved.reshape(-1, *moved.shape[2:])


def stack_slices(per_slice: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Per-slice maps ``(K * n, A, B)`` (cube-major, as :func:`slices` gives them) -> cubes ``(K, X, Y, Z)``."""
    p = np.asarray(per_slice)
    moved = p.reshape(k, -1, *p.shape[1:])
    return np.moveaxis(moved, 1, axis + 1)


def central_slices(cubes: np.ndarray) -> list[np.ndarray]:
    """The sagittal, coronal and axial slice through the centre of each cube: three ``(K, ., .)`` arrays."""
    c = np.asarray(cubes)
    x, y, z = (s // 2 for s in c.shape[1:])
    return [c[:, x], c[:, :, y], c[:, :, :, z]]


def to_inputs(images: np.ndarray, size: int) -> torch.Tensor:
    """``(N, A, B)`` in [0, 1] -> float32 ``(N, 1, size, size)`` (bilinear)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def from_outputs(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Network maps ``(N, size, size)`` -> ``(N, *shape)`` (bilinear), e.g. probabilities back on the slice grid."""
    x = torch.from_numpy(np.asarray(maps, dtype=np.float32)).unsqueeze(1)
    return F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)[:, 0].numpy()
