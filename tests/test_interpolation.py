"""Adam-v2's interpolation / extrapolation claim: points, predictions, scores and pair selection on known answers."""

import numpy as np
import pytest

from eden_lib.analysis.interpolation import (
    beyond_points,
    bootstrap_mean,
    cosines,
    line_points,
    pair_scores,
    predicted,
)
from eden_lib.pipeline.interpolation import comparisons, landmark_pairs, verdict_sentence


def test_points_on_and_past_the_segment():
    a, b = np.array([[0.0, 0.0]]), np.array([[4.0, 8.0]])
    assert line_points(a, b, 0.25).tolist() == [[1.0, 2.0]]
    assert beyond_points(a, b, 0.5).tolist() == [[6.0, 12.0]]
    assert predicted(np.ones((1, 2)), 3 * np.ones((1, 2)), 0.5, "extrapolate").tolist() == [[4.0, 4.0]]
    with pytest.raises(ValueError, match="'interpolate' or 'extrapolate'"):
        predicted(a, b, 0.5, "sideways")


def _linear_embedding(points: np.ndarray, w: np.ndarray) -> np.ndarray:
    return points @ w  # an embedding linear in position: interpolation and extrapolation are exact


def test_an_embedding_linear_in_position_scores_perfect_matches():
    g = np.random.default_rng(0)
    w = g.normal(size=(2, 16))
    a, b = g.uniform(0, 100, (50, 2)), g.uniform(0, 100, (50, 2))
    e_a, e_b = _linear_embedding(a, w), _linear_embedding(b, w)
    for mode, points in (("interpolate", line_points), ("extrapolate", beyond_points)):
        targets = {t: _linear_embedding(points(a, b, t), w) for t in (0.25, 0.5, 0.75)}
        scores = pair_scores(e_a, e_b, targets, mode)
        # matched cosine is exactly 1 on centred features, so the score is 1 - the mismatched cosine (> 0 on average)
        assert scores.shape == (50,) and scores.mean() > 0.5
        centre = np.concatenate([e_a, e_b, *targets.values()]).mean(axis=0)
        partner = np.roll(np.arange(50), 1)
        same = cosines(predicted(e_a, e_b, 0.5, mode), targets[0.5], centre, np.arange(50))
        assert same == pytest.approx(np.zeros(50), abs=1e-12)  # partner = itself: matched minus matched
        assert cosines(predicted(e_a, e_b, 0.5, mode), targets[0.5], centre, partner).mean() > 0.5


def test_an_embedding_unrelated_to_position_scores_near_zero():
    g = np.random.default_rng(1)
    e_a, e_b = g.normal(size=(400, 16)), g.normal(size=(400, 16))
    targets = {t: g.normal(size=(400, 16)) for t in (0.25, 0.5, 0.75)}
    assert abs(pair_scores(e_a, e_b, targets, "interpolate").mean()) < 0.05


def test_bootstrap_interval_brackets_the_mean():
    ci = bootstrap_mean(np.arange(100, dtype=float), n_bootstrap=500)
    assert ci["score"] == 49.5 and ci["ci_low"] < 49.5 < ci["ci_high"]


def test_pairs_keep_their_extrapolated_points_inside_the_render():
    landmarks = np.array([[[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]]] * 2)  # 2 images, 3 landmarks on a diagonal
    pairs = landmark_pairs(landmarks, 100, 0.75, render=100, margin=5, generator=np.random.default_rng(0))
    far = beyond_points(landmarks[pairs[:, 0], pairs[:, 1]], landmarks[pairs[:, 0], pairs[:, 2]], 0.75)
    assert len(pairs) and np.all((far >= 5) & (far <= 94))
    assert {tuple(int(x) for x in p[1:]) for p in pairs} == {(0, 1), (2, 1)}  # 10 -> 50 -> 80 and 90 -> 50 -> 20
    with pytest.raises(ValueError, match="no landmark pair"):
        landmark_pairs(landmarks, 10, 0.75, render=100, margin=60, generator=np.random.default_rng(0))


def test_verdict_held_only_when_the_reference_beats_every_other_method():
    g = np.random.default_rng(2)
    base = g.normal(0.1, 0.05, 60)
    noise = lambda: g.normal(0, 0.05, 60)  # noqa: E731
    scores = {"adam_v2": {"interpolate": base + 0.3, "extrapolate": base + 0.3},
              "scratch": {"interpolate": base + noise(), "extrapolate": base + 0.3 + noise()},
              "raw": {"interpolate": base - 0.1 + noise(), "extrapolate": base + 0.6 + noise()}}
    metrics = {"reference": "adam_v2", "comparisons": comparisons(scores, "adam_v2"),
               "methods": {m: {k: {"score": float(v.mean()), "ci_low": 0.0, "ci_high": 1.0} for k, v in s.items()}
                           for m, s in scores.items()}}
    sentence = verdict_sentence(metrics)
    assert "interpolate held (" in sentence and "significantly above 2 of 2 others" in sentence
    assert "extrapolate did not hold" in sentence
    assert "not tested" in verdict_sentence({**metrics, "reference": "dino"})
