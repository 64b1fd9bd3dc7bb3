"""Pretraining throughput of every registered method on this machine (and on a GPU with bf16 autocast, if present).

Run: ``python benchmarks/throughput.py [--steps 10] [--profile synthetic]``. For each method and dimension it builds
the method at the profile's sizes, times ``--steps`` optimiser steps after one warm-up step on batches of the study's
shapes, and, where ``prepare`` has run, times the method's real batch factory over the prepared data (the work the
training loop waits for between steps: indexing the memory-mapped cache, resizing, cropping). It writes:

- ``reports/benchmarks/throughput.json``: the hardware, and per method and dimension the samples (images or volumes)
  per second, the encoder passes per second (views included), seconds per step, the data seconds per batch and their
  share of a step (data / (data + step): near 0 means the data pipeline does not starve the model), and the projected
  pretraining time of the profile's budget;
- ``reports/benchmarks.md``: the same as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from project_default_time import time_steps  # noqa: E402 (benchmarks/ is on sys.path when run)
from eden_lib import paths  # noqa: E402
from eden_lib.config import load_params  # noqa: E402


def hardware() -> dict:
    """CPU model, cores, torch build and threads; the GPU when there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def measure(cfg: dict, steps: int, device: str) -> list[dict]:
    """One row per registered method x dimension on ``device`` (bf16 autocast on CUDA)."""
    from eden_lib.methods import METHODS

    rows = []
    for name in sorted(METHODS):
        if name == "external" or name not in cfg["methods"]:
            continue
        for dims, t in time_steps(cfg, name, steps, device, amp=device == "cuda", data=True).items():
            per_step, data = t["seconds_per_step"], t.get("data_seconds_per_batch")
            rows.append({
                "method": name, "dims": dims, "device": device, "batch_size": t["batch_size"],
                "seconds_per_step": round(per_step, 4),
                "samples_per_second": round(t["batch_size"] / per_step, 1) if per_step else None,
                "passes_per_second": round(t["passes_per_step"] / per_step, 1) if per_step else None,
                "data_seconds_per_batch": None if data is None else round(data, 5),
                "data_share": round(data / (data + per_step), 3) if data is not None and per_step else None,
                "projected_seconds": round(per_step * t["total_steps"], 1),
            })
            print(f"{name:18s} {dims}D {device}: {rows[-1]['samples_per_second']} samples/s", flush=True)
    return rows


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = ["# Pretraining throughput", "",
             f"Measured by `python benchmarks/throughput.py` (profile `{result['profile']}`, {result['steps']} timed "
             f"steps after one warm-up on batches of the study's shapes; data: the real batch factory over the "
             "prepared data, per batch, and its share of a step, data / (data + step)).", "",
             f"Hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} with {hw['threads']} threads"
             + (f"; GPU {hw['gpu']} (bf16 autocast)" if "gpu" in hw else "; no GPU on this machine") + ".", "",
             "| method | dims | device | batch | samples/s | encoder passes/s | s/step | data s/batch | data share "
             "| projected pretraining s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        data = "" if r["data_seconds_per_batch"] is None else r["data_seconds_per_batch"]
        share = "" if r["data_share"] is None else f"{r['data_share']:.1%}"
        lines.append(f"| {r['method']} | {r['dims']}D | {r['device']} | {r['batch_size']} | "
                     f"{r['samples_per_second'] or ''} | {r['passes_per_second'] or ''} | {r['seconds_per_step']} | "
                     f"{data} | {share} | {r['projected_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile whose sizes and budgets are measured")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method and dimension")
    args = ap.parse_args(argv)
    cfg = load_params(paths.params_file(), profile=args.profile)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    result = {"profile": cfg["profile"], "steps": args.steps, "hardware": hardware(),
              "rows": [r for d in devices for r in measure(cfg, args.steps, d)]}
    out = paths.reports_dir() / "benchmarks" / "throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    (paths.reports_dir() / "benchmarks.md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
