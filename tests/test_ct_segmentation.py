"""Nodule segmentation (Models Genesis "NCS" on SynthCT): metrics, prepared nodule crops, the task, 3D-only methods."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import DiceMetric

from eden_lib import paths
from eden_lib.checkpoints import save_weights
from eden_lib.config import load_params
from eden_lib.data import prepared
from eden_lib.data.luna16 import NODULE_MASK_DIR, LUNA16Index, extract_candidate_cubes, write_luna16
from eden_lib.data.synth_ct import SynthCTConfig, generate_synth_ct
from eden_lib.evaluation.metrics import dice_per_class
from eden_lib.evaluation.segmentation import foreground_dice_iou, keras_mean_iou, segmentation_metrics
from eden_lib.methods import networks
from eden_lib.pipeline import transfer
from eden_lib.pipeline.pretrain import build_context
from eden_lib.pipeline.prepare import prepare_ct
from tests.conftest import ROOT


# --- metrics ---------------------------------------------------------------------------------------------------

def _two_cubes() -> tuple[np.ndarray, np.ndarray]:
    """Cube 0: target 4 voxels, prediction 4 voxels, 2 shared (Dice 1/2, IoU 1/3); cube 1: both empty (1, 1)."""
    target = np.zeros((2, 4, 4, 4), np.uint8)
    prob = np.zeros((2, 4, 4, 4))
    target[0, 0, 0, :4] = 1
    prob[0, 0, 0, 2:4] = 0.9
    prob[0, 1, 0, :2] = 0.8
    prob[0, 3, 3, 3] = 0.5  # exactly at the threshold: background (foreground is prob > 0.5)
    return prob, target


def test_foreground_dice_iou_hand_computed():
    dice, iou = foreground_dice_iou(*_two_cubes())
    assert dice == pytest.approx((0.5 + 1.0) / 2)
    assert iou == pytest.approx((1 / 3 + 1.0) / 2)


def test_foreground_dice_matches_monai_dice_metric_and_dice_per_class():
    prob, target = _two_cubes()
    pred = torch.from_numpy(prob > 0.5).unsqueeze(1).float()
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    metric(pred, torch.from_numpy(target).unsqueeze(1).float())
    dice, _ = foreground_dice_iou(prob, target)
    assert dice == pytest.approx(metric.aggregate().item())
    assert dice == pytest.approx(dice_per_class(prob[:, None] > 0.5, target[:, None] > 0)[0])


def test_keras_mean_iou_hand_computed_over_thresholds():
    prob = np.zeros((1, 10))
    prob[0, :3] = [0.97, 0.62, 0.72]
    target = np.zeros((1, 10), np.uint8)
    target[0, :2] = 1
    a = (2 / 3 + 7 / 8) / 2  # t in 0.5, 0.55, 0.6: predicted {0, 1, 2}: TP 2, FP 1, FN 0, TN 7
    b = (1 / 3 + 7 / 9) / 2  # t in 0.65, 0.7: {0, 2}: TP 1, FP 1, FN 1, TN 7
    c = (1 / 2 + 8 / 9) / 2  # t in 0.75 .. 0.95: {0}: TP 1, FP 0, FN 1, TN 8
    assert keras_mean_iou(prob, target) == pytest.approx((3 * a + 2 * b + 5 * c) / 10)
    assert keras_mean_iou(prob, target, thresholds=(0.5,)) == pytest.approx(a)


def test_keras_mean_iou_counts_background_and_leaves_out_absent_classes():
    target = np.zeros((2, 8), np.uint8)
    assert keras_mean_iou(np.zeros((2, 8)), target) == pytest.approx(1.0)  # background only: TF's mean of one class
    target[0, 0] = 1
    # all background predicted: foreground IoU 0, background 15/16 -> the papers' "IoU" is about 0.47, Dice 0
    scores = segmentation_metrics(np.zeros((2, 8)), target)
    assert scores["keras_mean_iou"] == pytest.approx(15 / 16 / 2)
    assert scores["dice"] == pytest.approx(0.5) and scores["iou"] == pytest.approx(0.5)  # cube 1 is empty: 1


def test_segmentation_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="binary"):
        keras_mean_iou(np.zeros((1, 4)), np.full((1, 4), 2))
    with pytest.raises(ValueError, match="must both be"):
        foreground_dice_iou(np.zeros((1, 4)), np.zeros((1, 5)))


# --- prepare: nodule crops on a tiny synthetic LUNA16 root ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory):
    """Prepared CT of 2 SynthCT scans (subset 0 trains, subset 1 tests), written under a scratch EDEN_ROOT."""
    home = tmp_path_factory.mktemp("eden")
    scans = generate_synth_ct(SynthCTConfig(n_scans=2, nodules_per_scan=(2, 2), negatives_per_scan=6), seed=3)
    root = home / "luna16"
    write_luna16(root, scans, n_subsets=10)
    cfg = load_params(ROOT / "params.yaml", overrides={
        "data.ct.test_fraction": 0.9, "data.ct.subvolumes_per_scan": 2, "data.ct.nodule_crops_per_train": 3,
        "transfer.seeds": [0, 1], "tasks.ct_nodule_segmentation.finetune_epochs": 1,
        "tasks.ct_nodule_segmentation.batch_size": 4, "transfer.finetune.min_steps": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDEN_ROOT", str(home))
        prepare_ct(cfg, root)
        ct = prepared.load_ct()
    return home, root, cfg, ct


def test_nodule_crops_are_xyz_jittered_and_cover_their_nodule(tiny_ct):
    home, _, _, ct = tiny_ct
    meta = ct.nodule_meta
    assert ct.nodules.shape == ct.nodule_masks.shape == (len(meta), 8, 8, 8)
    assert ct.nodules.dtype == np.float16 and ct.nodule_masks.dtype == np.uint8 and ct.info["nodule_masks"] is True
    assert set(np.unique(ct.nodule_masks)) <= {0, 1} and 0 <= ct.nodules.min() and ct.nodules.max() <= 1
    counts = meta.groupby("split")["nodule"].agg(["size", "nunique"])
    assert counts.loc["train", "size"] == 3 * counts.loc["train", "nunique"]  # 3 crops per training nodule
    assert counts.loc["test", "size"] == counts.loc["test", "nunique"]  # one per test nodule
    shift = meta[["shift_x", "shift_y", "shift_z"]].to_numpy()
    assert (np.abs(shift) <= 2).all() and (shift != 0).any()  # the nodule is not always at the centre
    centre = 4 + shift  # (x, y, z) voxel of the annotated centre inside each cube
    assert ct.nodule_masks[np.arange(len(meta)), centre[:, 0], centre[:, 1], centre[:, 2]].all()
    columns = pd.read_csv(home / "data" / "prepared" / "ct" / "nodules.csv").columns
    assert list(columns[:7]) == ["seriesuid", "subset", "split", "coordX", "coordY", "coordZ", "diameter_mm"]


def test_candidates_are_stored_in_xyz_order(tiny_ct):
    _, root, _, ct = tiny_ct
    zyx = extract_candidate_cubes(LUNA16Index(root), size=ct.info["cube_size"])["cubes"]
    np.testing.assert_array_equal(ct.candidates, np.transpose(zyx, (0, 3, 2, 1)))
    assert not np.array_equal(ct.candidates, zyx)


def test_nodule_crops_are_seeded_and_absent_without_masks(tiny_ct, tmp_path, monkeypatch):
    _, root, cfg, ct = tiny_ct
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    prepare_ct(cfg, root)
    np.testing.assert_array_equal(prepared.load_ct().nodules, ct.nodules)  # same seed, same crops
    real = tmp_path / "real"
    real.mkdir()
    for item in root.iterdir():
        if item.name != "synth":
            (real / item.name).symlink_to(item)
    assert not (real / NODULE_MASK_DIR).exists()
    prepare_ct(cfg, real)
    again = prepared.load_ct()
    assert again.info["nodule_masks"] is False and again.nodules.shape == (0, 8, 8, 8) and again.nodule_meta.empty
    _export_unet3d(cfg, "m3d", 0)
    assert transfer.ct_nodule_segmentation(cfg, "m3d", again) == []
    assert "no nodule masks" in transfer.skipped_tasks("m3d", again)["ct_nodule_segmentation"]


def test_nodule_patch_must_be_multiple_of_8(tiny_ct, tmp_path, monkeypatch):
    _, root, cfg, _ = tiny_ct
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    bad = json.loads(json.dumps(cfg))
    bad["data"]["ct"]["nodule_patch"] = [12, 8, 8]
    with pytest.raises(ValueError, match="data.ct.nodule_patch"):
        prepare_ct(bad, root)


# --- the task and 3D-only methods ----------------------------------------------------------------------------------

def _export_unet3d(cfg: dict, method: str, seed: int) -> None:
    torch.manual_seed(seed)
    save_weights(networks.unet_3d(build_context(cfg, 3, 1)), paths.models_dir(method) / "unet3d.pt", method=method)


def test_segmentation_task_records_are_paired_and_reproducible(tiny_ct, monkeypatch):
    home, _, cfg, ct = tiny_ct
    monkeypatch.setenv("EDEN_ROOT", str(home))
    for method, seed in (("m_a", 1), ("m_b", 2)):
        _export_unet3d(cfg, method, seed)
    records = transfer.ct_nodule_segmentation(cfg, "m_a", ct)
    df = pd.DataFrame(records)
    assert len(df) == 2 * 2 * 3  # protocols x seeds x metrics
    assert set(df["metric"]) == {"dice", "iou", "keras_mean_iou"}
    assert set(df["protocol"]) == {"finetune", "finetune_encoder"}
    assert df["value"].between(0, 1).all()
    n_train = len(ct.nodule_indices("train"))
    assert set(df["budget"]) == {f"{n_train}_cubes"}
    assert pd.DataFrame(transfer.ct_nodule_segmentation(cfg, "m_a", ct))["value"].tolist() == df["value"].tolist()
    summary = transfer.summarize(records)["ct_nodule_segmentation"]["finetune"]
    assert set(summary) == {f"b_{n_train}_cubes_{m}" for m in ("dice", "iou", "keras_mean_iou")}


def test_finetune_encoder_loads_only_the_encoder(tiny_ct, monkeypatch):
    home, _, cfg, _ = tiny_ct
    monkeypatch.setenv("EDEN_ROOT", str(home))
    for method, seed in (("m_a", 1), ("m_b", 2)):
        _export_unet3d(cfg, method, seed)
    ckpt = torch.load(paths.models_dir("m_a") / "unet3d.pt", weights_only=True)["state_dict"]
    whole = transfer.segmentation_unet3d(cfg, "m_a", "finetune").state_dict()
    assert all(torch.equal(whole[k], v) for k, v in ckpt.items())
    nets = []
    for method in ("m_a", "m_b"):
        torch.manual_seed(0)
        nets.append(transfer.segmentation_unet3d(cfg, method, "finetune_encoder").state_dict())
    enc, dec = "down_tr64.ops.0.conv1.weight", "up_tr64.ops.0.conv1.weight"
    assert torch.equal(nets[0][enc], ckpt[enc]) and not torch.equal(nets[1][enc], ckpt[enc])
    assert not torch.equal(nets[0][dec], ckpt[dec]) and torch.equal(nets[0][dec], nets[1][dec])  # fresh, same seed
    assert torch.equal(nets[0]["out_tr.final_conv.bias"], nets[1]["out_tr.final_conv.bias"])
    with pytest.raises(ValueError, match="finetune_encoder"):
        transfer.segmentation_unet3d(cfg, "m_a", "linear_probe")


def test_3d_only_method_skips_the_2d_parts(tiny_ct, monkeypatch):
    home, _, cfg, ct = tiny_ct
    monkeypatch.setenv("EDEN_ROOT", str(home))
    _export_unet3d(cfg, "only3d", 0)
    assert transfer.has_3d("only3d") and not transfer.has_2d("only3d")
    feats = transfer.extract_features(cfg, "only3d", torch.zeros(0), None, ct)  # no CXR data needed
    assert set(feats) == {"ct"} and feats["ct"].shape[0] == len(ct.candidates)
    assert transfer.skipped_tasks("only3d", ct)["cxr_classification"].startswith("3D-only")
    from eden_lib.pipeline.embedding import methods_2d

    np.savez(paths.features_file("with2d"), cxr=np.zeros((1, 2)))
    assert methods_2d({"active_methods": ["with2d", "only3d"]}) == (["with2d"], ["only3d"])
