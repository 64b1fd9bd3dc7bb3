"""Stage ``bias``: the gender-bias study (Ark) over every active method.

Linear probes on each method's frozen radiograph features are trained on male-only, female-only and balanced
training sets of the same size, and evaluated per sex on the held-out test set; the male - female AUC gap comes
with a bootstrap confidence interval. Ark's bias test, matched minus opposite (on the test patients of one sex,
AUC of the probe trained on that sex minus AUC of the probe trained on the other), is combined over the transfer
seeds by pooling their bootstrap replicates and Holm-corrected over findings x test sexes within each method
(:func:`eden_lib.analysis.bias.pool_seeds`). Methods that pretrained only 3D (no 2D features) are left out and
named in the metrics file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.analysis.bias import ALPHA, bias_study_with_replicates, pool_seeds
from eden_lib.data import prepared
from eden_lib.pipeline.embedding import methods_2d

TEST = ("Ark's gender bias: on the test patients of one sex, AUC(probe trained on that sex) - AUC(probe trained on "
        "the other sex); diff = mean over seeds; CI and two-sided bootstrap p from the seeds' test-patient bootstrap "
        "replicates pooled (p = min(1, 2 (1 + #smaller tail) / (1 + B))); p_holm: Holm over findings x test sexes "
        "within each method (the mean row is a summary, not in the family); significant: p_holm < alpha.")


def _gap_summary(table: pd.DataFrame) -> dict:
    """``{method: {train_set: {auc_male, auc_female, gap, gap_ci_low, gap_ci_high}}}``: mean rows, mean over seeds."""
    mean_rows = table[table["label"] == "mean"]
    cols = ["auc_male", "auc_female", "gap", "gap_ci_low", "gap_ci_high"]
    return {method: {ts: {c: float(g[c].mean()) for c in cols} for ts, g in part.groupby("train_set")}
            for method, part in mean_rows.groupby("method", sort=False)}


def _mmo_summary(pooled: pd.DataFrame) -> dict:
    """``{test_sex: {"mean": {...}, "per_finding": {finding: {...}}, "significant": [findings]}}`` of one method,
    from :func:`pool_seeds`' frame."""
    out = {}
    for word, part in pooled.groupby("test_sex", sort=False):
        rows = part.set_index("label")
        stats = rows[["diff", "ci_low", "ci_high", "p", "p_holm"]]
        out[word] = {"mean": stats.loc["mean"].drop("p_holm").to_dict(),
                     "per_finding": stats.drop(index="mean").to_dict(orient="index"),
                     "significant": [f for f in rows.index[rows["significant"]] if f != "mean"]}
    return out


def run_bias(cfg: dict) -> pd.DataFrame:
    """Returns the tidy bias table (method, seed, train_set, label, AUCs, gap, matched-minus-opposite, CIs...);
    writes ``gender.json`` (``summary``: gaps per method and training set; ``matched_minus_opposite``: per method
    and test sex, the pooled-over-seeds test of :data:`TEST`) and ``gender_runs.csv`` (every seed's table)."""
    from eden_lib.reporting.io import write_json

    cxr = prepared.load_cxr()
    sex = cxr.meta["sex"].to_numpy()
    known = np.isin(sex, ["M", "F"])
    train = np.intersect1d(cxr.split_indices("train"), np.flatnonzero(known))
    test = np.intersect1d(cxr.split_indices("test"), np.flatnonzero(known))
    b = cfg["bias"]
    frames, mmo = [], {}
    methods, left_out = methods_2d(cfg)
    for method in methods:
        with np.load(paths.features_file(method)) as npz:
            x = npz["cxr"]
        runs = [bias_study_with_replicates(x, cxr.labels, sex, train, test, seed=seed,
                                           n_train_per_sex=b["train_per_sex"], C=cfg["transfer"]["linear_probe"]["C"],
                                           n_boot=b["n_bootstrap"], label_names=cxr.info["labels"])
                for seed in cfg["transfer"]["seeds"]]
        mmo[method] = _mmo_summary(pool_seeds([t for t, _ in runs], [r for _, r in runs]))
        frames += [t.assign(method=method, seed=seed) for (t, _), seed in zip(runs, cfg["transfer"]["seeds"])]
    table = pd.concat(frames, ignore_index=True)
    write_json({"profile": cfg["profile"], "sex_effect": cfg["data"]["cxr"]["sex_effect"],
                "summary": _gap_summary(table), "matched_minus_opposite": mmo, "alpha": ALPHA,
                "n_seeds": len(cfg["transfer"]["seeds"]), "n_bootstrap": b["n_bootstrap"], "test": TEST,
                "left_out_3d_only": left_out},
               paths.metrics_file("bias", "gender"))
    table.to_csv(paths.reports_dir() / "metrics" / "bias" / "gender_runs.csv", index=False)
    return table
