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


def _fake_batch(kind: str, cfg: dict, batch_size: int, dims: int, method_cfg=None) -> dict:
    import torch

    d = cfg["data"]
    n_labels = len(d["cxr"]["labels"])
    g = torch.Generator().manual_seed(0)
    if kind in ("cxr_renders", "cxr_sites"):
        r = d["cxr"]["render_size"]
        batch = {"image": torch.rand(batch_size, 1, r, r, generator=g), "label": torch.zeros(batch_size, n_labels)}
        return {**batch, "site": torch.zeros(batch_size, dtype=torch.long)} if kind == "cxr_sites" else batch
    if kind == "cxr_images":
        s = d["image_size"]
        return {"image": torch.rand(batch_size, 1, s, s, generator=g), "label": torch.zeros(batch_size, n_labels)}
    if kind == "visual_words":  # crops of the sub-volume size (3D) or the training size (2D), integer words
        shape = d["ct"]["subvolume"] if dims == 3 else [d["image_size"]] * 2
        return {"image": torch.rand(batch_size, 1, *shape, generator=g),
                "label": torch.zeros(batch_size, dtype=torch.long)}
    if kind == "ct_view_pairs":  # Alice's query / key crops
        crop = list(method_cfg.crop)
        return {v: torch.rand(batch_size, 1, *crop, generator=g) for v in ("query", "key")}
    shape = d["ct"]["subvolume"] if kind == "ct_subvolumes" else [d["ct"]["cube_size"]] * 3
    return {"image": torch.rand(batch_size, 1, *shape, generator=g), "label": torch.zeros(batch_size, 1)}


def _site_label_counts(cfg: dict, method_cfg) -> tuple[int, ...]:
    """Label count of every site a ``cxr_sites`` method trains on (its ``sites``, else all of ``data.sites``)."""
    counts = {name: len(site["labels"]) for name, site in cfg["data"]["sites"].items()}
    return tuple(counts[s] for s in (getattr(method_cfg, "sites", ()) or counts))


def time_batches(cfg: dict, method, dims: int, steps: int) -> float | None:
    """Seconds per batch of the method's real batch factory (the pipeline's ``_batches``: indexing the memory-mapped
    prepared data, resizing and cropping on the CPU), or None when that data has not been prepared here."""
    import torch

    from eden_lib.pipeline.pretrain import _batches

    try:
        factory = _batches(cfg, method, dims, steps)
    except (FileNotFoundError, OSError, ValueError):
        return None
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    n = sum(1 for _ in factory(0, g))
    return (time.perf_counter() - t0) / n if n else None


def time_steps(cfg: dict, name: str, steps: int, device: str = "cpu", amp: bool = False,
               data: bool = False) -> dict[int, dict]:
    """Per dimension of ``name``: seconds per pretraining step (after one warm-up step) on batches of the study's
    shapes, with the samples and encoder passes a step takes and the steps the budget asks for; with ``data``, also
    the seconds the real batch factory takes per batch (:func:`time_batches`), which the training loop waits for.

    Returns:
        ``{dims: {"seconds_per_step", "batch_size", "passes_per_step", "total_steps"[, "data_seconds_per_batch"]}}``;
        a method that does not train has ``seconds_per_step`` 0.
    """
    import torch

    from eden_lib.methods import method_class, validate_method_config
    from eden_lib.pipeline.pretrain import build_context

    out = {}
    torch.manual_seed(0)
    dev = torch.device(device)
    method_cfg = validate_method_config(name, cfg["methods"][name])
    for dims in method_cfg.dims:
        n_labels = len(cfg["data"]["cxr"]["labels"]) if dims == 2 else 1
        sites = _site_label_counts(cfg, method_cfg) if method_class(name).data.get(dims) == "cxr_sites" else ()
        method = method_class(name)(method_cfg, build_context(cfg, dims, n_labels, sites, method=name))
        budget = cfg["pretrain"]["image_passes_2d" if dims == 2 else "volume_passes_3d"]
        epochs = cfg["pretrain"]["epochs"]
        if not method.trains:
            out[dims] = {"seconds_per_step": 0.0, "batch_size": 0, "passes_per_step": 0.0, "total_steps": 0}
            continue
        total_steps = epochs * math.ceil(budget / (method.cfg.batch_size * method.views) / epochs)
        if hasattr(method, "set_total_steps"):
            method.set_total_steps(total_steps)
        if hasattr(method, "set_schedule"):  # Ark's site turns: every timed step in the first site's turn
            method.set_schedule([steps + 1] + [1] * (len(sites) - 1), epochs)
        method.to(dev)
        batch = {k: v.to(dev) for k, v in _fake_batch(method.data[dims], cfg, method.cfg.batch_size, dims,
                                                                method_cfg).items()}
        opt = method.configure_optimizer()
        g = torch.Generator().manual_seed(0)

        def step() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
                loss = method(batch, g)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(method, "after_step"):
                method.after_step()

        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[dims] = {"seconds_per_step": (time.perf_counter() - t0) / steps, "batch_size": method.cfg.batch_size,
                     "passes_per_step": method.cfg.batch_size * method.views, "total_steps": total_steps}
        if data:
            out[dims]["data_seconds_per_batch"] = time_batches(cfg, method, dims, steps)
    return out


def time_pretraining(cfg: dict, name: str, steps: int) -> dict[str, float]:
    """Seconds of pretraining per dimension, projected from ``steps`` timed steps."""
    return {f"{dims}d": t["seconds_per_step"] * t["total_steps"] for dims, t in time_steps(cfg, name, steps).items()}


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
