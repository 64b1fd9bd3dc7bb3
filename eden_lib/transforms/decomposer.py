"""Adam-v1's anatomy decomposer, batched (Hosseinzadeh Taher et al., "Towards foundation models learned from anatomy
in medical imaging via self-supervision", MICCAI-DART 2023, arXiv:2309.15358).

At granularity ``n`` a render is split into ``2**n`` non-overlapping parts with no margin, on a grid of
``2**ceil(n/2)`` rows x ``2**floor(n/2)`` columns (n = 0: the whole image; 1: upper / lower half; 2: 2 x 2; 3: 4 x 2;
4: 4 x 4), and one part per sample, drawn uniformly, is the *anchor*. The released code reads its ``--n`` as the
grid side (an n x n grid), which gives ``2**n`` parts only for n = 2 and 4 (the levels it trains); here ``n`` is the
paper's level, so odd levels split the rows first.

Both views of an anchor are random resized crops *within the part* (the part is cut out first, so a crop never
reaches past its border, and :func:`eden_lib.transforms.views.crop` clamps at the part's edge), then photometric
jitter and blur (:func:`eden_lib.transforms.views.augment`), then a random rotation, as the paper's pipeline
(RandomResizedCrop area (0.2, 1.0), ColorJitter p 0.8, blur p 0.5, RandomRotation +-30 degrees, no flip). The
rotation is bilinear (torchvision's RandomRotation defaults to nearest) and fills the corners with 0, as
RandomRotation's default fill does. On an odd level a part is twice as tall as wide; a crop box covers the same
fraction of the part's height and width, so its view is the part's shape resampled to a square.

Every draw is per sample from one ``torch.Generator``; no per-sample Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eden_lib.transforms.views import ViewConfig, augment, crop, crop_boxes


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of granularity ``n >= 0``: ``(2**ceil(n/2), 2**floor(n/2))``, ``2**n`` parts."""
    if n < 0:
        raise ValueError(f"granularity must be >= 0, got {n}")
    return 2 ** math.ceil(n / 2), 2 ** (n // 2)


def choose_parts(b: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """One part per sample, uniform over the ``2**n`` parts: indices ``(B,)`` (long), row-major on the grid."""
    rows, cols = grid_shape(n)
    return torch.randint(rows * cols, (b,), generator=generator)


def part_boxes(index: torch.Tensor, n: int) -> torch.Tensor:
    """Part indices ``(B,)`` of level ``n`` -> boxes ``(B, 4)``: ``(x0, y0, x1, y1)`` as fractions of the image side
    (x: columns, y: rows; [0, 1], the part covers ``[x0, x1) x [y0, y1)``)."""
    rows, cols = grid_shape(n)
    r, c = (index // cols).double(), (index % cols).double()
    return torch.stack([c / cols, r / rows, (c + 1) / cols, (r + 1) / rows], dim=1).float()


def crop_parts(images: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Cut out each sample's part at full resolution: exactly the slice ``images[i, :, y0:y1, x0:x1]`` (a copy; at
    ``n = 0`` the whole image, ``images`` itself).

    Args:
        images: ``(B, C, H, W)``, H divisible by the grid's rows and W by its columns.
        index: ``(B,)`` part indices (:func:`choose_parts`).
        n: the granularity.
    Returns:
        ``(B, C, H / rows, W / cols)``.
    """
    rows, cols = grid_shape(n)
    b, _, h, w = images.shape
    if h % rows or w % cols:
        raise ValueError(f"a {h}x{w} image does not split into {rows}x{cols} equal parts (granularity {n})")
    if rows * cols == 1:
        return images
    index = index.to(images.device)
    grid = images.unflatten(2, (rows, h // rows)).unflatten(4, (cols, w // cols))  # (B, C, rows, h', cols, w')
    return grid[torch.arange(b, device=images.device), :, index // cols, :, index % cols, :]


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each square image ``(B, C, S, S)`` about its centre by ``degrees`` ``(B,)``; bilinear, zero fill.

    A positive angle turns the content counter-clockwise on screen (row 0 at the top), as torchvision's rotation:
    90 degrees is ``torch.rot90(x, 1, (2, 3))``.
    """
    angle = torch.deg2rad(degrees.to(x.device, x.dtype))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_angles(b: int, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Angles ``(B,)`` uniform in ``[-degrees, degrees]``."""
    return degrees * (2 * torch.rand(b, generator=generator) - 1)


def part_view(parts: torch.Tensor, cfg: ViewConfig, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """One augmented view of each anchor part: a random resized crop within the part (``cfg.scale``, resampled to
    ``cfg.size``), :func:`~eden_lib.transforms.views.augment` (jitter, blur, flip with ``cfg``'s probabilities),
    then a rotation uniform in ``[-degrees, degrees]``.

    Args:
        parts: ``(B, C, h, w)`` from :func:`crop_parts`.
    Returns:
        ``(B, C, cfg.size, cfg.size)``.
    """
    b = parts.shape[0]
    crops = crop(parts, crop_boxes(b, cfg.scale, generator).to(parts.device), cfg.size)
    return rotate(augment(crops, cfg, generator), random_angles(b, degrees, generator))
