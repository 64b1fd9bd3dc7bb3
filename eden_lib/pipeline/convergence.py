"""Stage ``convergence``: TransVW's claim "faster convergence and annotation efficiency" (issue: the papers'
remaining claims).

It trains nothing: it reads every active method's transfer records (``reports/metrics/transfer/<method>.json``),
whose fine-tuning runs carry validation curves, and scores them with :mod:`eden_lib.analysis.convergence`: the time
to 95 % of the final validation score per run, and the test score at the reduced label budgets, each method against
``report.reference`` (the floor, ``scratch``) over shared (task, protocol, budget, seed) units. The claim's method is
``claims.convergence.method``. Writes ``reports/metrics/claims/convergence.json`` and
``reports/figures/claims/convergence.png`` (mean validation curves per task) and ``convergence_budgets.png`` (test
score against the label budget).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.analysis.convergence import compare_all, curve_table, reduced_budget_table, verdict


def run_convergence(cfg: dict) -> dict:
    """Score the curves and the reduced budgets of every active method; returns the metrics it writes."""
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import read_json, write_json

    c, reference = cfg["claims"]["convergence"], cfg["report"]["reference"]
    records = {}
    for method in cfg["active_methods"]:
        path = paths.metrics_file("transfer", method)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run 'transfer@{method}' first")
        records[method] = read_json(path)["runs"]
    curves = curve_table(records, c["fraction"])
    budgets = reduced_budget_table(records)
    metrics = {
        "profile": cfg["profile"], "method": c["method"], "reference": reference, "fraction": c["fraction"],
        "time": {m: {"mean": _num(g["time"].mean()), "std": _num(g["time"].std()), "n": int(g["time"].notna().sum())}
                 for m, g in curves.groupby("method")},
        "convergence": compare_all(curves, "time", reference) if reference in set(curves["method"]) else {},
        "efficiency": compare_all(budgets, "value", reference) if reference in set(budgets["method"]) else {},
    }
    metrics["sentence"] = verdict_sentence(metrics)
    write_json(metrics, paths.metrics_file("claims", "convergence"))
    save(curve_figure(curves, c["method"], reference), paths.figures_dir("claims") / "convergence.png")
    save(budget_figure(records, c["method"], reference), paths.figures_dir("claims") / "convergence_budgets.png")
    return metrics


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def verdict_sentence(metrics: dict) -> str:
    """The verdict on the claim's method against the reference, with both differences and their CIs."""
    method, ref = metrics["method"], metrics["reference"]
    conv, eff = metrics["convergence"].get(method), metrics["efficiency"].get(method)
    if conv is None or eff is None or not conv["n"] or not eff["n"]:
        return f"`{method}` or `{ref}` has no shared fine-tuning curves: the convergence claim was not tested."
    return (f"TransVW's claim of faster convergence and annotation efficiency {verdict(conv, eff)} for `{method}` "
            f"against `{ref}`: time to {metrics['fraction']:.0%} of the final validation score "
            f"{conv['diff']:+.3f} of the run [{conv['ci_low']:+.3f}, {conv['ci_high']:+.3f}] (p = {conv['p']:.2g}, "
            f"{conv['n']} runs); test score at reduced label budgets {eff['diff']:+.3f} [{eff['ci_low']:+.3f}, "
            f"{eff['ci_high']:+.3f}] (p = {eff['p']:.2g}, {eff['n']} runs).")


def curve_figure(curves: pd.DataFrame, method: str, reference: str) -> Figure:
    """Mean validation curve over seeds per (task, protocol, budget) panel, every method a line (the claim's method
    red, the reference black)."""
    import matplotlib.pyplot as plt

    panels = sorted({(r.task, r.protocol, r.budget) for r in curves.itertuples()}) if len(curves) else []
    n_col = min(4, max(1, len(panels)))
    n_row = max(1, -(-len(panels) // n_col))
    fig, axes = plt.subplots(n_row, n_col, figsize=(3.2 * n_col, 2.6 * n_row), layout="constrained", squeeze=False)
    for ax, (task, protocol, budget) in zip(axes.flat, panels):
        sub = curves[(curves["task"] == task) & (curves["protocol"] == protocol) & (curves["budget"] == budget)]
        for name, g in sub.groupby("method"):
            x = np.linspace(0, 1, max(len(c) for c in g["curve"]) + 1)[1:]  # runs stopped early: own fractions
            values = np.array([np.interp(x, [s for s, _ in c], [v for _, v in c]) for c in g["curve"]])
            style = ({"color": "tab:red", "lw": 2} if name == method else {"color": "black", "lw": 2}
                     if name == reference else {"color": "tab:grey", "lw": 0.7, "alpha": 0.6})
            ax.plot(x, values.mean(axis=0), label=name if name in (method, reference) else None, **style)
        ax.set_title(f"{task}\n{protocol}, {budget}", fontsize=8)
        ax.set_xlabel("fraction of the run's steps", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return fig


def budget_figure(records: dict, method: str, reference: str) -> Figure:
    """Test score against the label budget (label fractions of the linear probe, one panel per task)."""
    import matplotlib.pyplot as plt

    rows = [{"method": m, "task": r["task"], "budget": float(r["budget"]), "value": r["value"]}
            for m, runs in records.items() for r in runs
            if r["protocol"] == "linear_probe" and not str(r["budget"]).endswith("_shots")
            and not r["task"].startswith("site_")]
    df = pd.DataFrame(rows, columns=["method", "task", "budget", "value"])
    tasks = sorted(df["task"].unique())
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.0 * max(1, len(tasks)), 3.0), layout="constrained",
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for name, g in df[df["task"] == task].groupby("method"):
            mean = g.groupby("budget")["value"].mean()
            style = ({"color": "tab:red", "lw": 2} if name == method else {"color": "black", "lw": 2}
                     if name == reference else {"color": "tab:grey", "lw": 0.7, "alpha": 0.6})
            ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3,
                    label=name if name in (method, reference) else None, **style)
        ax.set_xscale("log")
        ax.set_title(f"{task}: linear probe", fontsize=8)
        ax.set_xlabel("label fraction", fontsize=7)
        ax.legend(fontsize=6)
    return fig
