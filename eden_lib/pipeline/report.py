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
from eden_lib.evaluation.statistics import stars as significance_stars
from eden_lib.reporting.html import write_html_report
from eden_lib.reporting.io import read_json
from eden_lib.reporting.methods import methods_section
from eden_lib.reporting.tables import (
    GENESIS_METHODS,
    GENESIS_METRICS,
    GENESIS_TASKS,
    MISSING,
    few_shot_table,
    format_comparison_table,
    genesis_table,
    markdown_table,
    mean_std_cell,
)

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
    """Every run of every active method, one row each (a method without runs of a task simply has no rows).

    ``setting`` (the x axis of the transfer figure) is ``"<protocol> <budget>"``, plus ``" <metric>"`` for a task
    with several metrics (nodule segmentation: dice, iou, keras_mean_iou).
    """
    frames = []
    for method in cfg["active_methods"]:
        runs = read_json(paths.metrics_file("transfer", method))["runs"]
        if runs:
            frames.append(pd.DataFrame(runs).drop(columns=["per_class"]).assign(method=method))
    df = pd.concat(frames, ignore_index=True)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    several = df.groupby("task")["metric"].transform("nunique") > 1
    df["setting"] = df["protocol"] + " " + df["budget"].astype(str) + np.where(several, " " + df["metric"], "")
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


def reference_comparisons(cfg: dict, runs: pd.DataFrame) -> list[tuple[tuple[str, str, str, str], pd.DataFrame,
                                                                          pd.DataFrame]]:
    """Per task x protocol x budget x metric: (key, its runs, :func:`compare_methods` against ``report.reference``).

    Only the methods that ran the task appear in its runs (3D-only methods have no CXR runs, 2D-only methods no CT
    runs); a setting the reference did not run is left out.
    """
    reference = cfg["report"]["reference"]
    return [(key, g, compare_methods(g, reference=reference))
            for key, g in runs.groupby(["task", "protocol", "budget", "metric"], sort=True)
            if reference in set(g["method"])]


def summary_section(cfg: dict, comparisons: list) -> list[str]:
    """One row per task x protocol x budget: each method's mean (stars: Holm-corrected difference to the reference)."""
    reference = cfg["report"]["reference"]
    rows = []
    for (task, protocol, budget, metric), g, cmp in comparisons:
        cmp = cmp.set_index("method")
        row = {"task": task, "protocol": protocol, "budget": budget, "metric": metric}
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
    for (task, protocol, budget, metric), g, cmp in comparisons:
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


def _skip_notes(methods: list[str], tasks: list[str]) -> list[str]:
    """``"- `task` not run for m1, m2: reason"`` lines from the ``skipped`` entries of the transfer metrics files."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for method in methods:
        for task, why in read_json(paths.metrics_file("transfer", method)).get("skipped", {}).items():
            if task in tasks:
                reasons.setdefault((task, why), []).append(method)
    return [f"- `{task}` not run for {', '.join(ms)}: {why}." for (task, why), ms in sorted(reasons.items())]


def genesis_section(cfg: dict, runs: pd.DataFrame) -> list[str]:
    """The Genesis family on the 3D tasks, as the papers tabulate it (genesis_family.md §2.4)."""
    active = cfg["active_methods"]
    methods = [m for m in GENESIS_METHODS if m in active]
    ceiling = "supervised" if "supervised" in active else None
    table = genesis_table(runs, methods + ([ceiling] if ceiling else []), reference="scratch", ceiling=ceiling)
    notes = _skip_notes(methods + ([ceiling] if ceiling else []), list(GENESIS_TASKS))
    if table.empty and not notes:
        return []
    text = (
        f"Rows: 3D task x protocol x budget x metric; columns: `scratch` (floor), the active Genesis-family methods"
        f"{', `supervised` (ceiling)' if ceiling else ''}. Cells: mean ± std over the fine-tuning seeds "
        f"{cfg['transfer']['seeds']} of **one pretraining seed** per method. Stars, as in the papers: their "
        "independent two-sample (Student) t-test against `scratch`, uncorrected (n.s. p >= 0.05, * p < 0.05, "
        "** p < 0.01, *** p < 0.001); the paired, Holm-corrected tests are in the Transfer section. Nodule "
        "segmentation: `finetune` fine-tunes the whole pretrained UNet3D (the papers' protocol), `finetune_encoder` "
        "loads only the pretrained encoder with a new decoder; Dice and IoU are foreground scores at threshold 0.5, "
        "averaged over test cubes; Keras mean IoU is the papers' \"IoU\": background-inclusive two-class mean IoU "
        "pooled over all test voxels and averaged over thresholds 0.5-0.95, far above the foreground IoU for small "
        "objects."
    )
    out = ["## Genesis family on the 3D tasks", "", text, ""] + _words_lines(cfg)
    out += [markdown_table(table), ""] if not table.empty else []
    return out + (notes + [""] if notes else [])


def _words_lines(cfg: dict) -> list[str]:
    """What TransVW / Semantic Genesis pretrained on: the ``self_discovery`` summary and each one's painting."""
    path = paths.metrics_file("self_discovery", "visual_words")
    if not path.is_file():
        return []
    words = read_json(path)
    recipes = ", ".join(f"`{m}` {cfg['methods'][m].get('painting', 'pytorch')}" for m in words["methods"])
    lines = [f"Visual words ({d}, stage `self_discovery`, shared): {w['n_classes']} classes x "
             f"{w['instances_per_class']} patients x {w['levels']} scales = {w['n_crops']} crops of "
             f"{'x'.join(map(str, w['out_size']))} from {w['n_patients']} training patients; auto-encoder loss "
             f"{w['autoencoder_loss']['first']:.3g} -> {w['autoencoder_loss']['final']:.3g}."
             for d, w in sorted(words.items()) if d in ("2d", "3d")]
    return lines + [f"Painting recipe (the released PyTorch noise fill or Keras constant fill): {recipes}.", ""]


def _first_final(first: float | None, final: float | None) -> str:
    return "" if first is None or final is None else f"{first:.4g} -> {final:.4g}"


def pretrain_section(cfg: dict) -> list[str]:
    rows = []
    for method in cfg["active_methods"]:
        m = read_json(paths.metrics_file("pretrain", method))
        for dims in ("2d", "3d"):
            if dims in m:
                rows.append({"method": method, "dims": dims, "budget (encoder passes)": m[dims]["budget_passes"],
                             "epochs": m[dims]["epochs"], "first loss": m[dims]["first_loss"],
                             "final loss": m[dims]["final_loss"],
                             "monitored loss (first -> final)": _first_final(m[dims].get("first_monitor_loss"),
                                                                             m[dims].get("final_monitor_loss")),
                             "loss terms (first -> final)": ", ".join(
                                 f"{t} {v['first']:.3g} -> {v['final']:.3g}" for t, v in m[dims]["terms"].items())})
    out = ["## Pretraining", "",
           "Training loss: the mean over an epoch's steps. Monitored loss: the same loss on "
           f"{cfg['pretrain']['monitor_samples']} fixed held-out samples (CXR validation split; 3D: training data) "
           "with the same augmentations after every epoch, in eval mode: comparable across epochs, where the "
           "training loss of queue and EMA methods is not (MoCo's negatives drift with the encoder and its first "
           "queue_size / batch_size steps see random keys; its monitored InfoNCE takes the other keys of the batch "
           "as negatives, chance ln B).", "",
           markdown_table(pd.DataFrame(rows), float_fmt=".4g"), ""]
    out += [f"![{m} loss](figures/pretrain/{m}.png)" for m in cfg["active_methods"]]
    return out + [""]


def embedding_section(cfg: dict) -> list[str]:
    m = read_json(paths.metrics_file("embedding", "landmarks"))
    order = [k for k in ("raw_pixels_pca", *cfg["active_methods"]) if k in m["methods"]]
    df = pd.DataFrame([{"method": k, **m["methods"][k]} for k in order])
    df["compositionality [95% CI]"] = [
        f"{r.compositionality_score:+.3f} [{r.compositionality_score_ci_low:+.3f}, {r.compositionality_score_ci_high:+.3f}]"
        for r in df.itertuples()]
    df = df.rename(columns={"compositionality_matched": "matched cos", "compositionality_mismatched": "mismatched cos"})
    df = df[["method", "knn_accuracy", "silhouette", "matching_accuracy", "matching_error_px", "matched cos",
             "mismatched cos", "compositionality [95% CI]"]]
    left_out = m.get("left_out_3d_only", [])
    return [
        "## Zero-shot landmark embeddings", "",
        f"{m['n_landmarks']} landmarks of {m['n_patients']} held-out patients; floors: `raw_pixels_pca`, `scratch`; "
        "ceiling: `supervised`. kNN: landmark identification accuracy (cross-validated); matching: cross-patient "
        "landmark correspondence by nearest embedding (accuracy, and mean distance in render pixels between the "
        "matched and the true landmark). Compositionality: cosine between a landmark patch's embedding and the mean "
        "embedding of its 2x2 parts, on centred features, minus the same with another patch's parts (bootstrap 95 % "
        "CI over patches); raw cosines of pooled features are high for any network, the difference is what a "
        "part-whole objective should raise." + (f" Left out (3D-only, no 2D encoder): {', '.join(left_out)}."
                                                 if left_out else ""), "",
        markdown_table(df), "", "![landmark maps](figures/embedding/landmarks.png)", "",
        "![part-whole cosines](figures/embedding/compositionality.png)", "",
    ]


def few_shot_runs(cfg: dict, structures: dict[str, list[str]]) -> pd.DataFrame:
    """Few-shot segmentation runs per structure group: ``(method, seed, shots, structure, value)``, the value the mean
    Dice of the group's structures (e.g. clavicle = left and right) read from the transfer metrics files."""
    rows = []
    for method in cfg["active_methods"]:
        for run in read_json(paths.metrics_file("transfer", method))["runs"]:
            if run["task"] != "cxr_segmentation" or run["protocol"] != "finetune":
                continue
            for group, members in structures.items():
                if all(m in run["per_class"] for m in members):
                    rows.append({"method": method, "seed": run["seed"], "shots": int(str(run["budget"]).split("_")[0]),
                                 "structure": group,
                                 "value": float(np.mean([run["per_class"][m] for m in members]))})
    return pd.DataFrame(rows, columns=["method", "seed", "shots", "structure", "value"])


def few_shot_section(cfg: dict) -> list[str]:
    """Adam's few-shot table: heart and clavicle Dice per shot count, each method against the best other one."""
    runs = few_shot_runs(cfg, {"heart": ["heart"], "clavicle": ["left_clavicle", "right_clavicle"]})
    if runs.empty:
        return []
    methods = [m for m in cfg["active_methods"] if m in set(runs["method"])]
    best = runs.groupby(["structure", "shots", "method"])["value"].mean().groupby("structure").max()
    unlearned = [s for s, v in best.items() if v < 0.01]
    note = [f"No method learned {', '.join(unlearned)} (every mean Dice < 0.01 at every shot count): at "
            f"{cfg['data']['image_size']} px such a structure is a few pixels thick and the few-shot runs' "
            f"{cfg['tasks']['cxr_segmentation']['min_steps']} steps do not find it, so those columns compare "
            "nothing.", ""] if unlearned else []
    return ["## Few-shot segmentation (Adam's protocol)", "",
            f"Dice on the test split after fine-tuning on n training radiographs (seeds {cfg['transfer']['seeds']}; "
            "for one seed the smaller sets are nested in the larger). Clavicle: mean of left and right. Cells: mean ± "
            "std; ▲ the best method of the column; stars: paired t-test of each other method against it, "
            "Holm-corrected within the column (n.s. = not different from the best).", "",
            markdown_table(few_shot_table(runs, methods)), "", *note]


def site_table(runs: pd.DataFrame, methods: list[str], reference: str) -> pd.DataFrame:
    """Rows: methods; columns: each site's task (``site_<name>``); cells: mean ± std over seeds with the
    Holm-corrected paired test against ``reference`` within the column (``runs``: one budget and protocol)."""
    table = pd.DataFrame({"method": methods})
    for task, g in runs.groupby("task", sort=False):
        g = g[g["method"].isin(methods)]
        if reference not in set(g["method"]):
            continue
        cmp = compare_methods(g, reference=reference).set_index("method")
        table[task.removeprefix("site_")] = [
            mean_std_cell(cmp.loc[m, "mean"], cmp.loc[m, "std"])
            + ("" if m == reference or cmp.loc[m, "stars"] in ("", "n.s.") else " " + cmp.loc[m, "stars"])
            if m in cmp.index else "–" for m in methods]
    return table


def site_section(cfg: dict, runs: pd.DataFrame) -> list[str]:
    """The Ark setting: every site's own classification task, each method's frozen features (linear probe)."""
    runs = runs[runs["task"].str.startswith("site_")]
    if runs.empty:
        return []
    reference = "ark" if "ark" in set(runs["method"]) else cfg["report"]["reference"]
    methods = [m for m in cfg["active_methods"] if m in set(runs["method"])]
    sites = read_json(paths.metrics_file("transfer", methods[0])).get("sites", [])
    lines = [f"- `{s['name']}`: {s['dataset']} layout, labels {', '.join(s['labels'])}" for s in sites]
    out = ["## Every site's task (the Ark setting)", "",
           "Each site's images were written in the on-disk format of a different real dataset, with its own label "
           "set, names and conventions, and read back by that dataset's loader; each site's task is a linear probe on "
           "the method's frozen features, trained on the site's training rows and scored (mean AUC over the site's "
           f"labels) on its test rows. Stars: paired t-test of each method against `{reference}` over the seeds, "
           "Holm-corrected within the column. `supervised` saw every site's images with the consolidated clean "
           "labels (a ceiling Ark's setting does not have); `ark` saw each site's own labels only; "
           "`supervised_site` is Ark's single-site baseline: Ark's recipe on one site's own labels (methods."
           "supervised_site.site), without the teacher and the other sites.", "", *lines, ""]
    for (protocol, budget), g in runs.groupby(["protocol", "budget"], sort=True):
        out += [f"### {protocol} · label fraction {budget}", "", markdown_table(site_table(g, methods, reference)),
                "", *site_sentences(g, reference), ""]
    return out


def site_sentences(runs: pd.DataFrame, reference: str) -> list[str]:
    """One generated line per site: the best mean, and where ``reference`` stands against the floor and ceiling."""
    lines = []
    for task, g in runs.groupby("task", sort=True):
        means = g.groupby("method")["value"].mean()
        parts = [f"best `{means.idxmax()}` {means.max():.3f}"]
        for other in ("scratch", "supervised_site", "supervised"):
            if other in means.index and reference in means.index and other != reference:
                parts.append(f"`{reference}` {means[reference] - means[other]:+.3f} vs `{other}`")
        lines.append(f"- {task.removeprefix('site_')}: " + "; ".join(parts) + ".")
    spread = runs.groupby("method")["value"].mean()
    ranked = ", ".join(f"`{k}` {v:.3f}" for k, v in spread.sort_values(ascending=False).items())
    lines.append(f"- Mean over sites and seeds: {ranked}.")
    return lines


ALICE_REFERENCES = ("scratch", "models_genesis")
ALICE_DEFAULT = "default (matched views, CASA)"


def _row_comparisons(df: pd.DataFrame, reference: str):
    """For each 3D task x protocol x budget x metric of ``df`` (tidy runs) where ``reference`` ran: the row's key
    cells and :func:`compare_methods` against ``reference`` indexed by method."""
    df = df[df["task"].isin(list(GENESIS_TASKS))]
    for (task, protocol, budget, metric), g in df.groupby(["task", "protocol", "budget", "metric"], sort=True):
        if reference in set(g["method"]) and g["method"].nunique() > 1:
            key = {"task": GENESIS_TASKS[task], "protocol": protocol, "budget": budget,
                   "metric": GENESIS_METRICS.get(metric, metric)}
            yield key, compare_methods(g[["method", "seed", "value"]], reference=reference).set_index("method")


def _cell(cmp: pd.DataFrame, name: str) -> str:
    return mean_std_cell(cmp.loc[name, "mean"], cmp.loc[name, "std"])


def _difference(cmp: pd.DataFrame, name: str, sign: int = 1) -> str:
    """``name - reference`` (``sign=-1``: ``reference - name``) with its Holm-corrected stars when significant."""
    stars = cmp.loc[name, "stars"]
    return f"{sign * cmp.loc[name, 'diff']:+.3f}" + ("" if stars in ("", "n.s.") else f" {stars}")


def alice_table(runs: pd.DataFrame, references: tuple[str, ...] = ALICE_REFERENCES) -> pd.DataFrame:
    """Alice on the 3D tasks: one row per task x protocol x budget x metric, the mean ± std of ``alice`` and each
    reference, and ``alice - reference`` with stars from the paired t-test over seeds, Holm-corrected over the
    references within the row."""
    rows = []
    for key, cmp in _row_comparisons(runs[runs["method"].isin(["alice", *references])], "alice"):
        row = {**key, "alice": _cell(cmp, "alice")}
        for ref in references:
            present = ref in cmp.index
            row[ref] = _cell(cmp, ref) if present else "–"
            row[f"alice - {ref}"] = _difference(cmp, ref, sign=-1) if present else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def alice_ablation_table(default_runs: pd.DataFrame, ablations: dict) -> pd.DataFrame:
    """Each ablation of ``reports/benchmarks/alice_ablations.json`` against the study's own ``alice`` runs (the
    default): one row per 3D task x protocol x budget x metric; cells ``mean ± std`` and, for a variant, its
    difference to the default with stars (paired t over seeds, Holm over the variants within the row)."""
    frames = [default_runs.assign(method=ALICE_DEFAULT)[["method", "task", "protocol", "budget", "metric", "seed",
                                                         "value"]]]
    for name, result in ablations.items():
        frames.append(pd.DataFrame(result["runs"]).assign(method=name))
    df = pd.concat(frames, ignore_index=True)
    df["budget"] = df["budget"].astype(str)
    rows = []
    for key, cmp in _row_comparisons(df, ALICE_DEFAULT):
        row = {**key, ALICE_DEFAULT: _cell(cmp, ALICE_DEFAULT)}
        for name in ablations:
            row[name] = f"{_cell(cmp, name)} ({_difference(cmp, name)})" if name in cmp.index else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def anatomy_lines() -> list[str]:
    """The view mining's quality per mode (``reports/metrics/anatomy/matching.json``): distance of each pair's key
    point from the query point's true anatomical counterpart (the synthetic landmarks' affine map)."""
    path = paths.metrics_file("anatomy", "matching")
    if not path.is_file():
        return []
    m = read_json(path)
    if "modes" not in m:
        return []
    rows = [{"views": mode, "pairs": v["n_pairs"],
             **({"median error (mm)": f"{v['errors']['median_mm']:.1f}", "mean (mm)": f"{v['errors']['mean_mm']:.1f}",
                 "within 10 mm": f"{v['errors']['within_10mm']:.2f}",
                 "within 20 mm": f"{v['errors']['within_20mm']:.2f}"} if v["errors"] else {})}
            for mode, v in m["modes"].items()]
    lm = m.get("landmark_match")
    return ["### View mining (stage `anatomy`)", "",
            f"A dense anatomical embedding trained on the {m['n_scans']} training scans (loss "
            f"{m['matcher']['loss_first']:.2f} -> {m['matcher']['loss_final']:.2f} over {m['matcher']['steps']} steps) "
            f"matches each query point of a scan in the previous scan; a match is kept at score > {m['threshold']} "
            f"({m['try_acceptance_rate']:.2f} of the tries passed). Error: distance (mm) of the key point from the "
            "query's true counterpart, through the landmarks' affine map; `oracle` uses that map, `random` is the "
            "control." + (f" Matching the {len(lm['per_landmark_median_mm'])} landmarks themselves: median "
                          f"{lm['median_mm']:.1f} mm." if lm else ""),
            "", markdown_table(pd.DataFrame(rows)), "", "![view pairs](figures/anatomy/view_pairs.png)", ""]


def alice_section(cfg: dict, runs: pd.DataFrame) -> list[str]:
    """Alice against scratch and Models Genesis on the 3D tasks, the view-mining quality and the ablations."""
    if "alice" not in cfg["active_methods"]:
        return []
    network = "MONAI's Swin-UNETR" if cfg["methods"]["alice"].get("backbone_3d") else "the study's UNet3D"
    out = ["## Alice on the 3D tasks", "",
           f"Alice pretrains {network} on two crops of two different scans centred on the same anatomy (the "
           "`anatomy` stage mines them with a dense anatomical embedding trained here). Cells: mean ± std over the "
           "fine-tuning seeds; `alice - x`: difference of the means, stars from the paired t-test over seeds, "
           "Holm-corrected over the two comparisons of the row. The FROC section has Alice's PE detection.", ""]
    out += anatomy_lines()
    table = alice_table(runs)
    if not table.empty:
        out += [markdown_table(table), ""]
    path = paths.reports_dir() / "benchmarks" / "alice_ablations.json"
    if path.is_file():
        ablations = read_json(path)
        default_runs = runs[runs["method"] == "alice"]
        out += ["### Ablations (`python benchmarks/alice_ablations.py`)", "",
                "Each variant changes one setting from params (" + "; ".join(
                    f"{name}: " + ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items())
                    for name, r in ablations.items())
                + "), pretrains again and reruns the 3D tasks with the same seeds; in brackets its difference to the "
                "default, paired over seeds, Holm-corrected over the variants of the row.", "",
                markdown_table(alice_ablation_table(default_runs, ablations)), ""]
    return out


def _ci(x: dict, digits: int = 3) -> str:
    return f"{x['mean']:.{digits}f} [{x['ci_low']:.{digits}f}, {x['ci_high']:.{digits}f}]"


def claim_metrics(name: str) -> dict | None:
    """The metrics a claim stage wrote (``reports/metrics/claims/<name>.json``), or ``None`` if it has not run."""
    path = paths.metrics_file("claims", name)
    return read_json(path) if path.is_file() else None


def _signed(x: float | None) -> str:
    """A signed difference, ``MISSING`` for a metrics file's null (NaN)."""
    return MISSING if x is None else f"{x:+.3f}"


def convergence_section() -> list[str]:
    """Claim: faster convergence and annotation efficiency (TransVW), from ``claims/convergence.json``."""
    m = claim_metrics("convergence")
    if m is None:
        return []
    ref = m["reference"]
    rows = []
    for name, t in m["time"].items():
        conv, eff = m["convergence"].get(name), m["efficiency"].get(name)
        row = {"method": name, f"time to {m['fraction']:.0%} (fraction of the run)":
               f"{mean_std_cell(t['mean'], t['std'])} ({t['n']} runs)"}
        for label, c in ((f"time, method - {ref}", conv), (f"reduced-budget score, method - {ref}", eff)):
            row[label] = "" if c is None or not c["n"] else (
                f"{_signed(c['diff'])} [{_signed(c['ci_low'])}, {_signed(c['ci_high'])}] "
                f"{significance_stars(c.get('p_holm'))}")
        rows.append(row)
    return ["## Claim: faster convergence and annotation efficiency (TransVW)", "",
            "Every fine-tuning run of the transfer stage is validated at `transfer.finetune.evaluations` evenly spaced "
            "points (CXR: the validation split; CT: held-out training scans). Time to "
            f"{m['fraction']:.0%}: the fraction of a run's steps after which its validation score first reaches "
            f"{m['fraction']:.0%} of its final score above chance (AUC 0.5, Dice 0); lower is faster. Reduced-budget "
            f"score: the test score at label fractions below 1 and k-shot budgets. Both are paired with `{ref}` (the "
            "floor) over shared task x protocol x budget x seed runs (95 % t CI), stars after Holm over methods. The "
            "std covers fine-tuning seeds and tasks.", "",
            markdown_table(pd.DataFrame(rows)), "", f"**Verdict.** {m['sentence']}", "",
            "![convergence](figures/claims/convergence.png)", "",
            "![budgets](figures/claims/convergence_budgets.png)", ""]


def ark_sites_section() -> list[str]:
    """Claim: "more data sets give better models" (Ark), from ``reports/metrics/claims/ark_sites.json``."""
    m = claim_metrics("ark_sites")
    if m is None:
        return []
    rows = [{"sites Ark trained on": k, "mean AUC [95 % CI]": _ci(v),
             **{f"{site}'s task": f"{m['per_site'][k][site]:.3f}" for site in m["per_site"][k]}}
            for k, v in m["per_k"].items()]
    floors = [f"- Ark on all {m['site_counts'][-1]} sites against `{name}` ({_ci(f['other'])}): "
              f"{f['diff']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}], paired t over site labels, "
              f"p = {f['p']:.3g}." for name, f in m["floors"].items()]
    return ["## Claim: more data sets give better models (Ark)", "",
            "Ark pretrained on the first k sites (`claims.ark_sites.site_counts`, the same pretraining budget for "
            "every k), each model scored on every site's own task (linear probe, the transfer stage's seeds and "
            f"label fractions); the unit is one label of one site ({m['units']} units), its AUC averaged over seeds "
            "and label fractions. CIs: t intervals over units. Floor `scratch`, control `supervised_site` (one site, "
            "no accrual), both from the transfer stage.", "",
            markdown_table(pd.DataFrame(rows)), "", *floors, "", f"**Verdict.** {m['sentence']}", "",
            "![ark sites](figures/claims/ark_sites.png)", ""]


def interpolation_section() -> list[str]:
    """Claim: emergent interpolation and extrapolation (Adam-v2), from ``reports/metrics/claims/interpolation.json``."""
    m = claim_metrics("interpolation")
    if m is None:
        return []
    ref = m["reference"]
    rows = []
    for name, per in m["methods"].items():
        row = {"method": name}
        for mode in ("interpolate", "extrapolate"):
            s = per[mode]
            row[mode] = f"{s['score']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
            t = m["comparisons"].get(mode, {}).get(name)
            row[f"{ref} - method ({mode})"] = "" if t is None else f"{t['diff']:+.3f}" + (
                "" if t["stars"] in ("", "n.s.") else f" {t['stars']}")
        rows.append(row)
    return ["## Claim: emergent interpolation and extrapolation (Adam-v2)", "",
            f"{m['n_pairs']} landmark pairs (A, B) of the embedding stage's test patients; for t in {m['t']} the patch "
            "at C = (1 - t) A + t B is compared with (1 - t) E_A + t E_B and the patch at D = B + t (B - A) with "
            "E_B + t (E_B - E_A). Score: matched minus mismatched cosine on centred features (control: the true "
            "patch of another pair), mean over t, 95 % bootstrap CI over pairs; the floor `raw_pixels_pca` embeds the "
            f"pixels. Last columns: `{ref}` minus the method, paired t over pairs, Holm-corrected.", "",
            markdown_table(pd.DataFrame(rows)), "", f"**Verdict.** {m['sentence']}", "",
            "![interpolation](figures/claims/interpolation.png)", ""]


def separability_section() -> list[str]:
    """Claims: separability and feature reuse (CAiD), from ``reports/metrics/claims/separability.json``."""
    m = claim_metrics("separability")
    if m is None:
        return []
    sep = pd.DataFrame([{"method": k, "mean distance": f"{v['mean']:.4f}", "median": f"{v['median']:.4f}",
                         "quartiles": f"{v['quartiles'][0]:.4f} - {v['quartiles'][1]:.4f}"}
                        for k, v in m["separability"].items()])
    tests = [f"- `{k}`: mean distance {t['diff']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}], bootstrap p = "
             f"{t['p']:.3g}." for k, t in m["separability_tests"].items()]
    stages = ["stem", "layer1", "layer2", "layer3", "layer4"]
    reuse = pd.DataFrame([{"method": k, **{st: f"{s['cka']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
                                           for st, s in zip(stages, per)}} for k, per in m["reuse"].items()])
    t = m["reuse_test"]
    reuse_line = [] if t is None else [
        f"- `{m['method']} - {m['base']}`, mean CKA over stages: {t['diff']:+.3f} [{t['ci_low']:+.3f}, "
        f"{t['ci_high']:+.3f}], bootstrap p = {t['p']:.3g}."]
    return ["## Claim: separability and feature reuse (CAiD)", "",
            f"Separability: cosine distances between the frozen features of every pair of {m['n_images']} test "
            "radiographs (the transfer stage's features). Feature reuse: linear CKA between the pretrained and the "
            "fine-tuned encoder (CXR classification, the transfer stage's fine-tuning, seed 0) per backbone stage, "
            "on the same test images; `scratch` is the floor (nothing to reuse). CIs: bootstrap over images.", "",
            markdown_table(sep), "", *tests, "", markdown_table(reuse), "", *reuse_line, "",
            *separability_ablation_lines(m), f"**Verdict.** {m['sentence']}", "",
            "![separability](figures/claims/separability.png)", ""]


def separability_ablation_lines(m: dict) -> list[str]:
    """CAiD's transfer ablation (the ``ablation`` block of ``claims/separability.json``): test AUC per method and
    number k of frozen stages, the drop from k = 0, and the claim's method against its base per k."""
    a, claim, base = m["ablation"], m["method"], m["base"]

    def cell(c: dict, signed: bool = False) -> str:
        ci = "" if c["ci_low"] is None or c["ci_high"] is None else (
            f" [{_signed(c['ci_low'])}, {_signed(c['ci_high'])}]" if signed
            else f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]")
        return (_signed(c["mean"]) if signed else mean_std_cell(c["mean"], c.get("std"))) + ci

    ks = [str(k) for k in a["freeze_stages"]]
    rows = [{"method": name, **{f"AUC, k = {k}": cell(per_k[k]) for k in ks},
             **{f"drop to k = {k}": cell(a["drop"][name][k], signed=True) for k in ks[1:]}}
            for name, per_k in a["auc"].items()]
    tests = [f"- k = {k}: drop of `{claim}` minus drop of `{base}` {_signed(t['diff'])} [{_signed(t['ci_low'])}, "
             f"{_signed(t['ci_high'])}], paired t over {t['n']} seeds, Holm p = "
             f"{MISSING if t['p_holm'] is None else format(t['p_holm'], '.3g')} {significance_stars(t['p_holm'])}"
             for k, t in a["tests"].items()]
    check = a["k0_max_abs_diff"]
    return ["Transfer ablation: the CXR classifier fine-tuned as in the transfer stage with the first k backbone "
            "stages (stem, layer1, ...) frozen (no gradient, batch-norm statistics kept), every fine-tuning seed "
            f"({len(a['seeds'])}); k = 0 are the transfer stage's runs"
            + ("" if check is None else f" (the reuse runs above repeat their first seed: max |ΔAUC| = {check:.2g})")
            + ". Drop: AUC at k = 0 minus AUC at k, paired over seeds; `scratch` is the floor, `supervised` the "
            "control. CIs: t intervals over seeds.", "", markdown_table(pd.DataFrame(rows)), "", *tests, ""]


def localisation_section() -> list[str]:
    """Claim: lesion localisation from image-level labels (DiRA), from ``reports/metrics/claims/localisation.json``."""
    m = claim_metrics("localisation")
    if m is None:
        return []

    def ci(c: dict) -> str:
        return MISSING if c["mean"] is None else f"{c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"

    def diff(d: dict) -> str:
        return f"{_signed(d['diff'])} [{_signed(d['ci_low'])}, {_signed(d['ci_high'])}], p = {d['p']:.3g}"

    order = [n for n in (*m["methods"], m["floor"], m["control"]) if n in m["scores"]]
    rows = []
    for name in order:
        s, auc = m["scores"][name], m["test_auc"].get(name)
        rows.append({"method": name, "pointing game [95 % CI]": ci(s["pointing"]), "mean IoU [95 % CI]": ci(s["iou"]),
                     "test AUC": "" if auc is None else mean_std_cell(auc["mean"], auc["std"])})
    findings = list(m["boxes_per_finding"])
    per_finding = pd.DataFrame([{"method": name, "score": score, **{f"{f} ({m['boxes_per_finding'][f]})":
                                                                     ci(s["per_finding"][f][score]) for f in findings}}
                                for name in order for s in [m["scores"][name]] for score in ("pointing", "iou")])
    beat = {key: [n for n in order if n in m["controls"] and m["controls"][n][key]["pointing"]["ci_low"] > 0]
            for key in ("random", "prior")}
    controls = [f"- Beat the {label} on the pointing game (paired bootstrap CI above 0): "
                f"{', '.join(f'`{n}`' for n in beat[key]) or 'none'}." for key, label in
                (("random", f"floor `{m['floor']}`"), ("prior", f"control `{m['control']}`"))]
    tests = [f"- `{k}`: pointing game {diff(t['pointing'])}; mean IoU {diff(t['iou'])}."
             for k, t in m["claim_tests"].items()]
    lost = m["dropped"]
    dropped = (f"Boxes left out: {lost['not a prepared test image']} not on a prepared test image, "
               f"{sum(lost['finding not in data.cxr.labels'].values())} of findings the classifier does not have "
               f"({', '.join(lost['finding not in data.cxr.labels']) or 'none'}).")
    return ["## Claim: lesion localisation from image-level labels (DiRA)", "",
            "Each method is fine-tuned on CXR classification as in the transfer stage (every fine-tuning seed); the "
            f"Grad-CAM map of a box's finding (encoder stage {m['stage']}, upsampled to {m['image_size']} px) is "
            f"scored against the box on {m['n_boxes']} boxes of {m['n_images']} test images (`BBox_List_2017.csv`). "
            "Pointing game: the map's peak inside the box"
            + (f" (tolerance {m['tolerance']:g} px)" if m["tolerance"] else "") + " (a map without a positive value "
            "misses; tied peaks: the one nearest the centre); IoU: the map at or above "
            f"{m['threshold']:g} of its maximum against the box. Per box the seeds are averaged; CIs and paired tests "
            f"bootstrap the boxes. Floor `{m['floor']}`: uniform noise on Grad-CAM's grid, upsampled alike; control "
            f"`{m['control']}`: the mean box of the same finding on other patients' images (no image used).", "",
            markdown_table(pd.DataFrame(rows)), "", *controls, "", *tests, "", dropped, "",
            markdown_table(per_finding), "", f"**Verdict.** {m['sentence']}", "",
            "![localisation](figures/claims/localisation.png)", ""]


def genesis_dims_section() -> list[str]:
    """Claim: 3D beats 2D and 2.5D on 3D tasks (Models Genesis), from ``reports/metrics/claims/genesis_dims.json``."""
    m = claim_metrics("genesis_dims")
    if m is None:
        return []
    rows = [{"task": r["task"].removeprefix("ct_nodule_"), "budget": r["budget"], "3D model": r["reference"],
             "against": r["arm"], "mean ± std": mean_std_cell(r["mean"], r["std"]),
             "3D - it": "" if r["arm"] == r["reference"] else f"{r['diff_ref_minus_arm']:+.3f}" + (
                 "" if r["stars"] in ("", "n.s.") else f" {r['stars']}")}
            for r in m["comparisons"]]
    return ["## Claim: 3D beats 2D and 2.5D on 3D tasks (Models Genesis)", "",
            f"The 2D encoders of {', '.join(f'`{x}`' for x in m['methods'])} (`models_genesis` 2D is Genesis "
            "pretrained on radiographs, the papers' \"Genesis X-ray 2D\"; `scratch` 2D is random) on the 3D "
            f"tasks, slices resampled to {m['slice_size']} px: `2D` = every axial slice (classification: mean "
            "feature; segmentation: a 2D U-Net slice by slice), `2.5D` = the three orthogonal slices (classification: "
            "their features concatenated; segmentation: trained on all three orientations, predictions averaged). "
            "Classification: the transfer stage's linear probe, label fractions and seeds; segmentation: "
            f"{m['seg_epochs']} fine-tuning epoch(s) against the 3D runs' task settings. `3D - it`: paired t over "
            "seeds, Holm-corrected within each 3D model's block.", "",
            markdown_table(pd.DataFrame(rows)), "", f"**Verdict.** {m['sentence']}", "",
            "![genesis dims](figures/claims/genesis_dims.png)", ""]


def _mean_ci_cell(x: dict | None) -> str:
    """``mean [low, high]``, the mean alone where the interval is undefined (one seed), ``MISSING`` for no runs."""
    if x is None or x.get("mean") is None:
        return MISSING
    if x.get("ci_low") is None or x.get("ci_high") is None:
        return f"{x['mean']:.3f}"
    return _ci(x)


def _test_cell(t: dict) -> str:
    """A paired difference with its CI and Holm stars; "no variance" where the seeds repeat one value."""
    if t["p_holm"] is None:
        return f"{_signed(t['diff'])} (no variance over seeds)"
    return f"{_signed(t['diff'])} [{_signed(t['ci_low'])}, {_signed(t['ci_high'])}] {significance_stars(t['p_holm'])}"


def domain_transfer_section() -> list[str]:
    """Claim: domain-adaptive pretraining bridges the domain gap (BTL), from ``claims/domain_transfer.json`` and the
    natural source's ``natural_source/source.json``."""
    m = claim_metrics("domain_transfer")
    if m is None:
        return []
    keys = m["evaluations"]
    rows = [{"condition": c, **{k: _mean_ci_cell(m["summary"][k].get(c)) for k in keys}} for c in m["conditions"]]
    tests = {}
    for k in keys:
        for t in m["comparisons"][k]:
            tests.setdefault((t["condition"], t["against"]), {"comparison": f"{t['condition']} - {t['against']}",
                                                               "family": t["family"]})[k] = _test_cell(t)
    source_path = paths.metrics_file("natural_source", "source")
    source = []
    if source_path.is_file():
        s = read_json(source_path)
        accuracy = ", ".join(f"`{name}` {v['probe_accuracy']:.3f} (read back as the `{v['layout']}` layout)"
                             for name, v in s["models"].items())
        source = [f"Source: SynthNatural, {s['n_images']} RGB images of {len(s['shapes'])} shapes "
                  f"({', '.join(s['shapes'])}) on {', '.join(s['textures'])} backgrounds. Linear-probe shape accuracy "
                  f"on {s['n_test']} held-out images: {accuracy}; a random RGB encoder "
                  f"{s['probe_accuracy_random_encoder']:.3f}, chance {s['chance']:.3f}.", ""]
    passes = {name: c["passes"] for name, c in m["continual"].items()}
    absent = ", ".join(f"`{x}`" for x in m["missing_references"])
    missing = [f"Not in this run (not active or no transfer metrics): {absent}.", ""] if absent else []
    return ["## Claim: domain-adaptive pretraining bridges the domain gap (BTL)", "",
            "Two source models pretrained on a natural-image stand-in for ImageNet (stage `natural_source`): "
            "`supervised` on the shape classes and `moco_v2`, on the study's encoder with an RGB stem, saved as a "
            "torchvision state dict and a MoCo release and loaded here through `load_pretrained` (layout detected, "
            "heads dropped, the RGB stem summed to grey). `natural_*`: transferred directly; `natural_*_cxr`: after "
            "continual pretraining on SynthCXR with the same method "
            f"({', '.join(f'{k} {v} image-passes' for k, v in passes.items())}). All are scored on CXR classification "
            "exactly as the transfer stage scores the methods (mean AUC; fine-tuning and linear probes over the "
            "transfer seeds); the floor `scratch` and the ceiling `supervised` (in-domain, the positive control) are "
            "the transfer stage's own runs on the same seeds and label subsets. CIs: t intervals over seeds. "
            "Differences: paired t over seeds, stars after Holm over the comparisons of one evaluation (the linear "
            "probe on all labels is deterministic: no variance, no test).", "",
            *source, *missing, markdown_table(pd.DataFrame(rows)), "",
            markdown_table(pd.DataFrame(list(tests.values())).fillna(MISSING)), "",
            f"**Verdict.** {m['sentence']}", "", "![domain transfer](figures/claims/domain_transfer.png)", ""]


def froc_section(cfg: dict) -> list[str]:
    """CAD-PE style detection: sensitivity at 1, 2, 4 FP/scan per 3D initialisation against scratch, the curves."""
    path = paths.metrics_file("froc", "pe_detection")
    if not path.is_file():
        return []
    m = read_json(path)
    keys = [k for k in next(iter(m["summary"].values())) if k != "froc_score"] + ["froc_score"]
    order = ["scratch", *[x for x in cfg["active_methods"] if x != "scratch" and x in m["summary"]]]
    rows = []
    for method in order:
        per = m["summary"][method]
        row = {"method": method}
        for key in keys:
            v = per[key]
            stars = "" if method == "scratch" or v["stars"] in (None, "", "n.s.") else " " + v["stars"]
            label = "mean" if key == "froc_score" else f"at {key.removeprefix('fp_').replace('p', '.')} FP/scan"
            row[label] = (
                mean_std_cell(v["mean"], v["std"] if v["std"] is not None else float("nan")) + stars)
        rows.append(row)
    best = max(m["summary"], key=lambda k: m["summary"][k]["froc_score"]["mean"])
    sentences = []
    for method in order:
        v = m["summary"][method]["froc_score"]
        if method == "scratch":
            continue
        p_adj = v["p_adjusted"]
        verdict = ("not significantly different from" if p_adj is None or p_adj >= 0.05 else
                   "better than" if v["diff"] > 0 else "worse than")
        sentences.append(f"- `{method}` was {verdict} `scratch` ({v['diff']:+.3f} mean sensitivity"
                         + (f", corrected p = {p_adj:.3g})." if p_adj is not None else ", no test)."))
    skipped = ", ".join(sorted(m.get("skipped", {})))
    return [
        "## Pulmonary embolism detection (CAD-PE FROC)", "",
        f"A UNet3D detector per 3D initialisation, fine-tuned on {m['n_train_scans']} CTPA training scans "
        f"({'SynthCTPA written and read back in the CAD-PE layout' if m['source'] == 'synthetic' else 'CAD-PE'}), "
        f"run on {m['n_test_scans']} test scans with {m['n_test_emboli']} emboli; connected components of the "
        "probability map become markers scored by their maximum probability; per-embolus sensitivity with the "
        "challenge's hit rule (a marker counts only inside an embolus, repeat hits are ignored, others are false "
        f"positives{', tolerance ' + str(m['tolerance_mm']) + ' mm' if m['tolerance_mm'] else ''}). Cells: mean ± "
        f"std over seeds {cfg['transfer']['seeds']}; stars: paired t-test against `scratch`, Holm-corrected within "
        f"the column. Best mean: `{best}`." + (f" Not run (no 3D network): {skipped}." if skipped else ""), "",
        markdown_table(pd.DataFrame(rows)), "", *sentences, "", "![froc](figures/froc/froc_curves.png)", "",
    ]


def bias_section(cfg: dict) -> list[str]:
    """The gender-bias study: per-sex AUCs and male - female gaps per training set, Ark's matched-minus-opposite
    significance per method and test sex with one sentence per method, and the box plots."""
    from eden_lib.analysis.bias import bias_sentence, significance_table

    m = read_json(paths.metrics_file("bias", "gender"))
    rows = [{"method": method, "training set": ts, **m["summary"][method][ts]}
            for method in cfg["active_methods"] if method in m["summary"] for ts in ("male", "female", "balanced")]
    left_out = m.get("left_out_3d_only", [])
    df = pd.DataFrame(rows)
    covers = ((df["gap_ci_low"] <= 0) & (df["gap_ci_high"] >= 0)).mean() if len(df) else float("nan")
    df["gap [95% CI]"] = [f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                          for g, lo, hi in zip(df["gap"], df["gap_ci_low"], df["gap_ci_high"])]
    df = df[["method", "training set", "auc_male", "auc_female", "gap [95% CI]"]]
    mmo = m["matched_minus_opposite"]
    methods = [method for method in cfg["active_methods"] if method in mmo]
    return [
        "## Gender bias", "",
        f"SynthCXR sex effect: {m['sex_effect']}. Mean over findings and seeds; gap = AUC(male) - AUC(female) with a "
        f"bootstrap 95 % CI (averaged over seeds). The CI covers 0 in {covers:.0%} of the rows."
        + (f" Left out (3D-only, no radiograph features): {', '.join(left_out)}." if left_out else ""), "",
        markdown_table(df), "",
        "### Matched minus opposite (Ark's definition of bias)", "",
        (f"On the test patients of one sex: AUC of the probe trained on that sex minus AUC of the probe trained on "
         f"the other sex, on the same patients (positive = bias). {m['n_seeds']} seeds; diff: mean over seeds; CI and "
         "two-sided bootstrap p from the seeds' test-patient bootstrap replicates pooled, which adds the seeds' spread "
         "of training subsamples (a bootstrap over test patients alone does not see how the probes vary with the "
         f"training sample, so one seed's p-values run small). `significant`: findings with Holm-corrected p < {m['alpha']:g}, Holm over findings x test sexes "
         "within each method; the mean over findings is not in the family. The smallest attainable p is "
         f"{2 / (1 + m['n_seeds'] * m['n_bootstrap']):.2g} (2 / (1 + pooled replicates)); Holm multiplies the "
         "smallest by the number of tests."), "",
        markdown_table(significance_table(mmo, methods)), "",
        *[bias_sentence(method, mmo[method]) for method in methods], "",
        "![bias](figures/bias/gender.png)", "",
        ("Box plots: per-finding AUC on female (top) and male (bottom) test patients of the female-trained, "
         "male-trained and balanced probes; each box is the distribution over seeds x findings."), "",
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
    runs = transfer_runs(cfg)
    comparisons = reference_comparisons(cfg, runs)
    lines = [f"# Eden study report (profile `{cfg['profile']}`)", "", CAVEATS, ""]
    lines += summary_section(cfg, comparisons)
    lines += methods_section(cfg)
    lines += pretrain_section(cfg)
    lines += genesis_section(cfg, runs)
    lines += transfer_section(cfg, comparisons)
    lines += ["![transfer](figures/report/transfer.png)", ""]
    lines += few_shot_section(cfg)
    lines += site_section(cfg, runs)
    lines += alice_section(cfg, runs)
    lines += convergence_section()
    lines += ark_sites_section()
    lines += interpolation_section()
    lines += separability_section()
    lines += localisation_section()
    lines += genesis_dims_section()
    lines += domain_transfer_section()
    lines += froc_section(cfg)
    lines += embedding_section(cfg)
    lines += bias_section(cfg)
    lines += fidelity_section()
    lines += timing_section()
    text = "\n".join(lines)
    (paths.reports_dir() / "REPORT.md").write_text(text)
    write_html_report(paths.reports_dir() / "REPORT.md", paths.reports_dir() / "report.html")
    return text
