"""Adam-v1 / Adam-v2 ablations from params alone (issue: granularity schedule, pruner on/off, each Adam-v2 branch).

Each ablation is a set of dotted ``params.yaml`` overrides (what ``dvc exp run -S key=value`` would set). Every run
pretrains the method in a scratch ``EDEN_ROOT`` that shares this repository's prepared data, extracts the frozen
features as the ``transfer`` stage does, and scores them the way the report does: the CXR linear probe on all
training labels (mean AUC over findings), landmark kNN accuracy and part-whole compositionality (matched minus
mismatched cosine, bootstrap CI). Results go to ``reports/benchmarks/adam_ablations.json``.

Run (after ``prepare``): ``python benchmarks/adam_ablations.py [--only adam_v2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from _ablate import variant  # noqa: E402 (benchmarks/ is not a package)

ABLATIONS: dict[str, dict[str, dict]] = {
    "adam_v1": {
        "default": {},
        "pruner off": {"methods.adam_v1.pruner": False},
        "granularities [0]": {"methods.adam_v1.granularities": [0], "methods.adam_v1.stage_fractions": [1.0]},
        "granularities [0, 2]": {"methods.adam_v1.granularities": [0, 2],
                                 "methods.adam_v1.stage_fractions": [0.5, 0.5]},
    },
    "adam_v2": {
        "default": {},
        "localizability only": {"methods.adam_v2.comp_weight": 0.0, "methods.adam_v2.dec_weight": 0.0},
        "no composability": {"methods.adam_v2.comp_weight": 0.0},
        "no decomposability": {"methods.adam_v2.dec_weight": 0.0},
        "decompose_norm per_part": {"methods.adam_v2.decompose_norm": "per_part"},
    },
}


def score(cfg: dict, method: str) -> dict:
    """Pretrain ``method`` under ``cfg`` (in the current ``EDEN_ROOT``), then the report's frozen-feature scores."""
    import numpy as np

    from eden_lib.analysis.compositionality import compositionality
    from eden_lib.analysis.embeddings import knn_accuracy
    from eden_lib.data import prepared
    from eden_lib.data.batches import resize_2d
    from eden_lib.evaluation.linear_probe import fit_predict_linear_probe
    from eden_lib.evaluation.metrics import auc_per_label
    from eden_lib.pipeline.pretrain import pretrain_dims
    from eden_lib.pipeline.transfer import extract_features

    t0 = time.perf_counter()
    run = pretrain_dims(cfg, method, 2)
    history = run["history"]
    cxr, ct = prepared.load_cxr(), prepared.load_ct()
    feats = extract_features(cfg, method, resize_2d(cxr.images, cfg["data"]["image_size"]), cxr, ct)
    train, test = cxr.split_indices("train"), cxr.split_indices("test")
    probe = fit_predict_linear_probe(feats["cxr"][train], cxr.labels[train], feats["cxr"][test],
                                     C=cfg["transfer"]["linear_probe"]["C"], seed=0)
    comp = compositionality(feats["landmark"], feats["landmark_parts"], seed=cfg["seed"],
                            n_bootstrap=cfg["embedding"]["n_bootstrap"])
    return {
        "first_monitor_loss": history[0].get("monitor_loss"),
        "final_monitor_loss": history[-1].get("monitor_loss"),
        "linear_probe_auc": float(np.nanmean(auc_per_label(cxr.labels[test], probe))),
        "knn_accuracy": knn_accuracy(feats["landmark"], feats["landmark_id"], k=cfg["embedding"]["knn_k"],
                                     seed=cfg["seed"]),
        "compositionality": comp,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(ABLATIONS), help="one method's ablations")
    args = parser.parse_args()
    out_file = REPO / "reports" / "benchmarks" / "adam_ablations.json"
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    for method, ablations in ABLATIONS.items():
        if args.only and method != args.only:
            continue
        for name, overrides in ablations.items():
            with variant(overrides) as cfg:
                result = {"overrides": overrides, **score(cfg, method)}
            results.setdefault(method, {})[name] = result
            comp = result["compositionality"]
            print(f"{method:8s} {name:26s} LP AUC {result['linear_probe_auc']:.3f}  kNN {result['knn_accuracy']:.3f}  "
                  f"comp {comp['score']:+.3f} [{comp['score_ci_low']:+.3f}, {comp['score_ci_high']:+.3f}]  "
                  f"monitor {result['first_monitor_loss']:.3f} -> {result['final_monitor_loss']:.3f}", flush=True)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
