"""Adam-v2 views: a whole at a granularity, its four parts and nested multi-scale crops, batched.

Hosseinzadeh Taher et al., "Representing part-whole hierarchies in foundation models by learning localizability,
composability, and decomposability from anatomy via self-supervision", CVPR 2024 (arXiv 2404.15672).

At granularity ``g`` the *whole* W of each sample is a square crop of side ``R // 2**g`` of the render ``(B, 1, R, R)``
(``g = 0``: the whole render), placed at whole pixels and, where it fits, at least ``margin`` x R from the border
(the release: 50 px of ~1,024-px radiographs); its four *parts* are the non-overlapping 2x2 grid of W.

:class:`PartWholeRecipe` (the full "LCD" stage) draws, in the release's order,

0. ``whole``: W resized to ``size`` (the teacher's input for all three branches),
1. ``global_view``: a crop centred on W with area fraction in ``global_area`` (0.8-1.0),
2. ``local``: one crop centred on W per area bin, at ``size // 2`` (the release: 8 bins [0.05, 0.1], [0.1, 0.2], ...,
   [0.7, 0.8] at 96 of 224 px),
3. ``parts``: the four parts, each resized to ``size``,

so every localizability view is a nested scale of the same anatomy. With fewer local crops than bins,
:func:`spread_bins` keeps the smallest and the largest bin and spaces the rest evenly (the release hard-codes all 8,
whatever its ``--local_crops_number``): the nesting keeps its full range of scales. Every geometric crop is taken from
the render at full resolution (boxes are composed, not re-cropped from a resized W).

:class:`WholeMultiCrop` (the warm-up "L" stage): one random crop W of side ``R // 2**g`` anywhere in the render (no
margin: the release's warm-up crop is described without one), then DINO multi-crop of W with
:func:`eden_lib.transforms.views.make_view`: 2 global crops (area 0.8-1.0) and ``n_local`` local crops (area
0.05-0.4) at ``size // 2``.

Photometric steps reuse :mod:`eden_lib.transforms.views` (brightness/contrast jitter p 0.8; blur p 0.1 on view 0 and
the parts, 1.0 on view 1 and the first global crop, 0.1 on the second, 0.5 on local crops); no flips (the release has
none). Differences from the release: crops are square (the release draws aspect ratios 3/4-4/3 for view 1 and
alternately 2/3-1 and 1-3/2 for the local crops), and the rotations (+-10 degrees on view 0 and the parts, +-30 on
every warm-up crop) are not ported; the warm-up crops draw their side, not their area, uniformly
(:func:`~eden_lib.transforms.views.crop_boxes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from eden_lib.transforms.views import ViewConfig, augment, crop, make_view

#: the release keeps a whole >= 50 px from the border of ~1,024-px radiographs
MARGIN = 50 / 1024
#: edges of the release's 8 local-crop area bins: [0.05, 0.1], [0.1, 0.2], ..., [0.7, 0.8]
LOCAL_AREA_BIN_EDGES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: the 2x2 grid of a whole in row-major order (top-left, top-right, bottom-left, bottom-right): side 1/2, centre (x, y)
PART_BOXES = ((0.5, -0.5, -0.5), (0.5, 0.5, -0.5), (0.5, -0.5, 0.5), (0.5, 0.5, 0.5))


def spread_bins(edges: tuple[float, ...], n: int) -> tuple[tuple[float, float], ...]:
    """``n`` area bins ``(low, high)`` out of the bins between consecutive ``edges``: the first and the last and the
    rest evenly spaced between them (all of them when ``n`` equals their number; repeats when ``n`` exceeds it)."""
    bins = list(zip(edges[:-1], edges[1:]))
    return tuple(bins[round(i * (len(bins) - 1) / max(n - 1, 1))] for i in range(n))


def whole_boxes(
    b: int, render_size: int, granularity: int, generator: torch.Generator, margin: float = 0.0
) -> torch.Tensor:
    """Boxes ``(B, 3)`` (side fraction, centre x, y in [-1, 1]; see :func:`~eden_lib.transforms.views.crop`) of
    wholes of side ``render_size // 2**granularity`` pixels at whole-pixel offsets, ``margin`` x R from the border
    where that fits (otherwise anywhere)."""
    side = render_size // 2**granularity
    if side < 1:
        raise ValueError(f"granularity {granularity} leaves no pixel of a {render_size}-pixel render")
    pad = round(margin * render_size)
    low, high = pad, render_size - side - pad
    if high < low:
        low, high = 0, render_size - side
    offsets = low + torch.randint(high - low + 1, (b, 2), generator=generator)  # left, top pixel
    centre = (2 * offsets + side) / render_size - 1
    return torch.cat([torch.full((b, 1), side / render_size), centre], dim=1)


def nest(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Boxes ``inner`` ``(B, 3)`` relative to boxes ``outer`` ``(B, 3)`` -> the same boxes in image coordinates."""
    side = outer[:, :1] * inner[:, :1]
    return torch.cat([side, outer[:, 1:] + outer[:, :1] * inner[:, 1:]], dim=1)


def centred_boxes(b: int, area: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Centred square boxes ``(B, 3)`` whose area fraction is uniform in ``area``."""
    fraction = area[0] + (area[1] - area[0]) * torch.rand(b, generator=generator)
    return torch.cat([fraction.sqrt()[:, None], torch.zeros(b, 2)], dim=1)


class PartWholeViews(NamedTuple):
    """The views of one batch of B wholes; crop-major stacks (rows ``i*B:(i+1)*B`` are crop i)."""

    whole: torch.Tensor  #: view 0, W resized: ``(B, 1, S, S)``
    global_view: torch.Tensor  #: view 1, a centred crop of W: ``(B, 1, S, S)``
    local: torch.Tensor  #: centred crops of W, one per bin: ``(n_local * B, 1, S // 2, S // 2)``
    parts: torch.Tensor  #: the 2x2 grid of W in :data:`PART_BOXES` order: ``(4 * B, 1, S, S)``


@dataclass(frozen=True)
class PartWholeRecipe:
    """The full-stage views of a whole (module docstring).

    Attributes:
        size: S, the side of view 0, view 1 and the parts (local crops: ``S // 2``).
        global_area: area fraction range of view 1 within W.
        local_areas: one area range per local crop (:func:`spread_bins`).
        margin: least distance of a whole from the render border, as a fraction of the render side.
    """

    size: int
    global_area: tuple[float, float] = (0.8, 1.0)
    local_areas: tuple[tuple[float, float], ...] = spread_bins(LOCAL_AREA_BIN_EDGES, 8)
    margin: float = MARGIN

    def crops(self, renders: torch.Tensor, granularity: int, generator: torch.Generator) -> PartWholeViews:
        """Renders ``(B, 1, R, R)`` in [0, 1] -> the views before any photometric change."""
        b, device = renders.shape[0], renders.device
        whole = whole_boxes(b, renders.shape[-1], granularity, generator, self.margin)

        def take(inner: torch.Tensor, size: int) -> torch.Tensor:
            return crop(renders, nest(whole, inner).to(device), size)

        global_view = take(centred_boxes(b, self.global_area, generator), self.size)
        local = [take(centred_boxes(b, area, generator), self.size // 2) for area in self.local_areas]
        return PartWholeViews(
            whole=crop(renders, whole.to(device), self.size),
            global_view=global_view,
            local=torch.cat(local) if local else renders.new_zeros(0, 1, self.size // 2, self.size // 2),
            parts=torch.cat([take(torch.tensor(box).expand(b, 3), self.size) for box in PART_BOXES]),
        )

    def views(self, renders: torch.Tensor, granularity: int, generator: torch.Generator) -> PartWholeViews:
        """:meth:`crops` with jitter and blur (view 0 and the parts blur p 0.1, view 1 p 1.0, local crops p 0.5)."""
        clean = self.crops(renders, granularity, generator)
        whole_cfg = ViewConfig(self.size, blur_p=0.1, flip_p=0.0)
        return PartWholeViews(
            whole=augment(clean.whole, whole_cfg, generator),
            global_view=augment(clean.global_view, ViewConfig(self.size, blur_p=1.0, flip_p=0.0), generator),
            local=augment(clean.local, ViewConfig(self.size // 2, blur_p=0.5, flip_p=0.0), generator)
            if self.local_areas else clean.local,
            parts=augment(clean.parts, whole_cfg, generator),
        )


@dataclass(frozen=True)
class WholeMultiCrop:
    """The warm-up views: DINO multi-crop of one random whole per sample (module docstring).

    Attributes:
        size: side of the global crops (local crops: ``size // 2``).
        n_local: local crops per whole.
        global_area, local_area: area fraction ranges of the crops within W (the release: 0.8-1.0, 0.05-0.4).
    """

    size: int
    n_local: int
    global_area: tuple[float, float] = (0.8, 1.0)
    local_area: tuple[float, float] = (0.05, 0.4)

    def views(self, renders: torch.Tensor, granularity: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Renders ``(B, 1, R, R)`` -> ``[globals (2B, 1, S, S)]`` plus, if ``n_local``, ``locals (n_local*B, 1, S/2,
        S/2)``, crop-major (as :meth:`eden_lib.methods.dino.Dino.multi_crop`). W is taken at its native pixels."""
        side = renders.shape[-1] // 2**granularity
        boxes = whole_boxes(renders.shape[0], renders.shape[-1], granularity, generator)
        whole = crop(renders, boxes.to(renders.device), side)
        g_side = (math.sqrt(self.global_area[0]), math.sqrt(self.global_area[1]))
        l_side = (math.sqrt(self.local_area[0]), math.sqrt(self.local_area[1]))
        globals_ = [ViewConfig(self.size, g_side, blur_p=p, flip_p=0.0) for p in (1.0, 0.1)]
        local = ViewConfig(self.size // 2, l_side, blur_p=0.5, flip_p=0.0)
        groups = [torch.cat([make_view(whole, v, generator)[0] for v in globals_])]
        if self.n_local:
            groups.append(torch.cat([make_view(whole, local, generator)[0] for _ in range(self.n_local)]))
        return groups
