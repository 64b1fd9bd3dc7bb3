"""The in- and out-painting of the released Keras TransVW / Semantic Genesis code (``genesis_family.md`` §3.3).

Unlike the PyTorch code (and Models Genesis), which fills with uniform noise, the Keras code fills with **one
constant** random value per sample:

- in-painting: one box, each side a uniform integer in [10, 20] voxels, set to the constant;
- out-painting: everything set to the constant except one kept window whose side is the crop side minus a uniform
  integer in [10, 20].

The official sizes are voxels of a 64 x 64 x 32 crop; here they are fractions of each side of that crop
(``[10, 20] / 64`` in-plane, ``[10, 20] / 32`` in depth; a 2D crop uses the in-plane fractions), so a 32 x 32 x 16
crop gets [5, 10] voxels per side. Boxes lie uniformly inside the crop. Batched over ``(B, C, *spatial)``, seeded by
the caller's generator; samples whose ``apply`` flag is False are returned unchanged.
"""

from __future__ import annotations

import torch

#: official box-side range in voxels and the crop it was set for, per spatial axis (x, y, z)
OFFICIAL_SIDE = (10, 20)
OFFICIAL_CROP = (64, 64, 32)


def side_range(spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis the inclusive (low, high) box side for a crop of ``spatial`` voxels (at least 1, at most the side)."""
    crop = OFFICIAL_CROP[: len(spatial)]
    low = [min(n, max(1, round(OFFICIAL_SIDE[0] * n / c))) for n, c in zip(spatial, crop)]
    high = [min(n, max(lo, round(OFFICIAL_SIDE[1] * n / c))) for n, lo, c in zip(spatial, low, crop)]
    return torch.tensor(low), torch.tensor(high)


def _uniform_int(low: torch.Tensor, high: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    """``(b, d)`` integers uniform in ``[low, high]`` per axis (``low``, ``high``: ``(d,)`` or ``(b, d)``)."""
    u = torch.rand((b, low.shape[-1]), generator=generator, dtype=torch.float64)
    return low + (u * (high - low + 1)).long().minimum(high - low)


def box_masks(corner: torch.Tensor, size: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``(b, *spatial)`` bool: True inside each sample's box ``[corner, corner + size)`` (``(b, d)`` each)."""
    inside = None
    for axis, n in enumerate(spatial):
        pos = torch.arange(n)
        along = (pos >= corner[:, axis, None]) & (pos < (corner + size)[:, axis, None])  # (b, n)
        along = along.view(len(corner), *[n if a == axis else 1 for a in range(len(spatial))])
        inside = along if inside is None else inside & along
    return inside


def _paint(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator, keep_inside: bool) -> torch.Tensor:
    spatial = tuple(x.shape[2:])
    b = x.shape[0]
    low, high = side_range(spatial)
    draw = _uniform_int(low, high, b, generator)
    size = torch.tensor(spatial) - draw if keep_inside else draw
    corner = _uniform_int(torch.zeros_like(size), torch.tensor(spatial) - size, b, generator)
    value = torch.rand(b, generator=generator, dtype=torch.float64).to(x.dtype)
    box = box_masks(corner, size, spatial).to(x.device)
    fill = ~box if keep_inside else box
    fill &= apply.to(x.device).view(b, *[1] * len(spatial))
    return torch.where(fill.unsqueeze(1), value.to(x.device).view(b, 1, *[1] * len(spatial)), x)


def keras_inpaint(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One box per applied sample set to one random constant in [0, 1). ``(B, C, *spatial)`` -> same shape."""
    return _paint(x, apply, generator, keep_inside=False)


def keras_outpaint(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Everything but one large window per applied sample set to one random constant in [0, 1). Same shape."""
    return _paint(x, apply, generator, keep_inside=True)
