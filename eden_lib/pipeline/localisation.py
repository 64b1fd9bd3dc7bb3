"""Stage ``localisation``: DiRA's claim "lesion localisation from image-level labels" (Haghighi et al., CVPR 2022;
dira_caid_transfer_alice_cadpe.md §1.5: Grad-CAM heat-maps of fine-tuned ChestX-ray14 classifiers against the
ChestX-ray14 bounding boxes; the paper shows them qualitatively, the protocol here is ours).

Each method of ``claims.localisation.methods`` (active, with a 2D encoder) is fine-tuned on CXR classification exactly
as the transfer stage fine-tunes it (:func:`~eden_lib.pipeline.transfer.finetune_classifier`: the same label subset,
validation rows and seeds ``transfer.seeds``). Then, for every box of ``BBox_List_2017.csv`` on a prepared test image
(read through :func:`~eden_lib.data.chestxray14.read_bbox_list` from the ChestX-ray14 root prepare used, scaled from
the stored PNG to the classifier's input), the Grad-CAM map of the box's finding (encoder stage
``claims.localisation.stage``) is scored by the pointing game and by IoU (:mod:`eden_lib.analysis.localisation`).
Per box, the scores are averaged over seeds; CIs bootstrap the boxes. Floor: random maps of Grad-CAM's form; control:
an image-free prior, the mean box of the same finding on other patients' images. The claim: ``method`` (DiRA) against
``base`` (MoCo-v2) and ``scratch``, paired over boxes.

Writes ``reports/metrics/claims/localisation.json`` and ``reports/figures/claims/localisation.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eden_lib.pipeline.checks import check_block, int_at_least

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: ``claims.localisation``: key -> (check, what is expected)
RULES = {
    "method": (lambda v: isinstance(v, str), "a method name"),
    "base": (lambda v: isinstance(v, str), "a method name"),
    "methods": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(m, str) for m in v),
                "a non-empty list of method names"),
    "stage": (lambda v: v in (1, 2, 3, 4) and not isinstance(v, bool), "1, 2, 3 or 4 (encoder layer1 ... layer4)"),
    "threshold": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
                  "a fraction in (0, 1] of the map's maximum"),
    "tolerance": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                  "a number of pixels >= 0"),
    "n_bootstrap": (int_at_least(10), "an integer >= 10"),
}

#: the floor and the control, scored like the methods
RANDOM, PRIOR = "random map", "prior (no image)"
SCORES = ("pointing", "iou")


def check_localisation(block: dict) -> None:
    """``claims.localisation`` (:func:`~eden_lib.pipeline.checks.check_block`)."""
    check_block("claims.localisation", block, RULES)


def box_table(cfg: dict, cxr, root: Path) -> tuple[pd.DataFrame, dict]:
    """The boxes of ``root``'s ``BBox_List_2017.csv`` on prepared test images, for findings the classifier has.

    Coordinates go from the stored PNG (its own width and height) to the prepared image (``R x R``) to the classifier
    input (``data.image_size``). Returns the boxes (``image_index, finding, row`` in the prepared arrays, ``cls`` the
    finding's column of ``cxr.labels``, ``patient_id``, ``x, y, w, h`` at the input size) and the dropped counts.
    """
    from eden_lib.data.chestxray14 import BBOX_LIST, read_bbox_list, stored_sizes

    boxes = read_bbox_list(Path(root) / BBOX_LIST)
    meta = cxr.meta
    test = meta.index[meta["split"] == "test"]
    row_of = pd.Series(test, index=meta.loc[test, "image_index"].to_numpy())
    labels = list(cxr.info["labels"])
    in_test = boxes["Image Index"].isin(row_of.index)
    known = boxes["Finding Label"].isin(labels)
    dropped = {"not a prepared test image": int((~in_test).sum()),
               "finding not in data.cxr.labels": {k: int(v) for k, v in
                                                  boxes.loc[in_test & ~known, "Finding Label"].value_counts().items()}}
    boxes = boxes[in_test & known].reset_index(drop=True)
    names = boxes["Image Index"].to_numpy()
    unique = pd.unique(names)
    wh = pd.DataFrame(stored_sizes(root, unique), index=unique, columns=["w", "h"]).loc[names].to_numpy(np.float64)
    prepared_size, size = cxr.images.shape[-1], cfg["data"]["image_size"]
    scale = np.concatenate([prepared_size / wh, prepared_size / wh], axis=1) * (size / prepared_size)
    out = pd.DataFrame({"image_index": names, "finding": boxes["Finding Label"].to_numpy(),
                        "row": row_of.loc[names].to_numpy(np.int64)})
    out["cls"] = [labels.index(f) for f in out["finding"]]
    out["patient_id"] = meta["patient_id"].to_numpy()[out["row"]]
    out[["x", "y", "w", "h"]] = boxes[["x", "y", "w", "h"]].to_numpy(np.float64) * scale
    return out, dropped


def example_boxes(boxes: pd.DataFrame, seed: int, n: int = 4) -> np.ndarray:
    """Rows of ``boxes`` shown in the figure: one seeded box of each of the ``n`` findings with the most boxes."""
    from eden_lib.seed import rng

    order = boxes["finding"].value_counts(sort=True).index[:n]
    g = rng(seed, "loc_examples")
    return np.array([g.choice(np.flatnonzero(boxes["finding"].to_numpy() == f)) for f in order], dtype=np.int64)


def run_localisation(cfg: dict, root: Path | str | None = None) -> dict:
    """Fine-tune, map, score and test; returns the metrics it writes. ``root``: the ChestX-ray14 root to read the
    boxes from (default: the one ``prepare`` used, :func:`~eden_lib.pipeline.prepare.chestxray14_root`)."""
    import torch
    from torch import nn

    from eden_lib import paths
    from eden_lib.analysis.localisation import box_iou, grad_cam, pointing_hits, prior_maps, random_maps, stage_layer
    from eden_lib.data import prepared
    from eden_lib.data.batches import resize_2d
    from eden_lib.pipeline.prepare import chestxray14_root
    from eden_lib.pipeline.transfer import (
        _load_encoder_2d,
        _run_finetunes,
        finetune_classifier,
        has_2d,
        validation_rows,
    )
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json
    from eden_lib.seed import rng

    c = cfg["claims"]["localisation"]
    check_localisation(c)
    cxr = prepared.load_cxr()
    boxes, dropped = box_table(cfg, cxr, Path(root) if root is not None else chestxray14_root(cfg))
    methods = [m for m in c["methods"] if m in cfg["active_methods"] and has_2d(m)]
    size, labels, seeds = cfg["data"]["image_size"], list(cxr.info["labels"]), cfg["transfer"]["seeds"]
    xywh = boxes[["x", "y", "w", "h"]].to_numpy()
    examples = example_boxes(boxes, cfg["seed"]) if len(boxes) else np.zeros(0, np.int64)
    per_box: dict[str, dict[str, np.ndarray]] = {}
    example_maps: dict[str, np.ndarray] = {}
    test_auc: dict[str, dict] = {}
    if len(boxes) and methods:
        x = resize_2d(cxr.images, size)
        split = (cxr.split_indices("train"), validation_rows(cfg, cxr.split_indices("val")), cxr.split_indices("test"))
        x_boxes = x[torch.from_numpy(boxes["row"].to_numpy(np.int64, copy=True))]

        def job(method: str, seed: int) -> dict:
            def build() -> nn.Module:
                encoder = _load_encoder_2d(cfg, method)
                return nn.Sequential(encoder, nn.Linear(encoder.out_dim, len(labels)))

            record, net = finetune_classifier(cfg, "cxr_classification", labels, x, cxr.labels, split, build, seed)
            maps = grad_cam(net, f"0.{stage_layer(net[0], c['stage'])}", x_boxes, boxes["cls"].to_numpy(),
                            device=cfg["pretrain"]["device"])
            return {"auc": record["value"], "pointing": pointing_hits(maps, xywh, c["tolerance"]),
                    "iou": box_iou(maps, xywh, c["threshold"]), "examples": maps[examples]}

        runs = _run_finetunes(cfg, [lambda m=m, s=s: job(m, s) for m in methods for s in seeds])
        for i, m in enumerate(methods):
            mine = runs[i * len(seeds):(i + 1) * len(seeds)]
            per_box[m] = {s: np.mean([r[s] for r in mine], axis=0) for s in SCORES}
            example_maps[m] = mine[0]["examples"]
            aucs = np.array([r["auc"] for r in mine], dtype=float)
            test_auc[m] = {"mean": float(aucs.mean()), "std": float(aucs.std(ddof=1)) if len(aucs) > 1 else None,
                           "n": len(aucs)}
    if len(boxes):
        grid = max(1, size // 2 ** (c["stage"] + 1))
        floors = [random_maps(rng(cfg["seed"], "loc_random", s), len(boxes), grid, size) for s in seeds]
        per_box[RANDOM] = {"pointing": np.mean([pointing_hits(f, xywh, c["tolerance"]) for f in floors], axis=0),
                           "iou": np.mean([box_iou(f, xywh, c["threshold"]) for f in floors], axis=0)}
        prior = prior_maps(xywh, boxes["finding"].to_numpy(), boxes["patient_id"].to_numpy(), size)
        per_box[PRIOR] = {"pointing": pointing_hits(prior, xywh, c["tolerance"]).astype(float),
                          "iou": box_iou(prior, xywh, c["threshold"])}
        example_maps[PRIOR] = prior[examples]
    metrics = {"profile": cfg["profile"], "method": c["method"], "base": c["base"], "methods": methods,
               "stage": c["stage"], "threshold": c["threshold"], "tolerance": c["tolerance"], "image_size": size,
               "floor": RANDOM, "control": PRIOR, "n_boxes": len(boxes), "n_images": int(boxes["row"].nunique()),
               "boxes_per_finding": {k: int(v) for k, v in boxes["finding"].value_counts().items()},
               "dropped": dropped, "test_auc": test_auc,
               **summarise(per_box, boxes["finding"].to_numpy(), c, cfg["seed"])}
    metrics["sentence"] = verdict_sentence(metrics)
    write_json(metrics, paths.metrics_file("claims", "localisation"))
    x_examples = resize_2d(cxr.images[boxes["row"].to_numpy()[examples]], size).numpy()[:, 0] if len(boxes) else None
    save(localisation_figure(metrics, x_examples, xywh[examples], boxes["finding"].to_numpy()[examples], example_maps),
         paths.figures_dir("claims") / "localisation.png")
    return metrics


def summarise(per_box: dict[str, dict[str, np.ndarray]], findings: np.ndarray, c: dict, seed: int) -> dict:
    """Scores with bootstrap CIs over boxes (overall and per finding), each method against the floor and the control,
    and the claim's tests (``method`` against ``base`` and ``scratch``), all paired over boxes.

    ``per_box``: name -> {"pointing", "iou"} ``(N,)`` per-box values (mean over seeds); ``findings`` ``(N,)``.
    """
    from eden_lib.analysis.localisation import bootstrap_mean, paired_difference
    from eden_lib.seed import rng

    b = c["n_bootstrap"]
    scores = {}
    for name, values in per_box.items():
        scores[name] = {s: bootstrap_mean(values[s], rng(seed, "loc_ci", name, s), b) for s in SCORES}
        scores[name]["per_finding"] = {
            f: {s: bootstrap_mean(values[s][findings == f], rng(seed, "loc_ci", name, s, f), b)
                for s in SCORES} for f in pd.unique(findings)}

    def compare(a: str, other: str) -> dict:
        return {s: paired_difference(per_box[a][s], per_box[other][s], rng(seed, "loc_diff", a, other, s), b)
                for s in SCORES}

    methods = [m for m in per_box if m not in (RANDOM, PRIOR)]
    controls = {m: {"random": compare(m, RANDOM), "prior": compare(m, PRIOR)} for m in methods}
    claim = c["method"]
    tests = {f"{claim} - {other}": compare(claim, other) for other in (c["base"], "scratch")
             if claim in methods and other in methods and other != claim}
    return {"scores": scores, "controls": controls, "claim_tests": tests}


def _verdict(t: dict) -> str:
    if t["ci_low"] > 0:
        return "held"
    return "did not hold" if t["ci_high"] < 0 else "was not supported"


def verdict_sentence(metrics: dict) -> str:
    """One generated sentence: the claim's verdict on the pointing game against its base (with the IoU, scratch and
    the floor and control); "not testable" without boxes or without the claim's method or its base."""
    claim, base = metrics["method"], metrics["base"]
    head = (f"DiRA's localisation claim (Grad-CAM of the fine-tuned `{claim}` classifier points inside the finding's "
            f"box more often than that of its base `{base}`)")
    t = metrics["claim_tests"].get(f"{claim} - {base}")
    if not metrics["n_boxes"]:
        return f"{head} was not testable: no bounding box lies on a prepared test image."
    if t is None:
        return f"{head} was not testable: `{claim}` and `{base}` are not both among the active 2D methods."

    def numbers(d: dict) -> str:
        return f"{d['diff']:+.3f} (95 % CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}, bootstrap p = {d['p']:.3g})"

    verdict = _verdict(t["pointing"])
    floors = metrics["controls"][claim]
    named = (("the random-map floor", "random"), ("the image-free prior", "prior"))
    beats = [name for name, key in named if floors[key]["pointing"]["ci_low"] > 0]
    if verdict == "held" and "the random-map floor" not in beats:
        verdict = "was not supported (its maps do not beat the random-map floor)"
    scratch = metrics["claim_tests"].get(f"{claim} - scratch")
    misses = [name for name, _ in named if name not in beats]
    against = (f"beat {' and '.join(beats)}" + (f" but not {misses[0]}" if misses else "") if beats
               else "beat neither the random-map floor nor the image-free prior")
    return (f"{head} {verdict}: pointing game {numbers(t['pointing'])}, mean IoU {numbers(t['iou'])}"
            + (f"; against `scratch` {numbers(scratch['pointing'])}" if scratch else "")
            + f"; `{claim}` {against} on the pointing game.")


def localisation_figure(metrics: dict, images: np.ndarray | None, boxes: np.ndarray, findings: np.ndarray,
                        maps: dict[str, np.ndarray]) -> Figure:
    """Top: example test images (one per finding) with the box and each method's Grad-CAM map (first seed) and the
    prior. Bottom: pointing-game accuracy and mean IoU per method, the floor and the control (bars: 95 % CIs)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    names = list(metrics["scores"])
    shown = [n for n in maps if n in names]
    n_ex = 0 if images is None else len(images)
    fig = plt.figure(figsize=(max(8.0, 1.7 * (1 + len(shown))), 1.8 * n_ex + 3.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[max(n_ex, 0.01) * 1.8, 3.4]) if n_ex else (None, fig)
    if n_ex:
        axes = np.atleast_2d(top.subplots(n_ex, 1 + len(shown)))
        for r in range(n_ex):
            for col, name in enumerate(["image", *shown]):
                ax = axes[r, col]
                ax.imshow(images[r], cmap="gray", vmin=0, vmax=1)
                if name != "image":
                    ax.imshow(maps[name][r], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                x, y, w, h = boxes[r]
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="lime", lw=1.2))
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(name, fontsize=8)
                if col == 0:
                    ax.set_ylabel(findings[r], fontsize=8)
    bars = bottom.subplots(1, 2)
    for ax, score, label in zip(bars, SCORES, ("pointing-game accuracy", f"IoU (map >= {metrics['threshold']:g} max)")):
        if not names:
            ax.text(0.5, 0.5, "no boxes", ha="center", transform=ax.transAxes)
            continue
        s = [metrics["scores"][n][score] for n in names]
        y = np.array([v["mean"] for v in s])
        err = np.vstack([y - [v["ci_low"] for v in s], [v["ci_high"] for v in s] - y])
        colours = ["0.6" if n in (RANDOM, PRIOR) else ("C3" if n == metrics["method"] else "C0") for n in names]
        ax.bar(range(len(names)), y, yerr=err, capsize=3, color=colours)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=label, ylim=(0, 1), title=f"{label} over {metrics['n_boxes']} boxes (95 % CI)")
    return fig
