"""Alice's view mining: SynthCT landmarks, the SAM-like embedding and its loss, matching, pair mining, view batches,
the stage's config check and run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib.anatomy.embedding import EmbeddingConfig, train_embedding
from eden_lib.anatomy.matching import (MiningConfig, landmark_match_errors_mm, mine_pairs, oracle_points,
                                       pair_errors_mm)
from eden_lib.anatomy.views import view_pair_batches
from eden_lib.anatomy.volumes import load_training_volumes, training_spacing
from eden_lib.data.luna16 import LUNA16Index, write_luna16
from eden_lib.data.synth_ct import LANDMARKS, SynthCTConfig, generate_synth_ct, synth_ct_scan
from eden_lib.pipeline.anatomy import DEFAULTS, check_anatomy

# sha1 of the HU array of this scan, recorded with the generator before landmarks were added: must never change
HU_SHA1 = "96b305155dc08f1a3c9273719614206f5a02227c"
HASH_CFG = SynthCTConfig(n_scans=2, shape=(72, 72, 40), spacing=(4.0, 4.0, 5.5))
SMALL = SynthCTConfig(n_scans=5, shape=(64, 64, 40), spacing=(4.5, 4.5, 5.5))
EMBED = EmbeddingConfig(crop=(32, 32, 24), steps=80, batch_size=2, points=128)
MINING = MiningConfig(pairs_per_scan=32, max_tries=20, margin=(4, 4, 2))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: small 3D convolutions gain little from two, and spin badly on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_luna16(tmp_path_factory.mktemp("luna16"), generate_synth_ct(SMALL, seed=3)).root


@pytest.fixture(scope="module")
def data(root):
    uids, volumes, landmarks = load_training_volumes(root, range(10))
    return volumes, [landmarks[u] for u in uids], training_spacing(root, range(10))


@pytest.fixture(scope="module")
def trained(data):
    return train_embedding(data[0], EMBED, seed=0)


def test_landmarks_leave_every_generated_array_unchanged():
    scan = synth_ct_scan(HASH_CFG, seed=0, index=0)
    assert hashlib.sha1(scan.hu.tobytes()).hexdigest() == HU_SHA1
    assert list(scan.landmarks["landmark"]) == list(LANDMARKS)
    assert list(scan.landmarks.columns) == ["landmark", "coordX", "coordY", "coordZ"]
    assert np.isfinite(scan.landmarks[["coordX", "coordY", "coordZ"]].to_numpy()).all()


def test_landmarks_written_and_read_back(root, data):
    table = LUNA16Index(root).read_landmarks()
    assert list(table.columns) == ["seriesuid", "landmark", "coordX", "coordY", "coordZ"]
    assert len(table) == SMALL.n_scans * len(LANDMARKS)
    again = synth_ct_scan(SMALL, seed=3, index=0)
    mine = table[table["seriesuid"] == again.seriesuid].reset_index(drop=True)
    np.testing.assert_allclose(mine[["coordX", "coordY", "coordZ"]], again.landmarks[["coordX", "coordY", "coordZ"]])
    assert all(len(lm) == len(LANDMARKS) for lm in data[1])


def test_landmarks_sit_on_their_anatomy(data):
    volumes, landmarks, _ = data
    for volume, lm in zip(volumes, landmarks):
        at = lm.set_index("landmark")
        value = {k: volume[tuple(np.rint(at.loc[k, ["x", "y", "z"]]).astype(int))] for k in ("carina", "heart_c",
                                                                                                "vertebra_carina")}
        assert value["carina"] < 0.3  # airway lumen (air, HU < -400)
        assert value["heart_c"] > 0.48 and value["vertebra_carina"] > 0.48  # blood / bone or disc, not lung
        assert at.loc["dome_r", "z"] > at.loc["dome_l", "z"]  # right hemidiaphragm higher
        assert at.loc["heart_c", "x"] > at.loc["carina", "x"]  # heart to the patient's left (+x)


def test_read_landmarks_errors_name_the_file(tmp_path, root):
    (tmp_path / "subset0").mkdir()
    index = LUNA16Index(tmp_path)
    with pytest.raises(FileNotFoundError, match="landmarks.csv"):
        index.read_landmarks()
    pd.DataFrame({"seriesuid": ["a"], "landmark": ["carina"], "coordX": [0.0], "coordY": [0.0]}).to_csv(
        tmp_path / "landmarks.csv", index=False)
    with pytest.raises(ValueError, match=r"landmarks\.csv.*coordZ"):
        index.read_landmarks()


def test_embedding_training_lowers_the_loss_and_is_deterministic(data, trained):
    _, history = trained
    assert np.mean(history[-10:]) < 0.6 * np.mean(history[:5])
    short = EmbeddingConfig(crop=(32, 32, 24), steps=3, points=64)
    (m1, h1), (m2, h2) = (train_embedding(data[0], short, seed=5) for _ in range(2))
    assert h1 == h2
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert train_embedding(data[0], short, seed=6)[1] != h1


def test_matched_pairs_find_the_same_anatomy_far_more_often_than_random(data, trained):
    volumes, landmarks, spacing = data
    model, _ = trained
    errors, pairs = {}, {}
    for mode in ("matched", "oracle", "random"):
        pairs[mode] = mine_pairs(volumes, MINING, np.random.default_rng(0), mode, model=model, landmarks=landmarks)
        errors[mode] = pair_errors_mm(pairs[mode], landmarks, spacing)
    p = pairs["matched"]
    assert len(p) == len(volumes) * MINING.pairs_per_scan
    assert (p["scan_k"] == (p["scan_q"] - 1) % len(volumes)).all()
    assert p.attrs["accepted"] + p.attrs["unaccepted"] == len(p) and 0 <= p.attrs["acceptance_rate"] <= 1
    assert p.attrs["tries"] >= len(p) and 0 < p.attrs["try_acceptance_rate"] <= 1
    assert (volumes[p["scan_k"], p["xk"], p["yk"], p["zk"]] > MINING.foreground).all()
    assert pairs["random"]["score"].isna().all() and pairs["oracle"]["score"].isna().all()
    median = {m: float(np.median(e)) for m, e in errors.items()}
    within = {m: float(np.mean(e <= 20)) for m, e in errors.items()}
    assert median["matched"] < 0.5 * median["random"], median
    assert within["matched"] > within["random"] + 0.3, within
    assert median["oracle"] < 5.0, median  # rounding to voxels only
    lm = landmark_match_errors_mm(model, volumes, landmarks, spacing)
    assert len(lm) and lm["error_mm"].median() < 40


def test_oracle_is_exact_on_the_landmarks(data):
    _, landmarks, _ = data
    q, k = landmarks[1], landmarks[0]
    shared = q.merge(k, on="landmark", suffixes=("_q", "_k"))
    mapped = oracle_points(q, k, np.rint(shared[["x_q", "y_q", "z_q"]].to_numpy()))
    assert np.median(np.abs(mapped - shared[["x_k", "y_k", "z_k"]].to_numpy())) < 1.5  # voxels
    with pytest.raises(ValueError, match="share 3 landmarks"):
        oracle_points(q.iloc[:3], k, np.zeros((1, 3)))


def test_view_pair_batches_shapes_padding_and_determinism(data):
    volumes = data[0].astype(np.float16)
    pairs = pd.DataFrame({"scan_q": [0, 1, 2], "xq": [0, 30, 20], "yq": [0, 30, 20], "zq": [0, 20, 10],
                          "scan_k": [4, 0, 1], "xk": [30, 63, 20], "yk": [30, 63, 20], "zk": [20, 39, 10],
                          "score": np.nan})
    factory = view_pair_batches(volumes, pairs, (16, 16, 8), batch_size=3, steps=2)
    batches = list(factory(0, torch.Generator().manual_seed(1)))
    assert len(batches) == 2
    b = batches[0]
    assert b["query"].shape == b["key"].shape == (3, 1, 16, 16, 8) and b["query"].dtype == torch.float32
    corner = b["query"][0, 0]  # pair 0 (rows come sorted), centred on voxel (0, 0, 0): lower half is padding
    assert (corner[:8] == 0).all() and (corner[:, :8] == 0).all() and (corner[:, :, :4] == 0).all()
    np.testing.assert_array_equal(corner[8:, 8:, 4:].numpy(), volumes[0, :8, :8, :4].astype(np.float32))
    again = list(factory(0, torch.Generator().manual_seed(1)))
    for x, y in zip(batches, again):
        assert torch.equal(x["query"], y["query"]) and torch.equal(x["key"], y["key"])


@pytest.mark.parametrize("key, value, message", [
    ("crops", [48, 48, 32], "anatomy.crops"), ("crop", [48, 48], "anatomy.crop"),
    ("threshold", 1.5, "anatomy.threshold"), ("threshold", 0, "anatomy.threshold"),
    ("margin", [8, -1, 4], "anatomy.margin"), ("steps", 0, "anatomy.steps"),
])
def test_bad_anatomy_block_names_the_key(key, value, message):
    check_anatomy(dict(DEFAULTS))
    with pytest.raises(ValueError, match=message):
        check_anatomy({**DEFAULTS, key: value})


def test_run_anatomy_writes_its_outputs(tmp_path, monkeypatch):
    from eden_lib import paths
    from eden_lib.pipeline.anatomy import run_anatomy

    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    scans = [synth_ct_scan(SMALL, seed=3, index=i) for i in range(3)]
    write_luna16(paths.raw_dir("synthetic") / "luna16", scans)
    block = {**DEFAULTS, "crop": [32, 32, 24], "steps": 2, "points": 32, "pairs_per_scan": 4, "max_tries": 2,
             "margin": [4, 4, 2]}
    cfg = {"seed": 0, "profile": "test", "data": {"source": "synthetic", "ct": {"test_fraction": 0.25}},
           "anatomy": block, "active_methods": ["alice"]}
    metrics = run_anatomy(cfg)
    out = paths.data_dir() / "anatomy"
    assert np.load(out / "volumes.npy").shape == (3, 64, 64, 40)
    for mode in ("matched", "oracle", "random"):
        assert len(pd.read_csv(out / f"pairs_{mode}.csv")) == 12
        assert metrics["modes"][mode]["errors"]["median_mm"] >= 0
    assert (out / "matcher.pt").is_file() and list(pd.read_csv(out / "scans.csv")["index"]) == [0, 1, 2]
    saved = json.loads(paths.metrics_file("anatomy", "matching").read_text())
    assert saved["matcher"]["steps"] == 2 and saved["threshold"] == 0.7 and saved["seconds"]["total"] > 0
    assert saved["landmark_match"]["median_mm"] >= 0
    assert (paths.figures_dir("anatomy") / "view_pairs.png").is_file()
    skipped = run_anatomy({**cfg, "active_methods": ["scratch"]})  # nothing reads pairs: an empty output
    assert "alice" in skipped["skipped"] and sorted(p.name for p in out.iterdir()) == ["README.md"]


def test_unreachable_threshold_keeps_the_best_try_and_counts_it(data, trained):
    strict = MiningConfig(pairs_per_scan=4, threshold=1.0, max_tries=3, margin=(4, 4, 2))
    p = mine_pairs(data[0][:2], strict, np.random.default_rng(0), "matched", model=trained[0])
    assert p.attrs["unaccepted"] == len(p) == 8 and p.attrs["tries"] == 24 and p.attrs["acceptance_rate"] == 0
    assert p["score"].between(-1, 1).all()


def test_scans_of_different_shapes_are_refused(tmp_path):
    other = SynthCTConfig(n_scans=1, shape=(64, 64, 42), spacing=(4.5, 4.5, 5.5))
    write_luna16(tmp_path, [synth_ct_scan(SMALL, 3, 0), synth_ct_scan(other, 3, 1)])
    with pytest.raises(ValueError, match="differ in shape.*resampl"):
        load_training_volumes(tmp_path, range(10))
