"""Stage ``self_discovery`` on a small SynthCT written as LUNA16, and the visual-word feed of pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib import paths
from eden_lib.config import ConfigError, load_params
from eden_lib.data.luna16 import write_luna16
from eden_lib.data.synth_ct import SynthCTConfig, generate_synth_ct
from eden_lib.pipeline.self_discovery import load_visual_words, run_self_discovery, visual_word_dims

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TINY = {"methods.transvw.dims": [3], "self_discovery.ae_epochs": 1, "self_discovery.ae_size_3d": [16, 16, 8], "self_discovery.ae_width": 2}


@pytest.fixture(scope="module")
def luna_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eden")
    scans = generate_synth_ct(SynthCTConfig(n_scans=10, negatives_per_scan=2), seed=0)
    write_luna16(root / "data" / "raw" / "synthetic" / "luna16", scans)
    return root


def smoke(**overrides) -> dict:
    return load_params(PARAMS, profile="smoke", overrides={**TINY, **overrides})


@pytest.fixture()
def discovered(luna_root, monkeypatch) -> tuple[dict, pd.DataFrame]:
    monkeypatch.setenv("EDEN_ROOT", str(luna_root))
    cfg = smoke()
    return cfg, run_self_discovery(cfg)


def test_words_are_the_same_box_of_k_nearest_patients_at_three_scales(discovered):
    cfg, summary = discovered
    sd = cfg["self_discovery"]
    c, k = sd["n_classes"], sd["instances_per_class"]
    assert summary["spatial_dims"].tolist() == [3]
    crops, labels, info = load_visual_words(3)
    assert crops.shape == (c * 3 * k, *cfg["data"]["ct"]["subvolume"]) and crops.dtype == np.float16
    assert 0 <= float(crops.min()) and float(crops.max()) <= 1
    np.testing.assert_array_equal(np.bincount(labels), np.full(c, 3 * k))
    meta = pd.read_csv(paths.data_dir() / "visual_words" / "3d" / "crops.csv")
    words = pd.read_csv(paths.data_dir() / "visual_words" / "3d" / "words.csv")
    for label, part in meta.groupby("label"):
        assert part["patient"].nunique() == k  # K distinct patients per class ...
        assert (part.groupby("patient")["level"].nunique() == 3).all()  # ... each cut at every scale
        exact = part[part["level"] == 0]
        assert exact[["start_x", "start_y", "start_z"]].drop_duplicates().shape[0] == 1  # the same coordinates
        reference = exact.loc[exact["rank"] == 0, "patient"].item()
        assert reference == words.loc[words["label"] == label, "reference"].item()
    assert words["reference"].nunique() == c  # each class its own reference patient
    metrics = json.loads(paths.metrics_file("self_discovery", "visual_words").read_text())
    assert metrics["3d"]["n_crops"] == len(labels) == info["n_crops"]


def test_discovery_is_deterministic(discovered):
    cfg, _ = discovered
    crops, labels, _ = load_visual_words(3)
    first = (np.array(crops), labels.copy())
    run_self_discovery(cfg)
    again, labels_again, _ = load_visual_words(3)
    np.testing.assert_array_equal(first[0], np.array(again))
    np.testing.assert_array_equal(first[1], labels_again)


def test_pretraining_feed_gives_clean_crops_and_integer_words(discovered):
    from eden_lib.methods import build_method
    from eden_lib.pipeline.pretrain import _batches, build_context, fingerprint

    cfg, _ = discovered
    method = build_method("transvw", cfg["methods"]["transvw"], build_context(cfg, 3, 1))
    batch = next(iter(_batches(cfg, method, 3, steps=2)(0, torch.Generator().manual_seed(0))))
    assert batch["image"].shape == (16, 1, *cfg["data"]["ct"]["subvolume"]) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (16,)
    out = method(batch, torch.Generator().manual_seed(0))  # the method accepts the feed as it is
    assert torch.isfinite(out["loss"])
    paths.prepared_dir("ct").mkdir(parents=True, exist_ok=True)
    np.save(paths.prepared_dir("ct") / "subvolumes.npy", np.zeros(2, np.float16))
    before = {m: fingerprint(cfg, m, 3) for m in ("transvw", "models_genesis")}
    np.save(paths.data_dir() / "visual_words" / "3d" / "labels.npy", np.zeros(3, np.int64))
    assert fingerprint(cfg, "transvw", 3) != before["transvw"]  # other words: its checkpoints are not resumed
    assert fingerprint(cfg, "models_genesis", 3) == before["models_genesis"]  # methods without words: unaffected


def test_no_visual_word_method_no_words(luna_root, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(luna_root))
    cfg = smoke(active_methods=["scratch", "models_genesis"])
    assert visual_word_dims(cfg) == []
    assert run_self_discovery(cfg).empty
    assert not (paths.data_dir() / "visual_words" / "3d").exists()
    with pytest.raises(FileNotFoundError, match="self_discovery"):
        load_visual_words(3)


def test_head_size_must_match_the_discovered_classes():
    with pytest.raises(ConfigError, match=r"methods.transvw.n_classes = 7 but self_discovery.n_classes = 6"):
        smoke(**{"methods.transvw.n_classes": 7})


def test_2d_words_come_from_the_training_radiographs(tmp_path, monkeypatch):
    from eden_lib.data import prepared

    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    g = np.random.default_rng(0)
    n = 24
    yy, xx = np.mgrid[:128, :128]
    centres = g.uniform(30, 98, size=(n, 2))
    images = (255 * np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 400)).astype(np.uint8)
    split = np.array(["train"] * 16 + ["test"] * 8)
    meta = pd.DataFrame({"image_index": [f"{i:08d}_000.png" for i in range(n)], "patient_id": range(n), "sex": "F",
                         "age": 50, "site": "a", "split": split})
    prepared.write_cxr(paths.prepared_dir("cxr"), images, np.zeros_like(images), np.zeros((n, 0, 2)),
                       np.zeros((n, 1)), meta, {"labels": ["x"], "masks": [], "landmarks": []})
    cfg = smoke(**{"active_methods": ["transvw"], "methods.transvw.dims": [2], "self_discovery.ae_size_2d": [64, 64],
                   "self_discovery.ae_width": 4, "self_discovery.crop_size_2d": 48})
    summary = run_self_discovery(cfg)
    assert summary["spatial_dims"].tolist() == [2]
    crops, labels, _ = load_visual_words(2)
    size = cfg["data"]["image_size"]
    assert crops.shape == (6 * 3 * 4, size, size)
    patients = set(pd.read_csv(paths.data_dir() / "visual_words" / "2d" / "crops.csv")["patient"])
    assert patients <= set(meta["image_index"][split == "train"])  # never a test radiograph
