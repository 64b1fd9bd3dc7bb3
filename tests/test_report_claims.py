"""The report's Alice, view-mining and claims sections render from their metrics files (and vanish without them)."""

import json

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.pipeline import report


def _write(stage: str, name: str, obj: dict) -> None:
    path = paths.metrics_file(stage, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _ci(mean):
    return {"mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01, "n": 10}


def test_claim_sections_are_empty_without_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    for section in (report.ark_sites_section, report.interpolation_section, report.separability_section,
                    report.genesis_dims_section, report.localisation_section, report.anatomy_lines):
        assert section() == []


def test_claim_sections_render_tables_verdicts_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    test = {"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03, "p": 0.004}
    _write("claims", "ark_sites", {"site_counts": [1, 2], "units": 10, "per_k": {"1": _ci(0.5), "2": _ci(0.55)},
                                   "per_site": {"1": {"a": 0.5}, "2": {"a": 0.55}}, "sentence": "ARK VERDICT.",
                                   "floors": {"scratch": {**test, "other": _ci(0.53)}}})
    _write("claims", "interpolation", {"reference": "adam_v2", "n_pairs": 5, "t": [0.5], "sentence": "INTERP.",
                                       "methods": {"adam_v2": {"interpolate": {"score": 0.3, "ci_low": 0.2,
                                                                               "ci_high": 0.4},
                                                               "extrapolate": {"score": 0.2, "ci_low": 0.1,
                                                                               "ci_high": 0.3}}},
                                       "comparisons": {"interpolate": {}, "extrapolate": {}}})
    stage = {"cka": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    _write("claims", "separability", {"method": "caid", "base": "moco_v2", "n_images": 20, "sentence": "SEP.",
                                      "separability": {"caid": {"mean": 0.1, "median": 0.09, "quartiles": [0.05, 0.2]}},
                                      "separability_tests": {"caid - moco_v2": test},
                                      "reuse": {"caid": [stage] * 5}, "reuse_test": test, "ablation": {
                                          "freeze_stages": [0, 2], "seeds": [0, 1, 2], "k0_max_abs_diff": 0.0,
                                          "auc": {"caid": {"0": {**_ci(0.7), "std": 0.02}, "2": {**_ci(0.66),
                                                                                                 "std": None}}},
                                          "drop": {"caid": {"2": {**_ci(0.04), "ci_high": None}}},
                                          "tests": {"2": {**test, "n": 3, "p_holm": 0.008}}}})
    _write("claims", "genesis_dims", {"methods": ["models_genesis"], "slice_size": 32, "seg_epochs": 1,
                                      "sentence": "DIMS.", "comparisons": [
                                          {"task": "ct_nodule_classification", "budget": "1",
                                           "reference": "models_genesis 3D", "arm": "models_genesis 2D", "mean": 0.6,
                                           "std": 0.01, "diff_ref_minus_arm": 0.05, "p_adjusted": 0.01,
                                           "stars": "*"}]})
    text = "\n".join(report.ark_sites_section() + report.interpolation_section() + report.separability_section()
                     + report.genesis_dims_section())
    for expected in ("ARK VERDICT.", "INTERP.", "SEP.", "DIMS.", "figures/claims/ark_sites.png",
                     "figures/claims/interpolation.png", "figures/claims/separability.png",
                     "figures/claims/genesis_dims.png", "0.550 [0.540, 0.560]", "+0.050 *", "0.900 [0.850, 0.950]",
                     "| caid | 0.700 ± 0.020 [0.690, 0.710] | 0.660 [0.650, 0.670] | +0.040 |",
                     "- k = 2: drop of `caid` minus drop of `moco_v2` +0.020 [+0.010, +0.030], paired t over 3 seeds, "
                     "Holm p = 0.008 **", "max |ΔAUC| = 0"):
        assert expected in text, expected


def test_localisation_section_renders_scores_controls_tests_and_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    test = {"diff": 0.1, "ci_low": 0.05, "ci_high": 0.15, "p": 0.002}
    null = {"diff": 0.0, "ci_low": -0.05, "ci_high": 0.05, "p": 0.9}

    def score(mean):
        per = {"pointing": _ci(mean), "iou": _ci(mean / 2)}
        return {**per, "per_finding": {"Mass": per}}

    _write("claims", "localisation", {
        "method": "dira", "base": "moco_v2", "methods": ["moco_v2", "dira"], "stage": 4, "threshold": 0.5,
        "tolerance": 0, "image_size": 64, "floor": "random map", "control": "prior (no image)", "n_boxes": 12,
        "n_images": 10, "boxes_per_finding": {"Mass": 12},
        "dropped": {"not a prepared test image": 2, "finding not in data.cxr.labels": {"Infiltration": 3}},
        "test_auc": {"dira": {"mean": 0.8, "std": 0.01, "n": 3}, "moco_v2": {"mean": 0.78, "std": 0.02, "n": 3}},
        "scores": {"moco_v2": score(0.4), "dira": score(0.5), "random map": score(0.25),
                   "prior (no image)": score(0.45)},
        "controls": {"moco_v2": {"random": {"pointing": test, "iou": test}, "prior": {"pointing": null, "iou": null}},
                     "dira": {"random": {"pointing": test, "iou": test}, "prior": {"pointing": test, "iou": null}}},
        "claim_tests": {"dira - moco_v2": {"pointing": test, "iou": null}}, "sentence": "LOC VERDICT."})
    text = "\n".join(report.localisation_section())
    for expected in ("## Claim: lesion localisation from image-level labels (DiRA)", "LOC VERDICT.",
                     "figures/claims/localisation.png", "| dira | 0.500 [0.490, 0.510] | 0.250 [0.240, 0.260] | 0.800",
                     "| random map | 0.250 [0.240, 0.260]", "12 boxes of 10 test images",
                     "floor `random map` on the pointing game (paired bootstrap CI above 0): `moco_v2`, `dira`.",
                     "control `prior (no image)` on the pointing game (paired bootstrap CI above 0): `dira`.",
                     "- `dira - moco_v2`: pointing game +0.100 [+0.050, +0.150], p = 0.002; mean IoU +0.000",
                     "2 not on a prepared test image, 3 of findings the classifier does not have (Infiltration)",
                     "| dira | pointing | 0.500 [0.490, 0.510] |"):
        assert expected in text, expected


def test_alice_tables_test_alice_against_its_references_and_the_ablations(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    g = np.random.default_rng(0)
    rows = []
    for method, shift in (("scratch", 0.0), ("models_genesis", 0.01), ("alice", 0.2)):
        for seed in range(4):
            rows.append({"method": method, "task": "ct_nodule_classification", "protocol": "linear_probe",
                         "budget": "1", "seed": seed, "metric": "auc", "value": 0.6 + shift + g.normal(0, 0.01)})
    runs = pd.DataFrame(rows)
    table = report.alice_table(runs)
    assert list(table.columns) == ["task", "protocol", "budget", "metric", "alice", "scratch", "alice - scratch",
                                   "models_genesis", "alice - models_genesis"]
    assert table.loc[0, "alice - scratch"].startswith("+0.1") and "*" in table.loc[0, "alice - scratch"]
    ablations = {"random views": {"overrides": {"methods.alice.views": "random"}, "runs": [
        {**r, "value": r["value"] - 0.2} for r in rows if r["method"] == "alice"]}}
    ablation = report.alice_ablation_table(runs[runs["method"] == "alice"], ablations)
    assert "(-0.200" in ablation.loc[0, "random views"]
    _write("anatomy", "matching", {"n_scans": 3, "threshold": 0.9, "try_acceptance_rate": 0.5,
                                   "matcher": {"loss_first": 9.0, "loss_final": 3.0, "steps": 10},
                                   "landmark_match": {"median_mm": 12.0, "per_landmark_median_mm": {"a": 12.0}},
                                   "modes": {"matched": {"n_pairs": 8, "errors": {"median_mm": 15.0, "mean_mm": 20.0,
                                                                                  "within_10mm": 0.2,
                                                                                  "within_20mm": 0.6}}}})
    lines = "\n".join(report.anatomy_lines())
    assert "| matched | 8 | 15.0 |" in lines and "median 12.0 mm" in lines
