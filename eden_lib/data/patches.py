"""Patches around points (anatomical landmarks), cropped from the render and resampled in one batched op."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from eden_lib.data.batches import to_unit


def crop_around(images: np.ndarray, centers: np.ndarray, patch: int, size: int) -> torch.Tensor:
    """Square patches centred on points, several per image, in one ``grid_sample`` per image batch.

    Args:
        images: uint8 (B, R, R) renders.
        centers: (B, 2) or (B, L, 2) float (x, y) pixel coordinates in the render.
        patch: patch side in render pixels.
        size: output side.

    Returns:
        float32 (B * L, 1, size, size) in [0, 1], image-major (the L patches of image 0 first); outside the image is
        filled with the border value.
    """
    c = torch.as_tensor(np.asarray(centers, dtype=np.float32))
    if c.ndim == 2:
        c = c[:, None]
    b, n_l = c.shape[:2]
    r = images.shape[-1]
    theta = torch.zeros(b * n_l, 2, 3)
    theta[:, 0, 0] = patch / r
    theta[:, 1, 1] = patch / r
    theta[:, :, 2] = (2 * c.reshape(-1, 2) + 1) / r - 1  # pixel centre -> normalised coordinate (align_corners=False)
    grid = F.affine_grid(theta, [b * n_l, 1, size, size], align_corners=False)
    grid = grid.reshape(b, n_l * size, size, 2)  # the L grids of an image stacked along the output height
    out = F.grid_sample(to_unit(images), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b * n_l, 1, size, size)


def part_centres(centers: np.ndarray, patch: int) -> np.ndarray:
    """Centres of the 2x2 grid of parts of each ``patch``-pixel square: ``(B, L, 2)`` -> ``(B, L * 4, 2)`` (x, y),
    part-minor in the order top-left, top-right, bottom-left, bottom-right; each part has side ``patch / 2``."""
    c = np.asarray(centers, dtype=np.float32)
    if c.ndim == 2:
        c = c[:, None]
    q = patch / 4
    offsets = np.array([[-q, -q], [q, -q], [-q, q], [q, q]], dtype=np.float32)
    return (c[:, :, None, :] + offsets).reshape(c.shape[0], -1, 2)


def unpack_masks(bitfield: np.ndarray, bits: list[int], size: int, chunk: int = 128) -> torch.Tensor:
    """uint8 (N, R, R) bitfield -> float32 (N, len(bits), size, size) in {0, 1} (area-resized, threshold 0.5).

    Works through ``chunk`` images at a time, so memory stays at the output size plus one chunk at the render size.
    """
    out = torch.empty(len(bitfield), len(bits), size, size)
    for i in range(0, len(bitfield), chunk):
        part = np.asarray(bitfield[i : i + chunk])
        planes = np.stack([(part >> b) & 1 for b in bits], axis=1).astype(np.float32)
        out[i : i + chunk] = F.interpolate(torch.from_numpy(planes), size=(size, size), mode="area") >= 0.5
    return out
