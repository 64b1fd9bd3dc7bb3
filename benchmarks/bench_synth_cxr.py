"""SynthCXR benchmark: generation speed, speed-up over a per-sample loop, difficulty of every finding, a montage.

Run: ``python benchmarks/bench_synth_cxr.py --n 500``. Writes ``reports/benchmarks/synth_cxr.json`` and
``reports/figures/synth_cxr_montage.png``.

- Speed: images/s of :func:`generate_synth_cxr` at 256x256 (default threads).
- Loop reference: the straightforward implementation renders one image at a time and evaluates the chest
  pixel by pixel (the same :func:`chest_attenuation` called on one pixel), then exposes the image. It is timed on
  ``--ref-rows`` evenly spaced rows of ``--ref-images`` images and extrapolated to full images; its attenuation
  is checked against the vectorised one on those rows. A per-sample loop that keeps the pixels vectorised
  (batch of 1) is reported too, to show what batching adds on its own.
- Difficulty (STUDY.md §6.1, at the training resolution 64x64 and the study's ``sex_effect``): per finding, a
  logistic regression on the PCA of the 64x64 pixels, trained on 70 % of the patients with all labels and with
  10 % of them, AUC on the rest; and a small 4-block CNN trained on all labels of the same split (it sees thin
  structures such as the pleural line better than the study's ResNet-18, whose stem downsamples 4x: the AUC < 0.95
  rule must hold for both; the ResNet-18 one is in ``bench_synth_cxr_fidelity.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eden_lib.data.synth_cxr import (  # noqa: E402
    CHUNK,
    FINDINGS,
    SynthCXRConfig,
    chest_attenuation,
    chunk_fields,
    expose,
    generate_synth_cxr,
    pose_grid,
    render,
    sample_params,
)
from eden_lib.data.splits import patient_holdout  # noqa: E402
from eden_lib.paths import reports_dir  # noqa: E402
from small_cnn import small_cnn  # noqa: E402 (benchmarks/ is on sys.path when run)


def loop_reference(params, seed: int, size: int, n_images: int, n_rows: int) -> dict:
    """Per-image, per-pixel rendering of the first ``n_images`` images on ``n_rows`` rows; timing + agreement."""
    rows = np.linspace(0, size - 1, n_rows).astype(int)
    per_pixel, max_diff = [], 0.0
    vessels_all, tex_all, noise_all = chunk_fields(seed, 0, min(CHUNK, len(params.meta)), size)
    for i in range(n_images):
        a, les, acq = params.anatomy.take([i]), params.lesions.take([i]), params.acquisition.take([i])
        u, v = pose_grid(acq, size)
        vessels, tex = vessels_all[i : i + 1], tex_all[i : i + 1]
        ref = np.zeros((len(rows), size), np.float32)
        t0 = time.perf_counter()
        for r, y in enumerate(rows):
            for x in range(size):
                px = (slice(0, 1), slice(y, y + 1), slice(x, x + 1))
                att, _ = chest_attenuation(a, les, u[px], v[px], tex[px], vessels, eps=2.0 / size)
                ref[r, x] = att[0, 0, 0]
        per_pixel.append((time.perf_counter() - t0) / ref.size)
        vec, _ = chest_attenuation(a, les, u, v, tex, vessels, eps=2.0 / size)
        max_diff = max(max_diff, float(np.abs(vec[0, rows] - ref).max()))
    t0 = time.perf_counter()
    expose(np.zeros((1, size, size), np.float32), params.acquisition.take([0]), noise_all[:1])
    t_expose = time.perf_counter() - t0
    return {
        "seconds_per_image": float(np.mean(per_pixel)) * size * size + t_expose,
        "timed_pixels_per_image": int(len(rows) * size),
        "max_abs_attenuation_diff_vs_vectorised": max_diff,
    }


def batch_of_one(params, seed: int, size: int, n_images: int) -> float:
    """Seconds per image when the same renderer is called one image at a time."""
    t0 = time.perf_counter()
    for i in range(n_images):
        render(params, seed, size, slice(i, i + 1), i)
    return (time.perf_counter() - t0) / n_images


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``(N, H, W)`` uint8 to ``(N, size, size)`` float32 in [0, 1]."""
    n, h, _ = images.shape
    f = h // size
    return images.reshape(n, size, f, size, f).mean(axis=(2, 4), dtype=np.float32) / 255.0


def difficulty(data, size: int, seed: int, n_components: int = 64) -> dict:
    """AUC per finding of a PCA + logistic-regression probe on ``size``-pixel images (patient-level split)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    x = downsample(data.images, size).reshape(len(data.images), -1)
    pool, test = patient_holdout(data.meta["patient_id"].to_numpy(), 0.3, seed)
    pca = PCA(n_components, random_state=seed).fit(x[pool])
    feats = StandardScaler().fit(pca.transform(x[pool])).transform(pca.transform(x))
    g = np.random.default_rng(seed)
    result = {}
    for budget in (1.0, 0.1):
        train = np.sort(g.choice(pool, max(2, int(budget * len(pool))), replace=False))
        aucs = {}
        for k, name in enumerate(FINDINGS):
            y = data.labels[:, k]
            if len(np.unique(y[train])) < 2 or len(np.unique(y[test])) < 2:
                aucs[name] = float("nan")
                continue
            clf = LogisticRegression(C=0.1, max_iter=2000).fit(feats[train], y[train])
            aucs[name] = float(roc_auc_score(y[test], clf.decision_function(feats[test])))
        result[f"labels_{int(budget * 100)}pct"] = {"auc": aucs, "mean_auc": float(np.nanmean(list(aucs.values())))}
    result["test_positives"] = {name: int(data.labels[test, k].sum()) for k, name in enumerate(FINDINGS)}
    return result


def cnn_difficulty(data, size: int, seed: int, epochs: int) -> dict:
    """AUC per finding of a small CNN trained on all labels (multi-label BCE) at ``size`` pixels."""
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    torch.manual_seed(seed)
    x = torch.from_numpy(downsample(data.images, size))[:, None]
    y = torch.from_numpy(data.labels.astype(np.float32))
    train, test = (torch.from_numpy(i) for i in patient_holdout(data.meta["patient_id"].to_numpy(), 0.3, seed))
    x = (x - x[train].mean()) / x[train].std()
    model = small_cnn((16, 32, 64, 64), y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = model(x[test]).numpy()
    yt = y[test].numpy()
    aucs = {name: float(roc_auc_score(yt[:, k], scores[:, k])) if 0 < yt[:, k].sum() < len(yt) else float("nan")
            for k, name in enumerate(FINDINGS)}
    return {"auc": aucs, "mean_auc": float(np.nanmean(list(aucs.values()))), "epochs": epochs}


def montage(data, path: Path, n: int = 16) -> None:
    from PIL import Image

    side = int(np.sqrt(n))
    tiles = data.images[:n].reshape(side, side, *data.images.shape[1:])
    Image.fromarray(np.concatenate(np.concatenate(tiles, axis=1), axis=1)).save(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="patients to generate (one image each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-images", type=int, default=2, help="images rendered by the per-pixel loop reference")
    ap.add_argument("--ref-rows", type=int, default=8, help="rows per image timed in the loop reference")
    ap.add_argument("--probe-size", type=int, default=64, help="training resolution of the difficulty probes")
    ap.add_argument("--cnn-epochs", type=int, default=10, help="epochs of the small-CNN probe (0: skip it)")
    args = ap.parse_args(argv)

    size = 256
    from eden_lib.config import load_params

    sex_effect = float(load_params(validate_methods=False)["data"]["cxr"]["sex_effect"])  # the study's value
    cfg = SynthCXRConfig(n_patients=args.n, size=size, sex_effect=sex_effect)
    t0 = time.perf_counter()
    data = generate_synth_cxr(cfg, args.seed)
    gen_s = time.perf_counter() - t0
    vec_per_image = gen_s / len(data)

    params = sample_params(cfg, args.seed)
    ref = loop_reference(params, args.seed, size, args.ref_images, args.ref_rows)
    one = batch_of_one(params, args.seed, size, min(16, len(data)))
    diff = difficulty(data, args.probe_size, args.seed)
    cnn = cnn_difficulty(data, args.probe_size, args.seed, args.cnn_epochs) if args.cnn_epochs > 0 else None

    fig = reports_dir() / "figures" / "synth_cxr_montage.png"
    fig.parent.mkdir(parents=True, exist_ok=True)
    montage(data, fig)
    result = {
        "n_images": len(data),
        "sex_effect": sex_effect,
        "size": size,
        "cpu": platform.processor() or platform.machine(),
        "generate_seconds": gen_s,
        "images_per_second": len(data) / gen_s,
        "images_per_minute": 60 * len(data) / gen_s,
        "loop_reference": ref,
        "speedup_vs_per_pixel_loop": ref["seconds_per_image"] / vec_per_image,
        "batch_of_one_seconds_per_image": one,
        "speedup_vs_batch_of_one": one / vec_per_image,
        "difficulty": {"probe": f"PCA(64) + logistic regression on {args.probe_size}x{args.probe_size}", **diff},
        "difficulty_cnn": cnn,
        "prevalence": {name: float(data.labels[:, k].mean()) for k, name in enumerate(FINDINGS)},
        "command": "python benchmarks/bench_synth_cxr.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = reports_dir() / "benchmarks" / "synth_cxr.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
