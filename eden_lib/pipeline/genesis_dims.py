"""Stage ``genesis_dims``: Models Genesis' claim "3D beats 2D and 2.5D on 3D tasks" (MICCAI 2019 / MedIA 2021;
genesis_family.md §2.5 (b)).

The 2D encoders of ``claims.genesis_dims.methods`` (``scratch``: a random 2D encoder; ``models_genesis``: Genesis
pretrained on radiographs, the papers' "Genesis X-ray 2D") are applied to the 3D tasks
(:mod:`eden_lib.analysis.slices`, slices resampled to ``slice_size``):

- Nodule classification, the transfer stage's linear probe (its label fractions and seeds, so the label subsets are
  those of the 3D runs): ``2D`` = the mean of the features of every axial slice of a candidate cube; ``2.5D`` = the
  features of its three central orthogonal slices, concatenated.
- Nodule segmentation, fine-tuned per transfer seed: ``2D`` = a 2D U-Net (the method's pretrained U-Net where it
  exported one, else a fresh decoder on its encoder) trained on the axial slices of the training crops and applied
  slice by slice; ``2.5D`` = trained on the slices across all three axes and the three predictions averaged per
  voxel. ``seg_epochs`` epochs (the 3D runs use ``tasks.ct_nodule_segmentation``'s), the 3D task's loss, batch
  size and lr.

The 3D rows are the transfer stage's own runs of the same methods (``reports/metrics/transfer/<method>.json``).
Comparisons: each 3D model against every 2D and 2.5D variant, paired over seeds, Holm-corrected; the claim held
when ``models_genesis`` 3D beats every 2D / 2.5D variant on both tasks. Writes
``reports/metrics/claims/genesis_dims.json`` and ``reports/figures/claims/genesis_dims.png``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.analysis import slices as sl
from eden_lib.evaluation.statistics import compare_methods
from eden_lib.pipeline.checks import check_block

#: (task, protocol, metric) of the comparison per task: classification by linear probe, segmentation by fine-tuning
TASKS = {"ct_nodule_classification": ("linear_probe", "auc"), "ct_nodule_segmentation": ("finetune", "dice")}


#: ``claims.genesis_dims``: key -> (check, what is expected)
RULES = {
    "methods": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v), "a list of method names"),
    "slice_size": (lambda v: isinstance(v, int) and v > 0 and v % 32 == 0, "a positive multiple of 32"),
    "seg_epochs": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
}


def check_genesis_dims(block: dict) -> None:
    """``claims.genesis_dims`` (:func:`~eden_lib.pipeline.checks.check_block`)."""
    check_block("claims.genesis_dims", block, RULES)

def classification_features(encoder, cubes: np.ndarray, size: int, device: str) -> dict[str, np.ndarray]:
    """``{"2D": mean over axial slices (K, D), "2.5D": three central slices concatenated (K, 3D)}``."""
    from eden_lib.evaluation.finetune import predict

    k = len(cubes)
    axial = predict(encoder, encoder, sl.to_inputs(sl.slices(cubes, 2), size), device=device)
    central = [predict(encoder, encoder, sl.to_inputs(c, size), device=device) for c in sl.central_slices(cubes)]
    return {"2D": axial.reshape(k, -1, axial.shape[1]).mean(axis=1), "2.5D": np.concatenate(central, axis=1)}


def segment(net, cubes: np.ndarray, axes: tuple[int, ...], size: int, device: str) -> np.ndarray:
    """Probabilities ``(K, X, Y, Z)`` of a 2D network applied slice by slice across each of ``axes``, averaged."""
    from eden_lib.evaluation.finetune import predict

    out = np.zeros(cubes.shape, dtype=np.float32)
    for axis in axes:
        cut = sl.slices(cubes, axis)
        logits = predict(net, net, sl.to_inputs(cut, size), device=device)[:, 0]
        prob = 1 / (1 + np.exp(-sl.from_outputs(logits, cut.shape[1:])))
        out += sl.stack_slices(prob, len(cubes), axis)
    return out / len(axes)


def segmentation_runs(cfg: dict, method: str, ct, size: int, epochs: int) -> list[dict]:
    """2D and 2.5D fine-tuning runs on the nodule crops, one record per variant x seed x metric.

    They train on the cubes the 3D runs train on and validate, like them, on the held-out scans' cubes
    (:func:`~eden_lib.pipeline.transfer.ct_splits`), here slice by slice (slice Dice)."""
    from eden_lib.evaluation.finetune import FinetuneConfig, Validation, finetune
    from eden_lib.evaluation.segmentation import segmentation_metrics
    from eden_lib.pipeline.transfer import _dice_score, _run_finetunes, _seg_loss, _segmentation_unet_2d, ct_splits
    from eden_lib.seed import seed_everything

    if not ct.info.get("nodule_masks") or not len(ct.nodule_indices("train")) or not len(ct.nodule_indices("test")):
        return []
    train, val, test = ct_splits(cfg, ct.nodule_meta)
    x, y = np.asarray(ct.nodules, dtype=np.float32), np.asarray(ct.nodule_masks, dtype=np.float32)
    task, base = cfg["tasks"]["ct_nodule_segmentation"], cfg["transfer"]["finetune"]
    fcfg = FinetuneConfig(epochs, task.get("batch_size", base["batch_size"]), task.get("lr", base["lr"]),
                          base["weight_decay"], 1, cfg["pretrain"]["device"], base["evaluations"], base["patience"])

    def as_slices(rows: np.ndarray, axes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.cat([sl.to_inputs(sl.slices(x[rows], a), size) for a in axes])
        targets = torch.cat([(sl.to_inputs(sl.slices(y[rows], a), size) > 0.5).float() for a in axes])
        return inputs, targets

    def run(variant: str, axes: tuple[int, ...], seed: int) -> list[dict]:
        inputs, targets = as_slices(train, axes)
        val_x, val_y = as_slices(val, axes)
        seed_everything(seed)
        net = _segmentation_unet_2d(cfg, method, 1)
        finetune(net, _seg_loss, inputs, targets, fcfg, seed,
                 Validation(val_x, val_y.numpy(), _dice_score) if len(val) else None)
        prob = segment(net, x[test], axes, size, fcfg.device)
        return [{"method": method, "variant": variant, "task": "ct_nodule_segmentation", "protocol": "finetune",
                 "budget": f"{len(train)}_cubes", "seed": seed, "metric": metric, "value": float(value)}
                for metric, value in segmentation_metrics(prob, y[test]).items()]

    jobs = [lambda v=v, a=a, seed=seed: run(v, a, seed) for v, a in (("2D", (2,)), ("2.5D", (0, 1, 2)))
            for seed in cfg["transfer"]["seeds"]]
    return [r for records in _run_finetunes(cfg, jobs) for r in records]


def run_genesis_dims(cfg: dict) -> dict:
    """2D / 2.5D runs of every method of ``claims.genesis_dims.methods``, against their 3D runs; returns metrics."""
    from eden_lib.data import prepared
    from eden_lib.pipeline.transfer import _load_encoder_2d, classification_runs, ct_splits, has_2d, has_3d
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import read_json, write_json

    c = cfg["claims"]["genesis_dims"]
    check_genesis_dims(c)
    size, device = c["slice_size"], cfg["pretrain"]["device"]
    methods = [m for m in c["methods"] if m in cfg["active_methods"] and has_2d(m) and has_3d(m)]
    ct = prepared.load_ct()
    cubes = np.asarray(ct.candidates, dtype=np.float32)
    y = ct.candidate_meta["label"].to_numpy(dtype=np.float32).reshape(-1, 1)
    split = ct_splits(cfg, ct.candidate_meta)
    probe_only = {**cfg, "tasks": {**cfg["tasks"], "ct_nodule_classification": {
        **cfg["tasks"]["ct_nodule_classification"], "protocols": ["linear_probe"], "shots": []}}}
    records = []
    for method in methods:
        encoder = _load_encoder_2d(cfg, method)
        for variant, feats in classification_features(encoder, cubes, size, device).items():
            for r in classification_runs(probe_only, "ct_nodule_classification", ["nodule"], feats, None, y, split,
                                         None):
                records.append({"method": method, "variant": variant, **{k: v for k, v in r.items()
                                                                          if k != "per_class"}})
        records += segmentation_runs(cfg, method, ct, size, c["seg_epochs"])
        for r in read_json(paths.metrics_file("transfer", method))["runs"]:
            if r["task"] in TASKS and r["protocol"] == TASKS[r["task"]][0]:
                records.append({"method": method, "variant": "3D", **{k: v for k, v in r.items() if k != "per_class"}})
    runs = pd.DataFrame(records)
    metrics = {"profile": cfg["profile"], "methods": methods, "slice_size": size, "seg_epochs": c["seg_epochs"],
               "comparisons": comparisons(runs), "runs": records}
    metrics["sentence"] = verdict_sentence(metrics)
    write_json(metrics, paths.metrics_file("claims", "genesis_dims"))
    save(dims_figure(runs), paths.figures_dir("claims") / "genesis_dims.png")
    return metrics


def comparisons(runs: pd.DataFrame) -> list[dict]:
    """Per task x budget (the task's protocol and metric) and per 3D model: the 3D runs against every 2D / 2.5D
    variant of every method, paired over seeds, Holm-corrected within the 3D model's row."""
    out = []
    runs = runs.assign(arm=runs["method"] + " " + runs["variant"])
    for task, (protocol, metric) in TASKS.items():
        sub = runs[(runs["task"] == task) & (runs["protocol"] == protocol) & (runs["metric"] == metric)]
        for budget, g in sub.groupby("budget", sort=True):
            for ref in sorted(g.loc[g["variant"] == "3D", "arm"].unique()):
                arms = g[(g["variant"] != "3D") | (g["arm"] == ref)]
                cmp = compare_methods(arms[["arm", "seed", "value"]].rename(columns={"arm": "method"}), reference=ref)
                for row in cmp.itertuples():
                    out.append({"task": task, "budget": str(budget), "reference": ref, "arm": row.method,
                                "mean": row.mean, "std": row.std, "diff_ref_minus_arm": -row.diff,
                                "p_adjusted": row.p_adjusted, "stars": row.stars})
    return out


def verdict_sentence(metrics: dict) -> str:
    """Whether Models Genesis 3D beat every 2D and 2.5D variant on each task (Holm-corrected paired tests); a
    comparison whose runs do not vary over seeds (a linear probe on all labels) has no test and is counted apart."""
    ref = "models_genesis 3D"
    rows = [r for r in metrics["comparisons"] if r["reference"] == ref and r["arm"] != ref]
    if not rows:
        return "`models_genesis` (2D and 3D) is not active: the claim was not tested."
    parts = []
    for task in TASKS:
        mine = [r for r in rows if r["task"] == task]
        tested = [r for r in mine if r["p_adjusted"] is not None and np.isfinite(r["p_adjusted"])]
        won = [r for r in tested if r["diff_ref_minus_arm"] > 0 and r["p_adjusted"] < 0.05]
        lost = [r for r in tested if r["diff_ref_minus_arm"] < 0 and r["p_adjusted"] < 0.05]
        verdict = "held" if mine and len(won) == len(mine) else "did not hold" if lost else "was not supported"
        ahead = sum(r["diff_ref_minus_arm"] > 0 for r in mine)
        worst = min(mine, key=lambda r: r["diff_ref_minus_arm"]) if mine else None
        detail = "" if worst is None else (f"; smallest margin {worst['diff_ref_minus_arm']:+.3f} against "
                                           f"`{worst['arm']}` (budget {worst['budget']})")
        parts.append(f"{task.removeprefix('ct_nodule_')}: {verdict} (ahead in {ahead} of {len(mine)} comparisons "
                     f"with 2D / 2.5D arms, significantly in {len(won)}, significantly behind in {len(lost)}, "
                     f"{len(mine) - len(tested)} without a test because the runs did not vary over seeds{detail})")
    return "Models Genesis' claim that 3D beats 2D and 2.5D: " + "; ".join(parts) + "."


def dims_figure(runs: pd.DataFrame) -> Figure:
    """Mean ± std per method and variant (2D, 2.5D, 3D): classification AUC (linear probe, largest budget) and
    segmentation Dice (fine-tuning)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), layout="constrained")
    for ax, (task, (protocol, metric)) in zip(axes, TASKS.items()):
        sub = runs[(runs["task"] == task) & (runs["protocol"] == protocol) & (runs["metric"] == metric)]
        if sub.empty:
            continue
        budget = sorted(sub["budget"].astype(str).unique())[-1]
        sub = sub[sub["budget"].astype(str) == budget]
        stats = sub.groupby(["method", "variant"])["value"].agg(["mean", "std"]).reset_index()
        labels = [f"{m}\n{v}" for m, v in zip(stats["method"], stats["variant"])]
        colors = ["tab:red" if v == "3D" else "tab:orange" if v == "2.5D" else "tab:blue" for v in stats["variant"]]
        ax.bar(range(len(stats)), stats["mean"], yerr=stats["std"].fillna(0), color=colors, capsize=2)
        ax.set_xticks(range(len(stats)), labels, fontsize=7)
        ax.set(title=f"{task.removeprefix('ct_nodule_')} ({protocol}, {budget})", ylabel=metric)
    return fig
