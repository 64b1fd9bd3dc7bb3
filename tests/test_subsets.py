import numpy as np
import pytest

from eden_lib.evaluation.subsets import label_fraction_subset, shot_subset


def _pool(n: int = 1000) -> np.ndarray:
    g = np.random.default_rng(0)
    labels = (g.random((n, 4)) < [0.3, 0.05, 0.01, 0.5]).astype(float)
    labels[:3, 3] = np.nan
    labels[:, 2] = 0.0
    labels[[10, 20], 2] = 1.0  # a label with only 2 positives in the whole pool
    return labels


def test_fraction_one_is_everything():
    np.testing.assert_array_equal(label_fraction_subset(_pool(), 1.0, seed=0), np.arange(1000))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_fraction_keeps_min_positives_and_size(seed):
    labels = _pool()
    idx = label_fraction_subset(labels, 0.02, seed=seed, min_positives=3, min_negatives=1)
    assert idx.size == 20 and np.unique(idx).size == 20 and (np.diff(idx) > 0).all()
    pos = (labels[idx] == 1).sum(axis=0)
    assert (pos[[0, 1, 3]] >= 3).all()
    assert pos[2] == 2  # the pool only has 2: both kept
    assert ((labels[idx] == 0).sum(axis=0) >= 1).all()


def test_unstratified_draw_would_miss_rare_labels():
    # the same budget drawn uniformly misses the 2-positive label most of the time: stratification matters
    labels = _pool()
    g = np.random.default_rng(5)
    hits = sum(labels[g.choice(1000, 20, replace=False), 2].sum() >= 2 for _ in range(50))
    assert hits < 5


def test_deterministic_per_seed_and_different_across_seeds():
    labels = _pool()
    a = label_fraction_subset(labels, 0.1, seed=3)
    np.testing.assert_array_equal(a, label_fraction_subset(labels.copy(), 0.1, seed=3))
    assert not np.array_equal(a, label_fraction_subset(labels, 0.1, seed=4))
    assert a.size == 100


def test_requirements_larger_than_budget_warn_and_grow():
    labels = _pool(200)
    with pytest.warns(UserWarning, match="more than fraction"):
        idx = label_fraction_subset(labels, 0.01, seed=0, min_positives=3)
    assert idx.size > 2 and ((labels[idx] == 1).sum(axis=0) >= np.minimum(3, (labels == 1).sum(axis=0))).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"fraction=0"):
        label_fraction_subset(_pool(), 0, seed=0)
    with pytest.raises(ValueError, match=r"\[2.0\]"):
        label_fraction_subset(np.array([[0.0], [2.0]]), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        label_fraction_subset(np.zeros(10), 0.5, seed=0)


def test_shot_subset_nested_deterministic_and_checked():
    subsets = [shot_subset(50, s, seed=1) for s in (3, 6, 12, 24)]
    assert [s.size for s in subsets] == [3, 6, 12, 24]
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    np.testing.assert_array_equal(subsets[0], shot_subset(50, 3, seed=1))
    assert not all(np.array_equal(shot_subset(50, 6, seed=s), subsets[1]) for s in (2, 3))
    with pytest.raises(ValueError, match="shots=60"):
        shot_subset(50, 60, seed=0)
