"""Stage ``ark_sites``: Ark's claim "more data sets give better models" (issue: the papers' remaining claims).

For every k of ``claims.ark_sites.site_counts`` Ark is pretrained on the first k sites of ``data.sites`` (its
``methods.ark`` block with ``sites`` set, the shared pretraining budget, so fewer sites means more passes over each)
into ``data/claims/ark_sites/k<k>``, then scored on every site's own task exactly as the ``transfer`` stage scores
the study's methods (:func:`~eden_lib.pipeline.transfer.site_classification`). The floors and the control come from
the transfer stage's own site runs: ``scratch`` (random encoder) and ``supervised_site`` (one site, no accrual).
Statistics: :mod:`eden_lib.analysis.site_scaling`. Writes ``reports/metrics/claims/ark_sites.json`` and
``reports/figures/claims/ark_sites.png``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.analysis.site_scaling import paired_against, scaling_summary, unit_scores, verdict_sentence

#: the transfer stage's methods the claim is compared with: floor (random encoder) and control (one site)
FLOORS = ("scratch", "supervised_site")


def run_name(k: int) -> str:
    return f"ark_sites/k{k}"


def check_site_counts(counts: list[int], n_sites: int) -> None:
    if len(counts) < 2 or sorted(set(counts)) != list(counts) or counts[0] < 1 or counts[-1] > n_sites:
        raise ValueError(f"claims.ark_sites.site_counts = {counts}: expected at least two increasing site counts in "
                         f"[1, {n_sites}] (data.sites has {n_sites} sites)")


def run_ark_sites(cfg: dict) -> dict:
    """Pretrain Ark on 1..k sites, score every site's task, compare; returns the metrics it writes."""
    from eden_lib.data import prepared
    from eden_lib.pipeline.pretrain import pretrain_dims
    from eden_lib.pipeline.transfer import site_classification
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import read_json, write_json

    counts = list(cfg["claims"]["ark_sites"]["site_counts"])
    sites = prepared.load_sites()
    check_site_counts(counts, len(sites.site_names))
    by_k, runs, seconds = {}, {}, {}
    for k in counts:
        t0 = time.perf_counter()
        variant = {**cfg, "methods": {**cfg["methods"], "ark": {**cfg["methods"]["ark"],
                                                                 "sites": sites.site_names[:k]}}}
        history = pretrain_dims(variant, "ark", 2, run_name=run_name(k))["history"]
        records = site_classification(cfg, run_name(k), sites)
        by_k[k] = unit_scores(records)
        runs[k] = {"sites": sites.site_names[:k], "records": records,
                   "loss_cls": [history[0].get("loss_cls"), history[-1].get("loss_cls")] if history else None}
        seconds[f"k{k}"] = round(time.perf_counter() - t0, 1)
    summary = scaling_summary(by_k)
    floors = {}
    for method in FLOORS:
        path = paths.metrics_file("transfer", method)
        if method in cfg["active_methods"] and path.is_file():
            floors[method] = paired_against(by_k, unit_scores(read_json(path)["runs"]))
    metrics = {"profile": cfg["profile"], **summary, "floors": floors, "sentence": verdict_sentence(summary),
               "runs": runs, "seconds": seconds}
    write_json(metrics, paths.metrics_file("claims", "ark_sites"))
    save(scaling_figure(metrics), paths.figures_dir("claims") / "ark_sites.png")
    return metrics


def scaling_figure(metrics: dict) -> Figure:
    """Mean AUC over every site's labels against the number of sites Ark trained on (bars: 95 % CI over site
    labels), each site's mean as a thin line, the floors as horizontal lines."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    ks = np.asarray(metrics["site_counts"])
    per_k = pd.DataFrame(metrics["per_k"]).T.loc[[str(k) if str(k) in metrics["per_k"] else k for k in ks]]
    mean = per_k["mean"].to_numpy(float)
    err = np.vstack([mean - per_k["ci_low"].to_numpy(float), per_k["ci_high"].to_numpy(float) - mean])
    ax.errorbar(ks, mean, yerr=err, marker="o", color="black", capsize=3, label="ark, mean over site labels")
    per_site = pd.DataFrame(metrics["per_site"])
    for site, row in per_site.iterrows():
        ax.plot(ks, row.to_numpy(float), lw=0.8, alpha=0.6, label=f"ark on {site}'s task")
    for (method, f), style in zip(metrics["floors"].items(), ("--", ":")):
        ax.axhline(f["other"]["mean"], color="grey", ls=style, label=method)
    ax.set(xlabel="sites Ark trained on", ylabel="linear-probe AUC", xticks=ks,
           title="Ark: more sites, better models?")
    ax.legend(fontsize=7)
    return fig
