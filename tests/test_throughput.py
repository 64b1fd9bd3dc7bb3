"""The throughput benchmark measures every registered method that trains, and writes its table with the hardware."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402 (benchmarks/ is not a package)

from eden_lib.methods import METHODS  # noqa: E402


def test_throughput_table_covers_every_registered_method(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = throughput.main(["--profile", "smoke", "--steps", "1"])
    measured = {r["method"] for r in result["rows"]}
    assert measured == set(METHODS) - {"external"}
    trained = [r for r in result["rows"] if r["method"] != "scratch"]
    assert all(r["samples_per_second"] > 0 and r["projected_seconds"] > 0 for r in trained)
    assert {r["dims"] for r in result["rows"] if r["method"] == "models_genesis"} == {2, 3}
    saved = json.loads((tmp_path / "reports" / "benchmarks" / "throughput.json").read_text())
    assert saved["hardware"]["cores"] >= 1 and saved["rows"] == result["rows"]
    table = (tmp_path / "reports" / "benchmarks.md").read_text()
    assert all(f"| {m} |" in table for m in measured) and "Hardware:" in table


def test_data_time_is_measured_on_the_prepared_data_and_absent_without_it(tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd

    from eden_lib import paths
    from eden_lib.config import load_params
    from eden_lib.data.prepared import write_cxr
    from eden_lib.methods import build_method
    from eden_lib.pipeline.pretrain import build_context
    from project_default_time import time_batches

    cfg = load_params(profile="smoke")
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    method = build_method("supervised", {**cfg["methods"]["supervised"], "batch_size": 4}, build_context(cfg, 2, 7))
    assert time_batches(cfg, method, 2, steps=3) is None  # nothing prepared here
    n = 12
    write_cxr(paths.prepared_dir("cxr"), np.full((n, 32, 32), 7, np.uint8), np.zeros((n, 32, 32)),
              np.zeros((n, 3, 2)), np.zeros((n, 7)), pd.DataFrame({"patient_id": range(n), "split": ["train"] * n}), {})
    seconds = time_batches(cfg, method, 2, steps=3)
    assert seconds is not None and seconds > 0
