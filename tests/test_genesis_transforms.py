"""Models Genesis corruptions: official semantics, per-sample masks, determinism, value range, bad input."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from eden_lib.transforms import genesis
from eden_lib.transforms.genesis import (
    GenesisConfig,
    bezier_intensity,
    bezier_lut,
    flip_pair,
    genesis_corrupt,
    inpaint,
    local_pixel_shuffle,
    outpaint,
)

_spec = importlib.util.spec_from_file_location(
    "genesis_reference", Path(__file__).resolve().parent.parent / "benchmarks" / "genesis_reference.py"
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct(b: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """A batch in [0, 1] whose voxels all differ (so a value identifies its source voxel)."""
    n = b * int(np.prod(spatial))
    return (torch.randperm(n, generator=gen(99)).float() / n).view(b, 1, *spatial)


ALL = torch.ones(4, dtype=torch.bool)
MIXED = torch.arange(16) % 2 == 0


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "field, value",
    [("flip_rate", 1.5), ("inpaint_rate", -0.1), ("paint_rate", "0.9"), ("flip_axes", "depth"),
     ("n_shuffle_blocks", -1), ("n_shuffle_blocks", 2.5), ("bezier_points", 1)],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GenesisConfig(**{field: value})


def test_config_defaults_are_the_official_values():
    cfg = GenesisConfig()
    assert (cfg.flip_rate, cfg.local_rate, cfg.nonlinear_rate, cfg.paint_rate, cfg.inpaint_rate) == (
        0.4, 0.5, 0.9, 0.9, 0.2)
    assert (cfg.n_shuffle_blocks, cfg.bezier_points, cfg.flip_axes) == (10_000, 100_000, "all")


# ------------------------------------------------------------------------------------------ shared behaviour
OPS = [
    lambda x, a, g: local_pixel_shuffle(x, a, g, n_blocks=500),
    lambda x, a, g: bezier_intensity(x, a, g, n_points=20_000),
    inpaint,
    outpaint,
    lambda x, a, g: flip_pair(x, x.clone(), a, g, repeat_rate=1.0)[0],
]


@pytest.mark.parametrize("spatial", [(32, 32, 16), (32, 32)])
@pytest.mark.parametrize("op", OPS, ids=["shuffle", "bezier", "inpaint", "outpaint", "flip"])
def test_ops_touch_only_masked_samples_stay_in_unit_range_and_are_seeded(op, spatial):
    x = distinct(16, spatial)
    out = op(x, MIXED, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[~MIXED], x[~MIXED])
    assert not torch.equal(out[MIXED], x[MIXED])
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(op(x, MIXED, gen(1)), out)
    assert not torch.equal(op(x, MIXED, gen(2)), out)
    assert torch.equal(op(x, torch.zeros(16, dtype=torch.bool), gen(1)), x)


@pytest.mark.parametrize("op", OPS, ids=["shuffle", "bezier", "inpaint", "outpaint", "flip"])
def test_ops_reject_bad_input(op):
    x = distinct(4, (32, 32, 16))
    with pytest.raises(ValueError, match="apply"):
        op(x, torch.ones(3, dtype=torch.bool), gen())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        op(x[0, 0], ALL, gen())
    with pytest.raises(TypeError, match="floating-point"):
        op((x * 100).long(), ALL, gen())
    with pytest.raises(TypeError, match="Generator"):
        op(x, ALL, 0)


# ------------------------------------------------------------------------------------------------- flips
def flips_of(x: torch.Tensor) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """Every combination of spatial-axis flips of ``x: (C, *spatial)``."""
    axes = range(1, x.ndim)
    return [(c, x.flip(c) if c else x) for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@pytest.mark.parametrize("flip_axes, depth_flips", [("all", True), ("official", False)])
def test_flip_pair_flips_input_and_target_alike_and_official_never_flips_depth(flip_axes, depth_flips):
    x = distinct(64, (16, 16, 16))
    a, b = flip_pair(x, x + 0, torch.ones(64, dtype=torch.bool), gen(3), repeat_rate=0.6, flip_axes=flip_axes)
    assert torch.equal(a, b)
    used = []
    for n in range(64):
        matches = [axes for axes, f in flips_of(x[n]) if torch.equal(f, a[n])]
        assert len(matches) == 1
        used.extend(matches[0])
    assert (3 in used) == depth_flips
    assert {1, 2} <= set(used)


def test_flip_pair_without_repeats_flips_each_applied_sample_exactly_once():
    x = distinct(32, (16, 16))
    a, _ = flip_pair(x, x, torch.ones(32, dtype=torch.bool), gen(4), repeat_rate=0.0)
    for n in range(32):
        assert [axes for axes, f in flips_of(x[n]) if torch.equal(f, a[n])] in ([(1,)], [(2,)])


# -------------------------------------------------------------------------------------- local pixel shuffling
def test_single_block_permutes_one_small_box():
    x = distinct(4, (40, 40, 20))
    out = local_pixel_shuffle(x, ALL, gen(5), n_blocks=1)
    for n in range(4):
        assert torch.equal(out[n].flatten().sort().values, x[n].flatten().sort().values)
        changed = (out[n, 0] != x[n, 0]).nonzero()
        if len(changed):
            extent = changed.max(0).values - changed.min(0).values + 1
            assert (extent <= torch.tensor([4, 4, 2])).all()


def source_steps(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``(numel, 1 + spatial_dims)``: |source - destination| per (sample, *spatial) axis of every output voxel of a
    single-channel ``distinct`` batch ``x`` shuffled into ``out``."""
    where = torch.empty(x.numel(), dtype=torch.long)
    where[(x.flatten() * x.numel()).round().long()] = torch.arange(x.numel())
    source = where[(out.flatten() * x.numel()).round().long()]
    grid = (x.shape[0], *x.shape[2:])
    src_c = torch.stack(torch.unravel_index(source, grid), 1)
    dst_c = torch.stack(torch.unravel_index(torch.arange(x.numel()), grid), 1)
    return (src_c - dst_c).abs()


def test_every_voxel_comes_from_its_own_block_neighbourhood():
    """Each output voxel is read from the same sample within one block side (< dim//10) along every axis."""
    x = distinct(3, (40, 30, 20))
    step = source_steps(x, local_pixel_shuffle(x, torch.ones(3, dtype=torch.bool), gen(6), n_blocks=2000))
    assert (step[:, 0] == 0).all()
    assert (step[:, 1:] < torch.tensor([4, 3, 2])).all()
    assert (step[:, 1:] > 0).any()


def test_shuffle_with_keys_beyond_int32_stays_local():
    """70,000 blocks on 40x40x20 need 64-bit write keys (time << 15 + voxel); the result stays a local shuffle, and
    with every voxel covered it stays put only when its last block maps it to itself: 1 / E[n] = 1 / 9.375."""
    x = distinct(2, (40, 40, 20))
    out = local_pixel_shuffle(x, torch.ones(2, dtype=torch.bool), gen(13), n_blocks=70_000)
    step = source_steps(x, out)
    assert (step[:, 0] == 0).all()
    assert (step[:, 1:] < torch.tensor([4, 4, 2])).all()
    assert 0.87 < (out != x).float().mean() < 0.92


def test_single_block_shuffle_is_a_uniform_permutation():
    """A uniform permutation of n voxels has one fixed point on average, so one block of side U{1..4} x U{1..4}
    moves E[n] - 1 = 5.25 voxels (a cyclic, Sattolo-style shuffle would move 6.19, no shuffle 0)."""
    x = distinct(4000, (40, 40))
    out = local_pixel_shuffle(x, torch.ones(4000, dtype=torch.bool), gen(14), n_blocks=1)
    moved = (out != x).flatten(1).sum(1).float()
    assert abs(moved.mean().item() - 5.25) < 0.3
    assert (source_steps(x, out)[:, 1:] < 4).all()


def test_changed_fraction_matches_the_official_loop():
    """10,000 blocks on 64x64x32 change ~78% of the voxels (fact sheet); the per-sample loop agrees."""
    x = distinct(2, (64, 64, 32))
    ours = (local_pixel_shuffle(x, torch.ones(2, dtype=torch.bool), gen(7)) != x).float().mean().item()
    rng = np.random.default_rng(7)
    ref = np.mean([(reference.local_pixel_shuffle(s, rng) != s).mean() for s in x.numpy()])
    assert 0.74 < ours < 0.82
    assert abs(ours - ref) < 0.01


def test_shuffle_rejects_volumes_smaller_than_ten():
    with pytest.raises(ValueError, match=">= 10"):
        local_pixel_shuffle(torch.rand(2, 1, 32, 9), torch.ones(2, dtype=torch.bool), gen())


# ----------------------------------------------------------------------------------------------- Bezier
def test_bezier_lut_equals_np_interp_of_the_official_curve_at_the_knots():
    control = torch.rand(6, 2, 2, generator=gen(8), dtype=torch.float64)
    decreasing = torch.tensor([True, False] * 3)
    knots = np.linspace(0, 1, 1025)
    lut = bezier_lut(control, decreasing, n_points=100_000, knots=1025).numpy()
    for n in range(6):
        points = [[0.0, 0.0], control[n, 0].tolist(), control[n, 1].tolist(), [1.0, 1.0]]
        xs, ys = reference.bezier_curve(points, 100_000)
        xs, ys = (np.sort(xs), ys) if decreasing[n] else (np.sort(xs), np.sort(ys))
        np.testing.assert_allclose(lut[n], np.interp(knots, xs, ys), atol=1e-9)


def test_bezier_is_monotone_per_sample_with_both_branches():
    x = torch.linspace(0, 1, 4096).view(1, 1, 64, 64).expand(200, 1, 64, 64).contiguous()
    out = bezier_intensity(x, torch.ones(200, dtype=torch.bool), gen(9), n_points=10_000).view(200, -1)
    steps = out.diff(dim=1)
    increasing = (steps >= -1e-6).all(1)
    decreasing = (steps <= 1e-6).all(1)
    assert (increasing ^ decreasing).all()
    assert torch.allclose(out[increasing, 0], torch.tensor(0.0)) and torch.allclose(out[increasing, -1], torch.tensor(1.0))
    assert torch.allclose(out[decreasing, 0], torch.tensor(1.0)) and torch.allclose(out[decreasing, -1], torch.tensor(0.0))
    assert 0.4 < decreasing.float().mean() < 0.6


@pytest.mark.parametrize("cache_bytes", [1, 1 << 40])
def test_results_do_not_depend_on_cpu_cache_chunking(monkeypatch, cache_bytes):
    """Chunks of 1 sample (or curve) or the whole batch at once give the same tensors for the same seed."""
    x = distinct(16, (32, 32, 16))
    ops = OPS[1:4] + [lambda x, a, g: torch.from_numpy(
        bezier_lut(torch.rand(9, 2, 2, generator=g, dtype=torch.float64), a[:9], 20_000).numpy())]
    default = [op(x, MIXED, gen(15)) for op in ops]
    monkeypatch.setattr(genesis, "CACHE_BYTES", cache_bytes)
    for op, expected in zip(ops, default):
        assert torch.equal(op(x, MIXED, gen(15)), expected)


def test_bezier_rejects_values_outside_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bezier_intensity(torch.full((2, 1, 8, 8), 1.5), torch.ones(2, dtype=torch.bool), gen())


# ---------------------------------------------------------------------------------------------- painting
def test_inpaint_boxes_respect_the_official_sizes_margins_and_count():
    x = torch.ones(300, 1, 24, 24, 12)  # uniform noise in [0, 1) never equals 1
    changed = inpaint(x, torch.ones(300, dtype=torch.bool), gen(10))[:, 0] != 1
    assert not changed[:, :3].any() and not changed[:, -3:].any()
    assert not changed[:, :, :3].any() and not changed[:, :, :, -3:].any()
    untouched = (~changed.flatten(1).any(1)).float().mean()
    assert 0.01 < untouched < 0.1  # P(no box) = 0.05
    # a single box covers at most 8x8x4 voxels, five at most 5x that
    assert changed.flatten(1).sum(1).max() <= 5 * 8 * 8 * 4


def test_outpaint_keeps_one_to_five_windows_inside_the_margins():
    x = torch.ones(300, 1, 28, 28, 14)
    kept = outpaint(x, torch.ones(300, dtype=torch.bool), gen(11))[:, 0] == 1
    assert kept.flatten(1).any(1).all()
    assert not kept[:, :3].any() and not kept[:, -3:].any() and not kept[..., -3:].any()
    smallest = (28 - 16) * (28 - 16) * (14 - 8)
    assert kept.flatten(1).sum(1).min() >= smallest


def test_painting_rejects_volumes_too_small_for_the_margins():
    with pytest.raises(ValueError, match="too small"):
        outpaint(torch.rand(2, 1, 13, 32), torch.zeros(2, dtype=torch.bool), gen())


# ----------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("spatial", [(32, 32, 16), (48, 48)])
def test_genesis_corrupt_target_is_the_flipped_original_and_values_stay_in_range(spatial):
    x = distinct(6, spatial)
    cfg = GenesisConfig(n_shuffle_blocks=500, bezier_points=10_000)
    corrupted, target = genesis_corrupt(x, cfg, gen(12))
    for n in range(6):
        assert any(torch.equal(f, target[n]) for _, f in flips_of(x[n]))
    assert 0 <= corrupted.min() and corrupted.max() <= 1
    assert (corrupted != target).any()
    again = genesis_corrupt(x, cfg, gen(12))
    assert torch.equal(again[0], corrupted) and torch.equal(again[1], target)


def test_genesis_corrupt_with_zero_rates_is_the_identity():
    x = distinct(3, (32, 32, 16))
    cfg = GenesisConfig(flip_rate=0, local_rate=0, nonlinear_rate=0, paint_rate=0)
    corrupted, target = genesis_corrupt(x, cfg, gen())
    assert torch.equal(corrupted, x) and torch.equal(target, x)


def test_genesis_corrupt_out_paints_with_inpaint_rate_zero():
    x = torch.ones(4, 1, 32, 32, 16)
    cfg = GenesisConfig(flip_rate=0, local_rate=0, nonlinear_rate=0, paint_rate=1, inpaint_rate=0)
    corrupted, _ = genesis_corrupt(x, cfg, gen())
    noise_fraction = (corrupted != 1).float().flatten(1).mean(1)
    assert (noise_fraction > 0.3).all()


def test_genesis_corrupt_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        genesis_corrupt(torch.full((2, 1, 32, 32, 16), -0.5), GenesisConfig(), gen())
    with pytest.raises(TypeError, match="GenesisConfig"):
        genesis_corrupt(torch.rand(2, 1, 32, 32, 16), {"flip_rate": 0.4}, gen())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        genesis_corrupt(torch.rand(2, 1, 1, 32, 32, 16), GenesisConfig(), gen())
