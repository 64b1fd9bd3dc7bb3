"""Models Genesis corruptions: batched torch (``eden_lib.transforms.genesis``) vs the per-sample NumPy loop.

On the same input batches (3D: B=8 of 1x64x64x32, the official cube, and of 1x32x32x16, the synthetic size; 2D: B=32
of 1x64x64) it times every operation and the full pipeline for both implementations and reports the speed-up
(target >= 20x, STUDY.md §9). It then checks that both do the same thing, statistically: flip frequencies per axis,
fraction of voxels changed by local shuffling, the Bezier output histogram and share of decreasing curves (plus
the look-up-table error against ``np.interp``), in-painted and out-painted fractions, and the full pipeline's
changed fraction and mean absolute change. Writes ``reports/benchmarks/genesis.json`` and
``reports/figures/genesis_corruptions.png``.

Timing: torch on one thread (``--threads``), both implementations on the same input batch, median of ``r`` calls
after a warm-up (r = 3; the pipeline 2r + 1, because each call draws which corruptions run, about half the samples
are shuffled, so its cost varies from call to call). Prints a table of the per-op and pipeline speed-ups and whether
the pipeline meets the target (>= 20x) at each size.

Run from the repository root: ``python benchmarks/bench_genesis.py [--quick]`` (``--quick``: one timing repeat and
smaller statistical samples, < 60 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genesis_reference as ref  # noqa: E402

from eden_lib.paths import reports_dir  # noqa: E402
from eden_lib.transforms.genesis import (  # noqa: E402
    GenesisConfig,
    bezier_intensity,
    bezier_lut,
    flip_pair,
    genesis_corrupt,
    inpaint,
    local_pixel_shuffle,
    outpaint,
)

CASES = {"3d_64x64x32": (8, (64, 64, 32)), "3d_32x32x16": (8, (32, 32, 16)), "2d_64x64": (32, (64, 64))}
TARGET_SPEEDUP = 20.0  # the pipeline, ours vs the per-sample loop (STUDY.md §9)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def ref_flips(batch: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.empty_like(batch), np.empty_like(batch)
    for n in range(batch.shape[0]):
        xs[n], ys[n] = ref.flip_pair(batch[n], batch[n], rng, prob=1.0, flip_axes="all")
    return xs, ys


def time_case(batch_size: int, spatial: tuple[int, ...], repeats: int, seed: int) -> dict:
    """Time each operation (applied to every sample) and the pipeline, ours vs the per-sample loop."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.rand(batch_size, 1, *spatial, generator=g)
    xn = x.numpy()
    every = torch.ones(batch_size, dtype=torch.bool)
    cfg = GenesisConfig()
    ours = {
        "flip": lambda: flip_pair(x, x, every, g, repeat_rate=1.0),
        "local_shuffle": lambda: local_pixel_shuffle(x, every, g),
        "bezier": lambda: bezier_intensity(x, every, g),
        "inpaint": lambda: inpaint(x, every, g),
        "outpaint": lambda: outpaint(x, every, g),
        "pipeline": lambda: genesis_corrupt(x, cfg, g),
    }
    loops = {
        "flip": lambda: ref_flips(xn, rng),
        "local_shuffle": lambda: ref.batch_apply(ref.local_pixel_shuffle, xn, rng),
        "bezier": lambda: ref.batch_apply(ref.bezier_intensity, xn, rng),
        "inpaint": lambda: ref.batch_apply(ref.inpaint, xn, rng),
        "outpaint": lambda: ref.batch_apply(ref.outpaint, xn, rng),
        "pipeline": lambda: ref.batch_genesis(xn, rng, flip_axes="all"),
    }
    result = {"batch": batch_size, "sample_shape": [1, *spatial], "ops": {}}
    for name in ours:
        calls = 2 * repeats + 1 if name == "pipeline" else repeats  # the pipeline's work is random per call
        ours_s, out = timed(ours[name], max(3, calls))
        loop_s, out_ref = timed(loops[name], calls)
        entry = {"ours_ms": 1e3 * ours_s, "loop_ms": 1e3 * loop_s, "speedup": loop_s / ours_s}
        if name == "local_shuffle":  # same operation on the same batch: compare the fraction of changed voxels
            entry["changed_fraction"] = {"ours": float((out != x).float().mean()), "loop": float((out_ref != xn).mean())}
        result["ops"][name] = entry
    return result


def print_table(timing: dict) -> None:
    """Per-op and pipeline times and speed-ups for every case, then the pipeline target verdict per case."""
    print(f"{'case':14s} {'op':14s} {'ours ms':>9s} {'loop ms':>10s} {'speed-up':>9s}")
    for case, result in timing.items():
        for op, v in result["ops"].items():
            print(f"{case:14s} {op:14s} {v['ours_ms']:9.2f} {v['loop_ms']:10.2f} {v['speedup']:8.1f}x")
    for case, result in timing.items():
        x = result["ops"]["pipeline"]["speedup"]
        verdict = "met" if x >= TARGET_SPEEDUP else "NOT met"
        print(f"pipeline target >= {TARGET_SPEEDUP:.0f}x at {case} (batch {result['batch']}): {x:.1f}x, {verdict}")


def two_sample(a: np.ndarray, b: np.ndarray) -> dict:
    """Means of two per-sample statistics and the z-score of their difference."""
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    z = float((a.mean() - b.mean()) / se) if se > 0 else 0.0
    return {"ours": float(a.mean()), "loop": float(b.mean()), "z": z, "consistent": abs(z) < 4}


def flip_statistics(n: int, seed: int) -> dict:
    """Per-axis net flip frequency with the official probabilities (flip_rate 0.4, up to 3 flips)."""
    spatial = (4, 5, 6)
    x = torch.arange(120, dtype=torch.float32).view(1, 1, *spatial).expand(n, 1, *spatial).contiguous() / 120
    g = torch.Generator().manual_seed(seed)
    apply = torch.rand(n, generator=g) < 0.4
    ours, _ = flip_pair(x, x, apply, g, repeat_rate=0.4)
    rng = np.random.default_rng(seed)
    loop = np.stack([ref.flip_pair(s, s, rng, prob=0.4, flip_axes="all")[0] for s in x.numpy()])

    def flipped(batch: np.ndarray) -> np.ndarray:  # (n, 3): reversed along each axis (read off the corner voxel)
        first = np.rint(batch[:, 0, 0, 0, 0] * 120).astype(int)
        return np.stack([first // 30 % 4 == 3, first // 6 % 5 == 4, first % 6 == 5], axis=1).astype(float)

    a, b = flipped(ours.numpy()), flipped(loop)
    return {f"axis_{k}": two_sample(a[:, k], b[:, k]) for k in range(3)}


def bezier_statistics(n: int, seed: int) -> dict:
    """Output histogram and share of decreasing curves on uniform input; LUT error vs np.interp on the curve."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, 8, generator=g)
    ours = bezier_intensity(x, torch.ones(n, dtype=torch.bool), g).numpy().reshape(n, -1)
    rng = np.random.default_rng(seed)
    loop = ref.batch_apply(ref.bezier_intensity, x.numpy(), rng).reshape(n, -1)
    flat = x.numpy().reshape(n, -1)

    def decreasing(out: np.ndarray) -> np.ndarray:
        return np.array([np.corrcoef(f, o)[0, 1] < 0 for f, o in zip(flat, out)], dtype=float)

    bins = np.linspace(0, 1, 11)
    h_ours = np.histogram(ours, bins)[0] / ours.size
    h_loop = np.histogram(loop, bins)[0] / loop.size
    control = torch.rand(64, 2, 2, generator=g, dtype=torch.float64)
    flips = torch.rand(64, generator=g) < 0.5
    lut = bezier_lut(control, flips).numpy()
    grid = np.linspace(0, 1, 100_001)
    errors = []
    for k in range(64):
        xs, ys = ref.bezier_curve([[0, 0], control[k, 0].tolist(), control[k, 1].tolist(), [1, 1]], 100_000)
        xs, ys = (np.sort(xs), ys) if flips[k] else (np.sort(xs), np.sort(ys))
        errors.append(np.abs(np.interp(grid, np.linspace(0, 1, lut.shape[1]), lut[k]) - np.interp(grid, xs, ys)))
    errors = np.stack(errors)
    return {
        "decreasing_share": two_sample(decreasing(ours), decreasing(loop)),
        "mean_output": two_sample(ours.mean(1), loop.mean(1)),
        "histogram_10_bins": {"ours": h_ours.round(4).tolist(), "loop": h_loop.round(4).tolist(),
                              "total_variation": float(0.5 * np.abs(h_ours - h_loop).sum())},
        "lut_vs_np_interp_100k": {"curves": 64, "max_abs_error": float(errors.max()),
                                  "median_curve_max_error": float(np.median(errors.max(1))),
                                  "mean_abs_error": float(errors.mean())},
    }


def painting_statistics(n: int, seed: int) -> dict:
    """Fraction of voxels replaced by noise (in-painting) and kept (out-painting) on 1x32x32x16, and P(no box)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.ones(n, 1, 32, 32, 16)  # uniform noise in [0, 1) never equals 1
    every = torch.ones(n, dtype=torch.bool)
    ours_in = (inpaint(x, every, g) != 1).numpy().reshape(n, -1).mean(1)
    loop_in = (ref.batch_apply(ref.inpaint, x.numpy(), rng) != 1).reshape(n, -1).mean(1)
    ours_out = (outpaint(x, every, g) == 1).numpy().reshape(n, -1).mean(1)
    loop_out = (ref.batch_apply(ref.outpaint, x.numpy(), rng) == 1).reshape(n, -1).mean(1)
    return {"inpaint_noise_fraction": two_sample(ours_in, loop_in),
            "inpaint_no_box_share": two_sample((ours_in == 0).astype(float), (loop_in == 0).astype(float)),
            "outpaint_kept_fraction": two_sample(ours_out, loop_out)}


def pipeline_statistics(n: int, seed: int) -> dict:
    """Full pipeline on the synthetic size: fraction of voxels changed and mean |corrupted - target| per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, 16, generator=g)
    corrupted, target = genesis_corrupt(x, GenesisConfig(), g)
    ref_x, ref_y = ref.batch_genesis(x.numpy(), np.random.default_rng(seed), flip_axes="all")
    ours_c, ours_d = (corrupted != target).numpy(), (corrupted - target).abs().numpy()
    loop_c, loop_d = ref_x != ref_y, np.abs(ref_x - ref_y)
    return {"changed_fraction": two_sample(ours_c.reshape(n, -1).mean(1), loop_c.reshape(n, -1).mean(1)),
            "mean_abs_change": two_sample(ours_d.reshape(n, -1).mean(1), loop_d.reshape(n, -1).mean(1))}


def phantom(spatial: tuple[int, ...]) -> np.ndarray:
    """A smooth test object in [0, 1]: nested ellipsoids on a gradient, with fine texture."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in spatial], indexing="ij")
    r_outer = sum((g / a) ** 2 for g, a in zip(grids, (0.85, 0.7, 0.9)))
    r_inner = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, (0.2, -0.25, 0.0), (0.3, 0.25, 0.6)))
    image = 0.15 + 0.15 * (grids[0] + 1) / 2 + 0.45 * (r_outer < 1) + 0.3 * (r_inner < 1)
    image += 0.06 * np.sin(12 * grids[1]) * np.cos(9 * grids[0])
    return np.clip(image, 0, 1).astype(np.float32)


def save_figure(path: Path, seed: int) -> None:
    """Original, each corruption alone and the full pipeline, for a 2D image and the mid-slice of a 3D cube."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"2D 64x64": phantom((64, 64)), "3D 64x64x32 (mid-slice)": phantom((64, 64, 32))}
    columns = ["original", "flip", "local shuffle", "Bezier", "in-paint", "out-paint", "pipeline input",
               "pipeline target"]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.1 * len(columns), 2.4 * len(rows)))
    for r, (label, image) in enumerate(rows.items()):
        x = torch.from_numpy(image)[None, None]
        one = torch.ones(1, dtype=torch.bool)
        g = torch.Generator().manual_seed(seed)
        corrupted, target = genesis_corrupt(x, GenesisConfig(flip_rate=1.0, local_rate=1.0, nonlinear_rate=1.0,
                                                             paint_rate=1.0, inpaint_rate=0.0), g)
        panels = [x, flip_pair(x, x, one, g, repeat_rate=0.0)[0], local_pixel_shuffle(x, one, g),
                  bezier_intensity(x, one, g), inpaint(x, one, g), outpaint(x, one, g), corrupted, target]
        for c, panel in enumerate(panels):
            view = panel[0, 0] if panel.ndim == 4 else panel[0, 0, :, :, panel.shape[-1] // 2]
            ax = axes[r, c]
            ax.imshow(view.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.suptitle("Models Genesis corruptions (eden_lib.transforms.genesis); pipeline: shuffle + Bezier + "
                 "out-paint forced on", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timing repeat, small statistical samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, like the single-threaded NumPy loop; on a shared "
                             "machine more threads mostly add barrier stalls)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, n_stats = (1, 48) if args.quick else (3, 256)
    started = time.perf_counter()
    timing = {name: time_case(b, spatial, repeats, args.seed) for name, (b, spatial) in CASES.items()}
    checks = {
        "flip": flip_statistics(8 * n_stats, args.seed),
        "bezier": bezier_statistics(n_stats, args.seed),
        "painting": painting_statistics(2 * n_stats, args.seed),
        "pipeline_32x32x16": pipeline_statistics(n_stats // 4, args.seed),
    }
    figure = reports_dir() / "figures" / "genesis_corruptions.png"
    save_figure(figure, args.seed)
    speedups = {f"{case}/{op}": round(v["speedup"], 1) for case, r in timing.items() for op, v in r["ops"].items()}
    report = {
        "benchmark": "genesis_corruptions",
        "command": "python benchmarks/bench_genesis.py" + (" --quick" if args.quick else ""),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu"},
        "reference": "benchmarks/genesis_reference.py: official algorithm, per-sample NumPy loop, float32 input",
        "timing_repeats": repeats,
        "pipeline_timing_repeats": 2 * repeats + 1,
        "timing": timing,
        "speedups": speedups,
        "below_20x": sorted(k for k, v in speedups.items() if v < TARGET_SPEEDUP),
        "pipeline_target": {
            "target_speedup": TARGET_SPEEDUP,
            "met": {case: r["ops"]["pipeline"]["speedup"] >= TARGET_SPEEDUP for case, r in timing.items()},
        },
        "statistical_checks": checks,
        "figure": str(figure.relative_to(reports_dir().parent)),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = reports_dir() / "benchmarks" / "genesis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(timing)
    print(f"below {TARGET_SPEEDUP:.0f}x: {report['below_20x']}; wall {report['wall_s']} s -> {out}")


if __name__ == "__main__":
    main()
