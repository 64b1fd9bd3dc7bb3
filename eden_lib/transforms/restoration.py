"""DiRA / CAiD restoration corruptions, batched (Haghighi et al., CVPR 2022, "DiRA"; Taher et al., MIDL 2022, "CAiD").

Models-Genesis-style corruptions of a view before the encoder; the U-Net decoder must restore the clean crop. One
mode per sample, drawn with ``r ~ U[0, 1]`` (released code, at 224 pixels):

* ``r < inpaint_p`` (0.30): **in-painting cut-outs**: up to 10 rectangles with sides ~ U{10..70} px set to 0; after
  each rectangle the loop stops with probability 0.1.
* next ``outpaint_p`` (0.05): **out-painting**: the image is blanked and up to 10 windows of side
  224 - U{50..70} px are pasted back from the original (the same early stop).
* next ``shuffle_p`` (0.30): **local shuffling**: 10 swaps of two square blocks with side ~ U{10..15} px.
* otherwise (0.35): unchanged.

Pixel sizes scale with the view side (``side / 224``). Every draw is per sample and batched; Python loops run only
over the fixed number of rectangles or swaps. A swap reads the image as left by the previous swap and writes the
first block, then the second (on overlap the second block's write wins), as sequential code would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAPER_SIDE = 224


@dataclass(frozen=True)
class RestorationCorruption:
    """Probabilities and sizes (pixels at 224, scaled to the view side) of the corruptions."""

    inpaint_p: float = 0.30
    outpaint_p: float = 0.05
    shuffle_p: float = 0.30
    max_rectangles: int = 10
    stop_p: float = 0.1
    cutout_side: tuple[int, int] = (10, 70)
    outpaint_margin: tuple[int, int] = (50, 70)
    n_swaps: int = 10
    swap_side: tuple[int, int] = (10, 15)

    def __post_init__(self) -> None:
        for name in ("inpaint_p", "outpaint_p", "shuffle_p", "stop_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)}; expected a probability in [0, 1]")
        if self.inpaint_p + self.outpaint_p + self.shuffle_p > 1 + 1e-9:
            raise ValueError(f"inpaint_p + outpaint_p + shuffle_p = "
                             f"{self.inpaint_p + self.outpaint_p + self.shuffle_p}; expected <= 1")


def _scaled(px: tuple[int, int], side: int) -> tuple[int, int]:
    low, high = (max(1, round(p * side / PAPER_SIDE)) for p in px)
    return low, max(low, high)


def _randint(b: int, k: int, low: int, high: torch.Tensor | int, generator: torch.Generator) -> torch.Tensor:
    """``(b, k)`` integers uniform in ``[low, high]`` (``high`` may be a tensor broadcasting to ``(b, k)``)."""
    u = torch.rand(b, k, generator=generator)
    return low + (u * (torch.as_tensor(high) - low + 1)).long()


def rectangles(
    b: int, side: int, sides: tuple[int, int], cfg: RestorationCorruption, generator: torch.Generator
) -> torch.Tensor:
    """Union of up to ``max_rectangles`` random rectangles per sample (early stop ``stop_p`` after each one).

    Returns:
        bool ``(b, side, side)``.
    """
    k = cfg.max_rectangles
    h, w = (_randint(b, k, sides[0], sides[1], generator) for _ in range(2))
    y0, x0 = _randint(b, k, 0, side - h, generator), _randint(b, k, 0, side - w, generator)
    go_on = torch.rand(b, k - 1, generator=generator) >= cfg.stop_p
    active = torch.cat([torch.ones(b, 1, dtype=torch.bool), go_on], dim=1).cumprod(dim=1).bool()  # (b, k)
    coord = torch.arange(side)
    rows = (coord >= y0[..., None]) & (coord < (y0 + h)[..., None])  # (b, k, side)
    cols = (coord >= x0[..., None]) & (coord < (x0 + w)[..., None])
    return ((rows[..., :, None] & cols[..., None, :]) & active[..., None, None]).any(dim=1)


def swap(x: torch.Tensor, side: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Swap two square blocks per sample: block A is written with B's pixels, then B with A's (B wins overlaps).

    Args:
        x: ``(N, C, S, S)``.
        side: ``(N,)`` block sides; ``a``, ``b``: ``(N, 2)`` top-left corners (row, column), inside the image.
    Returns:
        ``(N, C, S, S)``.
    """
    n, c, size, _ = x.shape
    yy, xx = torch.arange(size).view(1, size, 1), torch.arange(size).view(1, 1, size)
    s, (ay, ax), (by, bx) = side.view(n, 1, 1), a.view(n, 2, 1, 1).unbind(1), b.view(n, 2, 1, 1).unbind(1)
    in_a = (yy >= ay) & (yy < ay + s) & (xx >= ax) & (xx < ax + s)
    in_b = (yy >= by) & (yy < by + s) & (xx >= bx) & (xx < bx + s)
    src_y = torch.where(in_b, yy - by + ay, torch.where(in_a, yy - ay + by, yy.expand(n, size, size)))
    src_x = torch.where(in_b, xx - bx + ax, torch.where(in_a, xx - ax + bx, xx.expand(n, size, size)))
    index = (src_y * size + src_x).view(n, 1, -1).expand(n, c, -1).to(x.device)
    return x.flatten(2).gather(2, index).view(n, c, size, size)


def swap_blocks(x: torch.Tensor, n_swaps: int, sides: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``n_swaps`` random :func:`swap` per sample, one after the other (side ~ U``sides``, corners uniform)."""
    n, size = x.shape[0], x.shape[-1]
    for _ in range(n_swaps):
        s = _randint(n, 1, sides[0], sides[1], generator)  # (n, 1)
        corners = _randint(n, 4, 0, size - s, generator)
        x = swap(x, s.view(n), corners[:, :2], corners[:, 2:])
    return x


def corrupt(
    x: torch.Tensor, cfg: RestorationCorruption, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt each view of a batch with its own mode.

    Args:
        x: ``(B, C, S, S)`` views in [0, 1]; ``generator`` a CPU ``torch.Generator``.
    Returns:
        ``(corrupted, mode)``: ``(B, C, S, S)`` and ``(B,)`` long, 0 in-painting, 1 out-painting, 2 local shuffle,
        3 none.
    """
    b, _, side, width = x.shape
    if side != width:
        raise ValueError(f"corrupt: expected square views, got {side} x {width}")
    r = torch.rand(b, generator=generator)
    edges = torch.tensor([cfg.inpaint_p, cfg.outpaint_p, cfg.shuffle_p]).cumsum(0)
    mode = torch.bucketize(r, edges, right=True)
    margin = _scaled(cfg.outpaint_margin, side)
    cut = rectangles(b, side, _scaled(cfg.cutout_side, side), cfg, generator)
    keep = rectangles(b, side, (side - margin[1], side - margin[0]), cfg, generator)
    shuffled = swap_blocks(x, cfg.n_swaps, _scaled(cfg.swap_side, side), generator)
    m = mode.to(x.device).view(b, 1, 1, 1)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.where((m == 0) & cut[:, None].to(x.device), zero, x)
    out = torch.where((m == 1) & ~keep[:, None].to(x.device), zero, out)
    out = torch.where(m == 2, shuffled, out)
    return out, mode
