"""SynthCXR: determinism, shapes, anatomy and landmarks, findings, sex effects, sites, config validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from eden_lib.data.synth_cxr import (
    FINDINGS,
    LANDMARKS,
    MASKS,
    SITES,
    SynthCXRConfig,
    generate_synth_cxr,
    render,
    sample_params,
)
from eden_lib.data.synth_cxr_findings import CTR_READER_SD, CTR_THRESHOLD

SIZE = 128


@pytest.fixture(scope="module")
def data():
    return generate_synth_cxr(SynthCXRConfig(n_patients=40, size=SIZE), seed=3)


def lm(data, name):
    return data.landmarks[:, LANDMARKS.index(name)]


def bit(name):
    return np.uint8(1 << MASKS.index(name))


def at(masks, points):
    """Mask value at each image's landmark pixel: ``(N,)``."""
    x, y = np.round(points).astype(int).T
    return masks[np.arange(len(masks)), y, x]


def near(masks, points, b, r):
    """Whether mask bit ``b`` is set within ``r`` pixels of each image's point: ``(N,)`` bool."""
    ys, xs = np.mgrid[: masks.shape[1], : masks.shape[2]]
    close = (xs - points[:, 0, None, None]) ** 2 + (ys - points[:, 1, None, None]) ** 2 <= r**2
    return ((masks & b) > 0).__and__(close).any(axis=(1, 2))


def test_public_constants():
    assert FINDINGS == ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation", "Nodule", "Mass")
    assert MASKS == ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")
    assert len(LANDMARKS) >= 10 and len(set(LANDMARKS)) == len(LANDMARKS)
    assert len(SITES) >= 4 and any(s.invert for s in SITES.values()) and not all(s.invert for s in SITES.values())
    assert len({s.female for s in SITES.values()}) > 1 and len({s.noise for s in SITES.values()}) > 1


def test_shapes_and_dtypes(data):
    n = 40
    assert data.images.shape == data.masks.shape == (n, SIZE, SIZE)
    assert data.images.dtype == data.masks.dtype == np.uint8
    assert data.landmarks.shape == (n, len(LANDMARKS), 2) and data.landmarks.dtype == np.float32
    assert data.labels.shape == (n, len(FINDINGS)) and data.labels.dtype == np.uint8
    assert set(np.unique(data.labels)) <= {0, 1}
    assert data.masks.max() < 2 ** len(MASKS)
    assert list(data.meta.columns[:7]) == ["image_index", "patient_id", "follow_up", "sex", "age", "site", "view"]
    assert data.meta["image_index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert set(data.meta["sex"]) <= {"M", "F"} and set(data.meta["view"]) <= {"PA", "AP"}
    assert data.images.std() > 20  # not blank


def test_deterministic_per_seed():
    cfg = SynthCXRConfig(n_patients=6, size=64)
    a, b = generate_synth_cxr(cfg, 7), generate_synth_cxr(cfg, 7, workers=1)
    c = generate_synth_cxr(cfg, 8)
    for field in ("images", "masks", "landmarks", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.meta.equals(b.meta)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.landmarks, c.landmarks)


def test_follow_ups_share_anatomy():
    d = generate_synth_cxr(SynthCXRConfig(n_patients=3, images_per_patient=3, size=64), 0)
    assert d.meta["image_index"].tolist()[:4] == ["00000001_000.png", "00000001_001.png", "00000001_002.png",
                                                  "00000002_000.png"]
    per_patient = d.meta.groupby("patient_id")
    assert (per_patient["ctr"].nunique() == 1).all() and (per_patient["sex"].nunique() == 1).all()
    assert (per_patient["site"].nunique() == 1).all()
    assert not np.array_equal(d.images[0], d.images[1])  # new pose and exposure


def test_landmarks_inside_image_and_on_their_structures(data):
    assert ((data.landmarks >= 0) & (data.landmarks <= SIZE - 1)).all()
    for side in ("left", "right"):
        assert (at(data.masks, lm(data, f"{side}_clavicle_head")) & bit(f"{side}_clavicle")).all()
        for k in (5, 6):
            assert (at(data.masks, lm(data, f"{side}_rib{k}_post")) & bit(f"{side}_lung")).all()
        angle = lm(data, f"{side}_costophrenic_angle")  # the lowest lateral corner of the lung
        assert near(data.masks, angle, bit(f"{side}_lung"), 2).all()
        assert not near(data.masks, angle + [0, 5], bit(f"{side}_lung"), 2).any()
        # rib 6 below rib 5; the hemidiaphragm dome is the lower border of its lung
        assert (lm(data, f"{side}_rib6_post")[:, 1] > lm(data, f"{side}_rib5_post")[:, 1]).all()
        apex = lm(data, f"{side}_hemidiaphragm_apex")
        assert (at(data.masks, apex - [0, 3]) & (bit(f"{side}_lung") | bit("heart"))).all()  # the heart may hide it
        assert not (at(data.masks, apex + [0, 3]) & bit(f"{side}_lung")).any()
    # patient's left on the image right
    assert (lm(data, "left_clavicle_head")[:, 0] > lm(data, "right_clavicle_head")[:, 0]).all()
    # right hemidiaphragm higher than the left, along the patient's axis (the spine; films are rotated)
    axis = lm(data, "end_thoracic_spine") - lm(data, "spinous_process_t4")
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    dy = ((lm(data, "left_hemidiaphragm_apex") - lm(data, "right_hemidiaphragm_apex")) * axis).sum(axis=1)
    assert dy.mean() > 2 and (dy > 0).mean() > 0.8


def test_heart_and_aortic_knob_on_the_image_right(data):
    top, bottom = lm(data, "spinous_process_t4"), lm(data, "end_thoracic_spine")
    ys, xs = np.mgrid[:SIZE, :SIZE]
    for i in range(len(data)):
        d = bottom[i] - top[i]
        side = d[1] * (xs - top[i][0]) - d[0] * (ys - top[i][1])  # > 0: image right of the spine line
        heart = (data.masks[i] & bit("heart")) > 0
        assert (side[heart] > 0).mean() > 0.6
        left_lung = (data.masks[i] & bit("left_lung")) > 0
        assert (side[left_lung] > 0).mean() > 0.95
    knob, azygos = lm(data, "aortic_knob"), lm(data, "azygos_arch")
    assert (knob[:, 0] > azygos[:, 0]).all()


def test_polarity_by_site(data):
    lung = (data.masks & (bit("left_lung") | bit("right_lung"))) > 0
    heart = (data.masks & bit("heart")) > 0
    for i in range(len(data)):
        inverted = SITES[data.meta["site"].iloc[i]].invert
        lung_mean, heart_mean = data.images[i][lung[i]].mean(), data.images[i][heart[i]].mean()
        assert (lung_mean > heart_mean) == inverted


def _without(params, finding_field):
    zero = np.zeros_like(getattr(params.lesions, finding_field))
    lesions = dataclasses.replace(params.lesions, **{finding_field: zero})
    return dataclasses.replace(params, lesions=lesions)


def test_findings_are_drawn_where_their_anatomy_is():
    cfg = SynthCXRConfig(n_patients=32, size=SIZE, prevalence=4.0)
    p = sample_params(cfg, 1)
    sl = slice(0, 32)
    base, _ = render(p, 1, SIZE, sl, 0)
    ys = np.arange(SIZE)[None, :, None]
    # effusion (right side): changes only the lower part of the chest, around the costophrenic angle
    diff = np.abs(base.astype(int) - render(_without(p, "eff_r"), 1, SIZE, sl, 0)[0].astype(int)) > 8
    has = p.lesions.eff_r[sl] > 0
    visible = has & (diff.sum(axis=(1, 2)) > 0)
    assert visible.sum() >= 2 and diff[~has].sum() == 0
    centre_y = (diff * ys).sum(axis=(1, 2)) / np.maximum(diff.sum(axis=(1, 2)), 1)
    assert (centre_y[visible] > SIZE * 0.55).all()
    # nodule: a small, local change
    diff = np.abs(base.astype(int) - render(_without(p, "nod_d"), 1, SIZE, sl, 0)[0].astype(int)) > 8
    has = p.lesions.nod_d[sl] > 0
    assert has.sum() >= 2 and (diff[has].sum(axis=(1, 2)) < 0.01 * SIZE * SIZE).all()
    assert (diff[has].sum(axis=(1, 2)) > 0).all()
    # pneumothorax removes lung markings and darkens the lung beyond the pleural line (standard polarity)
    has = (p.lesions.ptx_r[sl] > 0.05) & ~p.acquisition.invert[sl]
    darker = base.astype(int) - render(_without(p, "ptx_r"), 1, SIZE, sl, 0)[0].astype(int)
    assert has.sum() >= 1 and (darker[has].sum(axis=(1, 2)) < 0).all()


def test_every_finding_present_with_plausible_prevalence():
    p = sample_params(SynthCXRConfig(n_patients=20000, size=64), 0)
    prev = p.labels.mean(axis=0)
    assert ((prev > 0.03) & (prev < 0.3)).all(), dict(zip(FINDINGS, prev))
    assert p.labels.sum(axis=1).max() >= 2  # multi-label
    card = p.labels[:, FINDINGS.index("Cardiomegaly")].astype(bool)
    ctr = p.meta["ctr"].to_numpy()
    clear = np.abs(ctr - CTR_THRESHOLD) > 5 * CTR_READER_SD  # readers agree far from the threshold
    np.testing.assert_array_equal(card[clear], ctr[clear] > CTR_THRESHOLD)
    near = np.abs(ctr - CTR_THRESHOLD) < CTR_READER_SD
    assert 0.2 < card[near].mean() < 0.8  # and disagree near it
    more = sample_params(SynthCXRConfig(n_patients=20000, size=64, prevalence=2.0), 0).labels.mean(axis=0)
    assert (more > prev).all()


def _z_prop(x_f, x_m):
    p = np.concatenate([x_f, x_m]).mean()
    return (x_f.mean() - x_m.mean()) / np.sqrt(p * (1 - p) * (1 / len(x_f) + 1 / len(x_m)) + 1e-12)


def _sex_split(sex_effect):
    p = sample_params(SynthCXRConfig(n_patients=20000, size=64, sex_effect=sex_effect), 5)
    female = (p.meta["sex"] == "F").to_numpy()
    return p, female


def test_no_sex_difference_at_sex_effect_zero():
    p, female = _sex_split(0.0)
    for k, name in enumerate(FINDINGS):
        z = _z_prop(p.labels[female, k], p.labels[~female, k])
        assert abs(z) < 4, (name, z)
    ctr = p.meta["ctr"].to_numpy()
    se = np.sqrt(ctr[female].var() / female.sum() + ctr[~female].var() / (~female).sum())
    t = (ctr[female].mean() - ctr[~female].mean()) / se
    assert abs(t) < 4
    assert (p.anatomy.breast == 0).all()
    for site in p.meta["site"].unique():  # no sex-skewed site mix
        in_site = (p.meta["site"] == site).to_numpy()
        assert abs(female[in_site].mean() - 0.5) < 0.05
    for field in ("w_r", "bone"):
        values = getattr(p.anatomy, field)
        assert abs(values[female].mean() - values[~female].mean()) < 0.01 * values.mean()


def test_sex_effect_shifts_ctr_and_cardiomegaly():
    p, female = _sex_split(1.0)
    ctr = p.meta["ctr"].to_numpy()
    assert ctr[female].mean() - ctr[~female].mean() > 0.02
    card = p.labels[:, FINDINGS.index("Cardiomegaly")]
    assert _z_prop(card[female], card[~female]) > 5
    assert (p.anatomy.breast[female] > 0).all() and (p.anatomy.breast[~female] == 0).all()
    fractions = {s: female[(p.meta["site"] == s).to_numpy()].mean() for s in SITES}
    assert max(fractions.values()) - min(fractions.values()) > 0.3


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_patients": 0}, "n_patients"),
        ({"n_patients": 2.5}, "n_patients"),
        ({"n_patients": 2, "size": 16}, "size"),
        ({"n_patients": 2, "sex_effect": -0.5}, "sex_effect"),
        ({"n_patients": 2, "prevalence": 0.0}, "prevalence"),
        ({"n_patients": 2, "images_per_patient": 0}, "images_per_patient"),
        ({"n_patients": 2, "sites": ("hospital_a", "nowhere")}, "nowhere"),
        ({"n_patients": 2, "sites": ()}, "sites"),
    ],
)
def test_config_validation(kwargs, key):
    with pytest.raises(ValueError, match=key):
        SynthCXRConfig(**kwargs)
