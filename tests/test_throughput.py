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
