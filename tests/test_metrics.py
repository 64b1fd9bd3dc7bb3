import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from sklearn.metrics import roc_auc_score

from eden_lib.evaluation.metrics import (
    auc_per_label,
    binary_auc,
    bootstrap_auc,
    bootstrap_counts,
    dice_per_class,
    mean_auc,
    rank_auc,
    weighted_auc,
)
from eden_lib.seed import rng


def test_binary_auc_hand_computed():
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts 1/2
    assert binary_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_auc_per_label_matches_sklearn_with_ties_and_unknown_rows():
    g = np.random.default_rng(0)
    y = (g.random((300, 4)) < 0.3).astype(float)
    scores = np.round(y * 0.5 + g.random((300, 4)), 1)  # rounding creates ties
    y[g.random((300, 4)) < 0.2] = np.nan
    auc = auc_per_label(y, scores)
    for k in range(4):
        known = ~np.isnan(y[:, k])
        assert auc[k] == pytest.approx(roc_auc_score(y[known, k], scores[known, k]), abs=1e-12)


def test_single_class_label_is_nan_with_a_note_not_an_error():
    y = np.array([[0, 1], [0, 0], [0, 1], [np.nan, 0]], dtype=float)
    s = np.array([[0.2, 0.9], [0.4, 0.1], [0.3, 0.7], [0.9, 0.2]])
    with pytest.warns(UserWarning, match=r"effusion \(one class only: 0 positive, 3 negative\)"):
        auc = auc_per_label(y, s, label_names=["effusion", "nodule"])
    assert np.isnan(auc[0]) and auc[1] == pytest.approx(1.0)
    assert mean_auc(auc) == pytest.approx(1.0)


def test_nan_scores_give_nan_auc_with_note():
    y = np.array([[0.0], [1.0], [1.0]])
    with pytest.warns(UserWarning, match="NaN scores"):
        assert np.isnan(auc_per_label(y, np.full((3, 1), np.nan))[0])


def test_no_warning_when_every_label_is_defined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auc_per_label(np.array([[0.0], [1.0]]), np.array([[0.1], [0.2]]))


def test_bad_labels_and_shapes_raise_with_the_value():
    with pytest.raises(ValueError, match=r"\[-1.0\]"):
        auc_per_label(np.array([[0.0], [-1.0]]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="same shape|equal"):
        auc_per_label(np.zeros((3, 2)), np.zeros((3, 1)))


def test_mean_auc_ignores_nan_and_all_nan_is_nan():
    assert mean_auc(np.array([0.6, np.nan, 0.8])) == pytest.approx(0.7)
    assert np.isnan(mean_auc(np.array([np.nan, np.nan])))


def test_rank_auc_batches_over_leading_axes():
    g = np.random.default_rng(1)
    y = (g.random((3, 5, 40)) < 0.5).astype(float)
    s = g.random((3, 5, 40))
    out = rank_auc(y, s)
    assert out.shape == (3, 5)
    assert out[2, 4] == pytest.approx(roc_auc_score(y[2, 4], s[2, 4]))


def test_bootstrap_auc_equals_resampled_sklearn_and_is_deterministic():
    g = np.random.default_rng(2)
    y = (g.random(120) < 0.4).astype(float)
    s = y + g.normal(size=120)
    boot = bootstrap_auc(y, s, n=200, seed=7)
    assert boot.shape == (200,)
    np.testing.assert_array_equal(boot, bootstrap_auc(y, s, n=200, seed=7))
    assert not np.array_equal(boot, bootstrap_auc(y, s, n=200, seed=8))
    idx = rng(7, "bootstrap_auc").integers(0, 120, size=(200, 120))
    for b in range(3):
        assert boot[b] == pytest.approx(roc_auc_score(y[idx[b]], s[idx[b]]))
    assert abs(np.nanmean(boot) - binary_auc(y, s)) < 0.02


def test_bootstrap_replicate_with_one_class_is_nan():
    boot = bootstrap_auc(np.array([0.0, 0.0, 0.0, 1.0]), np.array([0.1, 0.2, 0.3, 0.9]), n=300, seed=0)
    assert np.isnan(boot).any() and (boot[~np.isnan(boot)] == 1.0).all()


@pytest.mark.parametrize("spatial", [(16, 16), (6, 8, 8)])
def test_dice_per_class_matches_monai_dicemetric(spatial):
    g = np.random.default_rng(3)
    pred = g.random((5, 3, *spatial)) < 0.3
    target = g.random((5, 3, *spatial)) < 0.3
    pred[0, 1] = target[0, 1] = False  # empty-empty -> 1
    target[1, 2] = False  # empty target, non-empty prediction -> 0
    metric = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False)
    metric(torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_allclose(dice_per_class(pred, target), metric.aggregate().numpy(), rtol=1e-6)


def test_dice_hand_computed_and_input_checks():
    pred = np.zeros((2, 1, 2, 2), dtype=bool)
    target = np.zeros((2, 1, 2, 2), dtype=bool)
    pred[0, 0, 0, :] = True  # 2 pixels
    target[0, 0, :, 0] = True  # 2 pixels, overlap 1 -> dice 0.5; image 1 empty-empty -> 1
    assert dice_per_class(pred, target)[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="boolean"):
        dice_per_class(pred.astype(np.uint8), target)
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\)"):
        dice_per_class(pred[:, 0], target)


def test_weighted_auc_equals_rank_auc_on_the_resampled_rows():
    g = np.random.default_rng(4)
    y = (g.random((80, 3)) < 0.4).astype(float)
    y[g.random((80, 3)) < 0.1] = np.nan
    s = np.round(g.random((80, 3)) + 0.3 * np.nan_to_num(y), 1)  # ties
    idx = g.integers(0, 80, size=(50, 80))
    counts = np.stack([np.bincount(row, minlength=80) for row in idx])
    expected = rank_auc(y[idx].transpose(0, 2, 1), s[idx].transpose(0, 2, 1))
    np.testing.assert_allclose(weighted_auc(y, s, counts), expected, rtol=1e-12)
    np.testing.assert_allclose(weighted_auc(y, s, np.ones((1, 80)))[0], auc_per_label(y, s), rtol=1e-12)


def test_bootstrap_counts_sum_to_rows_and_follow_the_generator():
    counts = bootstrap_counts(30, 20, rng(0, "x"))
    assert counts.shape == (20, 30) and (counts.sum(axis=1) == 30).all()
    np.testing.assert_array_equal(counts, bootstrap_counts(30, 20, rng(0, "x")))
