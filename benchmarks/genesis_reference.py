"""Per-sample NumPy reference of the Models Genesis corruptions (the speed and behaviour baseline).

Follows the official algorithm step by step (Zhou et al., MICCAI 2019 / MedIA 2021; ``utils.py`` of
MrGiovanni/ModelsGenesis, summarised in ``reference/genesis_family.md`` §2.2): a Python loop over samples, a
Python loop over the 10,000 shuffle blocks with ``Generator.shuffle``, a 100,000-point Bezier curve rebuilt per
sample and applied with ``np.interp``, in-/out-painting with ``while`` loops. The only changes are that randomness
comes from one ``np.random.Generator`` (instead of the global ``random``/``np.random`` states) and that the code
works for 2D ``(C, H, W)`` as well as 3D ``(C, H, W, D)`` samples. It is deliberately *not* optimised:
``bench_genesis.py`` times it against ``eden_lib.transforms.genesis``.
"""

from __future__ import annotations

from math import comb

import numpy as np


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive, like Python's ``random.randint``)."""
    return int(rng.integers(lo, hi + 1))


def _window(corner: list[int], size: list[int]) -> tuple[slice, ...]:
    """Channel-inclusive index of the box ``corner : corner + size`` of a ``(C, *spatial)`` sample."""
    return (slice(None),) + tuple(slice(c, c + s) for c, s in zip(corner, size))


def flip_pair(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prob: float = 0.4, flip_axes: str = "official"
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``x`` and ``y`` (``(C, *spatial)``) together up to 3 times, each time while ``rand < prob``.

    ``"official"`` draws the axis from {0, 1, 2} of the ``(C, *spatial)`` array (0 is the channel axis, so the
    last spatial axis is never flipped); ``"all"`` draws among the spatial axes.
    """
    axes = [0, 1, 2] if flip_axes == "official" else list(range(1, x.ndim))
    count = 3
    while rng.random() < prob and count > 0:
        axis = axes[int(rng.integers(len(axes)))]
        x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
        count -= 1
    return x, y


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator, n_blocks: int = 10_000) -> np.ndarray:
    """Shuffle the voxels inside ``n_blocks`` random boxes of ``x`` (``(C, *spatial)``), reading the original.

    Like the official code, only channel 0 is shuffled (the official cubes have one channel).
    """
    spatial = x.shape[1:]
    original = x.copy()
    out = x.copy()
    for _ in range(n_blocks):
        size = [_randint(rng, 1, s // 10) for s in spatial]
        corner = [_randint(rng, 0, s - b) for s, b in zip(spatial, size)]
        window = original[(0,) + _window(corner, size)[1:]].flatten()
        rng.shuffle(window)
        out[(0,) + _window(corner, size)[1:]] = window.reshape(size)
    return out


def bezier_curve(points: list[list[float]], n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample a Bezier curve at ``n_points`` parameters with the official reversed Bernstein basis."""
    degree = len(points) - 1
    t = np.linspace(0.0, 1.0, n_points)
    basis = np.array([comb(degree, i) * t ** (degree - i) * (1 - t) ** i for i in range(degree + 1)])
    px = np.array([p[0] for p in points])
    py = np.array([p[1] for p in points])
    return px @ basis, py @ basis


def bezier_intensity(x: np.ndarray, rng: np.random.Generator, n_points: int = 100_000) -> np.ndarray:
    """Map intensities through a random cubic Bezier; half of the time the decreasing ("flipped") curve."""
    points = [[0.0, 0.0], [rng.random(), rng.random()], [rng.random(), rng.random()], [1.0, 1.0]]
    xvals, yvals = bezier_curve(points, n_points)
    if rng.random() < 0.5:
        xvals = np.sort(xvals)
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals).astype(x.dtype)


def inpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill up to 5 random boxes (sides ``dim//6 .. dim//3``) with uniform noise, each while ``rand < 0.95``."""
    spatial = x.shape[1:]
    out = x.copy()
    count = 5
    while count > 0 and rng.random() < 0.95:
        size = [_randint(rng, s // 6, s // 3) for s in spatial]
        corner = [_randint(rng, 3, s - b - 3) for s, b in zip(spatial, size)]
        out[_window(corner, size)] = rng.random(size)
        count -= 1
    return out


def outpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace ``x`` by uniform noise except 1 + (up to 4, each while ``rand < 0.95``) windows of the original."""
    spatial = x.shape[1:]
    out = rng.random(x.shape).astype(x.dtype)

    def keep_window() -> None:
        size = [s - _randint(rng, 3 * s // 7, 4 * s // 7) for s in spatial]
        corner = [_randint(rng, 3, s - b - 3) for s, b in zip(spatial, size)]
        out[_window(corner, size)] = x[_window(corner, size)]

    keep_window()
    count = 4
    while count > 0 and rng.random() < 0.95:
        keep_window()
        count -= 1
    return out


def genesis_pair(
    y: np.ndarray,
    rng: np.random.Generator,
    flip_rate: float = 0.4,
    local_rate: float = 0.5,
    nonlinear_rate: float = 0.9,
    paint_rate: float = 0.9,
    inpaint_rate: float = 0.2,
    flip_axes: str = "official",
    n_blocks: int = 10_000,
    n_points: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """One official ``generate_pair`` step for one sample ``y`` (``(C, *spatial)``): returns (corrupted, target)."""
    x, y = flip_pair(y.copy(), y.copy(), rng, flip_rate, flip_axes)
    if rng.random() < local_rate:
        x = local_pixel_shuffle(x, rng, n_blocks)
    if rng.random() < nonlinear_rate:
        x = bezier_intensity(x, rng, n_points)
    if rng.random() < paint_rate:
        x = inpaint(x, rng) if rng.random() < inpaint_rate else outpaint(x, rng)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def batch_apply(fn, batch: np.ndarray, rng: np.random.Generator, **kwargs) -> np.ndarray:
    """Apply a single-sample corruption ``fn`` to every sample of ``batch`` (``(B, C, *spatial)``) in a loop."""
    out = np.empty_like(batch)
    for n in range(batch.shape[0]):
        out[n] = fn(batch[n], rng, **kwargs)
    return out


def batch_genesis(batch: np.ndarray, rng: np.random.Generator, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The official per-sample loop over a batch ``(B, C, *spatial)``: returns (corrupted, target)."""
    xs, ys = np.empty_like(batch), np.empty_like(batch)
    for n in range(batch.shape[0]):
        xs[n], ys[n] = genesis_pair(batch[n], rng, **kwargs)
    return xs, ys
