"""Adam-v1's anatomy decomposer: batched torch (``eden_lib.transforms.decomposer``) vs a per-sample NumPy loop.

The geometry of an Adam-v1 view, for a batch of 64 renders of 256 x 256 at granularities 0, 2 and 4: choose one of
the ``2**n`` parts per render, cut it out, take a random resized crop within it (side fraction (0.45, 1.0), i.e.
area (0.2, 1.0)) resampled to the view size, and rotate it by up to +-30 degrees (bilinear, zero fill). The
photometric steps are :func:`eden_lib.transforms.views.augment`, shared with every two-view method, and not timed
here. The reference does the same per sample in NumPy (float64): slice the part with the box of
:func:`~eden_lib.transforms.decomposer.part_boxes`, bilinear sampling written out with border clamping at the part's
edge, then the rotation with zero fill. Both run on the same renders with the same draws (the same seeded calls to
``choose_parts``, ``crop_boxes`` and ``random_angles``), and their views must agree (``allclose``, atol 1e-4).

Timing: torch on one thread (``--threads``), median of ``r`` calls after a warm-up (r = 5; the loop 3). View sizes:
64 (the study's ``data.image_size``; the speed-up target >= 20x, STUDY.md section 9, applies here) and 224 (the
paper's). Writes ``reports/benchmarks/decomposer.json``.

Run from the repository root: ``python benchmarks/bench_decomposer.py [--quick]`` (``--quick``: one repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from eden_lib.paths import reports_dir
from eden_lib.transforms.decomposer import choose_parts, crop_parts, part_boxes, random_angles, rotate
from eden_lib.transforms.views import crop, crop_boxes

BATCH, RENDER, GRANULARITIES, SIZES = 64, 256, (0, 2, 4), (64, 224)
SCALE, DEGREES = (0.45, 1.0), 30.0
TARGET_SPEEDUP, TARGET_SIZE = 20.0, 64


def ours(images: torch.Tensor, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """The batched geometry of one view per render: ``(B, 1, size, size)``."""
    b = images.shape[0]
    parts = crop_parts(images, choose_parts(b, n, generator), n)
    return rotate(crop(parts, crop_boxes(b, SCALE, generator), size), random_angles(b, DEGREES, generator))


def bilinear(image: np.ndarray, py: np.ndarray, px: np.ndarray, zeros: bool) -> np.ndarray:
    """Sample ``image`` (h, w) at pixel coordinates ``(py, px)``: clamped to the edge, or 0 outside (``zeros``)."""
    h, w = image.shape
    if not zeros:
        py, px = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    fy, fx = py - y0, px - x0
    out = np.zeros(np.broadcast(py, px).shape)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out += wy * wx * np.where(inside, image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)
    return out


def reference(images: np.ndarray, n: int, size: int, generator: torch.Generator) -> np.ndarray:
    """The same views, one sample at a time; draws as :func:`ours` makes them."""
    b, _, height, width = images.shape
    index = choose_parts(b, n, generator)
    boxes = (part_boxes(index, n).numpy().astype(np.float64) * [width, height, width, height]).round().astype(int)
    crops = crop_boxes(b, SCALE, generator).numpy().astype(np.float64)
    angles = np.deg2rad(random_angles(b, DEGREES, generator).numpy().astype(np.float64))
    u = (2 * np.arange(size) + 1) / size - 1  # pixel centres of the view in [-1, 1]
    out = np.empty((b, 1, size, size))
    for i in range(b):
        x0, y0, x1, y1 = boxes[i]
        part = images[i, 0, y0:y1, x0:x1].astype(np.float64)
        h, w = part.shape
        s, cx, cy = crops[i]
        view = bilinear(part, ((s * u + cy + 1) * h - 1)[:, None] / 2, ((s * u + cx + 1) * w - 1)[None, :] / 2,
                        zeros=False)
        cos, sin = np.cos(angles[i]), np.sin(angles[i])
        src_x, src_y = cos * u[None, :] - sin * u[:, None], sin * u[None, :] + cos * u[:, None]
        out[i, 0] = bilinear(view, ((src_y + 1) * size - 1) / 2, ((src_x + 1) * size - 1) / 2, zeros=True)
    return out


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_case(n: int, size: int, repeats: int, seed: int) -> dict:
    images = torch.rand(BATCH, 1, RENDER, RENDER, generator=torch.Generator().manual_seed(seed))
    array = images.numpy()
    got = ours(images, n, size, torch.Generator().manual_seed(seed + 1)).numpy()
    expected = reference(array, n, size, torch.Generator().manual_seed(seed + 1))
    ours_s = timed(lambda: ours(images, n, size, torch.Generator().manual_seed(seed + 1)), repeats)
    loop_s = timed(lambda: reference(array, n, size, torch.Generator().manual_seed(seed + 1)), max(1, repeats - 2))
    return {"granularity": n, "view_size": size, "ours_ms": 1e3 * ours_s, "loop_ms": 1e3 * loop_s,
            "speedup": loop_s / ours_s, "max_abs_diff": float(np.abs(got - expected).max()),
            "allclose": bool(np.allclose(got, expected, rtol=0, atol=1e-4))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timing repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, like the loop)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 5
    started = time.perf_counter()
    cases = [run_case(n, size, repeats, args.seed) for size in SIZES for n in GRANULARITIES]
    print(f"{'n':>2s} {'size':>5s} {'ours ms':>9s} {'loop ms':>9s} {'speed-up':>9s} {'max |diff|':>11s}")
    for c in cases:
        print(f"{c['granularity']:2d} {c['view_size']:5d} {c['ours_ms']:9.2f} {c['loop_ms']:9.2f} "
              f"{c['speedup']:8.1f}x {c['max_abs_diff']:11.2e}")
    target = [c for c in cases if c["view_size"] == TARGET_SIZE]
    met = all(c["speedup"] >= TARGET_SPEEDUP for c in target)
    report = {
        "benchmark": "anatomy_decomposer",
        "command": "python benchmarks/bench_decomposer.py" + (" --quick" if args.quick else ""),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "reference": "per-sample NumPy loop in this file (float64): part slice, bilinear crop, rotation",
        "batch": BATCH, "render": RENDER, "scale": list(SCALE), "degrees": DEGREES, "timing_repeats": repeats,
        "cases": cases,
        "all_allclose": all(c["allclose"] for c in cases),
        "target": {"speedup": TARGET_SPEEDUP, "view_size": TARGET_SIZE, "met": met},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = reports_dir() / "benchmarks" / "decomposer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    verdict = "met" if met else "NOT met"
    print(f"target >= {TARGET_SPEEDUP:.0f}x at view size {TARGET_SIZE}: {verdict}; views agree: "
          f"{report['all_allclose']}; wall {report['wall_s']} s -> {out}")


if __name__ == "__main__":
    main()
