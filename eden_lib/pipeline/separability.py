"""Stage ``separability``: CAiD's claims "separability and feature reuse" (Taher et al., MIDL 2022;
dira_caid_transfer_alice_cadpe.md §2.3).

- Separability: the pairwise cosine distances between the frozen features (the transfer stage's ``cxr`` features)
  of ``claims.separability.n_images`` test radiographs, for every 2D method; the claim's method (``method``, CAiD)
  against its base (``base``, MoCo-v2) and ``scratch``: difference of mean distances with a bootstrap CI over images
  (:mod:`eden_lib.analysis.separability`).
- Feature reuse: each method of ``reuse_methods`` is fine-tuned once on the CXR classification task exactly as the
  transfer stage fine-tunes it (:func:`~eden_lib.pipeline.transfer.finetune_classifier`, the first of
  ``transfer.seeds``); per backbone stage (stem, layer1-4, global average pooled) the linear CKA between the
  pretrained and the fine-tuned features of the same test images (:mod:`eden_lib.analysis.cka`); the claim's method
  against its base: difference of the mean over stages with a bootstrap CI over images.
- Transfer ablation: the claim's method, its base, ``scratch`` (floor) and ``supervised`` (control) fine-tuned as the
  transfer stage does with the first k backbone stages frozen (no gradient, batch-norm statistics kept:
  :func:`~eden_lib.evaluation.finetune.freeze_stages`), for every k of ``freeze_stages`` and every seed of
  ``transfer.seeds``; k = 0 (nothing frozen) are the transfer stage's own fine-tuning runs (its metrics files; the
  reuse runs above repeat their first seed, and ``k0_max_abs_diff`` records how exactly). Test AUC per (method, k)
  and the drop from k = 0, the claim's method against its base paired over seeds, Holm over k
  (:mod:`eden_lib.analysis.freeze_ablation`).

Writes ``reports/metrics/claims/separability.json`` and ``reports/figures/claims/separability.png``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.analysis.cka import bootstrap_cka, linear_cka
from eden_lib.analysis.freeze_ablation import ablation_summary
from eden_lib.analysis.separability import mean_distance_difference, pairwise_cosine_distances
from eden_lib.evaluation.statistics import bootstrap_difference
from eden_lib.pipeline.checks import check_block

#: the five backbone stages (the maps of the encoders' ``stages(x)``)
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
#: the transfer ablation's floor and control, besides the claim's method and its base
ABLATION_REFERENCES = ("scratch", "supervised")

#: ``claims.separability``: key -> (check, what is expected)
RULES = {
    "method": (lambda v: isinstance(v, str), "a method name"),
    "base": (lambda v: isinstance(v, str), "a method name"),
    "n_images": (lambda v: isinstance(v, int) and v >= 3, "an integer >= 3"),
    "reuse_methods": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v), "a list of method names"),
    "n_bootstrap": (lambda v: isinstance(v, int) and v >= 10, "an integer >= 10"),
    "freeze_stages": (lambda v: isinstance(v, list) and v != [] and all(type(k) is int for k in v)
                      and v == sorted(set(v)) and 1 <= v[0] and v[-1] <= len(STAGES),
                      f"an increasing, non-empty list of stage counts from 1 to {len(STAGES)} (k = 0 is the "
                      "transfer stage's fine-tuning)"),
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
    """The three analyses over the active 2D methods; returns the metrics it writes."""
    from torch import nn

    from eden_lib.data import prepared
    from eden_lib.data.batches import resize_2d
    from eden_lib.pipeline.transfer import (_load_encoder_2d, _run_finetunes, finetune_classifier, has_2d,
                                            validation_rows)
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json
    from eden_lib.seed import rng

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

    # the transfer stage's CXR fine-tuning (its inputs, split, network), with the first k stages frozen
    x = resize_2d(cxr.images, cfg["data"]["image_size"])
    split = (cxr.split_indices("train"), validation_rows(cfg, cxr.split_indices("val")), test)
    names = cxr.info["labels"]

    def run(m: str, k: int, seed: int, reuse: bool) -> dict:
        def build() -> nn.Module:
            encoder = _load_encoder_2d(cfg, m)
            return nn.Sequential(encoder, nn.Linear(encoder.out_dim, len(names)))

        record, net = finetune_classifier(cfg, "cxr_classification", names, x, cxr.labels, split, build, seed, k)
        return {"method": m, "k": k, "seed": seed, "value": record["value"],
                "features": stage_features(net[0], x[picks], device) if reuse else None}

    seeds = cfg["transfer"]["seeds"]
    reuse_methods = [m for m in c["reuse_methods"] if m in methods]
    ablated = [m for m in dict.fromkeys((claim, base, *ABLATION_REFERENCES)) if m in methods]
    specs = [(m, 0, seeds[0], True) for m in reuse_methods]  # the longest runs first: they balance the workers
    specs += [(m, k, s, False) for k in c["freeze_stages"] for m in ablated for s in seeds]
    runs = _run_finetunes(cfg, [lambda spec=spec: run(*spec) for spec in specs])

    reuse, stage_feats = {}, {}
    for r in runs[: len(reuse_methods)]:
        m = r["method"]
        stage_feats[m] = (stage_features(_load_encoder_2d(cfg, m), x[picks], device), r["features"])
        reuse[m] = [bootstrap_cka(b, a, rng(cfg["seed"], "cka", m, s), c["n_bootstrap"])
                    for s, (b, a) in enumerate(zip(*stage_feats[m]))]
    reuse_test = reuse_difference(stage_feats, claim, base, rng(cfg["seed"], "cka_diff"), c["n_bootstrap"])
    k0 = {m: transfer_finetune_auc(cfg, m, seeds) for m in dict.fromkeys((*ablated, *reuse_methods))}
    scores = {m: {0: k0[m]} for m in ablated}
    for r in runs[len(reuse_methods):]:
        scores[r["method"]].setdefault(r["k"], {})[r["seed"]] = r["value"]
    k0_diffs = [abs(r["value"] - k0[r["method"]][seeds[0]]) for r in runs[: len(reuse_methods)]]
    ablation = {**ablation_summary(scores, claim, base), "freeze_stages": [0, *c["freeze_stages"]], "seeds": seeds,
                "methods": ablated, "k0_max_abs_diff": max(k0_diffs, default=None)}
    metrics = {"profile": cfg["profile"], "method": claim, "base": base, "n_images": len(picks),
               "separability": separability, "separability_tests": sep_tests, "reuse": reuse,
               "reuse_test": reuse_test, "ablation": ablation}
    metrics["sentence"] = verdict_sentence(metrics)
    write_json(metrics, paths.metrics_file("claims", "separability"))
    save(separability_figure(distances, metrics), paths.figures_dir("claims") / "separability.png")
    return metrics


def transfer_finetune_auc(cfg: dict, method: str, seeds: list[int]) -> dict[int, float]:
    """``{seed: test AUC}`` of the transfer stage's CXR fine-tuning runs of ``method`` (k = 0 of the ablation)."""
    from eden_lib.reporting.io import read_json

    path = paths.metrics_file("transfer", method)
    budget = f"{cfg['transfer']['finetune_fraction']:g}"
    found = {r["seed"]: np.nan if r["value"] is None else r["value"] for r in read_json(path)["runs"]
             if (r["task"], r["protocol"], r["budget"]) == ("cxr_classification", "finetune", budget)}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise ValueError(f"{path}: no cxr_classification fine-tuning run (budget {budget}) for seeds {missing}; the "
                         "transfer ablation's k = 0 are those runs (tasks.cxr_classification.protocols needs "
                         "'finetune'; re-run the transfer stage)")
    return {s: found[s] for s in seeds}


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
    """One generated sentence per claim, with the difference, its CI and the bootstrap p; then the transfer
    ablation's (:func:`ablation_sentence`)."""
    claim, base = metrics["method"], metrics["base"]
    sep = metrics["separability_tests"].get(f"{claim} - {base}")
    reuse = metrics["reuse_test"]

    def numbers(t: dict | None) -> str:
        return "" if t is None else (f" ({t['diff']:+.4f}, 95 % CI {t['ci_low']:+.4f} to {t['ci_high']:+.4f}, "
                                     f"bootstrap p = {t['p']:.3g})")

    return (f"CAiD's separability claim (`{claim}` spreads embeddings further apart than its base `{base}`) "
            f"{_verdict(sep)}{numbers(sep)}; its feature-reuse claim (`{claim}`'s features change less in "
            f"fine-tuning: higher mean CKA over stages) {_verdict(reuse)}{numbers(reuse)}. "
            + ablation_sentence(metrics))


def ablation_sentence(metrics: dict) -> str:
    """The transfer ablation's verdict with, per k, the claim's method's AUC drop minus its base's, its t CI and the
    Holm-corrected p."""
    claim, base, a = metrics["method"], metrics["base"], metrics["ablation"]
    numbers = "; ".join(f"k = {k}: {t['diff']:+.4f}, 95 % CI {_number(t['ci_low'])} to {_number(t['ci_high'])}, "
                        f"Holm p = {_number(t['p_holm'], '.3g')}" for k, t in a["tests"].items())
    return (f"Its transfer ablation (freezing backbone stages 1..k costs `{claim}` less test AUC than `{base}`: "
            f"feature reuse) {a['verdict']}" + (f" (AUC drop from k = 0, `{claim}` minus `{base}`, paired over "
                                                 f"{len(a['seeds'])} seeds: {numbers})" if numbers else "") + ".")


def _number(x: float | None, fmt: str = "+.4f") -> str:
    """A number of the metrics, "n/a" for NaN (or a metrics file's null)."""
    return "n/a" if x is None or not np.isfinite(x) else format(x, fmt)


def separability_figure(distances: dict[str, np.ndarray], metrics: dict) -> Figure:
    """Left: density of pairwise cosine distances per method (the claim's method and its base bold). Middle: CKA
    between pretrained and fine-tuned features per backbone stage (bars: 95 % bootstrap CI). Right: the transfer
    ablation, test AUC against the number k of frozen stages per method (bars: 95 % t CI over seeds)."""
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16.0, 4.0), layout="constrained")
    bold = {metrics["method"], metrics["base"], "scratch"}
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys((*distances, *metrics["reuse"],
                                                                        *metrics["ablation"]["auc"])))}
    for m, d in distances.items():
        left.hist(d, bins=60, density=True, histtype="step", lw=2.0 if m in bold else 0.7,
                  alpha=1.0 if m in bold else 0.5, label=m, color=colours[m])
    left.set(xlabel="cosine distance between two test images' features", ylabel="density",
             title="Separability: pairwise distances")
    left.legend(fontsize=6, ncol=2)
    for m, per_stage in metrics["reuse"].items():
        y = np.array([s["cka"] for s in per_stage])
        err = np.vstack([y - [s["ci_low"] for s in per_stage], [s["ci_high"] for s in per_stage] - y])
        middle.errorbar(np.arange(len(y)), y, yerr=err, marker="o", capsize=2, label=m,
                        lw=2.0 if m in bold else 1.0, color=colours[m])
    middle.set(xticks=range(len(STAGES)), xticklabels=STAGES, ylim=(0, 1.05),
               ylabel="linear CKA (pretrained, fine-tuned)", title="Feature reuse per stage")
    middle.legend(fontsize=7)
    a = metrics["ablation"]
    ks = a["freeze_stages"]
    for i, (m, per_k) in enumerate(a["auc"].items()):
        cells = [per_k[str(k)] for k in ks]
        y = np.array([c["mean"] for c in cells], dtype=float)
        err = np.vstack([y - [c["ci_low"] for c in cells], [c["ci_high"] for c in cells] - y])
        right.errorbar(np.asarray(ks) + 0.06 * (i - (len(a["auc"]) - 1) / 2), y, yerr=np.nan_to_num(err),
                       marker="o", capsize=2, label=m, lw=2.0 if m in bold else 1.0, color=colours[m])
    right.set(xticks=ks, xlabel="backbone stages frozen (k: stem, layer1, ...)", ylabel="test AUC (CXR classification)",
              title="Transfer ablation: stages 1..k frozen")
    right.legend(fontsize=7)
    return fig
