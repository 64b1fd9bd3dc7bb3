"""Stage ``report``: every metrics file -> ``reports/REPORT.md`` (tables with mean ± std, corrected statistics,
figures, stage wall times). Everything is regenerated from the metrics files; nothing is typed by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.analysis.bias import mean_abs_gap
from eden_lib.evaluation.statistics import best_method, compare_methods
from eden_lib.reporting.io import read_json
from eden_lib.reporting.tables import format_comparison_table, markdown_table

CAVEATS = """\
> **Read this first.** This is a sanity study on procedurally generated anatomy at small compute (narrow networks,
> a few minutes of CPU pretraining per method). It checks that every method, protocol and statistic runs end to
> end and how the methods order under one protocol; it is **not** evidence about real data, and its numbers are
> not comparable with the papers'. Each method had the same pretraining budget in encoder passes (table below).
> The ± std covers fine-tuning / probe seeds only (one pretraining seed per method). Stars: Holm-corrected
> p-values within each table (`*` < 0.05, `**` < 0.01, `***` < 0.001); the papers' unpaired two-sample t-test is
> kept as a replication column.
"""


def transfer_runs(cfg: dict) -> pd.DataFrame:
    frames = []
    for method in cfg["active_methods"]:
        runs = read_json(paths.metrics_file("transfer", method))["runs"]
        frames.append(pd.DataFrame(runs).drop(columns=["per_class"]).assign(method=method))
    df = pd.concat(frames, ignore_index=True)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["setting"] = df["protocol"] + " " + df["budget"].astype(str)
    return df


def _sentence(cmp: pd.DataFrame, reference: str, metric: str) -> list[str]:
    lines = []
    for row in cmp.itertuples():
        if row.method == reference or not np.isfinite(row.diff):
            continue
        p = row.p_adjusted
        if not np.isfinite(p):
            lines.append(f"{row.method} differed from {reference} by {row.diff:+.3f} {metric}; no test: the runs do "
                         "not vary over seeds (a deterministic probe on the same labels).")
        elif p < 0.05:
            verdict = "better than" if row.diff > 0 else "worse than"
            lines.append(f"{row.method} was {verdict} {reference} by {row.diff:+.3f} {metric} (corrected p = {p:.3g}).")
        else:
            lines.append(f"{row.method} did not differ significantly from {reference} "
                         f"({row.diff:+.3f} {metric}, corrected p = {p:.3g}).")
    return lines


def reference_comparisons(cfg: dict, runs: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame, pd.DataFrame]]:
    """Per task x protocol x budget: (key, its runs, :func:`compare_methods` against ``report.reference``)."""
    reference = cfg["report"]["reference"]
    return [(key, g, compare_methods(g, reference=reference))
            for key, g in runs.groupby(["task", "protocol", "budget"], sort=True)]


def summary_section(cfg: dict, comparisons: list) -> list[str]:
    """One row per task x protocol x budget: each method's mean (stars: Holm-corrected difference to the reference)."""
    reference = cfg["report"]["reference"]
    rows = []
    for (task, protocol, budget), g, cmp in comparisons:
        cmp = cmp.set_index("method")
        row = {"task": task, "protocol": protocol, "budget": budget, "metric": g["metric"].iloc[0]}
        for method in cfg["active_methods"]:
            if method in cmp.index:
                stars = cmp.loc[method, "stars"] if method != reference else ""
                row[method] = f"{cmp.loc[method, 'mean']:.3f}{'' if stars in ('', 'n.s.') else ' ' + stars}"
        row["best"] = cmp["mean"].idxmax()
        rows.append(row)
    columns = ["task", "protocol", "budget", "metric", *cfg["active_methods"], "best"]
    return ["## Summary", "", f"Mean over seeds (and over classes); stars mark a Holm-corrected difference to "
            f"`{reference}` within each setting (details in the Transfer section).", "",
            markdown_table(pd.DataFrame(rows, columns=columns)), ""]


def transfer_section(cfg: dict, comparisons: list) -> list[str]:
    reference = cfg["report"]["reference"]
    out = ["## Transfer", ""]
    for (task, protocol, budget), g, cmp in comparisons:
        metric = g["metric"].iloc[0]
        out += [f"### {task} · {protocol} · budget {budget} ({metric}, mean over classes)", ""]
        out += [markdown_table(format_comparison_table(cmp)), ""]
        others = [m for m in g["method"].unique() if m != reference]
        if len(others) > 1:
            best = best_method(g, exclude=[reference])
            cmp_best = compare_methods(g, reference=best)
            out += [f"Against the best other method ({best}):", "",
                    markdown_table(format_comparison_table(cmp_best)), ""]
        out += ["- " + s for s in _sentence(cmp, reference, metric)] + [""]
    return out


def pretrain_section(cfg: dict) -> list[str]:
    rows = []
    for method in cfg["active_methods"]:
        m = read_json(paths.metrics_file("pretrain", method))
        for dims in ("2d", "3d"):
            if dims in m:
                rows.append({"method": method, "dims": dims, "budget (encoder passes)": m[dims]["budget_passes"],
                             "epochs": m[dims]["epochs"], "first loss": m[dims]["first_loss"],
                             "final loss": m[dims]["final_loss"],
                             "loss terms (first -> final)": ", ".join(
                                 f"{t} {v['first']:.3g} -> {v['final']:.3g}" for t, v in m[dims]["terms"].items())})
    out = ["## Pretraining", "", markdown_table(pd.DataFrame(rows), float_fmt=".4g"), ""]
    out += [f"![{m} loss](figures/pretrain/{m}.png)" for m in cfg["active_methods"]]
    return out + [""]


def embedding_section(cfg: dict) -> list[str]:
    m = read_json(paths.metrics_file("embedding", "landmarks"))
    order = [k for k in ("raw_pixels_pca", *cfg["active_methods"]) if k in m["methods"]]
    df = pd.DataFrame([{"method": k, **m["methods"][k]} for k in order])
    df = df[["method", "knn_accuracy", "silhouette", "matching_accuracy"]]
    return [
        "## Zero-shot landmark embeddings", "",
        f"{m['n_landmarks']} landmarks of {m['n_patients']} held-out patients; floors: `raw_pixels_pca`, `scratch`; "
        "ceiling: `supervised`. kNN: landmark identification accuracy (cross-validated); matching: cross-patient "
        "landmark correspondence accuracy.", "",
        markdown_table(df), "", "![landmark maps](figures/embedding/landmarks.png)", "",
    ]


def bias_section(cfg: dict) -> list[str]:
    m = read_json(paths.metrics_file("bias", "gender"))
    rows = [{"method": method, "training set": ts, **m["summary"][method][ts]}
            for method in cfg["active_methods"] for ts in ("male", "female", "balanced")]
    df = pd.DataFrame(rows)
    covers = ((df["gap_ci_low"] <= 0) & (df["gap_ci_high"] >= 0)).mean() if len(df) else float("nan")
    df["gap [95% CI]"] = [f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                          for g, lo, hi in zip(df["gap"], df["gap_ci_low"], df["gap_ci_high"])]
    df = df[["method", "training set", "auc_male", "auc_female", "gap [95% CI]"]]
    return [
        "## Gender bias", "",
        f"SynthCXR sex effect: {m['sex_effect']}. Mean over findings and seeds; gap = AUC(male) - AUC(female) with a "
        f"bootstrap 95 % CI (averaged over seeds). The CI covers 0 in {covers:.0%} of the rows.", "",
        markdown_table(df), "", "![bias](figures/bias/gender.png)", "",
    ]


def fidelity_section() -> list[str]:
    """The SynthCXR fidelity benchmark (STUDY §6.1): the sex-effect sweep of the bias study and the property checks."""
    path = paths.reports_dir() / "benchmarks" / "synth_cxr_fidelity.json"
    if not path.is_file():
        return []
    m = read_json(path)
    rows = []
    for effect, sets in m["sex_effect_sweep"].items():
        per = sets["balanced"]["per_finding"]
        row = {"sex_effect": effect, "mean abs gap": mean_abs_gap(sets)}
        row.update({f: f"{v['gap']:+.3f}{'' if v['gap_ci_low'] <= 0 <= v['gap_ci_high'] else ' †'}"
                    for f, v in per.items()})
        rows.append(row)
    checks = ", ".join(f"{k} {'yes' if ok else '**no**'}" for k, ok in m["checks"].items())
    return [
        "## SynthCXR fidelity (benchmark)", "",
        f"`{m['command'].strip()}`: a supervised ResNet-18 on {m['n_images']} synthetic radiographs per setting and "
        "gender-bias probes on its features (3 seeds). Per finding: AUC(male) - AUC(female) of the balanced probe "
        "(† = the 95 % CI excludes 0); mean abs gap over findings and the three training sets. The mechanisms push "
        "findings both ways, so the size of the gaps is what grows with `sex_effect`; at 0 they must vanish.", "",
        markdown_table(pd.DataFrame(rows)), "", f"Property checks: {checks}.", "",
    ]


def timing_section() -> list[str]:
    rows = [json.loads(p.read_text()) for p in sorted((paths.reports_dir() / "timing").glob("*.json"))]
    if not rows:
        return []
    df = pd.DataFrame(rows)
    df = df[["stage", "seconds", *(["train_seconds"] if "train_seconds" in df else []), "peak_rss_mb"]]
    # a stage resumed from complete checkpoints ran for seconds, but its pretraining took train_seconds earlier
    work = df[["seconds", *(["train_seconds"] if "train_seconds" in df else [])]].max(axis=1).sum()
    note = ("`train_seconds`: the pretraining epochs' own time, summed over runs (a stage resumed from complete "
            "checkpoints only re-exports the weights, so its wall time is short).")
    return ["## Compute", "", "Measured wall time of each stage's work (after kernel start-up and imports) and the "
            "peak resident memory of its process.", "", markdown_table(df, float_fmt=".1f"), "", note, "",
            f"Total work: {work / 60:.1f} minutes (each stage's seconds, or its train_seconds where larger), plus "
            "about 6 s per stage of kernel start-up, imports and DVC bookkeeping (measured on 2 CPU cores).", ""]


def build_report(cfg: dict) -> str:
    """Write ``reports/REPORT.md`` and return its text."""
    comparisons = reference_comparisons(cfg, transfer_runs(cfg))
    lines = [f"# Eden study report (profile `{cfg['profile']}`)", "", CAVEATS, ""]
    lines += summary_section(cfg, comparisons)
    lines += pretrain_section(cfg)
    lines += transfer_section(cfg, comparisons)
    lines += ["![transfer](figures/report/transfer.png)", ""]
    lines += embedding_section(cfg)
    lines += bias_section(cfg)
    lines += fidelity_section()
    lines += timing_section()
    text = "\n".join(lines)
    (paths.reports_dir() / "REPORT.md").write_text(text)
    return text
