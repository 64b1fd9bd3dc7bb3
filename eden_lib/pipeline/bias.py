"""Stage ``bias``: the gender-bias study (Ark) over every active method.

Linear probes on each method's frozen radiograph features are trained on male-only, female-only and balanced
training sets of the same size, and evaluated per sex on the held-out test set; the male - female AUC gap comes
with a bootstrap confidence interval. Repeated over the transfer seeds (training subsamples and bootstrap). Methods
that pretrained only 3D (no 2D features) are left out and named in the metrics file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.analysis.bias import bias_study
from eden_lib.data import prepared
from eden_lib.pipeline.embedding import methods_2d


def run_bias(cfg: dict) -> pd.DataFrame:
    """Returns the tidy bias table (method, seed, train_set, label, AUCs, gap, CI...); writes the metrics JSON."""
    from eden_lib.reporting.io import write_json

    cxr = prepared.load_cxr()
    sex = cxr.meta["sex"].to_numpy()
    known = np.isin(sex, ["M", "F"])
    train = np.intersect1d(cxr.split_indices("train"), np.flatnonzero(known))
    test = np.intersect1d(cxr.split_indices("test"), np.flatnonzero(known))
    b = cfg["bias"]
    frames = []
    methods, left_out = methods_2d(cfg)
    for method in methods:
        with np.load(paths.features_file(method)) as npz:
            x = npz["cxr"]
        for seed in cfg["transfer"]["seeds"]:
            df = bias_study(x, cxr.labels, sex, train, test, seed=seed, n_train_per_sex=b["train_per_sex"],
                            C=cfg["transfer"]["linear_probe"]["C"], n_boot=b["n_bootstrap"],
                            label_names=cxr.info["labels"])
            frames.append(df.assign(method=method, seed=seed))
    table = pd.concat(frames, ignore_index=True)
    mean_rows = table[table["label"] == "mean"]
    summary = {
        method: {
            train_set: {
                "auc_male": float(g["auc_male"].mean()),
                "auc_female": float(g["auc_female"].mean()),
                "gap": float(g["gap"].mean()),
                "gap_ci_low": float(g["gap_ci_low"].mean()),
                "gap_ci_high": float(g["gap_ci_high"].mean()),
            }
            for train_set, g in part.groupby("train_set")
        }
        for method, part in mean_rows.groupby("method", sort=False)
    }
    write_json({"profile": cfg["profile"], "sex_effect": cfg["data"]["cxr"]["sex_effect"], "summary": summary,
                "left_out_3d_only": left_out},
               paths.metrics_file("bias", "gender"))
    table.to_csv(paths.reports_dir() / "metrics" / "bias" / "gender_runs.csv", index=False)
    return table
