"""Patches around points (anatomical landmarks), cropped from the render and resampled in one batched op."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from eden_lib.data.batches import to_unit


def crop_around(images: np.ndarray, centers: np.ndarray, patch: int, size: int) -> torch.Tensor:
    """Square patches centred on points.

    Args:
        images: uint8 (B, R, R) renders.
        centers: (B, 2) float (x, y) pixel coordinates in the render.
        patch: patch side in render pixels.
        size: output side.

    Returns:
        float32 (B, 1, size, size) in [0, 1]; outside the image is filled with the border value.
    """
    b, r = images.shape[0], images.shape[-1]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = patch / r
    theta[:, 1, 1] = patch / r
    c = torch.as_tensor(np.asarray(centers, dtype=np.float32))
    theta[:, :, 2] = (2 * c + 1) / r - 1  # pixel centre -> normalised coordinate (align_corners=False)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    return F.grid_sample(to_unit(images), grid, mode="bilinear", padding_mode="border", align_corners=False)


def unpack_masks(bitfield: np.ndarray, bits: list[int], size: int) -> torch.Tensor:
    """uint8 (N, R, R) bitfield -> float32 (N, len(bits), size, size) in {0, 1} (area-resized, threshold 0.5)."""
    planes = np.stack([(bitfield >> b) & 1 for b in bits], axis=1).astype(np.float32)
    resized = F.interpolate(torch.from_numpy(planes), size=(size, size), mode="area")
    return (resized >= 0.5).float()
