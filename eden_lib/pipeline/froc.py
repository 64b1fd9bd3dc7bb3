"""Stage ``froc``: pulmonary embolism detection on CTPA, scored by the CAD-PE FROC, for every method with a 3D
network (STUDY.md §7; ``reference/dira_caid_transfer_alice_cadpe.md`` §5).

Data: with ``data.source: synthetic`` SynthCTPA (``data.synth_ctpa``) is generated from ``froc`` and ``seed``,
written in the CAD-PE layout into ``data/raw/synthetic_ctpa`` and read back through ``data.cad_pe``; with ``real``
the release at ``data.roots.cad_pe`` is read, trained on ``001``-``020`` and the post-challenge scans and tested on
the challenge's evaluation scans ``021``-``040``.

Per method (``scratch`` first, then every given method that exported ``unet3d.pt``) and per seed of
``transfer.seeds`` (paired: the same patches and batch order for every method), the whole exported UNet3D is
fine-tuned as a detector (``evaluation.pe_detection``, loaded by the transfer stage's ``segmentation_unet3d``) and
scored. Writes ``reports/metrics/froc/pe_detection.json`` (per run: sensitivity at ``froc.fp_rates`` FP/scan, their
mean, the curve points; per method: mean, std and the comparison with ``scratch`` from
``evaluation.statistics.compare_methods``; the mean curve per method) and ``reports/figures/froc/froc_curves.png``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.data.cad_pe import CADPE
from eden_lib.data.synth_ctpa import SynthCTPAConfig, generate_synth_ctpa, write_cad_pe
from eden_lib.evaluation.froc import sensitivity_at
from eden_lib.evaluation.pe_detection import DetectionConfig, detect, score, train_detector
from eden_lib.evaluation.statistics import compare_methods
from eden_lib.pipeline.transfer import has_3d, segmentation_unet3d
from eden_lib.seed import seed_everything

REFERENCE = "scratch"
SYNTH_KEYS = ("n_train", "n_test", "shape", "spacing", "emboli_per_scan", "pe_free_fraction", "embolus_hu",
              "contrast_hu", "embolus_length_mm", "occlusive_fraction", "min_vessel_radius_mm")
DETECTION_KEYS = ("patch", "steps", "batch_size", "lr", "weight_decay", "positive_fraction", "window", "overlap",
                  "threshold")
CURVE_GRID_POINTS = 81  # the mean curve is sampled from 0 to twice the largest FP rate


def ctpa_data(cfg: dict) -> tuple[CADPE, CADPE]:
    """``(train, test)`` CAD-PE datasets: SynthCTPA written and read back, or the real release."""
    if cfg["data"]["source"] == "synthetic":
        f = cfg["froc"]
        synth = SynthCTPAConfig(**{k: tuple(f[k]) if isinstance(f[k], list) else f[k] for k in SYNTH_KEYS})
        root = write_cad_pe(generate_synth_ctpa(synth, cfg["seed"]), paths.raw_dir("synthetic_ctpa"))
        return CADPE(root, "train"), CADPE(root, "test")
    root = cfg["data"]["roots"].get("cad_pe")
    if root is None:
        raise ValueError("params.yaml: data.source is 'real' but data.roots.cad_pe is not set; give the folder of the "
                         "CAD-PE release (<id>.nrrd and <id>RefStd.nrrd)")
    return CADPE(root, ("train", "post_challenge")), CADPE(root, "test")


def detection_config(cfg: dict) -> DetectionConfig:
    f = cfg["froc"]
    return DetectionConfig(**{k: tuple(f[k]) if isinstance(f[k], list) else f[k] for k in DETECTION_KEYS},
                           device=cfg["pretrain"]["device"])


def _key(rate: float) -> str:
    """``fp_1``, ``fp_0p5``: metric keys without dots (DVC)."""
    return "fp_" + f"{rate:g}".replace(".", "p")


def run_froc(cfg: dict, methods: list[str]) -> dict:
    """Train, detect and score every method x seed; writes the metrics JSON and the figure, returns the metrics.

    Args:
        cfg: resolved parameters (``config.load_params``).
        methods: candidate methods (e.g. ``active_methods``); those without ``unet3d.pt`` are listed as skipped.
            ``scratch`` is always run (the reference) and must have exported its random UNet3D.
    """
    from eden_lib.reporting.io import write_json

    f = cfg["froc"]
    rates = tuple(float(r) for r in f["fp_rates"])
    if not has_3d(REFERENCE):
        raise FileNotFoundError(f"{paths.models_dir(REFERENCE) / 'unet3d.pt'} is missing: the froc stage compares "
                                f"every method with '{REFERENCE}'; run 'pretrain@{REFERENCE}' first")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train, test = ctpa_data(cfg)
    seconds["data"] = round(time.perf_counter() - t0, 2)
    ordered = [REFERENCE] + [m for m in dict.fromkeys(methods) if m != REFERENCE]
    run_methods = [m for m in ordered if has_3d(m)]
    skipped = {m: "no unet3d.pt (a 2D-only method)" for m in ordered if m not in run_methods}
    det = detection_config(cfg)
    runs = []
    for method in run_methods:
        t0 = time.perf_counter()
        for seed in cfg["transfer"]["seeds"]:
            seed_everything(seed)
            net = train_detector(segmentation_unet3d(cfg, method, "finetune"), train, det, seed)
            markers = detect(net, test, det)
            curve, sens = score(markers, test, rates, f["tolerance_mm"])
            runs.append({"method": method, "seed": seed, "n_markers": len(markers),
                         "sensitivity": {_key(r): float(s) for r, s in sens.items()}, "froc_score": float(sens.mean()),
                         "curve": {"fp_per_scan": curve["fp_per_scan"].tolist(),
                                   "sensitivity": curve["sensitivity"].tolist(),
                                   "threshold": curve["threshold"].tolist()}})
        seconds[method] = round(time.perf_counter() - t0, 2)
    references = test.reference_standards()
    metrics = {
        "profile": cfg["profile"], "source": cfg["data"]["source"], "fp_rates": list(rates),
        "tolerance_mm": f["tolerance_mm"], "threshold": f["threshold"], "n_train_scans": len(train),
        "n_test_scans": len(test), "n_test_emboli": int(sum(len(np.unique(references[s][references[s] > 0]))
                                                            for s in test.meta["patient_id"])),
        "summary": summarize(runs, rates), "mean_curves": mean_curves(runs, rates), "runs": runs,
        "skipped": skipped, "seconds": seconds,
    }
    write_json(metrics, paths.metrics_file("froc", "pe_detection"))
    from eden_lib.reporting.figures import save

    save(froc_figure(metrics), paths.figures_dir("froc") / "froc_curves.png")
    return metrics


def summarize(runs: list[dict], rates: tuple[float, ...]) -> dict:
    """``{method: {metric: {mean, std, n, diff, ci_low, ci_high, p, p_adjusted, stars, p_replication, test}}}`` for
    each ``fp_<rate>`` and ``froc_score`` (their mean), compared with ``scratch`` on paired seeds (Holm within each
    metric; the papers' unpaired t-test in ``p_replication``)."""
    out: dict = {}
    for metric in [_key(r) for r in rates] + ["froc_score"]:
        values = [r["sensitivity"][metric] if metric != "froc_score" else r["froc_score"] for r in runs]
        df = pd.DataFrame({"method": [r["method"] for r in runs], "seed": [r["seed"] for r in runs], "value": values})
        table = compare_methods(df, REFERENCE)
        for row in table.to_dict("records"):
            keep = {k: row[k] for k in ("mean", "std", "n", "diff", "ci_low", "ci_high", "p", "p_adjusted", "stars",
                                        "p_replication", "test")}
            out.setdefault(row["method"], {})[metric] = {k: (None if pd.isna(v) else v) for k, v in keep.items()}
    return out


def mean_curves(runs: list[dict], rates: tuple[float, ...]) -> dict:
    """Per method, the step-rule sensitivity (``evaluation.froc.sensitivity_at``) on a common FP/scan grid, mean and
    std over seeds: ``{method: {fp_per_scan, sensitivity, std}}``."""
    grid = np.linspace(0.0, 2 * max(rates), CURVE_GRID_POINTS)
    per_method: dict[str, list[np.ndarray]] = {}
    for run in runs:
        curve = pd.DataFrame({k: run["curve"][k] for k in ("fp_per_scan", "sensitivity")})
        per_method.setdefault(run["method"], []).append(sensitivity_at(curve, grid).to_numpy())
    return {m: {"fp_per_scan": grid.tolist(), "sensitivity": np.mean(v, axis=0).tolist(),
                "std": (np.std(v, axis=0, ddof=1) if len(v) > 1 else np.zeros_like(grid)).tolist()}
            for m, v in per_method.items()}


def froc_figure(metrics: dict) -> Figure:
    """Mean FROC curve per method (band: ± std over seeds), the operating points ``fp_rates`` marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    for method, c in metrics["mean_curves"].items():
        x, y, s = (np.asarray(c[k]) for k in ("fp_per_scan", "sensitivity", "std"))
        ax.step(x, y, where="post", label=method)
        ax.fill_between(x, np.clip(y - s, 0, 1), np.clip(y + s, 0, 1), step="post", alpha=0.15)
    for rate in metrics["fp_rates"]:
        ax.axvline(rate, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="false positives per scan", ylabel="sensitivity (per embolus)", ylim=(0, 1.02),
           title=f"PE detection FROC ({metrics['source']}: {metrics['n_test_scans']} test scans, "
                 f"{metrics['n_test_emboli']} emboli)")
    ax.legend(fontsize=7, loc="lower right")
    return fig
