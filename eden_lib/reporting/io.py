"""Writing metrics files: stable keys, no volatile values (they would make every diff noisy)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(obj: Any) -> Any:
    """NaN / inf -> None (JSON has no NaN), numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    return json.loads(path.read_text())


class StageTimer:
    """Wall time and peak memory of one stage, written to ``reports/timing/<name>.json`` by :meth:`write`.

    Kept apart from the metrics files (timings change on every run). Kernel start-up and imports before the
    timer starts are not counted. ``extra`` adds named figures, e.g. the training seconds of a pretraining that was
    resumed from its checkpoints (the stage itself then only re-exports).
    """

    def __init__(self, name: str) -> None:
        import time

        self.name = name
        self.start = time.perf_counter()

    def write(self, **extra: float) -> dict:
        import resource
        import sys
        import time

        from eden_lib import paths

        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20
        info = {"stage": self.name, "seconds": round(time.perf_counter() - self.start, 1), "peak_rss_mb": round(peak_mb),
                **{k: round(float(v), 1) for k, v in extra.items()}}
        write_json(info, paths.reports_dir() / "timing" / f"{self.name}.json")
        return info
