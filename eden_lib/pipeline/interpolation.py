"""Stage ``interpolation``: Adam-v2's claim of emergent interpolation and extrapolation, over every 2D method.

Pairs of landmarks of the embedding stage's test patients (``embedding.n_patients``, ``embedding.patch_size``) are
drawn with the study seed (``claims.interpolation.n_pairs``), keeping the pairs whose extrapolated points stay inside
the render. Every active method with a 2D encoder embeds the patches at A, B, the points C at each ``t`` on AB and
D past B, exactly as the transfer stage embeds landmark patches; the raw-pixel floor is a PCA of the same patches.
Scores and statistics: :mod:`eden_lib.analysis.interpolation`; each method is compared with ``claims.interpolation
.method`` (Adam-v2), paired over pairs, Holm-corrected. Writes ``reports/metrics/claims/interpolation.json`` and
``reports/figures/claims/interpolation.png``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.analysis.interpolation import beyond_points, bootstrap_mean, line_points, pair_scores
from eden_lib.evaluation.statistics import holm, paired_t, stars

MODES = ("interpolate", "extrapolate")


def landmark_pairs(landmarks: np.ndarray, n_pairs: int, t_max: float, render: int, margin: float,
                   generator: np.random.Generator) -> np.ndarray:
    """``n_pairs`` rows ``(image, landmark a, landmark b)`` drawn without replacement among the pairs of distinct
    landmarks of each image whose point ``B + t_max (B - A)`` lies at least ``margin`` pixels inside the render.

    Args:
        landmarks: ``(P, L, 2)`` (x, y) render pixels of P images.
    """
    p, n_l = landmarks.shape[:2]
    i, a, b = np.meshgrid(np.arange(p), np.arange(n_l), np.arange(n_l), indexing="ij")
    keep = a != b
    i, a, b = i[keep], a[keep], b[keep]
    far = beyond_points(landmarks[i, a], landmarks[i, b], t_max)
    inside = np.all((far >= margin) & (far <= render - 1 - margin), axis=1)
    candidates = np.stack([i[inside], a[inside], b[inside]], axis=1)
    if not len(candidates):
        raise ValueError(f"no landmark pair keeps its extrapolated point {margin:g} px inside the render")
    return candidates[np.sort(generator.choice(len(candidates), size=min(n_pairs, len(candidates)), replace=False))]


def run_interpolation(cfg: dict) -> dict:
    """Embed the pairs' patches with every 2D method, score, compare; returns the metrics it writes."""
    import torch

    from eden_lib.analysis.embeddings import pca_floor
    from eden_lib.data import prepared
    from eden_lib.data.patches import crop_around
    from eden_lib.evaluation.finetune import predict
    from eden_lib.pipeline.embedding import RAW_PIXELS
    from eden_lib.pipeline.transfer import _load_encoder_2d, has_2d, landmark_patients
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json
    from eden_lib.seed import rng

    c, emb = cfg["claims"]["interpolation"], cfg["embedding"]
    ts = [float(t) for t in c["t"]]
    cxr = prepared.load_cxr()
    rows = landmark_patients(cxr, emb["n_patients"], cfg["seed"])
    landmarks = cxr.landmarks[rows]
    pairs = landmark_pairs(landmarks, c["n_pairs"], max(ts), cxr.images.shape[-1], emb["patch_size"] / 4,
                           rng(cfg["seed"], "interpolation_pairs"))
    images = np.asarray(cxr.images[rows[pairs[:, 0]]])
    a, b = landmarks[pairs[:, 0], pairs[:, 1]], landmarks[pairs[:, 0], pairs[:, 2]]
    centres = [a, b, *[line_points(a, b, t) for t in ts], *[beyond_points(a, b, t) for t in ts]]
    size = cfg["data"]["image_size"]
    patches = torch.cat([crop_around(images, pts, emb["patch_size"], size) for pts in centres])  # point-major
    methods = [m for m in cfg["active_methods"] if has_2d(m)]
    embeddings = {RAW_PIXELS: pca_floor(patches.flatten(1).numpy(), min(64, len(patches) - 1), cfg["seed"])}
    for method in methods:
        encoder = _load_encoder_2d(cfg, method)
        embeddings[method] = predict(encoder, encoder, patches, device=cfg["pretrain"]["device"])
    n = len(pairs)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, e in embeddings.items():
        e = e.reshape(len(centres), n, -1)
        scores[name] = {
            "interpolate": pair_scores(e[0], e[1], dict(zip(ts, e[2:2 + len(ts)])), "interpolate", cfg["seed"]),
            "extrapolate": pair_scores(e[0], e[1], dict(zip(ts, e[2 + len(ts):])), "extrapolate", cfg["seed"]),
        }
    metrics = {"profile": cfg["profile"], "t": ts, "n_pairs": n, "reference": c["method"],
               "methods": {name: {mode: bootstrap_mean(s[mode], cfg["seed"], emb["n_bootstrap"]) for mode in MODES}
                           for name, s in scores.items()},
               "comparisons": comparisons(scores, c["method"])}
    metrics["sentence"] = verdict_sentence(metrics)
    write_json(metrics, paths.metrics_file("claims", "interpolation"))
    save(interpolation_figure(metrics), paths.figures_dir("claims") / "interpolation.png")
    return metrics


def comparisons(scores: dict[str, dict[str, np.ndarray]], reference: str) -> dict:
    """Per mode, ``reference`` minus every other method (and the raw-pixel floor), paired t over pairs,
    Holm-corrected over the other methods: ``{mode: {method: {diff, ci_low, ci_high, p, p_adjusted, stars}}}``."""
    if reference not in scores:
        return {}
    out = {}
    for mode in MODES:
        others = [m for m in scores if m != reference]
        tests = [paired_t(scores[reference][mode], scores[m][mode]) for m in others]
        adjusted = holm([t["p"] for t in tests])
        out[mode] = {m: {**t, "p_adjusted": float(p), "stars": stars(p)} for m, t, p in zip(others, tests, adjusted)}
    return out


def verdict_sentence(metrics: dict) -> str:
    """Whether the reference method interpolated and extrapolated better than every other method and the floor."""
    ref = metrics["reference"]
    if ref not in metrics["methods"]:
        return f"`{ref}` is not active: the interpolation claim was not tested."
    parts = []
    for mode in MODES:
        cmp = metrics["comparisons"][mode]
        beaten = [m for m, t in cmp.items() if t["diff"] > 0 and t["p_adjusted"] < 0.05]
        worse = [m for m, t in cmp.items() if t["diff"] < 0 and t["p_adjusted"] < 0.05]
        s = metrics["methods"][ref][mode]
        verdict = "held" if len(beaten) == len(cmp) else "did not hold" if worse else "held only in part"
        parts.append(f"{mode} {verdict} (score {s['score']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]; "
                     f"significantly above {len(beaten)} of {len(cmp)} others, below {len(worse)})")
    return f"Adam-v2's emergent interpolation claim, tested with `{ref}` against every method: " + "; ".join(parts) + "."


def interpolation_figure(metrics: dict) -> Figure:
    """Interpolation and extrapolation scores per method (bars: 95 % bootstrap CI over pairs)."""
    import matplotlib.pyplot as plt

    names = list(metrics["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8), layout="constrained", sharey=True)
    for ax, mode in zip(axes, MODES):
        s = [metrics["methods"][m][mode] for m in names]
        mean = np.array([x["score"] for x in s])
        err = np.vstack([mean - [x["ci_low"] for x in s], [x["ci_high"] for x in s] - mean])
        colors = ["tab:red" if m == metrics["reference"] else "tab:grey" if m.startswith("raw") else "tab:blue"
                  for m in names]
        ax.bar(range(len(names)), mean, yerr=err, color=colors, capsize=2)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{mode} (t = {', '.join(f'{t:g}' for t in metrics['t'])})")
    axes[0].set_ylabel("cos(predicted, true) - cos(predicted, other pair's)")
    return fig
