"""Models Genesis corruptions, batched and vectorised for 2D and 3D (CPU or GPU tensors).

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019 and
MedIA 2021. The official code (``utils.py`` of MrGiovanni/ModelsGenesis, see ``reference/genesis_family.md``
§2.2) corrupts one ``(1, 64, 64, 32)`` cube at a time in NumPy; here every operation works on a whole batch
``x: (B, C, *spatial)`` with values in ``[0, 1]``, ``spatial_dims = x.ndim - 2`` in {2, 3}.

Per sample, in the official order: flip (input and target together), local pixel shuffling, non-linear Bezier
intensity mapping, then in-painting or out-painting. Each sample decides each corruption on its own (a boolean
``apply`` mask over the batch); Python loops only run over a small fixed number of boxes, windows, flip patterns or
block positions, each step batched over all samples, and on CPU over cache-sized chunks of samples (``_chunks``:
memory-bound passes over about ``CACHE_BYTES`` at a time; the results do not depend on the chunking).
All randomness comes from the ``torch.Generator`` argument, so the same seed gives identical tensors. Boxes and
windows are shared by the channels of a sample; noise is drawn per voxel and channel. Returned tensors are new;
samples whose ``apply`` is False are returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod

import torch

FLIP_AXES = ("all", "official")
DEFAULT_LUT_KNOTS = 16_385
CACHE_BYTES = 1 << 19  # CPU cache blocking: bytes of the main array of one chunk of samples (half a 1 MiB L2)


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


def _chunks(n: int, item_bytes: int, device: torch.device) -> list[slice]:
    """Slices of ``range(n)`` of about ``CACHE_BYTES // item_bytes`` items on CPU (one slice on other devices).

    Cache blocking: the memory-bound passes (gathers, masks, noise) over one chunk stay in the CPU's L2 cache; the
    whole batch at once is several times slower on a loaded machine, where the shared L3 cache is contended.
    """
    step = max(1, CACHE_BYTES // item_bytes) if device.type == "cpu" else max(n, 1)
    return [slice(start, start + step) for start in range(0, n, step)]


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
    """Flip sample ``n`` of ``x: (B, C, *spatial)`` along spatial axis ``a`` where ``parity[n, a]``.

    Samples are grouped by their flip pattern (at most ``2**spatial_dims`` groups), and each group is flipped along
    all its axes at once: one ``flip`` per group instead of a gather, flip and scatter per axis.
    """
    spatial_dims = parity.shape[1]
    codes = (parity.long() << torch.arange(spatial_dims, device=parity.device)).sum(1)
    out = torch.empty_like(x)
    for code in codes.unique().tolist():
        idx = (codes == code).nonzero().squeeze(1)
        part = _select(x, idx)
        dims = [2 + axis for axis in range(spatial_dims) if code >> axis & 1]
        out.index_copy_(0, idx, part.flip(dims) if dims else part)
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


def _sorted_blocks(size: torch.Tensor, max_voxels: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Order the blocks ``size: (b, n_blocks, D)`` by decreasing voxel count (stable).

    Returns ``order`` ``(b * n_blocks,)`` (flat block indices, sorted), and per column ``j`` (voxel ``j`` of a block,
    C order) its ``height`` (the number of blocks with more than ``j`` voxels, which are the first ``height`` blocks
    of the order) and its ``start`` in a column-major layout of all block voxels.
    """
    n_voxels = size.prod(-1).view(-1)
    order = torch.argsort(n_voxels.neg().int(), stable=True)  # small integer keys: a fast radix sort
    at_most = torch.bincount(n_voxels, minlength=max_voxels + 1).cumsum(0)[:-1]  # [j]: blocks with <= j voxels
    heights = [h for h in (n_voxels.numel() - at_most).tolist() if h > 0]
    starts = [0]
    for h in heights[:-1]:
        starts.append(starts[-1] + h)
    return order, heights, starts


def _shuffle_samples(x: torch.Tensor, n_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """Local pixel shuffling of every sample of ``x: (b, C, *spatial)`` (see ``local_pixel_shuffle``).

    All block voxels are laid out column-major: column ``j`` holds voxel ``j`` (C order) of every block with more
    than ``j`` voxels (a prefix of the blocks sorted by decreasing size). An inside-out Fisher-Yates shuffle runs in
    lock-step over all blocks of all samples: at column ``j`` every block's voxel ``j`` takes the source of its voxel
    ``i ~ U{0..j}``, which then takes source ``j``. The Python loop runs over columns (at most ``prod(dim // 10)``,
    108 for 64x64x32), never over samples or blocks. The shuffled values are keys ``(draw time << shift) + source
    voxel`` (the block's time and corner are shared by its voxels, so shuffling keys shuffles sources); overlaps are
    then resolved with one ``scatter_reduce(amax)`` of the keys (int32 whenever they fit: about 4x faster than
    int64), so the last block drawn that covers a voxel decides where it reads from, as in the official loop.
    """
    b, channels, *spatial = x.shape
    device = x.device
    dims, volume = len(spatial), prod(spatial)
    max_size = [s // 10 for s in spatial]
    strides = torch.tensor([prod(spatial[a + 1:]) for a in range(dims)], device=device)
    # block geometry, official draw: size_a ~ U{1..dim_a//10}, corner_a ~ U{0..dim_a - size_a}
    size = _randint(torch.ones(b, n_blocks, dims, dtype=torch.long, device=device),
                    torch.tensor(max_size, device=device), generator)
    corner = _randint(torch.zeros_like(size), torch.tensor(spatial, device=device) - size, generator)
    order, heights, starts = _sorted_blocks(size, prod(max_size))
    radix = torch.tensor([prod(max_size[a + 1:]) for a in range(dims)], device=device)
    shape_id = ((size - 1) * radix).sum(-1).view(-1)[order]  # (n,) column of ``table`` for each sorted block
    corner_index = (corner * strides).sum(-1).view(-1)[order]  # linear index of the corner within its sample
    dest_base = order // n_blocks * volume + corner_index  # ... within the flattened batch
    # key = (draw time << shift) + source voxel within the sample; time 0 is "not written" (reads itself)
    shift = (volume - 1).bit_length()
    key_dtype = torch.int32 if (n_blocks + 1) << shift <= 2**31 else torch.long
    key_base = ((order % n_blocks + 1) << shift).add_(corner_index).to(key_dtype)
    table = _shape_offsets(max_size, strides.tolist(), device)
    total = starts[-1] + heights[-1]
    key = torch.empty(total, dtype=key_dtype, device=device)  # per block voxel: the key of the voxel it reads
    dest = torch.empty(total, dtype=torch.long, device=device)  # ... and where it writes
    col_start = torch.tensor(starts, device=device)
    rows = torch.arange(heights[0], device=device)
    for j, (lo, h) in enumerate(zip(starts, heights)):
        own = table[j].index_select(0, shape_id[:h])  # offset of voxel j from its block's corner
        torch.add(dest_base[:h], own, out=dest[lo:lo + h])
        own_key = key_base[:h] + own
        if j == 0:
            key[:h] = own_key
            continue
        pick = torch.randint(j + 1, (h,), generator=generator, device=device)
        partner = col_start.index_select(0, pick).add_(rows[:h])  # voxel ``pick`` of the same block
        key[lo:lo + h] = key.index_select(0, partner)
        key.index_copy_(0, partner, own_key)
    winner = torch.arange(volume, dtype=key_dtype, device=device).repeat(b)
    winner.scatter_reduce_(0, dest, key, "amax")
    read = winner.bitwise_and_((1 << shift) - 1).long().view(b, 1, volume).expand(-1, channels, -1)
    return x.reshape(b, channels, volume).gather(2, read).view(x.shape)


def local_pixel_shuffle(
    x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator, n_blocks: int = 10_000
) -> torch.Tensor:
    """Local pixel shuffling: permute the voxels inside ``n_blocks`` random small boxes per sample.

    Official algorithm: block side per axis ~ U{1..dim//10}, corner uniform over valid positions, the block's
    voxels read from the *original* sample, permuted uniformly and written to the output; blocks may overlap and
    later blocks overwrite earlier ones. Here all blocks of all samples are drawn at once, permuted with a
    lock-step inside-out Fisher-Yates shuffle, and overlaps are resolved with one ``scatter_reduce`` and one gather:
    each voxel takes the value from the last block (in draw order) that covers it, exactly as the sequential
    official loop. Same distribution, not the same random stream.

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
@lru_cache(maxsize=4)
def _bezier_basis(n_points: int, device: torch.device) -> torch.Tensor:
    """``(4, n_points)`` float64 rows ``3 s^2 t, 3 s t^2, t^3, s^3`` at ``t = linspace(0, 1)``, ``s = 1 - t``.

    A cubic Bezier from ``(0, 0)`` to ``(1, 1)`` with inner control coordinates ``c1, c2`` is ``[c1, c2, 1, 0]``
    times these rows; its mirror image ``u(1 - t)`` is ``[c2, c1, 0, 1]`` times them. Cached: never modify it.
    """
    t = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64, device=device)
    s = 1 - t
    return torch.stack([3 * s * s * t, 3 * s * t * t, t * t * t, s * s * s])


def _bezier_lut_rows(coef: torch.Tensor, basis: torch.Tensor, knots: int) -> torch.Tensor:
    """``bezier_lut`` for a few curves: ``coef: (b, 2, 4)`` float64 weights of the x and y rows of the polyline over
    ``basis: (4, n_points)`` (``_bezier_basis``) -> ``(b, knots)``."""
    b, device, last = coef.shape[0], coef.device, basis.shape[1] - 1
    xs, ys = torch.bmm(coef, basis.expand(b, -1, -1)).unbind(1)  # (b, n_points) each, xs non-decreasing
    # right[k] = #{i : xs_i < grid_k}, np.interp's bracket (a tie xs_i == grid_k gives the same value either way),
    # counted with a histogram of floor(xs * (knots - 1)) + 1 instead of a binary search per knot
    offset = torch.arange(b, dtype=torch.float64, device=device)[:, None] * (knots + 1) + 1
    bins = torch.add(offset, xs, alpha=knots - 1).long().view(-1)
    counts = torch.bincount(bins, minlength=b * (knots + 1)).view(b, knots + 1)[:, :knots]
    right = counts.cumsum(1).clamp_(1, last)
    x0, x1, y0, y1 = xs.gather(1, right - 1), xs.gather(1, right), ys.gather(1, right - 1), ys.gather(1, right)
    grid = torch.arange(knots, dtype=torch.float64, device=device) / (knots - 1)
    span = x1 - x0
    w = torch.where(span > 0, (grid - x0) / torch.where(span > 0, span, 1.0), 1.0).clamp_(0.0, 1.0)
    return torch.lerp(y0, y1, w)


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

    The curves are tabulated a few at a time (``_chunks``: one at the default ``n_points``), so that the
    ``(curves, n_points)`` float64 work arrays stay in cache: several times faster than the whole batch at once.

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
    control, decreasing = control.double(), decreasing.to(control.device)
    px, py = control[:, :, 0], control[:, :, 1]  # (b, 2) each: [P1, P2]
    one, zero = torch.ones_like(px[:, :1]), torch.zeros_like(px[:, :1])
    y_coef = torch.where(decreasing[:, None], torch.cat([py.flip(1), zero, one], 1), torch.cat([py, one, zero], 1))
    coef = torch.stack([torch.cat([px, one, zero], 1), y_coef], 1)  # (b, 2, 4)
    basis = _bezier_basis(n_points, control.device)
    parts = _chunks(coef.shape[0], 8 * n_points, coef.device)  # item: one float64 row of the curve
    rows = [_bezier_lut_rows(coef[part], basis, knots) for part in parts]
    return torch.cat(rows) if rows else control.new_empty(0, knots)


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
    sub = x.index_select(0, idx)  # a copy, mapped in place chunk by chunk
    for part in _chunks(b, x[0].numel() * x.element_size(), x.device):
        sub[part] = _apply_lut(sub[part], lut[part], slope[part])
    return _subset(x, idx, sub)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Map ``x: (n, C, *spatial)`` in [0, 1] through per-sample uniform tables ``lut, slope: (n, knots)`` (value and
    forward difference at ``k / (knots - 1)``) with linear interpolation: O(1) per voxel. Returns ``x``'s shape."""
    pos = x.reshape(x.shape[0], -1) * (lut.shape[1] - 1)
    left = pos.long()
    return torch.addcmul(lut.gather(1, left), pos.frac_(), slope.gather(1, left)).clamp_(0.0, 1.0).view(x.shape)


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


def _paint(
    x: torch.Tensor, idx: torch.Tensor, corner: torch.Tensor, size: torch.Tensor, active: torch.Tensor,
    inside: bool, generator: torch.Generator,
) -> torch.Tensor:
    """``x: (B, C, *spatial)`` with uniform noise in [0, 1) inside (in-painting) or outside (out-painting) the union
    of the active boxes (corner, size ``(b, K, D)``, active ``(b, K)``) of the samples ``idx: (b,)``.

    Noise is drawn only for the painted voxels (in C order), one chunk of samples at a time (``_chunks``).
    """
    sub = x.index_select(0, idx)  # a copy, painted in place chunk by chunk
    for part in _chunks(idx.numel(), x[0].numel(), x.device):  # item: the sample's bool mask
        boxes = _box_mask(corner[part], size[part], active[part], tuple(x.shape[2:]))
        mask = (boxes if inside else ~boxes)[:, None].expand_as(sub[part])
        noise = torch.rand(int(torch.count_nonzero(mask)), generator=generator, device=x.device, dtype=x.dtype)
        sub[part].masked_scatter_(mask, noise)
    return _subset(x, idx, sub)


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
    return _paint(x, idx, corner, size, active, True, generator)


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
    return _paint(x, idx, corner, size, _chain(first, max_windows, continue_rate, generator), False, generator)


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
