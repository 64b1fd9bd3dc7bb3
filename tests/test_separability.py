"""CAiD's separability and feature-reuse analyses: linear CKA and pairwise distances on known answers."""

import numpy as np
import pytest

from eden_lib.analysis.cka import bootstrap_cka, linear_cka
from eden_lib.analysis.separability import mean_distance_difference, pairwise_cosine_distances
from eden_lib.pipeline.separability import reuse_difference, verdict_sentence


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
    metrics = {"method": "caid", "base": "moco_v2", "reuse_test": t,
               "separability_tests": {"caid - moco_v2": {"diff": -0.1, "ci_low": -0.2, "ci_high": -0.05, "p": 0.01}}}
    sentence = verdict_sentence(metrics)
    assert "separability claim" in sentence and "moco_v2`) did not hold" in sentence
    assert "feature-reuse claim" in sentence and "higher mean CKA over stages) held" in sentence


@pytest.mark.parametrize("key, value", [("n_images", 2), ("reuse_methods", "caid"), ("n_bootstrap", 5),
                                        ("method", 3)])
def test_bad_blocks_fail_naming_the_key(key, value):
    from eden_lib.pipeline.separability import check_separability

    block = {"method": "caid", "base": "moco_v2", "n_images": 50, "reuse_methods": ["caid"], "n_bootstrap": 100}
    check_separability(block)
    with pytest.raises(ValueError, match=rf"claims.separability.{key}"):
        check_separability({**block, key: value})
