"""SynthCT + LUNA16 + Genesis sub-volume benchmark.

Measures generator throughput at the default grid, LUNA16 write + read-back time, candidate-cube extraction rate,
and the speed-up of the batched sub-volume acceptance test over a per-candidate loop on the same corners (target
>= 20x, STUDY.md §9). Writes ``reports/benchmarks/synth_ct.json`` and ``reports/figures/synth_ct_views.png``.

Run: ``python benchmarks/bench_synth_ct.py [--scans 6]`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from eden_lib.data.luna16 import extract_candidate_cubes, read_scan, write_luna16
from eden_lib.data.subvolumes import cube_tissue_scores, hu_to_unit, sample_subvolume_corners, tissue_score_table
from eden_lib.data.synth_ct import SynthCTConfig, generate_synth_ct, synth_ct_scan
from eden_lib.paths import reports_dir

from subvolume_reference import official_loop_score  # noqa: E402 (benchmarks/ is on sys.path when run)


def loop_scores(volume01: np.ndarray, corners: np.ndarray, crop, threshold: float = 0.425) -> np.ndarray:
    """Reference: one candidate at a time, numpy inside each window (slices d and d + 1, official len_depth = 3)."""
    out = np.empty(len(corners))
    for m, (x, y, z) in enumerate(corners):
        w = volume01[x:x + crop[0], y:y + crop[1], z:z + crop[2] + 1] >= threshold
        out[m] = w[..., :-1].sum() + 0.5 * (~w[..., :-1] & w[..., 1:]).sum()
    return out


def scoring_speed(volume: np.ndarray, crop, border_xy: int, border_z: int, n: int = 1600) -> dict:
    """Score the same ``n`` corners (official ranges) batched (summed-volume table over the reachable region, as
    ``sample_subvolume_corners`` does) and with the per-candidate numpy loop; a few with the official Python loop."""
    nx, ny, nz = volume.shape
    lo = np.array([border_xy, border_xy, border_z])
    hi = np.array([nx - crop[0] - 1 - border_xy, ny - crop[1] - 1 - border_xy, nz - crop[2] - 3 - 1 - border_z])
    corners = np.random.default_rng(0).integers(lo, hi + 1, size=(n, 3))
    reach = volume[lo[0]:hi[0] + crop[0], lo[1]:hi[1] + crop[1], lo[2]:hi[2] + crop[2] + 2]

    def batched() -> np.ndarray:
        return cube_tissue_scores(tissue_score_table(reach), corners - lo, crop)

    assert np.array_equal(batched(), loop_scores(volume, corners, crop)), "batched and loop scores differ"
    assert batched()[0] == official_loop_score(volume, corners[0], crop)
    vec_s = best_of(batched)
    loop_s = best_of(lambda: loop_scores(volume, corners, crop), repeats=2)
    official_s = best_of(lambda: [official_loop_score(volume, c, crop) for c in corners[:2]], repeats=1) / 2 * n
    return {"volume_xyz": list(volume.shape), "crop": list(crop), "borders": [border_xy, border_z], "candidates": n,
            "batched_s": vec_s, "numpy_loop_s": loop_s, "speedup_vs_numpy_loop": loop_s / vec_s,
            "official_python_loop_s_extrapolated": official_s, "speedup_vs_official_loop": official_s / vec_s}


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench(n_scans: int) -> dict:
    cfg = SynthCTConfig(n_scans=n_scans)
    t = time.perf_counter()
    scans = generate_synth_ct(cfg, seed=0)
    gen_s = time.perf_counter() - t
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "generator": {"grid_xyz": list(cfg.shape), "spacing_mm": list(cfg.spacing), "scans": n_scans,
                                  "seconds": gen_s, "scans_per_s": n_scans / gen_s}}
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        index = write_luna16(root, scans)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        for path in index.scans.values():
            read_scan(path)
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        cubes = extract_candidate_cubes(index, size=32)
        extract_s = time.perf_counter() - t
    result["luna16"] = {"write_s": write_s, "read_s": read_s, "write_read_s_per_scan": (write_s + read_s) / n_scans,
                        "candidate_cubes": int(len(cubes["labels"])), "cube_size": 32,
                        "cubes_per_s_incl_read": len(cubes["labels"]) / extract_s,
                        "positives": int(cubes["labels"].sum())}

    volume = hu_to_unit(scans[0].hu).transpose(2, 1, 0)  # (x, y, z) as Models Genesis
    border_xy, border_z = 8, 4
    result["subvolumes"] = {
        "synthetic": scoring_speed(volume, (32, 32, 16), border_xy, border_z),
        # LUNA16-sized scan (512 x 512 x 128, official crop and borders); random values, same arithmetic
        "luna16_size": scoring_speed(np.random.default_rng(1).uniform(size=(512, 512, 128)).astype(np.float32),
                                     (64, 64, 32), 100, 30),
    }
    acceptance = {}
    for c, f in [((32, 32, 16), 0.15), ((32, 32, 16), 0.3), ((24, 24, 12), 0.15), ((24, 24, 12), 0.3)]:
        n = sum(len(sample_subvolume_corners(hu_to_unit(s.hu).transpose(2, 1, 0), 32, np.random.default_rng(i),
                                             crop=c, border_xy=border_xy, border_z=border_z, max_tissue_fraction=f))
                for i, s in enumerate(scans))
        acceptance[f"crop{c[0]}x{c[1]}x{c[2]}_max{f}"] = n / (32 * n_scans)
    result["subvolumes"]["synthetic_cubes_kept_of_32_per_scan"] = acceptance
    return result


def save_views(path) -> None:
    """Axial and coronal slices and a coronal maximum-intensity projection of one non-contrast and one CTPA scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for row, ctpa in enumerate((False, True)):
        s = synth_ct_scan(SynthCTConfig(n_scans=1, ctpa=ctpa), seed=0, index=0)
        hu, (sx, _, sz) = s.hu.astype(np.float32), s.spacing
        z = int(np.nonzero(s.nodule_mask)[0].mean()) if s.nodule_mask.any() else hu.shape[0] // 2
        y = int(np.nonzero(s.lung_mask)[1].mean())
        mip = np.where(s.lung_mask > 0, hu, -1000).max(axis=1)
        name = "CTPA" if ctpa else "non-contrast"
        views = [(hu[z], f"{name}: axial z={z}", 1.0, (-1000, 400)),
                 (hu[::-1, y], f"{name}: coronal y={y}", sz / sx, (-1000, 400)),
                 (mip[::-1], f"{name}: coronal MIP of the lungs", sz / sx, (-900, 400 if ctpa else 100))]
        for ax, (img, title, aspect, (lo, hi)) in zip(axes[row], views):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("SynthCT, seed 0, scan 0 (96x96x64 voxels, 3.5x3.5x5 mm); image left = patient right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=6)
    args = parser.parse_args()
    result = bench(args.scans)
    out = reports_dir() / "benchmarks" / "synth_ct.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    save_views(reports_dir() / "figures" / "synth_ct_views.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
