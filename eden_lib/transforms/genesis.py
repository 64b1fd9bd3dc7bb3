"""Models Genesis corruptions, batched and vectorised for 2D and 3D (CPU or GPU tensors).

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019 and
MedIA 2021. The official code (``utils.py`` of MrGiovanni/ModelsGenesis, see ``reference/genesis_family.md``
§2.2) corrupts one ``(1, 64, 64, 32)`` cube at a time in NumPy; here every operation works on a whole batch
``x: (B, C, *spatial)`` with values in ``[0, 1]``, ``spatial_dims = x.ndim - 2`` in {2, 3}.

Per sample, in the official order: flip (input and target together), local pixel shuffling, non-linear Bezier
intensity mapping, then in-painting or out-painting. Each sample decides each corruption on its own (a boolean
``apply`` mask over the batch); Python loops only run over a small fixed number of boxes, windows, axes or
block positions, each step batched over all samples. All randomness comes from the ``torch.Generator`` argument,
so the same seed gives identical tensors. Boxes and windows are shared by the channels of a sample; noise is drawn
per voxel and channel. Returned tensors are new; samples whose ``apply`` is False are returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

FLIP_AXES = ("all", "official")
DEFAULT_LUT_KNOTS = 16_385


@dataclass
class GenesisConfig:
    """Probabilities and sizes of the Models Genesis corruptions (defaults: the official values, §2.2).

    ``flip_axes``: ``"all"`` flips any spatial axis. ``"official"`` reproduces the official axis bug: the axis is
    drawn from {0, 1, 2} of a ``(C, H, W, D)`` sample, so one draw in three flips the channel axis (a no-op) and the
    last spatial axis (depth) is never flipped. The default is ``"all"`` because depth is as valid a flip axis as
    rows and columns and the bug was fixed in the official ``competition/`` refactor.
    ``n_shuffle_blocks``: blocks per sample for local pixel shuffling (official 10,000).
    ``bezier_points``: samples along the Bezier curve (official 100,000).
    """

    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    flip_axes: str = "all"
    n_shuffle_blocks: int = 10_000
    bezier_points: int = 100_000

    def __post_init__(self) -> None:
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"GenesisConfig.{name}={value!r}: expected a probability in [0, 1]")
        if self.flip_axes not in FLIP_AXES:
            raise ValueError(f"GenesisConfig.flip_axes={self.flip_axes!r}: expected one of {FLIP_AXES}")
        for name, low in (("n_shuffle_blocks", 0), ("bezier_points", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"GenesisConfig.{name}={value!r}: expected an integer >= {low}")


# ----------------------------------------------------------------------------------------------- checks, helpers
def _spatial_dims(x: torch.Tensor, min_size: int, op: str) -> int:
    """Validate ``x: (B, C, *spatial)`` (float, 2 or 3 spatial dims, each >= ``min_size``); return spatial_dims."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{op}: expected a floating-point torch.Tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.ndim not in (4, 5):
        raise ValueError(f"{op}: expected x of shape (B, C, H, W) or (B, C, H, W, D), got {tuple(x.shape)}")
    if min(x.shape[2:]) < min_size:
        raise ValueError(f"{op}: every spatial size must be >= {min_size}, got spatial shape {tuple(x.shape[2:])}")
    return x.ndim - 2


def _check_unit_range(x: torch.Tensor, op: str) -> None:
    low, high = torch.aminmax(x)
    if low < 0 or high > 1:
        raise ValueError(f"{op}: expected values in [0, 1], got min {low.item():.4g}, max {high.item():.4g}")


def _check_apply(apply: torch.Tensor, x: torch.Tensor, op: str) -> torch.Tensor:
    """Validate the per-sample mask and return the indices ``(b,)`` of the samples to corrupt."""
    if not isinstance(apply, torch.Tensor) or apply.dtype != torch.bool or apply.shape != (x.shape[0],):
        got = f"{apply.dtype} {tuple(apply.shape)}" if isinstance(apply, torch.Tensor) else type(apply).__name__
        raise ValueError(f"{op}: apply must be a bool tensor of shape ({x.shape[0]},), got {got}")
    return apply.to(x.device).nonzero().squeeze(1)


def _check_generator(generator: torch.Generator, x: torch.Tensor, op: str) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: expected a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise ValueError(f"{op}: generator is on {generator.device}, x on {x.device}; create "
                         f"torch.Generator(device=x.device)")


def _randint(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in ``[low, high]`` (inclusive, broadcast shapes), like Python's ``random.randint``."""
    low, high = torch.broadcast_tensors(low, high)
    u = torch.rand(low.shape, generator=generator, device=low.device, dtype=torch.float64)
    return low + (u * (high - low + 1)).long()


def _chain(first: torch.Tensor, n: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """``(b, n)`` active flags of a ``while rand < rate`` loop: step 0 iff ``first``, each next step w.p. ``rate``."""
    u = torch.rand(first.shape[0], n - 1, generator=generator, device=first.device)
    go = torch.cat([first[:, None], u < rate], dim=1)
    return go.cumprod(dim=1).bool()


def _box_mask(corner: torch.Tensor, size: torch.Tensor, active: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Union of the active boxes: corner, size ``(b, K, D)``, active ``(b, K)`` -> bool mask ``(b, *spatial)``.

    Each box is the outer product of its per-axis indicator vectors, so the number of boxes covering a voxel is
    one einsum over the ``K`` boxes (a batched matmul), without materialising ``(b, K, *spatial)``.
    """
    factors = []
    for axis, extent in enumerate(spatial):
        coord = torch.arange(extent, device=corner.device)
        low, high = corner[..., axis, None], corner[..., axis, None] + size[..., axis, None]
        factors.append(((coord >= low) & (coord < high)).float())  # (b, K, extent)
    factors[0] = factors[0] * active[..., None]
    letters = "ijl"[: len(spatial)]
    covered = torch.einsum(",".join(f"bk{c}" for c in letters) + f"->b{letters}", *factors)
    return covered > 0


def _select(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The samples ``idx`` of ``x`` (``x`` itself, no copy, when ``idx`` is the whole batch)."""
    return x if idx.numel() == x.shape[0] else x.index_select(0, idx)


def _subset(x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` with the samples ``idx`` replaced by ``values`` (a new tensor; ``values`` itself for the whole batch)."""
    if idx.numel() == x.shape[0]:
        return values
    return x.index_copy(0, idx, values)


# ------------------------------------------------------------------------------------------------------- flips
def _draw_flips(
    apply: torch.Tensor, spatial_dims: int, generator: torch.Generator, repeat_rate: float, flip_axes: str,
    max_flips: int = 3,
) -> torch.Tensor:
    """Per-sample flip parity ``(B, spatial_dims)`` bool of the official ``while rand < p and cnt > 0`` flip loop."""
    if flip_axes not in FLIP_AXES:
        raise ValueError(f"flip_axes={flip_axes!r}: expected one of {FLIP_AXES}")
    active = _chain(apply, max_flips, repeat_rate, generator)
    # "official": choice 0 is the channel axis (no-op), choices 1, 2 the first two spatial axes.
    n_choices, first_spatial = (spatial_dims, 0) if flip_axes == "all" else (3, 1)
    choice = torch.randint(n_choices, active.shape, generator=generator, device=apply.device)
    counts = (torch.nn.functional.one_hot(choice, n_choices) * active[..., None]).sum(dim=1)
    parity = torch.zeros(apply.shape[0], spatial_dims, dtype=torch.bool, device=apply.device)
    used = counts[:, first_spatial:first_spatial + spatial_dims] % 2 == 1
    parity[:, : used.shape[1]] = used
    return parity


def _apply_flips(x: torch.Tensor, parity: torch.Tensor) -> torch.Tensor:
    """Flip sample ``n`` of ``x`` along spatial axis ``a`` where ``parity[n, a]``."""
    out = x.clone()
    for axis in range(parity.shape[1]):
        idx = parity[:, axis].nonzero().squeeze(1)
        if idx.numel():
            out[idx] = out[idx].flip(2 + axis)
    return out


def flip_pair(
    x: torch.Tensor,
    y: torch.Tensor,
    apply: torch.Tensor,
    generator: torch.Generator,
    repeat_rate: float = 0.4,
    flip_axes: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip input and target together (plain augmentation: the network never has to undo it).

    Samples with ``apply`` flip once; each further flip (at most 3 in total) happens with probability
    ``repeat_rate``, each along a random axis (see ``GenesisConfig.flip_axes``). With ``apply = rand < p`` and
    ``repeat_rate = p`` this is the official ``while rand < p and cnt > 0`` loop.

    Args:
        x, y: ``(B, C, *spatial)`` tensors of the same shape.
        apply: ``(B,)`` bool, the samples to flip.
    Returns:
        ``(x_flipped, y_flipped)``, both ``(B, C, *spatial)``.
    """
    spatial_dims = _spatial_dims(x, 1, "flip_pair")
    if y.shape != x.shape:
        raise ValueError(f"flip_pair: x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    _check_generator(generator, x, "flip_pair")
    _check_apply(apply, x, "flip_pair")
    parity = _draw_flips(apply.to(x.device), spatial_dims, generator, repeat_rate, flip_axes)
    return _apply_flips(x, parity), _apply_flips(y, parity)


# -------------------------------------------------------------------------------------------- local shuffling
def _shape_offsets(max_size: list[int], strides: list[int], device: torch.device) -> torch.Tensor:
    """Table ``(M, n_shapes)`` int32: entry ``[k, shape]`` is the linear offset from the block corner of the ``k``-th
    voxel (C order) of a block of that shape. Shape ids are the C-order index of ``size - 1`` in the grid
    ``max_size``; ``M = prod(max_size)`` (entries with ``k >= prod(size)`` are never read)."""
    grids = torch.meshgrid(*[torch.arange(1, m + 1, device=device) for m in max_size], indexing="ij")
    shapes = torch.stack([g.reshape(-1) for g in grids])  # (D, n_shapes)
    k = torch.arange(prod(max_size), device=device)[:, None]
    offset = torch.zeros(k.shape[0], shapes.shape[1], dtype=torch.long, device=device)
    for axis in reversed(range(len(max_size))):
        offset += (k % shapes[axis]) * strides[axis]
        k = k // shapes[axis]
    return offset.int()


def _shuffle_samples(x: torch.Tensor, n_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """Local pixel shuffling of every sample of ``x: (b, C, *spatial)`` (see ``local_pixel_shuffle``).

    Every block's voxels are enumerated in a position-major layout: column ``j`` holds voxel ``j`` (C order within
    the block) of every block with more than ``j`` voxels, blocks sorted by decreasing size so that each column is
    a prefix of the blocks. Each entry holds the voxel's offset from its block corner. A Fisher-Yates (Durstenfeld)
    shuffle runs in lock-step over all blocks of all samples: step ``j`` swaps column ``j`` with a uniform column in
    ``[0, j]`` of the same block, after which column ``j`` (the source of voxel ``j``) is final and its writes are
    resolved at once. The Python loop runs over columns (at most ``prod(dim // 10)``, 108 for 64x64x32), never
    over samples or blocks.
    """
    b, channels, *spatial = x.shape
    device = x.device
    dims, volume = len(spatial), prod(spatial)
    max_size = [s // 10 for s in spatial]
    strides = [prod(spatial[a + 1:]) for a in range(dims)]
    # block geometry, official draw: size_a ~ U{1..dim_a//10}, corner_a ~ U{0..dim_a - size_a}
    size = _randint(torch.ones(b, n_blocks, dims, dtype=torch.long, device=device),
                    torch.tensor(max_size, device=device), generator)
    corner = _randint(torch.zeros_like(size), torch.tensor(spatial, device=device) - size, generator)
    n_sorted, order = torch.sort(size.prod(-1).reshape(-1), descending=True, stable=True)
    longest = int(n_sorted[0])
    heights = (order.numel() - torch.bincount(n_sorted, minlength=longest + 1).cumsum(0)[:longest]).tolist()
    starts = [0]
    for h in heights[:-1]:
        starts.append(starts[-1] + h)
    col_start = torch.tensor(starts, device=device)
    # per sorted block: shape id, linear index of its corner, and its write key
    radix = torch.tensor([prod(max_size[a + 1:]) for a in range(dims)], device=device)
    shape_id = ((size - 1) * radix).sum(-1).reshape(-1)[order]
    base = (torch.arange(b, device=device)[:, None] * volume
            + (corner * torch.tensor(strides, device=device)).sum(-1)).reshape(-1)[order]
    # key = (write time << shift) + source voxel: the last writer of a voxel has the largest key; a voxel nobody
    # writes keeps key = its own index (time 0), so the winning key always names the voxel to read
    shift = (b * volume - 1).bit_length()
    time = torch.arange(1, n_blocks + 1, device=device).repeat(b)[order]  # official order: later blocks overwrite
    key_base = (time << shift) + base
    table = _shape_offsets(max_size, strides, device)
    offset = torch.empty(starts[-1] + heights[-1], dtype=torch.int32, device=device)
    for j, (lo, h) in enumerate(zip(starts, heights)):
        torch.index_select(table[j], 0, shape_id[:h], out=offset[lo:lo + h])
    rows = torch.arange(heights[0], device=device)
    winner = torch.arange(b * volume, device=device)
    for j in range(longest - 1, -1, -1):
        lo, h = starts[j], heights[j]
        own = offset[lo:lo + h]
        if j > 0:
            pick = (torch.rand(h, generator=generator, device=device) * (j + 1)).long().clamp_(max=j)
            partner = col_start.index_select(0, pick) + rows[:h]
            taken = offset.index_select(0, partner)
            offset.index_copy_(0, partner, own.clone())
            own.copy_(taken)
        dest = base[:h] + table[j].index_select(0, shape_id[:h])
        winner.scatter_reduce_(0, dest, key_base[:h] + own, "amax")
    read = winner.bitwise_and_((1 << shift) - 1)
    flat = x.transpose(0, 1).reshape(channels, b * volume)
    return flat.index_select(1, read).reshape(channels, b, *spatial).transpose(0, 1).contiguous()


def local_pixel_shuffle(
    x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator, n_blocks: int = 10_000
) -> torch.Tensor:
    """Local pixel shuffling: permute the voxels inside ``n_blocks`` random small boxes per sample.

    Official algorithm: block side per axis ~ U{1..dim//10}, corner uniform over valid positions, the block's
    voxels read from the *original* sample, permuted uniformly and written to the output; blocks may overlap and
    later blocks overwrite earlier ones. Here all blocks of all samples are drawn at once, permuted with a
    segmented Fisher-Yates shuffle and resolved with one gather: each voxel takes the value from the last block
    (in draw order) that covers it, exactly as the sequential official loop. Same distribution, not the same
    random stream.

    Args:
        x: ``(B, C, *spatial)``, every spatial size >= 10.
        apply: ``(B,)`` bool, the samples to shuffle.
    Returns:
        ``(B, C, *spatial)``: every voxel holds a voxel of the same sample from less than one block side away
        along each axis (all channels move together). Overlapping blocks make this a permutation per block, not of
        the whole sample.
    """
    _spatial_dims(x, 10, "local_pixel_shuffle")
    _check_generator(generator, x, "local_pixel_shuffle")
    idx = _check_apply(apply, x, "local_pixel_shuffle")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
        raise ValueError(f"local_pixel_shuffle: n_blocks={n_blocks!r}, expected an integer >= 0")
    if idx.numel() == 0 or n_blocks == 0:
        return x.clone()
    return _subset(x, idx, _shuffle_samples(_select(x, idx), n_blocks, generator))


# ------------------------------------------------------------------------------------------- Bezier intensity
def bezier_lut(
    control: torch.Tensor, decreasing: torch.Tensor, n_points: int = 100_000, knots: int = DEFAULT_LUT_KNOTS
) -> torch.Tensor:
    """Tabulate the official Bezier intensity mapping at ``knots`` uniform intensities in [0, 1].

    The official code samples the cubic Bezier ``P0=(0,0), P1, P2, P3=(1,1)`` at ``n_points`` parameters (with a
    reversed Bernstein basis), sorts the x samples and, in the increasing branch, the y samples; in the decreasing
    ("flip") branch the y samples stay in sampling order; then ``np.interp``. With control coordinates in [0, 1]
    both coordinates are non-decreasing in the parameter, so the sorts are reversals: on the ``n_points`` grid
    ``t_i``, increasing ``f(x(t_i)) = y(t_i)``, decreasing ``f(x(t_i)) = y(1 - t_i)``. Each table entry is
    ``np.interp`` of that polyline at the knot (exact up to float64 rounding).

    Args:
        control: ``(b, 2, 2)`` inner control points ``[[P1x, P1y], [P2x, P2y]]`` in [0, 1].
        decreasing: ``(b,)`` bool, the "flip" branch.
    Returns:
        ``(b, knots)`` float64, ``f(k / (knots - 1))``.
    """
    if control.ndim != 3 or control.shape[1:] != (2, 2):
        raise ValueError(f"bezier_lut: control must have shape (b, 2, 2), got {tuple(control.shape)}")
    if n_points < 2 or knots < 2:
        raise ValueError(f"bezier_lut: n_points={n_points} and knots={knots} must both be >= 2")
    control = control.double()
    b, device, last = control.shape[0], control.device, n_points - 1
    t = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64, device=device)
    s = 1 - t
    basis = torch.stack([3 * s * s * t, 3 * s * t * t])  # Bernstein weights of P1, P2; P0 = (0, 0) drops out
    xs = torch.addmm(t * t * t, control[:, :, 0], basis)  # (b, n_points), non-decreasing
    ys = torch.addmm(t * t * t, control[:, :, 1], basis)
    grid = torch.arange(knots, dtype=torch.float64, device=device) / (knots - 1)
    # right[k] = #{i : xs_i < grid_k}, np.interp's bracket (a tie xs_i == grid_k gives the same value either way),
    # counted with a histogram of floor(xs * (knots - 1)) + 1 instead of a binary search per knot
    bins = (xs * (knots - 1)).long() + 1 + torch.arange(b, device=device)[:, None] * (knots + 1)
    counts = torch.bincount(bins.view(-1), minlength=b * (knots + 1)).view(b, knots + 1)[:, :knots]
    right = counts.cumsum(1).clamp_(1, last)
    x0, x1 = xs.gather(1, right - 1), xs.gather(1, right)
    flip = decreasing.to(device)[:, None]
    y0, y1 = ys.gather(1, torch.where(flip, last - right + 1, right - 1)), ys.gather(1, torch.where(flip, last - right, right))
    span = x1 - x0
    w = torch.where(span > 0, (grid - x0) / torch.where(span > 0, span, 1.0), 1.0).clamp_(0.0, 1.0)
    return torch.lerp(y0, y1, w)


def bezier_intensity(
    x: torch.Tensor,
    apply: torch.Tensor,
    generator: torch.Generator,
    n_points: int = 100_000,
    decreasing_rate: float = 0.5,
    knots: int = DEFAULT_LUT_KNOTS,
) -> torch.Tensor:
    """Non-linear intensity transform: map each sample through its own random cubic Bezier curve.

    Inner control points uniform in [0, 1]^2; with probability ``decreasing_rate`` the official "flip" branch
    (a decreasing, inversion-like curve). The curve keeps the official ``n_points`` samples; it is applied through
    a ``knots``-entry uniform look-up table with linear interpolation (``bezier_lut``): O(1) per voxel instead of a
    binary search over 100,000 points. This deviates from ``np.interp`` on the full polyline only where the curve
    bends within one knot interval (1/16,384 of the intensity range by default); ``bench_genesis.py`` measures it.

    Args:
        x: ``(B, C, *spatial)`` with values in [0, 1].
        apply: ``(B,)`` bool, the samples to transform.
    Returns:
        ``(B, C, *spatial)`` with values in [0, 1].
    """
    _spatial_dims(x, 1, "bezier_intensity")
    _check_generator(generator, x, "bezier_intensity")
    _check_unit_range(x, "bezier_intensity")
    idx = _check_apply(apply, x, "bezier_intensity")
    if idx.numel() == 0:
        return x.clone()
    b = idx.numel()
    control = torch.rand(b, 2, 2, generator=generator, device=x.device, dtype=torch.float64)
    decreasing = torch.rand(b, generator=generator, device=x.device) < decreasing_rate
    lut = bezier_lut(control, decreasing, n_points, knots)
    slope = torch.nn.functional.pad(lut.diff(dim=1), (0, 1)).to(x.dtype)  # (b, knots), 0 after the last knot
    lut = lut.to(x.dtype)
    pos = _select(x, idx).reshape(b, -1) * (knots - 1)
    left = pos.long()
    mapped = torch.addcmul(lut.gather(1, left), pos.frac_(), slope.gather(1, left)).clamp_(0.0, 1.0)
    return _subset(x, idx, mapped.view(b, *x.shape[1:]))


# ------------------------------------------------------------------------------------------------ painting
def _paint_sizes(spatial: tuple[int, ...], op: str) -> tuple[list[int], list[int]]:
    """Official box side range per axis: in-painting ``dim//6 .. dim//3``; out-painting keeps windows of side
    ``dim - (3*dim//7 .. 4*dim//7)``. Checks that the largest box fits with the official margin of 3 voxels."""
    if op == "inpaint":
        low, high = [s // 6 for s in spatial], [s // 3 for s in spatial]
    else:
        low, high = [s - 4 * s // 7 for s in spatial], [s - 3 * s // 7 for s in spatial]
    if any(lo < 1 or dim - hi < 6 for dim, lo, hi in zip(spatial, low, high)):
        raise ValueError(f"{op}: spatial shape {spatial} is too small: boxes of side {low}..{high} need a margin "
                         f"of 3 voxels on each side (every spatial size >= {9 if op == 'inpaint' else 14})")
    return low, high


def _paint_boxes(spatial: tuple[int, ...], b: int, k: int, low: list[int], high: list[int],
                 generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``(b, k, D)`` box sides ~ U{low..high} and corners ~ U{3..dim - side - 3}."""
    size = _randint(torch.tensor(low, device=device).expand(b, k, -1), torch.tensor(high, device=device), generator)
    corner = _randint(torch.full_like(size, 3), torch.tensor(spatial, device=device) - size - 3, generator)
    return corner, size


def inpaint(
    x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator, max_blocks: int = 5,
    continue_rate: float = 0.95,
) -> torch.Tensor:
    """In-painting corruption: fill up to ``max_blocks`` boxes with uniform noise in [0, 1).

    Official: ``while cnt < 5 and rand < 0.95`` draw a box (side per axis ~ U{dim//6..dim//3}, corner in
    ``[3, dim - side - 3]``) and fill it with noise; so 0 to 5 boxes, none with probability 0.05.

    Args:
        x: ``(B, C, *spatial)``, every spatial size >= 9.
        apply: ``(B,)`` bool, the samples to in-paint.
    Returns:
        ``(B, C, *spatial)``.
    """
    _spatial_dims(x, 1, "inpaint")
    _check_generator(generator, x, "inpaint")
    spatial = tuple(x.shape[2:])
    low, high = _paint_sizes(spatial, "inpaint")
    idx = _check_apply(apply, x, "inpaint")
    if idx.numel() == 0:
        return x.clone()
    corner, size = _paint_boxes(spatial, idx.numel(), max_blocks, low, high, generator, x.device)
    start = torch.rand(idx.numel(), generator=generator, device=x.device) < continue_rate
    active = _chain(start, max_blocks, continue_rate, generator)
    mask = _box_mask(corner, size, active, spatial)[:, None].expand(-1, x.shape[1], *spatial)
    noise = torch.rand(int(mask.sum()), generator=generator, device=x.device, dtype=x.dtype)
    return _subset(x, idx, _select(x, idx).masked_scatter(mask, noise))


def outpaint(
    x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator, max_windows: int = 5,
    continue_rate: float = 0.95,
) -> torch.Tensor:
    """Out-painting corruption: uniform noise in [0, 1) everywhere except 1 to ``max_windows`` windows of the input.

    Official: the first window is always kept, then ``while cnt < 4 and rand < 0.95`` one more; window side per
    axis ``dim - U{3*dim//7..4*dim//7}``, corner in ``[3, dim - side - 3]``.

    Args:
        x: ``(B, C, *spatial)``, every spatial size >= 14.
        apply: ``(B,)`` bool, the samples to out-paint.
    Returns:
        ``(B, C, *spatial)``.
    """
    _spatial_dims(x, 1, "outpaint")
    _check_generator(generator, x, "outpaint")
    spatial = tuple(x.shape[2:])
    low, high = _paint_sizes(spatial, "outpaint")
    idx = _check_apply(apply, x, "outpaint")
    if idx.numel() == 0:
        return x.clone()
    corner, size = _paint_boxes(spatial, idx.numel(), max_windows, low, high, generator, x.device)
    first = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
    keep = _box_mask(corner, size, _chain(first, max_windows, continue_rate, generator), spatial)[:, None]
    sub = _select(x, idx)
    noise = torch.rand(sub.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _subset(x, idx, torch.where(keep, sub, noise))


# ----------------------------------------------------------------------------------------------- the pipeline
def genesis_corrupt(
    x: torch.Tensor, cfg: GenesisConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Models Genesis training pair for a batch (official ``generate_pair``, vectorised over samples).

    Per sample: flip input and target together (``flip_rate``), then local pixel shuffling (``local_rate``),
    Bezier intensity (``nonlinear_rate``), and painting (``paint_rate``): in-painting with probability
    ``inpaint_rate``, else out-painting. Marginals with the defaults: shuffle 0.5, non-linear 0.9, in-paint 0.18,
    out-paint 0.72.

    Args:
        x: ``(B, C, *spatial)`` originals in [0, 1] (``spatial_dims`` 2 or 3).
        cfg: the corruption settings.
        generator: a ``torch.Generator`` on ``x.device``; the same seed gives identical outputs.
    Returns:
        ``(corrupted, target)``, both ``(B, C, *spatial)`` in [0, 1]; the target is the flipped original.
    """
    if not isinstance(cfg, GenesisConfig):
        raise TypeError(f"genesis_corrupt: cfg must be a GenesisConfig, got {type(cfg).__name__}")
    spatial_dims = _spatial_dims(x, 1, "genesis_corrupt")
    _check_generator(generator, x, "genesis_corrupt")
    _check_unit_range(x, "genesis_corrupt")
    u = torch.rand(x.shape[0], 5, generator=generator, device=x.device)
    parity = _draw_flips(u[:, 0] < cfg.flip_rate, spatial_dims, generator, cfg.flip_rate, cfg.flip_axes)
    target = _apply_flips(x, parity)
    out = local_pixel_shuffle(target, u[:, 1] < cfg.local_rate, generator, cfg.n_shuffle_blocks)
    out = bezier_intensity(out, u[:, 2] < cfg.nonlinear_rate, generator, cfg.bezier_points)
    paint, inner = u[:, 3] < cfg.paint_rate, u[:, 4] < cfg.inpaint_rate
    out = inpaint(out, paint & inner, generator)
    out = outpaint(out, paint & ~inner, generator)
    return out, target
