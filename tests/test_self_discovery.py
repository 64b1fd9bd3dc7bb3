"""TransVW / Semantic Genesis self-discovery: neighbours, anchors, crops, scales, 2D and 3D, determinism, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from eden_lib.data.self_discovery import (
    OFFICIAL_SCALES,
    SelfDiscoveryConfig,
    discover_visual_words,
    embed_patients,
    extract_visual_word_crops,
    nearest_patients,
    resize_volumes,
    train_autoencoder,
    validation_words,
)
from eden_lib.data.self_discovery_crops import box_extent

THR = 0.425
ZOOM = ((1.0, 1.0), (0.75, 1.25), (0.5, 0.5))  # exact, random zoom with shift, fixed 0.5 zoom with shift


def _cfg(**kw) -> SelfDiscoveryConfig:
    base = dict(n_classes=5, instances_per_class=6, crop_size=(8, 8, 4), scales=ZOOM, max_shift=0.25,
                max_tissue_fraction=None, min_anchor_distance=3.0, ae_size=(16, 16, 8), ae_width=2, seed=3)
    return SelfDiscoveryConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def random_data():
    g = np.random.default_rng(0)
    return g.normal(size=(20, 6)), g.uniform(size=(20, 24, 24, 12)).astype(np.float32)


def _groups(n_per: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four groups of scans: group g has a bright block in its own corner and its own background level."""
    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per)
    vols = 0.1 + 0.05 * g.uniform(size=(len(labels), *shape))
    half = tuple(s // 2 for s in shape)
    for i, lab in enumerate(labels):
        corner = tuple(slice(h, None) if (lab >> a) & 1 else slice(0, h) for a, h in enumerate(half[:2]))
        vols[i][corner] += 0.6
        vols[i] += 0.05 * lab
    return vols.astype(np.float32), labels


# ---------------------------------------------------------------- config
def test_config_defaults_follow_the_official_code_and_coerce_lists():
    cfg = SelfDiscoveryConfig()
    assert (cfg.crop_size, cfg.out_size, cfg.ae_size) == ((64, 64, 32), (64, 64, 32), (128, 128, 64))
    assert (cfg.n_classes, cfg.instances_per_class, cfg.val_instances_per_class) == (44, 200, 30)
    assert cfg.scales == OFFICIAL_SCALES and cfg.border == (0, 0, 0) and cfg.max_tissue_fraction == 0.15
    cfg2 = SelfDiscoveryConfig(spatial_dims=2, crop_size=[32, 32], out_size=[16, 16], scales=[[1, 1], [0.5, 2]])
    assert cfg2.crop_size == (32, 32) and cfg2.out_size == (16, 16) and cfg2.ae_size == (128, 128)
    assert cfg2.scales == ((1.0, 1.0), (0.5, 2.0))
    # official box sizes: 50..79 with shifts -10..9 around a 64 x 64 crop; the base crop needs nothing extra in z
    off, ext = box_extent(cfg)
    assert off.tolist() == [(64 - 79) // 2 - 10] * 2 + [0] and ext.tolist() == [(64 - 79) // 2 + 79 + 9] * 2 + [32]


@pytest.mark.parametrize("kw, key", [
    (dict(spatial_dims=4), "spatial_dims"), (dict(spatial_dims=True), "spatial_dims"),
    (dict(crop_size=(8, 8)), "crop_size"), (dict(out_size=(8, 0, 4)), "out_size"),
    (dict(border=(-1, 0, 0)), "border"), (dict(n_classes=0), "n_classes"),
    (dict(instances_per_class=2.5), "instances_per_class"), (dict(scales=((0.0, 1.0),)), "scales"),
    (dict(scales=((1.2, 1.0),)), "scales"), (dict(scales=()), "scales"), (dict(scales=(1.0,)), "scales"),
    (dict(max_shift=1.0), "max_shift"), (dict(max_tissue_fraction=1.5), "max_tissue_fraction"),
    (dict(len_depth=1), "len_depth"), (dict(min_anchor_distance=-1), "min_anchor_distance"),
    (dict(reference_order="nearest"), "reference_order"), (dict(ae_size=(20, 16, 8)), "ae_size"),
    (dict(spatial_dims=2, crop_size=(8, 8), ae_size=(48, 48)), "ae_size"),
    (dict(ae_backbone_2d="vgg16"), "ae_backbone_2d"), (dict(ae_lr=0.0), "ae_lr"), (dict(device="gpu"), "device"),
])
def test_bad_config_names_the_field_and_what_was_expected(kw, key):
    with pytest.raises(ValueError, match=rf"SelfDiscoveryConfig\.{key}=.*expected"):
        _cfg(**kw)


# ---------------------------------------------------------------- neighbours and references
def test_members_are_the_k_nearest_patients_by_brute_force(random_data):
    emb, vols = random_data
    cfg = _cfg()
    words = discover_visual_words(emb, vols, cfg)
    assert words.members.shape == words.distances.shape == (5, 6) and words.anchors.shape == (5, 3)
    assert len(set(words.references.tolist())) == 5
    full = cdist(emb, emb)
    for ref, members, dists in zip(words.references, words.members, words.distances):
        assert members[0] == ref
        np.testing.assert_array_equal(members, np.argsort(full[ref])[:6])
        np.testing.assert_allclose(dists, np.sort(full[ref])[:6], atol=1e-12)
    # validation members: nearest validation patients to each training reference
    val = np.random.default_rng(1).normal(size=(9, 6))
    vw = validation_words(words, emb, val, _cfg(val_instances_per_class=4))
    np.testing.assert_array_equal(vw.members, np.argsort(cdist(emb[words.references], val), axis=1)[:, :4])
    np.testing.assert_array_equal(vw.anchors, words.anchors)
    idx, dist = nearest_patients(emb[:2], emb, 3)
    np.testing.assert_allclose(dist, np.sort(full[:2], axis=1)[:, :3], atol=1e-12)


def test_farthest_references_are_spread_out_and_random_order_differs(random_data):
    emb, vols = random_data
    refs = discover_visual_words(emb, vols, _cfg()).references
    full = cdist(emb, emb)
    for i in range(1, len(refs)):  # each next reference is the patient farthest from all earlier ones
        assert refs[i] == np.argmax(np.where(np.isin(np.arange(20), refs[:i]), -1, full[refs[:i]].min(axis=0)))
    rand = discover_visual_words(emb, vols, _cfg(reference_order="random")).references
    assert len(set(rand.tolist())) == 5 and not np.array_equal(rand, refs)
    assert full[np.ix_(refs, refs)].sum() > full[np.ix_(rand, rand)].sum()


# ---------------------------------------------------------------- anchors
def test_anchors_pass_the_lung_test_and_keep_their_distance():
    g = np.random.default_rng(2)
    vols = (0.1 + 0.05 * g.uniform(size=(12, 32, 32, 16))).astype(np.float32)
    vols[:, :14] = 0.8  # x < 14 is tissue, the rest "lung"
    cfg = _cfg(n_classes=6, instances_per_class=4, scales=((1.0, 1.0),), max_tissue_fraction=0.15,
               min_anchor_distance=4.0)
    words = discover_visual_words(g.normal(size=(12, 4)), vols, cfg)
    for ref, (x, y, z) in zip(words.references, words.anchors):
        assert (vols[ref, x:x + 8, y:y + 8, z:z + 4] >= THR).mean() <= 0.15
    assert (vols[0, 0:8, 0:8, 0:4] >= THR).mean() > 0.15  # the test rejects part of the range
    assert words.anchors[:, 0].min() >= 13 and np.ptp(words.anchors[:, 0]) > 0
    gaps = cdist(words.anchors, words.anchors)[np.triu_indices(6, 1)]
    assert gaps.min() >= 4.0
    # z keeps room for the official look-ahead of len_depth - 1 slices
    assert (words.anchors[:, 2] + 4 + 2 <= 16).all()


# ---------------------------------------------------------------- crops
def test_3d_crops_are_the_same_coordinates_in_every_member_at_every_scale(random_data):
    emb, vols = random_data
    cfg = _cfg()
    words = discover_visual_words(emb, vols, cfg)
    crops, labels, meta = extract_visual_word_crops(vols, words, cfg)
    n = 5 * 3 * 6
    assert crops.shape == (n, 1, 8, 8, 4) and crops.dtype == np.float32 and labels.shape == (n,)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(5), 18))
    np.testing.assert_array_equal(meta["level"], np.tile(np.repeat(np.arange(3), 6), 5))
    np.testing.assert_array_equal(meta["patient"], np.repeat(words.members, 3, axis=0).ravel())
    np.testing.assert_array_equal(meta["rank"], np.tile(np.arange(6), 15))
    for i in range(n):
        p, c, lv = meta["patient"][i], labels[i], meta["level"][i]
        (x, y, z), (sx, sy, sz) = meta["start"][i], meta["size"][i]
        box = vols[p, x:x + sx, y:y + sy, z:z + sz]
        assert box.shape == (sx, sy, sz)  # inside the volume
        a = words.anchors[c]
        if lv == 0:  # exact crop at the anchor, bit for bit
            np.testing.assert_array_equal(meta["start"][i], a)
            np.testing.assert_array_equal(crops[i, 0], vols[p, a[0]:a[0] + 8, a[1]:a[1] + 8, a[2]:a[2] + 4])
        else:
            want = F.interpolate(torch.from_numpy(box)[None, None], size=(8, 8, 4), mode="trilinear",
                                 align_corners=False)[0, 0].numpy()
            np.testing.assert_allclose(crops[i, 0], want, atol=1e-5)
            assert (z, sz) == (a[2], 4)  # depth is never zoomed
            assert sx == sy and (6 <= sx <= 9 if lv == 1 else sx == 4)
            shift = np.array([x, y]) - a[:2] - (8 - np.array([sx, sy])) // 2  # centred, then shifted
            assert ((shift >= -2) & (shift <= 1)).all()
    assert len(np.unique(meta["size"][meta["level"] == 1, 0])) > 1  # sizes are drawn per crop
    only_exact, lab0, meta0 = extract_visual_word_crops(vols, words, cfg, levels=[0], dtype=np.float16)
    assert only_exact.dtype == np.float16 and only_exact.shape == (30, 1, 8, 8, 4)
    np.testing.assert_array_equal(only_exact, crops[meta["level"] == 0].astype(np.float16))


def test_members_of_different_shapes_share_a_valid_anchor():
    g = np.random.default_rng(4)
    shapes = [(24, 24, 12), (30, 26, 14), (26, 30, 12), (24, 28, 16)] * 3
    vols = [g.uniform(size=s).astype(np.float32) for s in shapes]
    cfg = _cfg(n_classes=4, instances_per_class=5)
    words = discover_visual_words(g.normal(size=(12, 3)), vols, cfg)
    crops, _, meta = extract_visual_word_crops(vols, words, cfg)
    ends = meta["start"] + meta["size"]
    assert (meta["start"] >= 0).all()
    assert all((e <= shapes[p]).all() for e, p in zip(ends, meta["patient"]))
    off, ext = box_extent(cfg)
    anchor = words.anchors[meta["label"]]
    assert (meta["start"] >= anchor + off).all() and (ends <= anchor + ext).all()


def test_2d_renders_uint8_resized_to_the_training_size():
    g = np.random.default_rng(5)
    imgs = g.integers(0, 90, size=(10, 64, 64), dtype=np.uint8)  # dark "lung" everywhere ...
    imgs[:, :, :24] = 220  # ... except the bright left third
    cfg = SelfDiscoveryConfig(spatial_dims=2, n_classes=3, instances_per_class=4, crop_size=(16, 16),
                              out_size=(8, 8), scales=((1.0, 1.0), (0.75, 1.25)), max_tissue_fraction=0.15,
                              ae_size=(32, 32), seed=1)
    words = discover_visual_words(g.normal(size=(10, 5)), imgs, cfg)
    assert words.anchors.shape == (3, 2) and (words.anchors[:, 1] >= 24 - 2).all()
    crops, labels, meta = extract_visual_word_crops(imgs, words, cfg)
    assert crops.shape == (3 * 2 * 4, 1, 8, 8)
    for i in range(len(crops)):
        (r, c), (sr, sc) = meta["start"][i], meta["size"][i]
        box = torch.from_numpy(imgs[meta["patient"][i], r:r + sr, c:c + sc].astype(np.float32) / 255)
        want = F.interpolate(box[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(crops[i, 0], want.numpy(), atol=1e-5)
        if meta["level"][i] == 0:
            np.testing.assert_array_equal(meta["start"][i], words.anchors[labels[i]])


def test_same_seed_same_words_and_crops_other_seed_differs(random_data):
    emb, vols = random_data
    runs = []
    for seed in (3, 3, 4):
        cfg = _cfg(seed=seed)
        words = discover_visual_words(emb, vols, cfg)
        runs.append((words, extract_visual_word_crops(vols, words, cfg)[0]))
    np.testing.assert_array_equal(runs[0][0].anchors, runs[1][0].anchors)
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0].anchors, runs[2][0].anchors)


# ---------------------------------------------------------------- auto-encoder embedding
@pytest.mark.parametrize("dims", [3, 2])
def test_embedding_is_deterministic_and_groups_similar_patients(dims):
    shape = (32, 32, 16) if dims == 3 else (64, 64)
    vols, groups = _groups(4, shape)
    kw = dict(ae_size=(16, 16, 8), ae_width=2) if dims == 3 else dict(ae_size=(64, 64), ae_width=4)
    cfg = SelfDiscoveryConfig(spatial_dims=dims, crop_size=(8,) * dims, ae_epochs=2, ae_batch_size=8, seed=0, **kw)
    emb, history = embed_patients(vols, cfg)
    assert emb.shape == (16, 32) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    np.testing.assert_array_equal(emb, embed_patients(vols, cfg)[0])
    assert not np.array_equal(emb, embed_patients(vols, dataclasses.replace(cfg, seed=1))[0])
    d = cdist(emb, emb) + np.diag(np.full(16, np.inf))
    nearest = np.argsort(d, axis=1)[:, :3]
    assert (groups[nearest] == groups[:, None]).mean() >= 0.9


def test_autoencoder_learns_to_reconstruct():
    vols, _ = _groups(2, (32, 32, 16))
    cfg = _cfg(ae_epochs=8, ae_batch_size=4)
    images = resize_volumes(vols, cfg)
    assert images.shape == (8, 1, 16, 16, 8)
    np.testing.assert_allclose(images[0, 0, 0, 0, 0].item(), vols[0, :2, :2, :2].mean(), rtol=1e-5)
    _, history = train_autoencoder(images, cfg)
    assert len(history) == 8 and history[-1]["loss"] < 0.5 * history[0]["loss"]


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(random_data):
    emb, vols = random_data
    with pytest.raises(ValueError, match="instances_per_class=30"):
        discover_visual_words(emb, vols, _cfg(instances_per_class=30))
    with pytest.raises(ValueError, match="n_classes=25"):
        discover_visual_words(emb, vols, _cfg(n_classes=25))
    with pytest.raises(ValueError, match="one row per volume"):
        discover_visual_words(emb[:5], vols, _cfg())
    with pytest.raises(ValueError, match="expected 2 spatial axes"):
        discover_visual_words(emb, vols, _cfg(spatial_dims=2, crop_size=(8, 8), ae_size=(32, 32)))
    with pytest.raises(ValueError, match=r"found 0 of n_classes=5 .*20 had members too small"):
        discover_visual_words(emb, vols, _cfg(crop_size=(20, 20, 4)))
    with pytest.raises(ValueError, match=r"found 1 of n_classes=5 .*no anchor"):
        discover_visual_words(emb, vols, _cfg(min_anchor_distance=100.0))
    with pytest.raises(ValueError, match=r"volume \d+ has values in \[.*expected \[0, 1\]"):
        discover_visual_words(emb, vols * 1000 - 500, _cfg(max_tissue_fraction=0.15))
    words = discover_visual_words(emb, vols, _cfg())
    with pytest.raises(ValueError, match="levels="):
        extract_visual_word_crops(vols, words, _cfg(), levels=[3])
    with pytest.raises(ValueError, match="only 10 volumes"):
        extract_visual_word_crops(vols[:10], words, _cfg())
    with pytest.raises(ValueError, match="leaves the volume"):
        extract_visual_word_crops(vols[:, :10], words, _cfg())
    with pytest.raises(ValueError, match="k=40"):
        nearest_patients(emb[:2], emb, 40)
