"""Stage ``anatomy``: Alice's view mining (``reference/dira_caid_transfer_alice_cadpe.md`` §4.3) on the CT training
scans, with our own SAM-like matcher (:mod:`eden_lib.anatomy`).

Reads the training subsets of the LUNA16 root (``prepare.luna16_root``; subsets below ``prepare.n_train_subsets``),
trains the anatomical embedding, mines positive pairs in the three modes (``matched``, ``oracle``, ``random``) and
writes ``data/anatomy/``: ``volumes.npy`` float16 ``(S, X, Y, Z)`` in [0, 1], ``scans.csv`` (index, seriesuid),
``matcher.pt`` (state dict), ``pairs_<mode>.csv``; and ``reports/metrics/anatomy/matching.json``: per mode the pair
error (mm from the query's anatomy, through the landmark affine), the landmark-match error, the matcher's losses,
the acceptance rate of ``matched`` and seconds; ``reports/figures/anatomy/view_pairs.png``. Without landmarks (real
data) the oracle pairs and every error are null (``pairs_oracle.csv`` is written empty). Without ``alice`` among the
active methods nothing is mined (an empty ``data/anatomy`` with a README).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eden_lib import paths
from eden_lib.pipeline.checks import check_block

DEFAULTS: dict[str, Any] = {
    "embed_dim": 16, "width": 16, "crop": [48, 48, 32], "steps": 200, "batch_size": 2, "points": 256,
    "temperature": 0.1, "lr": 0.001, "threshold": 0.7, "max_tries": 100, "pairs_per_scan": 64, "foreground": 0.3,
    "margin": [8, 8, 4],
}
EMBEDDING_KEYS = ("embed_dim", "width", "crop", "steps", "batch_size", "points", "temperature", "lr")
MINING_KEYS = ("pairs_per_scan", "threshold", "max_tries", "foreground", "margin")


def _int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


CHECKS = {
    "embed_dim": (lambda v: _int(v, 1), "an integer >= 1"),
    "width": (lambda v: _int(v, 1), "an integer >= 1"),
    "crop": (lambda v: isinstance(v, list) and len(v) == 3 and all(_int(c, 8) and c % 2 == 0 for c in v),
             "a list of three even integers >= 8, (x, y, z)"),
    "steps": (lambda v: _int(v, 1), "an integer >= 1"),
    "batch_size": (lambda v: _int(v, 1), "an integer >= 1"),
    "points": (lambda v: _int(v, 2), "an integer >= 2"),
    "temperature": (lambda v: _num(v) and v > 0, "a number > 0"),
    "lr": (lambda v: _num(v) and v > 0, "a number > 0"),
    "threshold": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "max_tries": (lambda v: _int(v, 1), "an integer >= 1"),
    "pairs_per_scan": (lambda v: _int(v, 1), "an integer >= 1"),
    "foreground": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "margin": (lambda v: isinstance(v, list) and len(v) == 3 and all(_int(c, 0) for c in v),
               "a list of three integers >= 0, (x, y, z) voxels"),
}


def check_anatomy(block: dict) -> None:
    """Validate the params ``anatomy`` section (:func:`~eden_lib.pipeline.checks.check_block`; defaults: ``DEFAULTS``)."""
    check_block("anatomy", block, CHECKS)

def _error_summary(errors: np.ndarray | None) -> dict[str, float] | None:
    if errors is None or not len(errors):
        return None
    return {"median_mm": float(np.median(errors)), "mean_mm": float(np.mean(errors)),
            "within_10mm": float(np.mean(errors <= 10)), "within_20mm": float(np.mean(errors <= 20))}


def run_anatomy(cfg: dict) -> dict:
    """Train the matcher, mine pairs in every mode, write ``data/anatomy/`` and the metrics JSON; returns the metrics.

    Args:
        cfg: resolved parameters (``config.load_params``) with an ``anatomy`` section.
    """

    from eden_lib.anatomy.embedding import EmbeddingConfig, train_embedding
    from eden_lib.anatomy.matching import (
        MODES,
        PAIR_COLUMNS,
        MiningConfig,
        landmark_match_errors_mm,
        mine_pairs,
        pair_errors_mm,
    )
    from eden_lib.anatomy.volumes import load_training_volumes, training_spacing
    from eden_lib.checkpoints import save_atomic
    from eden_lib.pipeline.prepare import luna16_root, n_train_subsets
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json
    from eden_lib.seed import rng

    block = cfg["anatomy"]
    check_anatomy(block)
    out = paths.data_dir() / "anatomy"
    if "alice" not in cfg["active_methods"]:  # nothing reads the pairs: an empty, declared output
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "README.md").write_text("alice is not in active_methods: no view pairs were mined.\n")
        paths.figures_dir("anatomy").mkdir(parents=True, exist_ok=True)
        metrics = {"profile": cfg.get("profile"), "skipped": "alice is not in active_methods"}
        write_json(metrics, paths.metrics_file("anatomy", "matching"))
        return metrics
    seconds: dict[str, float] = {}
    start = t0 = time.perf_counter()
    root, subsets = luna16_root(cfg), range(n_train_subsets(cfg))
    uids, volumes, by_uid = load_training_volumes(root, subsets)
    spacing = training_spacing(root, subsets)
    landmarks = [by_uid[u] for u in uids]
    has_landmarks = all(lm is not None for lm in landmarks)
    seconds["load"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    emb_cfg = EmbeddingConfig(**{k: tuple(block[k]) if k == "crop" else block[k] for k in EMBEDDING_KEYS})
    model, history = train_embedding(volumes, emb_cfg, seed=cfg["seed"])
    seconds["train"] = round(time.perf_counter() - t0, 2)

    mining = MiningConfig(**{k: tuple(block[k]) if k == "margin" else block[k] for k in MINING_KEYS})
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    per_mode, accept, mined, pair_errors = {}, {}, {}, {}
    for mode in MODES:
        t0 = time.perf_counter()
        if mode == "oracle" and not has_landmarks:
            pairs = pd.DataFrame(columns=PAIR_COLUMNS)
        else:
            pairs = mine_pairs(volumes, mining, rng(cfg["seed"], "anatomy", mode), mode, model=model,
                               landmarks=landmarks)
        pairs.to_csv(out / f"pairs_{mode}.csv", index=False)
        errors = pair_errors_mm(pairs, landmarks, spacing) if has_landmarks and len(pairs) else None
        per_mode[mode] = {"n_pairs": len(pairs), "errors": _error_summary(errors)}
        mined[mode], pair_errors[mode] = pairs, errors
        if mode == "matched":
            accept = dict(pairs.attrs)
        seconds[f"mine_{mode}"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    lm_errors = landmark_match_errors_mm(model, volumes, landmarks, spacing) if has_landmarks else None
    seconds["landmark_match"] = round(time.perf_counter() - t0, 2)
    np.save(out / "volumes.npy", volumes.astype(np.float16))
    pd.DataFrame({"index": range(len(uids)), "seriesuid": uids}).to_csv(out / "scans.csv", index=False)
    save_atomic(model.state_dict(), out / "matcher.pt")

    metrics = {
        "profile": cfg.get("profile"), "source": cfg["data"]["source"], "n_scans": len(uids),
        "shape": list(volumes.shape[1:]), "spacing_mm": [float(s) for s in spacing], "has_landmarks": has_landmarks,
        "matcher": {"steps": len(history), "loss_first": history[0], "loss_final": history[-1],
                    "loss_final_mean10": float(np.mean(history[-10:]))},
        "threshold": mining.threshold, "acceptance_rate": accept.get("acceptance_rate"),
        "try_acceptance_rate": accept.get("try_acceptance_rate"), "unaccepted": accept.get("unaccepted"),
        "tries": accept.get("tries"), "modes": per_mode,
        "landmark_match": None if lm_errors is None else {
            "median_mm": float(lm_errors["error_mm"].median()),
            "per_landmark_median_mm": {k: float(v) for k, v in lm_errors.groupby("landmark")["error_mm"].median()
                                       .items()}},
        "seconds": seconds,
    }
    seconds["total"] = round(time.perf_counter() - start, 2)
    write_json(metrics, paths.metrics_file("anatomy", "matching"))
    save(pairs_figure(volumes, mined, pair_errors), paths.figures_dir("anatomy") / "view_pairs.png")
    return metrics


def pairs_figure(volumes: np.ndarray, pairs: dict[str, pd.DataFrame], errors: dict[str, np.ndarray | None],
                 n: int = 4, half: int = 16) -> Figure:
    """Top row per mode: the axial slice through ``n`` query points (cross) beside the slice through their key points
    in the partner scan; last panel: the pair errors of every mode (mm from the query's true counterpart)."""
    import matplotlib.pyplot as plt

    modes = [m for m in pairs if len(pairs[m])]
    fig, axes = plt.subplots(len(modes), 2 * n + 1, figsize=(2.0 * (2 * n + 1), 2.1 * len(modes)),
                             layout="constrained", squeeze=False)
    for row, mode in zip(axes, modes):
        for j, pair in enumerate(pairs[mode].head(n).itertuples()):
            for k, (scan, x, y, z) in enumerate(((pair.scan_q, pair.xq, pair.yq, pair.zq),
                                                 (pair.scan_k, pair.xk, pair.yk, pair.zk))):
                ax = row[2 * j + k]
                ax.imshow(volumes[int(scan), :, :, int(z)].T, cmap="gray", vmin=0, vmax=1)
                ax.plot(x, y, "r+", ms=10)
                ax.set(xlim=(x - 2 * half, x + 2 * half), ylim=(y + 2 * half, y - 2 * half), xticks=[], yticks=[])
                ax.set_title(f"{mode} {'query' if k == 0 else 'key'}", fontsize=7)
        ax = row[-1]
        if errors.get(mode) is not None:
            ax.hist(errors[mode], bins=30, color="tab:blue")
        ax.set_title(f"{mode}: error (mm)", fontsize=7)
    return fig
