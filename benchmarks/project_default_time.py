"""Project the wall time of a profile's ``dvc repro`` from measured stage times and short timed runs (STUDY §10).

Run: ``python benchmarks/project_default_time.py [--profile synthetic] [--steps 10]``. Writes
``reports/benchmarks/default_projection.json`` and prints the table.

For every stage of the profile: the time measured by the last run (``reports/timing/<stage>.json``), or, for a
method that has not run yet, a projection: its pretraining is timed for ``--steps`` steps on batches of the study's
shapes (after one warm-up step) and scaled to its budget (``pretrain.image_passes_2d`` / ``volume_passes_3d``
encoder passes); its transfer stage is projected as the median of the measured transfer stages (without the CT
tasks for a 2D-only method). Each notebook adds a kernel start-up and DVC's own per-stage work (``--startup``
seconds: measured 6 s per stage with ``papermill --engine eden``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eden_lib import paths  # noqa: E402
from eden_lib.config import load_params  # noqa: E402


def _measured(stage: str) -> dict | None:
    path = paths.reports_dir() / "timing" / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _fake_batch(kind: str, cfg: dict, batch_size: int, dims: int) -> dict:
    import torch

    d = cfg["data"]
    n_labels = len(d["cxr"]["labels"])
    g = torch.Generator().manual_seed(0)
    if kind == "cxr_renders":
        r = d["cxr"]["render_size"]
        return {"image": torch.rand(batch_size, 1, r, r, generator=g), "label": torch.zeros(batch_size, n_labels)}
    if kind == "cxr_images":
        s = d["image_size"]
        return {"image": torch.rand(batch_size, 1, s, s, generator=g), "label": torch.zeros(batch_size, n_labels)}
    if kind == "visual_words":  # crops of the sub-volume size (3D) or the training size (2D), integer words
        shape = d["ct"]["subvolume"] if dims == 3 else [d["image_size"]] * 2
        return {"image": torch.rand(batch_size, 1, *shape, generator=g),
                "label": torch.zeros(batch_size, dtype=torch.long)}
    shape = d["ct"]["subvolume"] if kind == "ct_subvolumes" else [d["ct"]["cube_size"]] * 3
    return {"image": torch.rand(batch_size, 1, *shape, generator=g), "label": torch.zeros(batch_size, 1)}


def time_pretraining(cfg: dict, name: str, steps: int) -> dict[str, float]:
    """Seconds of pretraining per dimension, projected from ``steps`` timed steps."""
    import torch

    from eden_lib.methods import build_method
    from eden_lib.pipeline.pretrain import build_context

    out = {}
    torch.manual_seed(0)
    for dims in cfg["methods"][name].get("dims", [2, 3]):
        n_labels = len(cfg["data"]["cxr"]["labels"]) if dims == 2 else 1
        method = build_method(name, cfg["methods"][name], build_context(cfg, dims, n_labels))
        if not method.trains:
            out[f"{dims}d"] = 0.0
            continue
        budget = cfg["pretrain"]["image_passes_2d" if dims == 2 else "volume_passes_3d"]
        epochs = cfg["pretrain"]["epochs"]
        total_steps = epochs * math.ceil(budget / (method.cfg.batch_size * method.views) / epochs)
        if hasattr(method, "set_total_steps"):
            method.set_total_steps(total_steps)
        batch = _fake_batch(method.data[dims], cfg, method.cfg.batch_size, dims)
        opt = method.configure_optimizer()
        g = torch.Generator().manual_seed(0)

        def step() -> None:
            loss = method(batch, g)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(method, "after_step"):
                method.after_step()

        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        per_step = (time.perf_counter() - t0) / steps
        out[f"{dims}d"] = per_step * total_steps
    return out


def project(cfg: dict, steps: int, startup: float) -> dict:
    rows = []
    fixed = ["prepare", "self_discovery", "embedding", "bias", "report"]
    transfers = [m["seconds"] for m in (_measured(f"transfer_{x}") for x in cfg["active_methods"]) if m]
    transfer_median = float(np.median(transfers)) if transfers else float("nan")
    for name in cfg["active_methods"]:
        m = _measured(f"pretrain_{name}")
        if m:
            # a resumed run's notebook time holds only the rest; train_seconds sums the epochs of every session
            rows.append({"stage": f"pretrain@{name}", "seconds": max(m["seconds"], m.get("train_seconds", 0.0)),
                         "source": "measured"})
        else:
            parts = time_pretraining(cfg, name, steps)
            rows.append({"stage": f"pretrain@{name}", "seconds": sum(parts.values()),
                         "source": f"projected from {steps} steps ({', '.join(parts)})"})
        m = _measured(f"transfer_{name}")
        if m:
            rows.append({"stage": f"transfer@{name}", "seconds": m["seconds"], "source": "measured"})
        else:
            two_d_only = 3 not in cfg["methods"][name].get("dims", [2, 3])
            seconds = transfer_median * (0.75 if two_d_only else 1.0)
            rows.append({"stage": f"transfer@{name}", "seconds": seconds,
                         "source": "median of measured transfers" + (" x 0.75 (no CT tasks)" if two_d_only else "")})
    for stage in fixed:
        m = _measured(stage)
        rows.append({"stage": stage, "seconds": m["seconds"] if m else float("nan"),
                     "source": "measured" if m else "not measured"})
    total = sum(r["seconds"] for r in rows if np.isfinite(r["seconds"])) + startup * len(rows)
    return {"profile": cfg["profile"], "stages": rows, "startup_seconds_per_notebook": startup,
            "projected_total_minutes": round(total / 60, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile to project (default: params.yaml's)")
    ap.add_argument("--steps", type=int, default=10, help="timed pretraining steps per unmeasured method")
    ap.add_argument("--startup", type=float, default=6.0, help="seconds of start-up per notebook stage")
    args = ap.parse_args(argv)
    cfg = load_params(paths.params_file(), profile=args.profile)
    result = project(cfg, args.steps, args.startup)
    out = paths.reports_dir() / "benchmarks" / "default_projection.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["stages"]:
        print(f"{r['stage']:32s} {r['seconds']:8.1f} s  {r['source']}")
    print(f"projected total: {result['projected_total_minutes']} minutes")
    return result


if __name__ == "__main__":
    main()
