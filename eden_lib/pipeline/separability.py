"""Stage ``separability``: CAiD's claims "separability and feature reuse" (Taher et al., MIDL 2022;
dira_caid_transfer_alice_cadpe.md §2.3).

- Separability: the pairwise cosine distances between the frozen features (the transfer stage's ``cxr`` features)
  of ``claims.separability.n_images`` test radiographs, for every 2D method; the claim's method (``method``, CAiD)
  against its base (``base``, MoCo-v2) and ``scratch``: difference of mean distances with a bootstrap CI over images
  (:mod:`eden_lib.analysis.separability`).
- Feature reuse: each method of ``reuse_methods`` is fine-tuned once on the CXR classification task exactly as the
  transfer stage fine-tunes it (seed 0, all training labels); per backbone stage (stem, layer1-4, global average
  pooled) the linear CKA between the pretrained and the fine-tuned features of the same test images
  (:mod:`eden_lib.analysis.cka`); the claim's method against its base: difference of the mean over stages with a
  bootstrap CI over images.

Writes ``reports/metrics/claims/separability.json`` and ``reports/figures/claims/separability.png``. Not built: the
paper's transfer ablation that freezes stages 1..k.
"""

from __future__ import annotations

import copy

import numpy as np
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.analysis.cka import bootstrap_cka, linear_cka
from eden_lib.analysis.separability import mean_distance_difference, pairwise_cosine_distances
from eden_lib.evaluation.statistics import bootstrap_difference
from eden_lib.pipeline.checks import check_block

#: ``claims.separability``: key -> (check, what is expected)
RULES = {
    "method": (lambda v: isinstance(v, str), "a method name"),
    "base": (lambda v: isinstance(v, str), "a method name"),
    "n_images": (lambda v: isinstance(v, int) and v >= 3, "an integer >= 3"),
    "reuse_methods": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v), "a list of method names"),
    "n_bootstrap": (lambda v: isinstance(v, int) and v >= 10, "an integer >= 10"),
}


def check_separability(block: dict) -> None:
    """``claims.separability`` (:func:`~eden_lib.pipeline.checks.check_block`)."""
    check_block("claims.separability", block, RULES)

def stage_features(encoder, x, device: str) -> list[np.ndarray]:
    """The encoder's five stage maps of ``x`` ``(N, 1, S, S)``, each global-average pooled: ``[(N, C_s)] * 5``."""
    import torch

    from eden_lib.evaluation.finetune import predict

    pooled = []
    for s in range(5):
        def fn(batch, s=s):
            return torch.flatten(encoder.stages(batch)[s].mean(dim=(2, 3)), 1)

        pooled.append(predict(fn, encoder, x, device=device))
    return pooled


def run_separability(cfg: dict) -> dict:
    """Both analyses over the active 2D methods; returns the metrics it writes."""
    import torch
    from torch import nn

    from eden_lib.data import prepared
    from eden_lib.data.batches import resize_2d
    from eden_lib.evaluation.finetune import finetune
    from eden_lib.methods.supervised import masked_bce
    from eden_lib.pipeline.transfer import _finetune_cfg, _load_encoder_2d, has_2d
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json
    from eden_lib.seed import rng, seed_everything

    c = cfg["claims"]["separability"]
    check_separability(c)
    device = cfg["pretrain"]["device"]
    cxr = prepared.load_cxr()
    test = cxr.split_indices("test")
    picks = np.sort(rng(cfg["seed"], "separability").choice(test, size=min(c["n_images"], len(test)), replace=False))
    methods = [m for m in cfg["active_methods"] if has_2d(m)]
    features = {}
    for m in methods:
        with np.load(paths.features_file(m)) as npz:
            features[m] = npz["cxr"][picks]
    distances = {m: pairwise_cosine_distances(f) for m, f in features.items()}
    separability = {m: {"mean": float(d.mean()), "median": float(np.median(d)),
                        "quartiles": [float(q) for q in np.percentile(d, [25, 75])]} for m, d in distances.items()}
    claim, base = c["method"], c["base"]
    sep_tests = {f"{claim} - {other}": mean_distance_difference(features[claim], features[other],
                                                                rng(cfg["seed"], "separability_boot"), c["n_bootstrap"])
                 for other in (base, "scratch") if claim in features and other in features}

    x = resize_2d(cxr.images[picks], cfg["data"]["image_size"])
    train = cxr.split_indices("train")
    x_train = resize_2d(cxr.images[train], cfg["data"]["image_size"])
    reuse, stage_feats = {}, {}
    for m in [m for m in c["reuse_methods"] if m in methods]:
        pretrained = _load_encoder_2d(cfg, m)
        seed_everything(0)
        net = nn.Sequential(copy.deepcopy(pretrained), nn.Linear(pretrained.out_dim, len(cxr.info["labels"])))
        finetune(net, masked_bce, x_train, torch.from_numpy(cxr.labels[train]),
                 _finetune_cfg(cfg, "cxr_classification"), seed=0)
        before, after = stage_features(pretrained, x, device), stage_features(net[0], x, device)
        stage_feats[m] = (before, after)
        reuse[m] = [bootstrap_cka(b, a, rng(cfg["seed"], "cka", m, s), c["n_bootstrap"])
                    for s, (b, a) in enumerate(zip(before, after))]
    reuse_test = reuse_difference(stage_feats, claim, base, rng(cfg["seed"], "cka_diff"), c["n_bootstrap"])
    metrics = {"profile": cfg["profile"], "method": claim, "base": base, "n_images": len(picks),
               "separability": separability, "separability_tests": sep_tests, "reuse": reuse,
               "reuse_test": reuse_test}
    metrics["sentence"] = verdict_sentence(metrics)
    write_json(metrics, paths.metrics_file("claims", "separability"))
    save(separability_figure(distances, metrics), paths.figures_dir("claims") / "separability.png")
    return metrics


def reuse_difference(stage_feats: dict, claim: str, base: str, generator: np.random.Generator,
                     n_bootstrap: int) -> dict | None:
    """Mean over stages of CKA(pretrained, fine-tuned) of ``claim`` minus ``base``, bootstrap CI over images."""
    if claim not in stage_feats or base not in stage_feats:
        return None

    def mean_cka(m: str, rows: np.ndarray) -> float:
        before, after = stage_feats[m]
        return float(np.mean([linear_cka(b[rows], a[rows]) for b, a in zip(before, after)]))

    n = len(stage_feats[claim][0][0])
    every = np.arange(n)
    draws = []
    for _ in range(n_bootstrap):
        rows = generator.integers(0, n, size=n)
        draws.append(mean_cka(claim, rows) - mean_cka(base, rows))
    return bootstrap_difference(mean_cka(claim, every) - mean_cka(base, every), np.asarray(draws))


def _verdict(test: dict | None) -> str:
    if test is None:
        return "was not tested"
    if test["ci_low"] > 0:
        return "held"
    return "did not hold" if test["ci_high"] < 0 else "was not supported"


def verdict_sentence(metrics: dict) -> str:
    """One generated sentence per claim, with the difference, its CI and the bootstrap p."""
    claim, base = metrics["method"], metrics["base"]
    sep = metrics["separability_tests"].get(f"{claim} - {base}")
    reuse = metrics["reuse_test"]

    def numbers(t: dict | None) -> str:
        return "" if t is None else (f" ({t['diff']:+.4f}, 95 % CI {t['ci_low']:+.4f} to {t['ci_high']:+.4f}, "
                                     f"bootstrap p = {t['p']:.3g})")

    return (f"CAiD's separability claim (`{claim}` spreads embeddings further apart than its base `{base}`) "
            f"{_verdict(sep)}{numbers(sep)}; its feature-reuse claim (`{claim}`'s features change less in "
            f"fine-tuning: higher mean CKA over stages) {_verdict(reuse)}{numbers(reuse)}.")


def separability_figure(distances: dict[str, np.ndarray], metrics: dict) -> Figure:
    """Left: density of pairwise cosine distances per method (the claim's method and its base bold). Right: CKA
    between pretrained and fine-tuned features per backbone stage (bars: 95 % bootstrap CI)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.0), layout="constrained")
    bold = {metrics["method"], metrics["base"], "scratch"}
    for m, d in distances.items():
        left.hist(d, bins=60, density=True, histtype="step", lw=2.0 if m in bold else 0.7,
                  alpha=1.0 if m in bold else 0.5, label=m)
    left.set(xlabel="cosine distance between two test images' features", ylabel="density",
             title="Separability: pairwise distances")
    left.legend(fontsize=6, ncol=2)
    for m, per_stage in metrics["reuse"].items():
        y = np.array([s["cka"] for s in per_stage])
        err = np.vstack([y - [s["ci_low"] for s in per_stage], [s["ci_high"] for s in per_stage] - y])
        right.errorbar(np.arange(len(y)), y, yerr=err, marker="o", capsize=2, label=m,
                       lw=2.0 if m in bold else 1.0)
    right.set(xticks=range(5), xticklabels=["stem", "layer1", "layer2", "layer3", "layer4"], ylim=(0, 1.05),
              ylabel="linear CKA (pretrained, fine-tuned)", title="Feature reuse per stage")
    right.legend(fontsize=7)
    return fig
