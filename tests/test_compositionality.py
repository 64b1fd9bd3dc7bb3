"""Part-whole compositionality (matched minus mismatched cosine on centred features), part centres, the few-shot
table."""

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib.analysis.compositionality import compositionality, derangement, part_whole_cosines
from eden_lib.data.patches import crop_around, part_centres
from eden_lib.reporting.tables import few_shot_table


def test_derangement_has_no_fixed_point_and_is_a_permutation():
    g = np.random.default_rng(0)
    for n in (2, 3, 10, 101):
        d = derangement(n, g)
        assert sorted(d) == list(range(n)) and not (d == np.arange(n)).any()
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1, g)


def test_a_whole_that_is_the_mean_of_its_parts_scores_high_unrelated_parts_score_zero():
    g = np.random.default_rng(1)
    parts = g.normal(size=(400, 4, 16))
    composed = compositionality(parts.mean(axis=1), parts, seed=0, n_bootstrap=200)
    assert composed["matched"] == pytest.approx(1.0) and composed["score"] > 0.8
    assert composed["score_ci_low"] <= composed["score"] <= composed["score_ci_high"]
    unrelated = compositionality(g.normal(size=(400, 16)), parts, seed=0, n_bootstrap=200)
    assert abs(unrelated["score"]) < 0.05 and unrelated["score_ci_low"] < 0 < unrelated["score_ci_high"]


def test_centring_removes_what_every_feature_shares():
    """Pooled ReLU features share a large common direction: raw cosines near 1 for anything, centred ones not."""
    g = np.random.default_rng(2)
    common = 50 * np.ones(16)
    wholes, parts = common + g.normal(size=(300, 16)), common + g.normal(size=(300, 4, 16))
    raw = (wholes * parts.mean(1)).sum(1) / np.linalg.norm(wholes, axis=1) / np.linalg.norm(parts.mean(1), axis=1)
    matched, mismatched = part_whole_cosines(wholes, parts, seed=0)
    assert raw.mean() > 0.99 and abs(matched.mean()) < 0.1 and abs(mismatched.mean()) < 0.1


def test_part_whole_cosines_check_shapes():
    with pytest.raises(ValueError, match=r"parts \(N, K, D\)"):
        part_whole_cosines(np.zeros((5, 8)), np.zeros((5, 8)))


def test_part_centres_tile_the_patch_in_reading_order():
    img = np.arange(64 * 64, dtype=np.float64).reshape(1, 64, 64) % 251
    img = img.astype(np.uint8)
    centre = np.array([[32.0, 32.0]])
    whole = crop_around(img, centre, patch=16, size=16)[0, 0]
    quarters = crop_around(img, part_centres(centre, 16), patch=8, size=8)
    assert quarters.shape == (4, 1, 8, 8)
    torch.testing.assert_close(quarters[0, 0], whole[:8, :8])
    torch.testing.assert_close(quarters[1, 0], whole[:8, 8:])
    torch.testing.assert_close(quarters[2, 0], whole[8:, :8])
    torch.testing.assert_close(quarters[3, 0], whole[8:, 8:])


def test_few_shot_table_marks_the_best_and_tests_the_others_against_it():
    rows, noise = [], iter(np.random.default_rng(3).normal(0, 0.005, size=18))
    for seed in range(3):
        for method, base in (("a", 0.8), ("b", 0.5), ("c", 0.79)):
            for shots in (3, 24):
                rows.append({"method": method, "seed": seed, "shots": shots, "structure": "heart",
                             "value": base + next(noise) + (0.1 if shots == 24 else 0)})
    table = few_shot_table(pd.DataFrame(rows), ["a", "b", "c"]).set_index("method")
    assert list(table.columns) == ["heart 3", "heart 24"]
    assert table.loc["a", "heart 3"].endswith("▲")
    assert table.loc["b", "heart 3"].endswith("**")  # 0.3 lower on every seed
    assert table.loc["c", "heart 3"].endswith("n.s.")  # 0.01 lower, within the noise
    assert table.loc["b", "heart 24"].startswith("0.6")  # the +0.1 of 24 shots


def test_few_shot_table_leaves_an_unlearned_structure_unmarked():
    rows = [{"method": m, "seed": s, "shots": 3, "structure": "clavicle", "value": v}
            for m, vals in (("a", (0.0, 0.001, 0.0)), ("b", (0.0, 0.0, 0.0))) for s, v in enumerate(vals)]
    table = few_shot_table(pd.DataFrame(rows), ["a", "b"]).set_index("method")
    assert "▲" not in table.loc["a", "clavicle 3"] and table.loc["b", "clavicle 3"] == "0.000 ± 0.000"
