"""Per-embolus FROC (CAD-PE hit rule) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eden_lib.evaluation.froc import froc, froc_curve, match_markers, read_markers, sensitivity_at


def _references() -> dict[str, np.ndarray]:
    a = np.zeros((10, 10, 10), np.int16)
    a[1:3, 1:3, 1:3] = 1  # embolus A1: x, y, z in {1, 2}
    a[6:8, 6:8, 6:8] = 2  # embolus A2
    b = np.zeros((8, 8, 8), np.uint8)
    b[5, 5, 5] = 1        # embolus B1: one voxel
    c = np.zeros((6, 6, 6), np.int16)  # a scan without emboli
    return {"001": a, "002": b, "003": c}


def _markers(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["scan", "x", "y", "z", "confidence"])


MARKERS = _markers([
    ("001", 1, 1, 1, 0.9),     # hit A1
    ("001", 2, 2, 2, 0.5),     # inside A1 again: duplicate, ignored
    ("001", 6, 7, 6, 0.3),     # hit A2
    ("001", 4, 4, 4, 0.8),     # FP
    ("002", 0, 0, 0, 0.7),     # FP
    ("002", 5.4, 4.6, 5, 0.2),  # rounds to (5, 5, 5): hit B1
    ("003", 3, 3, 3, 0.6),     # FP on the PE-free scan
    ("003", 1, 1, 1, 0.25),    # FP
])
# E = 3 emboli, N = 3 scans. Threshold: (tp, fp) -> sensitivity, FP/scan
#   inf: (0, 0); 0.9: (1, 0); 0.8: (1, 1); 0.7: (1, 2); 0.6: (1, 3); 0.3: (2, 3); 0.25: (2, 4); 0.2: (3, 4)
EXPECTED = pd.DataFrame({
    "threshold": [np.inf, 0.9, 0.8, 0.7, 0.6, 0.3, 0.25, 0.2],
    "tp": [0, 1, 1, 1, 1, 2, 2, 3],
    "fp": [0, 0, 1, 2, 3, 3, 4, 4],
})


def test_match_roles_and_emboli():
    match = match_markers(MARKERS, _references())
    assert match.markers["role"].tolist() == ["hit", "duplicate", "hit", "fp", "fp", "hit", "fp", "fp"]
    assert match.markers["embolus"].tolist() == [1, 1, 2, 0, 0, 1, 0, 0]
    assert match.n_scans == 3
    emboli = match.emboli.set_index(["scan", "embolus"])
    assert emboli.index.tolist() == [("001", 1), ("001", 2), ("002", 1)]
    assert emboli["n_voxels"].tolist() == [8, 8, 1]
    assert emboli["confidence"].tolist() == [0.9, 0.3, 0.2] and emboli["marker"].tolist() == [0, 2, 5]


def test_curve_hand_computed():
    curve = froc_curve(match_markers(MARKERS, _references()))
    pd.testing.assert_frame_equal(curve[["threshold", "tp", "fp"]], EXPECTED, check_dtype=False)
    np.testing.assert_allclose(curve["sensitivity"], EXPECTED["tp"] / 3)
    np.testing.assert_allclose(curve["fp_per_scan"], EXPECTED["fp"] / 3)
    assert np.isnan(curve["ppv"].iloc[0]) and curve["ppv"].iloc[-1] == pytest.approx(3 / 7)


def test_sensitivity_at_step_and_linear():
    curve, sens = froc(MARKERS, _references())
    # step: best sensitivity with FP/scan <= k; FP/scan reaches 1 at t = 0.3 (2/3) and 4/3 after
    np.testing.assert_allclose(sens.to_numpy(), [2 / 3, 1.0, 1.0])
    assert sens.index.tolist() == [1.0, 2.0, 4.0]
    step = sensitivity_at(curve, [0.0, 0.5, 1 / 3], rule="step")
    np.testing.assert_allclose(step.to_numpy(), [1 / 3, 1 / 3, 1 / 3])
    # linear on the upper envelope (0, 1/3) (1/3, 1/3) (2/3, 1/3) (1, 2/3) (4/3, 1)
    linear = sensitivity_at(curve, [7 / 6, 5 / 6, 0.0, 10.0], rule="linear")
    np.testing.assert_allclose(linear.to_numpy(), [5 / 6, 0.5, 1 / 3, 1.0])
    with pytest.raises(ValueError, match="rule"):
        sensitivity_at(curve, rule="cubic")
    with pytest.raises(ValueError, match=">= 0"):
        sensitivity_at(curve, [-1])


def test_ties_enter_together():
    markers = _markers([("001", 1, 1, 1, 0.5), ("001", 6, 6, 6, 0.5), ("001", 0, 0, 0, 0.5), ("002", 0, 0, 0, 0.1),
                        ("002", 5, 5, 5, 0.1), ("002", 5, 5, 5, 0.1)])
    match = match_markers(markers, _references())
    assert match.markers["role"].tolist() == ["hit", "hit", "fp", "fp", "hit", "duplicate"]
    curve = froc_curve(match)
    assert curve["threshold"].tolist() == [np.inf, 0.5, 0.1]
    assert curve["tp"].tolist() == [0, 2, 3] and curve["fp"].tolist() == [0, 1, 2]


def test_duplicate_with_higher_score_takes_the_hit():
    markers = _markers([("001", 1, 1, 1, 0.2), ("001", 2, 1, 1, 0.6)])
    match = match_markers(markers, _references())
    assert match.markers["role"].tolist() == ["duplicate", "hit"]
    curve = froc_curve(match)
    assert curve["threshold"].tolist() == [np.inf, 0.6] and curve["tp"].tolist() == [0, 1]
    assert curve["fp"].tolist() == [0, 0]


def test_misses_and_no_markers():
    curve, sens = froc(_markers([]), _references())
    assert curve["tp"].tolist() == [0] and curve["fp_per_scan"].tolist() == [0.0]
    np.testing.assert_array_equal(sens.to_numpy(), [0.0, 0.0, 0.0])
    curve = froc_curve(match_markers(_markers([("003", 1, 1, 1, 0.4)]), {"003": _references()["003"]}))
    assert np.isnan(curve["sensitivity"]).all() and curve["fp"].tolist() == [0, 1]


def test_markers_outside_the_volume_are_false_positives():
    match = match_markers(_markers([("002", -1, 3, 3, 0.5), ("002", 8, 5, 5, 0.4)]), _references())
    assert match.markers["role"].tolist() == ["fp", "fp"]


def test_tolerance_uses_the_spacing():
    refs = _references()
    spacings = {"001": (1.0, 1.0, 3.0), "002": (1.0, 1.0, 3.0), "003": (1.0, 1.0, 1.0)}
    markers = _markers([
        ("001", 3, 1, 1, 0.9),   # 1 mm from A1 along x
        ("001", 1, 1, 3, 0.8),   # 3 mm from A1 along z (one slice)
        ("002", 5, 5, 6, 0.7),   # 3 mm from B1 along z
        ("001", 4, 4, 4, 0.6),   # sqrt(2*2^2 + 6^2) ~ 6.6 mm from A1, sqrt(2*2^2 + 6^2) from A2: far
    ])
    for tol, roles in [(0.0, ["fp"] * 4), (0.9, ["fp"] * 4), (1.0, ["hit", "fp", "fp", "fp"]),
                       (3.0, ["hit", "duplicate", "hit", "fp"])]:
        match = match_markers(markers, refs, spacings, tolerance_mm=tol)
        assert match.markers["role"].tolist() == roles, tol
    with pytest.raises(ValueError, match="spacing"):
        match_markers(markers, refs, {"001": (1, 1, 1)}, tolerance_mm=1.0)


def test_tolerance_picks_the_nearest_embolus_then_the_lower_label():
    ref = np.zeros((9, 3, 3), np.int16)
    ref[0, 1, 1], ref[5, 1, 1] = 3, 2
    near_two = _markers([("s", 3, 1, 1, 0.5)])    # 3 mm from label 3, 2 mm from label 2
    assert match_markers(near_two, {"s": ref}, {"s": (1, 1, 1)}, 3.0).markers["embolus"].tolist() == [2]
    ref[1, 1, 1] = 3                               # now 2 mm from both
    assert match_markers(near_two, {"s": ref}, {"s": (1, 1, 1)}, 3.0).markers["embolus"].tolist() == [2]
    ref[5, 1, 1], ref[1, 1, 1] = 4, 1              # 2 mm from labels 4 and 1, 3 mm from label 3
    assert match_markers(near_two, {"s": ref}, {"s": (1, 1, 1)}, 3.0).markers["embolus"].tolist() == [1]


def test_vectorised_tolerance_matches_brute_force():
    g = np.random.default_rng(0)
    ref = np.zeros((20, 18, 12), np.int16)
    for label in range(1, 13):
        x, y, z = g.integers(0, (20, 18, 12))
        ref[x, y, z] = label
    spacing = np.array([0.7, 0.9, 1.6])
    pts = g.integers(-2, (22, 20, 14), size=(600, 3))
    got = match_markers(_markers([("s", *p, 0.5) for p in pts]), {"s": ref}, {"s": spacing}, 2.5).markers
    vox = np.argwhere(ref > 0)
    for p, label in zip(pts, got["embolus"]):
        inside = (p >= 0).all() and (p < ref.shape).all() and ref[tuple(p)] > 0
        if inside:
            assert label == ref[tuple(p)]
            continue
        d = np.sqrt((((vox - p) * spacing) ** 2).sum(axis=1))
        ok = d <= 2.5 + 1e-9
        expected = 0 if not ok.any() else min(ref[tuple(v)] for v in vox[ok & (d == d[ok].min())])
        assert label == expected


def test_errors_name_the_problem(tmp_path):
    refs = _references()
    with pytest.raises(ValueError, match="'1'.*leading zeros"):
        match_markers(_markers([(1, 1, 1, 1, 0.5)]), refs)
    with pytest.raises(ValueError, match="missing column"):
        match_markers(pd.DataFrame({"scan": ["001"]}), refs)
    with pytest.raises(ValueError, match="row 1"):
        match_markers(_markers([("001", 1, 1, 1, 0.5), ("001", 1, np.nan, 1, 0.5)]), refs)
    with pytest.raises(ValueError, match="negative"):
        match_markers(_markers([]), {"x": -np.ones((2, 2, 2), np.int16)})
    with pytest.raises(ValueError, match="integer labels"):
        match_markers(_markers([]), {"x": np.full((2, 2, 2), 0.5)})
    with pytest.raises(ValueError, match="no reference"):
        match_markers(_markers([]), {})


def test_read_markers_keeps_scan_ids_and_names_bad_lines(tmp_path):
    path = tmp_path / "submission.txt"
    path.write_text("Scan X Y Z Confidence\n001 1 1 1 0.9\n\n002\t5 5 5 0.2\n")
    markers = read_markers(path)
    assert markers["scan"].tolist() == ["001", "002"] and markers["confidence"].tolist() == [0.9, 0.2]
    curve = froc_curve(match_markers(markers, _references()))
    assert curve["tp"].tolist() == [0, 1, 2]
    path.write_text("001 1 1 1 0.9\n001 1 1 0.5\n")
    with pytest.raises(ValueError, match=r"submission\.txt: line 2"):
        read_markers(path)
    path.write_text("001 1 1 one 0.9\n")
    with pytest.raises(ValueError, match=r"submission\.txt: line 1"):
        read_markers(path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_markers(tmp_path / "missing.txt")
