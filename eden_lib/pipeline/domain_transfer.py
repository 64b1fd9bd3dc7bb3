"""Stage ``domain_transfer``: BTL's claim "domain-adaptive pretraining bridges the domain gap" (Hosseinzadeh Taher et
al., MICCAI-DART 2021; dira_caid_transfer_alice_cadpe.md §3.1, §3.6), on the natural-image source models of the
``natural_source`` stage.

- Direct transfer (``natural_supervised``, ``natural_moco_v2``): each release file (torchvision / MoCo layout) is
  loaded into the study's 2D encoder through :func:`~eden_lib.checkpoints.load_pretrained` (layout detected, heads
  dropped, the RGB stem summed to grey) and exported to ``data/claims/domain_transfer/<condition>/encoder.pt``.
- Continual pretraining (``natural_supervised_cxr``, ``natural_moco_v2_cxr``): the same file starts the same method
  on SynthCXR through the pretraining stage's own code (:func:`~eden_lib.pipeline.pretrain.pretrain_dims` with a
  ``pretrain.init`` entry; supervised on the SynthCXR findings, MoCo-v2 on the radiographs) for
  ``claims.domain_transfer.continual_passes`` encoder image-passes; checkpoints resume under
  ``data/checkpoints/domain_transfer``.
- Evaluation: CXR classification exactly as the transfer stage runs it
  (:func:`~eden_lib.pipeline.transfer.cxr_classification`): fine-tuning over ``transfer.seeds`` and the linear probe
  at label fraction 1 and the smallest of ``transfer.label_fractions`` (no k-shot probes). The floor ``scratch`` and
  the ceiling ``supervised`` are the transfer stage's own runs of those methods (same seeds and label subsets:
  paired). The four conditions are scored side by side in ``transfer.workers`` processes (:mod:`eden_lib.parallel`),
  each running its seeds one after the other, one thread per run as in the transfer stage. Few-shot segmentation is
  left out: its 12 fine-tuning runs per condition cost about twice the classification.

Statistics: :mod:`eden_lib.analysis.domain_transfer`. Writes ``reports/metrics/claims/domain_transfer.json`` and
``reports/figures/claims/domain_transfer.png``.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

from eden_lib import paths
from eden_lib.pipeline.checks import check_block, int_at_least

if TYPE_CHECKING:  # the module is imported by load_params (the validator): no plotting or statistics stack here
    from matplotlib.figure import Figure

#: the transfer stage's methods read as conditions: the floor and the in-domain ceiling
REFERENCES = ("scratch", "supervised")
TASK = "cxr_classification"


#: ``claims.domain_transfer.source``: key -> (check, what is expected)
SOURCE_RULES = {
    "n_images": (int_at_least(16), "an integer >= 16 (at least two images per shape class)"),
    "n_test": (int_at_least(8), "an integer >= 8 (one image per shape class)"),
    "render_size": (int_at_least(32), "an integer >= 32 (pixels)"),
    "image_passes": (int_at_least(1), "a positive integer (encoder image-passes, as pretrain.image_passes_2d)"),
}
#: ``claims.domain_transfer``: key -> (check, what is expected)
RULES = {
    "source": (lambda v: isinstance(v, dict), f"a mapping with keys {sorted(SOURCE_RULES)}"),
    "continual_passes": (int_at_least(1), "a positive integer (encoder image-passes on SynthCXR)"),
}


def check_domain_transfer(block: dict) -> None:
    """``claims.domain_transfer`` and its ``source`` block (:func:`~eden_lib.pipeline.checks.check_block`)."""
    check_block("claims.domain_transfer", block, RULES)
    check_block("claims.domain_transfer.source", block["source"], SOURCE_RULES)


def run_name(condition: str) -> str:
    """Where a condition of this stage keeps its weights (``data/claims/<run name>``) and checkpoints."""
    return f"domain_transfer/{condition}"


def evaluations(cfg: dict) -> list[tuple[str, str]]:
    """(protocol, budget) of the scored evaluations, the primary first: fine-tuning at ``transfer.finetune_fraction``,
    then the linear probe at label fraction 1 and at the smallest fraction (where the task runs those protocols)."""
    t, protocols = cfg["transfer"], cfg["tasks"][TASK]["protocols"]
    out = [("finetune", f"{t['finetune_fraction']:g}")] if "finetune" in protocols else []
    if "linear_probe" in protocols:
        out += [("linear_probe", f"{f:g}") for f in sorted({1.0, min(t["label_fractions"])}, reverse=True)]
    return out


def evaluation_cfg(cfg: dict) -> dict:
    """``cfg`` with the linear probe restricted to label fractions 1 and the smallest, without k-shot probes."""
    out = copy.deepcopy(cfg)
    out["transfer"]["label_fractions"] = sorted({1.0, min(cfg["transfer"]["label_fractions"])})
    out["tasks"][TASK]["shots"] = []
    return out


def direct(cfg: dict, method: str) -> dict:
    """Load the natural source model of ``method`` into the study's 2D encoder and export it as a condition; returns
    :func:`~eden_lib.checkpoints.load_pretrained`'s report (layout, keys, converted stem, dropped keys)."""
    from eden_lib.analysis import domain_transfer as stats
    from eden_lib.checkpoints import load_pretrained, save_weights
    from eden_lib.methods import networks
    from eden_lib.pipeline.natural_source import release_file
    from eden_lib.pipeline.pretrain import build_context

    path = release_file(method)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the 'natural_source' stage first (dvc repro natural_source)")
    encoder = networks.encoder_2d(build_context(cfg, 2, 0, method=method))
    info = load_pretrained(path, encoder)
    save_weights(encoder, paths.models_dir(run_name(stats.SOURCES[method][0])) / "encoder.pt", method=method,
                 spatial_dims=2, export="encoder", source_file=path.name)
    return {"file": path.name, "source": info["source"], "keys": info["keys"], "converted": info["converted"],
            "dropped": info["dropped"]}


def continual(cfg: dict, method: str) -> dict:
    """Continual pretraining of the natural source model of ``method`` on SynthCXR with ``method`` itself (its
    ``methods.<method>`` block, ``pretrain.init`` pointing at the release file, ``continual_passes``)."""
    from eden_lib.analysis import domain_transfer as stats
    from eden_lib.pipeline.natural_source import release_file
    from eden_lib.pipeline.pretrain import pretrain_dims

    variant = copy.deepcopy(cfg)
    variant["pretrain"]["image_passes_2d"] = cfg["claims"]["domain_transfer"]["continual_passes"]
    path = str(release_file(method).relative_to(paths.repo_root()))  # read from the root, as params paths are
    variant["pretrain"]["init"] = {method: {"path": path, "source": "auto", "dims": [2]}}
    result = pretrain_dims(variant, method, 2, run_name=run_name(stats.SOURCES[method][1]))
    if not result["complete"]:
        raise RuntimeError(f"continual pretraining of {method} stopped early; rerun to resume")
    history = result["history"]
    return {"init": {**result["init"], "path": path}, "passes": result["passes"], "epochs": len(history),
            "first_loss": history[0]["loss"] if history else None,
            "final_loss": history[-1]["loss"] if history else None}


def score(cfg: dict, condition: str, x, cxr) -> list[dict]:
    """The transfer stage's CXR classification runs of one condition's exported encoder (``cfg``:
    :func:`evaluation_cfg`)."""
    from eden_lib.evaluation.finetune import predict
    from eden_lib.pipeline.transfer import _load_encoder_2d, cxr_classification

    encoder = _load_encoder_2d(cfg, run_name(condition))
    feats = {"cxr": predict(encoder, encoder, x, device=cfg["pretrain"]["device"])}
    return cxr_classification(cfg, run_name(condition), x, cxr, feats)


def reference_records(cfg: dict, method: str) -> list[dict] | None:
    """The transfer stage's CXR classification records of ``method``, or ``None`` if it is not active or has not
    run."""
    from eden_lib.reporting.io import read_json

    path = paths.metrics_file("transfer", method)
    if method not in cfg["active_methods"] or not path.is_file():
        return None
    return [r for r in read_json(path)["runs"] if r["task"] == TASK]


def run_domain_transfer(cfg: dict) -> dict:
    """Direct and continual transfer of both source models, scored beside scratch and the in-domain model; returns
    the metrics it writes."""
    from eden_lib.analysis import domain_transfer as stats
    from eden_lib.data import prepared
    from eden_lib.data.batches import resize_2d
    from eden_lib.parallel import run_jobs
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json

    check_domain_transfer(cfg["claims"]["domain_transfer"])
    seconds: dict[str, float] = {}
    sources, adapted = {}, {}
    for method in stats.SOURCES:
        t0 = time.perf_counter()
        sources[method] = direct(cfg, method)
        adapted[method] = continual(cfg, method)
        seconds[f"{method}_continual"] = round(time.perf_counter() - t0, 1)
    cxr = prepared.load_cxr()
    x = resize_2d(cxr.images, cfg["data"]["image_size"])
    ecfg = evaluation_cfg(cfg)
    ecfg["transfer"]["workers"] = 1  # a condition's runs one after the other, in the worker scoring it
    new = [c for c in stats.CONDITIONS if c not in REFERENCES]
    t0 = time.perf_counter()
    scored = run_jobs([lambda c=c: score(ecfg, c, x, cxr) for c in new], cfg["transfer"]["workers"],
                      cfg["pretrain"]["device"])
    seconds["scoring"] = round(time.perf_counter() - t0, 1)
    records = dict(zip(new, scored))
    records.update({m: r for m in REFERENCES if (r := reference_records(cfg, m)) is not None})
    records = {c: records[c] for c in stats.CONDITIONS if c in records}
    keys = [stats.evaluation_key(*e) for e in evaluations(cfg)]
    scores = {}
    for key, (protocol, budget) in zip(keys, evaluations(cfg)):
        per = {c: stats.seed_scores(r, protocol, budget) for c, r in records.items()}
        scores[key] = {c: s for c, s in per.items() if len(s)}
    comparisons = {k: stats.paired_comparisons(scores[k]) for k in keys}
    primary = keys[0]
    per_source = {m: stats.source_verdict(stats.find(comparisons[primary], cont, direct_))
                  for m, (direct_, cont) in stats.SOURCES.items()}
    verdict = stats.claim_verdict(per_source)
    metrics = {
        "profile": cfg["profile"], "conditions": [c for c in stats.CONDITIONS if c in records],
        "missing_references": [m for m in REFERENCES if m not in records], "evaluations": keys, "primary": primary,
        "seeds": list(cfg["transfer"]["seeds"]), "summary": {k: stats.summary(scores[k]) for k in keys},
        "comparisons": comparisons, "per_source": per_source, "verdict": verdict,
        "sentence": stats.verdict_sentence(verdict, comparisons[primary], primary),
        "sources": sources, "continual": adapted, "seconds": seconds,
        "runs": [{**r, "condition": c} for c, rs in records.items() for r in rs if c not in REFERENCES],
    }
    for run in metrics["runs"]:
        run.pop("curve", None)
    write_json(metrics, paths.metrics_file("claims", "domain_transfer"))
    save(domain_figure(metrics), paths.figures_dir("claims") / "domain_transfer.png")
    return metrics


#: figure colours: floor, direct transfer, after continual pretraining, in-domain ceiling
COLOURS = {"scratch": "grey", "natural_supervised": "tab:blue", "natural_moco_v2": "tab:blue",
           "natural_supervised_cxr": "tab:orange", "natural_moco_v2_cxr": "tab:orange", "supervised": "tab:green"}


def domain_figure(metrics: dict) -> Figure:
    """One panel per evaluation: mean AUC of every condition with its 95 % t interval over seeds; an arrow from each
    source's direct transfer to its continual model."""
    import matplotlib.pyplot as plt
    import numpy as np

    from eden_lib.analysis import domain_transfer as stats

    keys = metrics["evaluations"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.0), layout="constrained", squeeze=False)
    conditions = metrics["conditions"]
    for ax, key in zip(axes[0], keys):
        s = metrics["summary"][key]
        for i, c in enumerate(conditions):
            if c not in s:
                continue
            m = s[c]
            lo, hi = m["ci_low"], m["ci_high"]
            finite = lo is not None and hi is not None and np.isfinite([lo, hi]).all()
            err = [[m["mean"] - lo], [hi - m["mean"]]] if finite else None
            ax.errorbar([i], [m["mean"]], yerr=err, marker="o", capsize=3, color=COLOURS[c])
        for direct_, cont in stats.SOURCES.values():
            if direct_ in s and cont in s and direct_ in conditions and cont in conditions:
                i, j = conditions.index(direct_), conditions.index(cont)
                ax.annotate("", xy=(j, s[cont]["mean"]), xytext=(i, s[direct_]["mean"]),
                            arrowprops={"arrowstyle": "->", "color": "black", "lw": 0.8, "alpha": 0.6})
        ax.set_xticks(np.arange(len(conditions)), conditions, rotation=35, ha="right", fontsize=7)
        ax.set(ylabel="mean AUC over findings", title=key)
    fig.suptitle("Natural source -> CXR: direct transfer (blue), after continual pretraining on SynthCXR (orange); "
                 "floor grey, in-domain ceiling green", fontsize=8)
    return fig
