"""TransVW's convergence claim: time to a fraction of the final score, reduced budgets, the stage and its section."""

import json

import numpy as np
import pytest

from eden_lib import paths
from eden_lib.analysis import convergence as cv
from eden_lib.pipeline import report
from eden_lib.pipeline.convergence import run_convergence


def test_time_to_fraction_is_the_first_point_at_the_threshold_above_the_floor():
    # final 0.9 above the floor 0.5: threshold 0.5 + 0.95 * 0.4 = 0.88; first reached at step 30 of 60
    assert cv.time_to_fraction([10, 20, 30, 40, 50, 60], [0.6, 0.7, 0.89, 0.8, 0.85, 0.9], 0.95, 0.5) == 0.5
    assert cv.time_to_fraction([5, 10], [0.2, 0.4], 0.95, 0.0) == 1.0
    assert cv.time_to_fraction([5, 10], [0.99, 1.0], 0.95, 0.0) == 0.5


def test_time_to_fraction_is_undefined_for_a_run_that_ends_at_chance():
    assert np.isnan(cv.time_to_fraction([1, 2], [0.7, 0.5], 0.95, 0.5))
    assert np.isnan(cv.time_to_fraction([1, 2], [0.3, 0.0], 0.95, 0.0))
    with pytest.raises(ValueError, match="time_to_fraction"):
        cv.time_to_fraction([1, 2], [0.3], 0.95, 0.0)


def _run(task, budget, seed, values, protocol="finetune", metric="dice", value=None):
    curve = [{"step": 10 * (i + 1), "value": v} for i, v in enumerate(values)] if values else None
    r = {"task": task, "protocol": protocol, "budget": budget, "seed": seed, "metric": metric,
         "value": values[-1] if value is None else value, "per_class": {}}
    return {**r, "curve": curve} if curve else r


def _records():
    """``fast`` reaches its final Dice at the first of 4 points, ``slow`` at the third or last; both end at the same
    3-shot Dice, and ``fast`` scores 0.1 more at the other reduced budgets (linear probes at 10 % of the labels and
    5 shots), 3 seeds."""
    out = {"fast": [], "slow": []}
    for seed in range(3):
        out["fast"] += [_run("seg", "3_shots", seed, [0.5, 0.5, 0.5, 0.5]),
                        _run("cls", "0.1", seed, None, "linear_probe", "auc", 0.7 + 0.01 * seed),
                        _run("cls", "5_shots", seed, None, "linear_probe", "auc", 0.65),
                        _run("cls", "1", seed, None, "linear_probe", "auc", 0.9)]
        out["slow"] += [_run("seg", "3_shots", seed, [0.1, 0.2, 0.5 if seed == 0 else 0.3, 0.5]),
                        _run("cls", "0.1", seed, None, "linear_probe", "auc", 0.6 + 0.01 * seed),
                        _run("cls", "5_shots", seed, None, "linear_probe", "auc", 0.55 + 0.001 * seed),
                        _run("cls", "1", seed, None, "linear_probe", "auc", 0.9)]
    return out


def test_tables_pair_runs_and_keep_only_reduced_budgets():
    curves = cv.curve_table(_records())
    assert sorted(curves["method"]) == ["fast"] * 3 + ["slow"] * 3
    assert (curves.loc[curves["method"] == "fast", "time"] == 0.25).all()
    assert sorted(curves.loc[curves["method"] == "slow", "time"]) == [0.75, 1.0, 1.0]
    budgets = cv.reduced_budget_table(_records())
    assert set(budgets["budget"]) == {"0.1", "5_shots", "3_shots"}  # the full budget "1" is not reduced
    conv = cv.paired_units(curves, "time", "fast", "slow")
    eff = cv.paired_units(budgets, "value", "fast", "slow")
    assert conv["n"] == 3 and conv["diff"] == pytest.approx(-2 / 3) and conv["p"] < 0.05
    assert eff["n"] == 9 and eff["diff"] == pytest.approx((0.3 + 0.3 - 0.003) / 9) and eff["p"] < 0.05
    assert cv.verdict(conv, eff) == "held"
    assert cv.verdict(cv.paired_units(curves, "time", "slow", "fast"), eff) == "did not hold"


def test_verdict_needs_both_parts_significant_in_the_claimed_direction():
    faster = {"diff": -0.3, "p": 0.01}
    better = {"diff": 0.05, "p": 0.01}
    unclear = {"diff": 0.05, "p": 0.4}
    assert cv.verdict(faster, better) == "held"
    assert cv.verdict(faster, unclear) == "was not supported"
    assert cv.verdict(faster, {"diff": -0.05, "p": 0.01}) == "did not hold"
    assert cv.verdict({"diff": 0.3, "p": 0.01}, better) == "did not hold"
    assert cv.verdict({"diff": -0.3, "p": float("nan")}, better) == "was not supported"


def test_stage_writes_metrics_figures_and_the_report_section(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    for method, runs in _records().items():
        path = paths.metrics_file("transfer", method)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"runs": runs}))
    cfg = {"profile": "test", "active_methods": ["slow", "fast"], "report": {"reference": "slow"},
           "claims": {"convergence": {"method": "fast", "fraction": 0.95}}}
    metrics = run_convergence(cfg)
    assert metrics["convergence"]["fast"]["diff"] < 0 and metrics["efficiency"]["fast"]["diff"] > 0
    assert "`fast` against `slow`" in metrics["sentence"]
    assert (paths.figures_dir("claims") / "convergence.png").is_file()
    assert (paths.figures_dir("claims") / "convergence_budgets.png").is_file()
    text = "\n".join(report.convergence_section())
    assert metrics["sentence"] in text and "figures/claims/convergence.png" in text
    assert "| fast |" in text and "| slow |" in text


def test_stage_names_the_missing_transfer_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    cfg = {"profile": "test", "active_methods": ["scratch"], "report": {"reference": "scratch"},
           "claims": {"convergence": {"method": "transvw", "fraction": 0.95}}}
    with pytest.raises(FileNotFoundError, match=r"transfer/scratch\.json.*transfer@scratch"):
        run_convergence(cfg)
    assert report.convergence_section() == []


def test_section_renders_comparisons_without_a_test(tmp_path, monkeypatch):
    """A comparison over one shared run has no CI and no p: JSON nulls render as missing, never as an error."""
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    path = paths.metrics_file("claims", "convergence")
    path.parent.mkdir(parents=True)
    untested = {"diff": 0.1, "ci_low": None, "ci_high": None, "d": None, "p": None, "n": 1, "p_holm": None}
    path.write_text(json.dumps({"method": "transvw", "reference": "scratch", "fraction": 0.95, "sentence": "S.",
                                "time": {"transvw": {"mean": 0.5, "std": None, "n": 1}},
                                "convergence": {"transvw": untested}, "efficiency": {"transvw": untested}}))
    text = "\n".join(report.convergence_section())
    assert "+0.100 [–, –]" in text and "| transvw | 0.500 (1 runs) |" in text
