"""Alice ablations from params alone: matched views vs random (and oracle) views, the alignment module (CASA) on/off.

Each ablation is a set of dotted ``params.yaml`` overrides (what ``dvc exp run -S key=value`` would set). Every run
pretrains ``alice`` in a scratch ``EDEN_ROOT`` that shares this repository's prepared data and mined view pairs
(``data/prepared``, ``data/anatomy``), then runs the ``transfer`` stage's 3D tasks on it exactly as the stage does
(nodule classification: linear probe and fine-tuning per label fraction; nodule segmentation; the same seeds), so
every run pairs with the study's own ``alice`` runs (``reports/metrics/transfer/alice.json``, the "default" row) seed
by seed. Results (tidy runs per variant) go to ``reports/benchmarks/alice_ablations.json``; the report tests each
variant against the default (paired t over seeds, Holm-corrected).

Run (after ``dvc repro transfer@alice``): ``python benchmarks/alice_ablations.py [--only "random views"]``.
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

ABLATIONS: dict[str, dict] = {
    "random views": {"methods.alice.views": "random"},
    "oracle views": {"methods.alice.views": "oracle"},
    "no CASA": {"methods.alice.casa": False},
}


def run_variant(cfg: dict) -> dict:
    """Pretrain ``alice`` under ``cfg`` (in the current ``EDEN_ROOT``) and run the transfer stage's 3D tasks."""
    from eden_lib.data import prepared
    from eden_lib.pipeline.pretrain import loss_terms, pretrain_dims
    from eden_lib.pipeline.transfer import ct_nodule_classification, ct_nodule_segmentation, extract_features

    t0 = time.perf_counter()
    run = pretrain_dims(cfg, "alice", 3)
    ct = prepared.load_ct()
    feats = extract_features(cfg, "alice", None, None, ct)
    records = ct_nodule_classification(cfg, "alice", ct, feats) + ct_nodule_segmentation(cfg, "alice", ct)
    return {
        "loss_terms": loss_terms(run["history"]),
        "runs": [{k: v for k, v in r.items() if k != "per_class"} for r in records],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(ABLATIONS), help="one ablation")
    args = parser.parse_args()
    out_file = REPO / "reports" / "benchmarks" / "alice_ablations.json"
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    for name, overrides in ABLATIONS.items():
        if args.only and name != args.only:
            continue
        with variant(overrides, shared=("prepared", "anatomy")) as cfg:
            result = {"overrides": overrides, **run_variant(cfg)}
        results[name] = result
        print(f"{name:14s} {len(result['runs'])} runs in {result['seconds']:.0f} s; loss terms {result['loss_terms']}",
              flush=True)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
