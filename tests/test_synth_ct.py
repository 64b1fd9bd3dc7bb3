"""SynthCT generator: determinism, geometry, visibility of nodules, hardness of candidates, config validation."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from eden_lib.data.luna16 import world_to_voxel
from eden_lib.data.synth_ct import LEFT_LUNG, RIGHT_LUNG, SynthCTConfig, generate_synth_ct, synth_ct_scan

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def scans():
    return generate_synth_ct(SynthCTConfig(n_scans=2, nodules_per_scan=(2, 3)), seed=7)


def _voxel_values(scan, xyz: np.ndarray) -> np.ndarray:
    zyx = np.rint(world_to_voxel(xyz, scan.origin, scan.spacing, scan.direction)).astype(int)
    return scan.hu[zyx[:, 0], zyx[:, 1], zyx[:, 2]].astype(float)


def test_same_seed_same_scan_and_different_seed_differs(scans):
    again = synth_ct_scan(SynthCTConfig(n_scans=2, nodules_per_scan=(2, 3)), seed=7, index=1)
    np.testing.assert_array_equal(again.hu, scans[1].hu)
    np.testing.assert_array_equal(again.lung_mask, scans[1].lung_mask)
    np.testing.assert_array_equal(again.nodule_mask, scans[1].nodule_mask)
    pd.testing.assert_frame_equal(again.candidates, scans[1].candidates)
    assert not np.array_equal(scans[0].hu, scans[1].hu)
    assert scans[0].seriesuid != scans[1].seriesuid


def test_scan_format(scans):
    s = scans[0]
    assert re.fullmatch(r"1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.6279\.6001\.[1-9]\d{29}", s.seriesuid)
    assert s.hu.shape == (64, 96, 96) and s.hu.dtype == np.int16  # (z, y, x)
    assert s.lung_mask.shape == s.nodule_mask.shape == s.hu.shape
    assert s.lung_mask.dtype == s.nodule_mask.dtype == np.uint8
    assert set(np.unique(s.lung_mask)) == {0, LEFT_LUNG, RIGHT_LUNG}
    assert np.all(np.abs(s.origin) > 1)  # non-zero origin
    assert list(s.nodules.columns) == ["coordX", "coordY", "coordZ", "diameter_mm"]
    assert s.nodules["diameter_mm"].between(3, 15).all()
    assert {"coordX", "coordY", "coordZ", "class"} <= set(s.candidates.columns)
    assert s.hu.min() >= -3024 and s.hu.max() > 300  # bone present


def test_anatomy_tissues_and_laterality(scans):
    s = scans[0]
    lung = s.lung_mask > 0
    assert -900 < np.median(s.hu[lung]) < -750  # aerated parenchyma
    # left lung (label 3) lies at larger world x (LPS: +x is patient left) than the right lung (label 4)
    xs = np.arange(s.hu.shape[2]) * s.spacing[0] + s.origin[0]
    left_x = xs[np.nonzero(s.lung_mask == LEFT_LUNG)[2]].mean()
    right_x = xs[np.nonzero(s.lung_mask == RIGHT_LUNG)[2]].mean()
    assert left_x > right_x
    body = s.hu > -500
    assert 0.2 < body.mean() < 0.8


def test_nodules_visible_and_masked(scans):
    for s in scans:
        parenchyma = s.hu[(s.lung_mask > 0) & (s.nodule_mask == 0)].astype(float)
        assert len(s.nodules) >= 1 and s.nodule_mask.max() == len(s.nodules)
        for k, row in enumerate(s.nodules.itertuples(), start=1):
            inside = s.hu[s.nodule_mask == k].astype(float)
            assert inside.mean() > np.median(parenchyma) + 150, (s.seriesuid, k, row.diameter_mm, inside.mean())
            assert s.nodule_mask.ravel()[np.ravel_multi_index(
                tuple(np.rint(world_to_voxel(np.array([row.coordX, row.coordY, row.coordZ]), s.origin, s.spacing,
                                             s.direction)).astype(int)), s.hu.shape)] == k


def test_candidates_have_both_classes_and_hard_negatives_on_vessels(scans):
    for s in scans:
        c = s.candidates
        assert set(c["class"]) == {0, 1}
        assert (c["class"] == 1).sum() == len(s.nodules)
        hard = c[c["kind"].isin(["bifurcation", "vessel"])]
        assert len(hard) >= 0.5 * (c["class"] == 0).sum()
        parenchyma = np.median(s.hu[s.lung_mask > 0])
        hard_hu = _voxel_values(s, hard[["coordX", "coordY", "coordZ"]].to_numpy())
        lung_hu = _voxel_values(s, c[c["kind"] == "lung"][["coordX", "coordY", "coordZ"]].to_numpy())
        # hard negatives sit on vessels: much denser than parenchyma, unlike random lung points
        assert np.median(hard_hu) > parenchyma + 250
        assert np.median(hard_hu) > np.median(lung_hu) + 200


def test_ctpa_variant_has_same_anatomy_and_bright_arteries():
    cfg = SynthCTConfig(n_scans=1, nodules_per_scan=(1, 1))
    plain = synth_ct_scan(cfg, seed=3, index=0)
    ctpa = synth_ct_scan(SynthCTConfig(n_scans=1, nodules_per_scan=(1, 1), ctpa=True), seed=3, index=0)
    np.testing.assert_array_equal(plain.lung_mask, ctpa.lung_mask)
    pd.testing.assert_frame_equal(plain.nodules, ctpa.nodules)
    arteries = plain.vessels[(plain.vessels["kind"] == "artery") & (plain.vessels["radius_mm"] > 3)]
    mid = 0.5 * (arteries[["x0", "y0", "z0"]].to_numpy() + arteries[["x1", "y1", "z1"]].to_numpy())
    gain = _voxel_values(ctpa, mid) - _voxel_values(plain, mid)
    assert np.median(gain) > 150


def test_flipped_direction_keeps_world_anatomy():
    cfg = SynthCTConfig(n_scans=1, nodules_per_scan=(2, 2), direction=FLIPPED)
    s = synth_ct_scan(cfg, seed=5, index=0)
    np.testing.assert_array_equal(s.direction, np.reshape(FLIPPED, (3, 3)))
    # with x flipped, voxel x index grows towards patient right: the right lung sits at high x index
    ix = np.arange(s.hu.shape[2])
    assert ix[np.nonzero(s.lung_mask == RIGHT_LUNG)[2]].mean() > ix[np.nonzero(s.lung_mask == LEFT_LUNG)[2]].mean()
    zyx = np.rint(world_to_voxel(s.nodules[["coordX", "coordY", "coordZ"]].to_numpy(), s.origin, s.spacing,
                                 s.direction)).astype(int)
    assert list(s.nodule_mask[zyx[:, 0], zyx[:, 1], zyx[:, 2]]) == list(range(1, len(s.nodules) + 1))


@pytest.mark.parametrize("kwargs, key", [
    ({"n_scans": 0}, "n_scans"),
    ({"shape": (96, 96)}, "shape"),
    ({"shape": (40, 40, 20)}, "shape"),  # field of view too small for a thorax
    ({"spacing": (3.5, -1.0, 5.0)}, "spacing"),
    ({"nodules_per_scan": (3, 1)}, "nodules_per_scan"),
    ({"nodule_diameter_mm": (0.0, 10.0)}, "nodule_diameter_mm"),
    ({"hard_negative_fraction": 1.5}, "hard_negative_fraction"),
    ({"direction": (1, 0, 0, 0, 2, 0, 0, 0, 1)}, "direction"),
])
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"SynthCTConfig\.{key}="):
        SynthCTConfig(**kwargs)
