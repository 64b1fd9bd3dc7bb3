"""CAiD's separability, feature-reuse and transfer-ablation analyses: linear CKA, pairwise distances and the drops
of frozen-stage fine-tuning on known answers."""

import json

import numpy as np
import pytest

from eden_lib import paths
from eden_lib.analysis.cka import bootstrap_cka, linear_cka
from eden_lib.analysis.freeze_ablation import ablation_summary
from eden_lib.analysis.separability import mean_distance_difference, pairwise_cosine_distances
from eden_lib.evaluation.statistics import holm, paired_t
from eden_lib.pipeline.separability import reuse_difference, transfer_finetune_auc, verdict_sentence

#: the ablation block of a metrics file where nothing was tested
UNTESTED = {"verdict": "was not tested", "tests": {}, "seeds": [0]}


def test_cka_of_a_representation_with_itself_and_its_rotations_is_one():
    g = np.random.default_rng(0)
    x = g.normal(size=(50, 8))
    q = np.linalg.qr(g.normal(size=(8, 8)))[0]
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # orthogonal map, isotropic scale, offset


def test_cka_of_unrelated_representations_is_small_and_matches_the_formula():
    g = np.random.default_rng(1)
    x, y = g.normal(size=(400, 4)), g.normal(size=(400, 6))
    assert linear_cka(x, y) < 0.05
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.sum((yc.T @ xc) ** 2) / (np.sqrt(np.sum((xc.T @ xc) ** 2)) * np.sqrt(np.sum((yc.T @ yc) ** 2)))
    assert linear_cka(x, y) == pytest.approx(expected)
    with pytest.raises(ValueError, match="same N"):
        linear_cka(x, y[:10])


def test_bootstrap_cka_brackets_the_estimate():
    g = np.random.default_rng(2)
    x = g.normal(size=(60, 5))
    y = x + 0.5 * g.normal(size=(60, 5))
    ci = bootstrap_cka(x, y, np.random.default_rng(0), n_bootstrap=100)
    assert ci["ci_low"] <= ci["cka"] <= ci["ci_high"] and 0 < ci["cka"] < 1


def test_pairwise_distances_are_the_cosine_distances_of_distinct_pairs():
    f = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    expected = [1.0, 1 - 1 / np.sqrt(2), 1 - 1 / np.sqrt(2)]  # (0,1), (0,2), (1,2)
    assert pairwise_cosine_distances(f) == pytest.approx(expected)


def test_a_spread_out_embedding_has_larger_distances_than_a_collapsed_one():
    g = np.random.default_rng(3)
    spread = g.normal(size=(40, 16))
    collapsed = np.ones((40, 16)) + 0.05 * g.normal(size=(40, 16))
    t = mean_distance_difference(spread, collapsed, np.random.default_rng(0), n_bootstrap=100)
    assert t["diff"] > 0.5 and t["ci_low"] > 0 and t["p"] == pytest.approx(2 / 101)  # no replicate <= 0: 2 (0 + 1) / (100 + 1)
    same = mean_distance_difference(spread, spread, np.random.default_rng(0), n_bootstrap=50)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0


def test_reuse_difference_and_the_verdict():
    g = np.random.default_rng(4)
    before = [g.normal(size=(30, 4)) for _ in range(5)]
    kept = [b + 0.01 * g.normal(size=b.shape) for b in before]  # barely changed by fine-tuning: CKA ~ 1
    changed = [g.normal(size=b.shape) for b in before]  # replaced: CKA ~ 0
    feats = {"caid": (before, kept), "moco_v2": (before, changed)}
    t = reuse_difference(feats, "caid", "moco_v2", np.random.default_rng(0), n_bootstrap=50)
    assert t["diff"] > 0.5 and t["ci_low"] > 0
    assert reuse_difference(feats, "caid", "dira", np.random.default_rng(0), 10) is None
    metrics = {"method": "caid", "base": "moco_v2", "reuse_test": t, "ablation": UNTESTED,
               "separability_tests": {"caid - moco_v2": {"diff": -0.1, "ci_low": -0.2, "ci_high": -0.05, "p": 0.01}}}
    sentence = verdict_sentence(metrics)
    assert "separability claim" in sentence and "moco_v2`) did not hold" in sentence
    assert "feature-reuse claim" in sentence and "higher mean CKA over stages) held" in sentence
    assert sentence.endswith("less test AUC than `moco_v2`: feature reuse) was not tested.")


def _scores(caid_drops: list[float], ks=(2, 4)) -> dict:
    """Test AUCs over 4 seeds: every method at 0.70 + seed noise for k = 0; moco_v2 and scratch lose 0.05 per frozen
    stage pair, caid loses ``caid_drops[i]`` at ``ks[i]`` (plus paired noise), supervised nothing."""
    g = np.random.default_rng(5)
    base = {s: 0.70 + 0.01 * s for s in range(4)}
    out = {}
    for m in ("caid", "moco_v2", "scratch", "supervised"):
        per_k = {0: dict(base)}
        for i, k in enumerate(ks):
            loss = {"caid": caid_drops[i], "moco_v2": 0.05 * (i + 1), "scratch": 0.1 * (i + 1), "supervised": 0.0}[m]
            per_k[k] = {s: v - loss - 0.002 * g.normal() for s, v in base.items()}
        out[m] = per_k
    return out


def test_ablation_drops_paired_tests_and_holm_on_known_scores():
    scores = _scores([0.01, 0.02])  # caid loses far less than moco_v2 at both k: held
    a = ablation_summary(scores, "caid", "moco_v2")
    assert a["auc"]["caid"]["0"]["mean"] == pytest.approx(0.715) and a["auc"]["caid"]["0"]["n"] == 4
    assert a["auc"]["caid"]["0"]["values"] == pytest.approx([0.70, 0.71, 0.72, 0.73])
    cell = a["auc"]["supervised"]["2"]
    assert cell["ci_low"] < cell["mean"] < cell["ci_high"] and cell["std"] > 0
    assert a["drop"]["scratch"]["4"]["mean"] == pytest.approx(0.2, abs=0.01) and set(a["drop"]["caid"]) == {"2", "4"}
    drops = {m: {k: [scores[m][0][s] - scores[m][k][s] for s in range(4)] for k in (2, 4)} for m in scores}
    expected = [paired_t(np.array(drops["caid"][k]), np.array(drops["moco_v2"][k])) for k in (2, 4)]
    for t, e, p in zip(a["tests"].values(), expected, holm([e["p"] for e in expected])):
        assert t["diff"] == pytest.approx(e["diff"]) and t["p"] == pytest.approx(e["p"])
        assert t["p_holm"] == pytest.approx(p) and t["diff"] < 0 and t["n"] == 4
    assert a["verdict"] == "held"
    assert ablation_summary(_scores([0.2, 0.3]), "caid", "moco_v2")["verdict"] == "did not hold"
    assert ablation_summary(_scores([0.05, 0.1]), "caid", "moco_v2")["verdict"] == "was not supported"
    untested = ablation_summary({m: v for m, v in scores.items() if m != "moco_v2"}, "caid", "moco_v2")
    assert untested["tests"] == {} and untested["verdict"] == "was not tested"
    with pytest.raises(ValueError, match="every method needs k = 0"):
        ablation_summary({"caid": {2: {0: 0.6}}}, "caid", "moco_v2")


def test_the_ablation_sentence_names_the_verdict_and_each_k():
    a = {**ablation_summary(_scores([0.01, 0.02]), "caid", "moco_v2"), "seeds": [0, 1, 2, 3]}
    metrics = {"method": "caid", "base": "moco_v2", "reuse_test": None, "separability_tests": {}, "ablation": a}
    sentence = verdict_sentence(metrics)
    assert "less test AUC than `moco_v2`: feature reuse) held (AUC drop from k = 0, `caid` minus `moco_v2`, " \
           "paired over 4 seeds: k = 2: -0.04" in sentence
    assert f"; k = 4: {a['tests']['4']['diff']:+.4f}, 95 % CI" in sentence and sentence.count("Holm p = ") == 2


def test_k0_are_the_transfer_stages_fine_tuning_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    cfg = {"transfer": {"finetune_fraction": 1.0}}
    runs = [{"task": "cxr_classification", "protocol": "finetune", "budget": "1", "seed": s, "value": v}
            for s, v in ((0, 0.61), (1, None), (2, 0.63))]
    runs += [{"task": "cxr_classification", "protocol": "linear_probe", "budget": "1", "seed": 3, "value": 0.5},
             {"task": "cxr_classification", "protocol": "finetune", "budget": "0.1", "seed": 3, "value": 0.5}]
    path = paths.metrics_file("transfer", "caid")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"runs": runs}))
    auc = transfer_finetune_auc(cfg, "caid", [0, 1, 2])
    assert auc[0] == 0.61 and np.isnan(auc[1]) and list(auc) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"caid.json: no cxr_classification fine-tuning run \(budget 1\) for "
                                         r"seeds \[3\]"):
        transfer_finetune_auc(cfg, "caid", [0, 3])


@pytest.mark.parametrize("key, value", [("n_images", 2), ("reuse_methods", "caid"), ("n_bootstrap", 5),
                                        ("method", 3), ("freeze_stages", [0, 2]), ("freeze_stages", []),
                                        ("freeze_stages", [4, 2]), ("freeze_stages", [2, 6]),
                                        ("freeze_stages", [2, 2]), ("freeze_stages", [2.0])])
def test_bad_blocks_fail_naming_the_key(key, value):
    from eden_lib.pipeline.separability import check_separability

    block = {"method": "caid", "base": "moco_v2", "n_images": 50, "reuse_methods": ["caid"], "n_bootstrap": 100,
             "freeze_stages": [1, 5]}
    check_separability(block)
    with pytest.raises(ValueError, match=rf"claims.separability.{key}"):
        check_separability({**block, key: value})
