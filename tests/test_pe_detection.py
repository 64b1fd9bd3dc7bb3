"""PE detection baseline: components -> markers, FROC of a perfect prediction, a tiny train/predict/score run,
determinism, and the ``froc`` stage end to end on tiny SynthCTPA with stand-in exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from eden_lib.data.cad_pe import CADPE
from eden_lib.evaluation.pe_detection import (
    DetectionConfig,
    components_to_markers,
    detect,
    sample_patches,
    score,
    train_detector,
)
from eden_lib.models.unet3d import UNet3D
from eden_lib.pipeline.transfer import _LogitOutput
from eden_lib.seed import seed_everything

SHAPE = (16, 16, 16)  # X, Y, Z
EMBOLI = {  # scan -> {label: box}; 024 has none
    "001": {1: np.s_[3:6, 4:6, 4:8], 2: np.s_[10:12, 10:13, 2:5]},
    "002": {1: np.s_[7:9, 2:5, 9:13]},
    "021": {1: np.s_[2:4, 2:4, 2:4], 2: np.s_[9:12, 9:11, 9:14]},
    "024": {},
}
TINY = DetectionConfig(patch=(8, 8, 8), steps=3, batch_size=2, lr=0.01, window=(16, 16, 16), threshold=0.3,
                       device="cpu")


def _write(path, xyz: np.ndarray) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))
    image.SetSpacing((2.0, 2.0, 2.5)), image.SetOrigin((-16.0, -16.0, -20.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Bright tubes along x (contrast, 300 HU) in lung (-850 HU) with dark boxes (emboli, 50 HU), noisy."""
    root = tmp_path_factory.mktemp("cadpe_tiny")
    g = np.random.default_rng(0)
    for scan_id, emboli in EMBOLI.items():
        ref = np.zeros(SHAPE, np.int16)
        hu = np.full(SHAPE, -850.0)
        hu[:, 2:13, 2:14] = 300.0
        for label, box in emboli.items():
            ref[box] = label
        hu[ref > 0] = 50.0
        _write(root / f"{scan_id}.nrrd", (hu + g.normal(0, 15, SHAPE)).astype(np.int16))
        _write(root / f"{scan_id}RefStd.nrrd", ref)
    return root


def _net(width: int = 2) -> UNet3D:
    net = UNet3D(1, 1, base_width=width)
    net.out_tr = _LogitOutput(net.out_tr.final_conv)
    return net


def test_components_to_markers_one_per_component_at_its_maximum():
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:4, 1:3, 1:3] = 0.5
    prob[2, 2, 2] = 0.9            # component 1's maximum
    prob[4, 3, 3] = 0.4            # touches component 1 by a corner only: same component (26-connectivity)
    prob[7:9, 7:9, 6:9] = 0.6
    prob[8, 7, 8] = 0.7            # component 2's maximum
    prob[5, 8, 1] = 0.1            # below the threshold: no marker
    markers = components_to_markers(prob, 0.3, "007")
    assert list(markers.columns) == ["scan", "x", "y", "z", "confidence"]
    assert len(markers) == 2 and (markers["scan"] == "007").all()
    np.testing.assert_array_equal(markers[["x", "y", "z"]].to_numpy(), [[2, 2, 2], [8, 7, 8]])
    np.testing.assert_allclose(markers["confidence"], [0.9, 0.7])
    assert components_to_markers(np.zeros((4, 4, 4)), 0.5, "001").empty


def test_a_perfect_prediction_finds_every_embolus_at_zero_false_positives(root):
    test = CADPE(root)
    frames = []
    for i, scan in enumerate(test.meta["patient_id"]):
        emboli = test[i]["emboli"].numpy()
        prob = np.where(emboli > 0, 0.5 + 0.1 * emboli, 0.0)  # one component per embolus, distinct confidences
        frames.append(components_to_markers(prob, 0.3, scan))
    markers = pd.concat(frames, ignore_index=True)
    assert len(markers) == 5
    curve, sens = score(markers, test)
    assert curve["fp"].max() == 0 and curve["sensitivity"].iloc[-1] == 1.0
    assert sens.tolist() == [1.0, 1.0, 1.0]
    # one marker moved off its embolus: it is a false positive and that embolus is missed
    markers.loc[0, ["x", "y", "z"]] = [14, 14, 14]
    curve, sens = score(markers, test)
    assert curve["fp"].max() == 1 and curve["sensitivity"].iloc[-1] == pytest.approx(4 / 5)


def test_positive_oversampling(root):
    train = CADPE(root, "train")
    x, y = sample_patches(train, 40, (8, 8, 8), 1.0, seed=0)
    assert x.shape == y.shape == (40, 1, 8, 8, 8) and x.dtype == torch.float32
    assert (y.flatten(1).amax(1) == 1).all()  # every patch holds embolus voxels
    _, y0 = sample_patches(train, 40, (8, 8, 8), 0.0, seed=0)
    assert (y0.flatten(1).amax(1) == 1).float().mean() < 0.8
    again, _ = sample_patches(train, 40, (8, 8, 8), 1.0, seed=0)
    other, _ = sample_patches(train, 40, (8, 8, 8), 1.0, seed=1)
    assert torch.equal(again, x) and not torch.equal(other, x)


def _train_detect_score(root, seed: int):
    seed_everything(seed)
    net = train_detector(_net(), CADPE(root, "train"), TINY, seed)
    test = CADPE(root, "test")
    markers = detect(net, test, TINY)
    return markers, *score(markers, test)


def test_tiny_end_to_end_run_is_finite_and_deterministic(root):
    markers, curve, sens = _train_detect_score(root, 0)
    assert np.isfinite(sens.to_numpy()).all() and ((sens >= 0) & (sens <= 1)).all()
    assert np.isfinite(curve["fp_per_scan"]).all() and len(curve) == len(np.unique(markers["confidence"])) + 1
    again = _train_detect_score(root, 0)
    pd.testing.assert_frame_equal(again[0], markers)
    pd.testing.assert_frame_equal(again[1], curve)


def test_froc_stage_end_to_end(tmp_path, monkeypatch):
    from eden_lib import paths
    from eden_lib.checkpoints import save_weights
    from eden_lib.config import load_params
    from eden_lib.pipeline.froc import run_froc

    cfg = load_params(profile="smoke", validate_methods=False, overrides={
        "pretrain.unet3d_width": 2, "pretrain.device": "cpu", "transfer.seeds": [0, 1],
        "froc.n_train": 2, "froc.n_test": 1, "froc.steps": 2, "froc.batch_size": 2, "froc.patch": [8, 8, 8]})
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))  # every output of the stage goes under tmp_path
    for i, method in enumerate(("scratch", "models_genesis")):  # random stand-ins in the export format
        torch.manual_seed(i)
        save_weights(UNet3D(1, 1, base_width=2), paths.models_dir(method) / "unet3d.pt", method=method,
                     spatial_dims=3, export="unet3d")
    metrics = run_froc(cfg, ["models_genesis", "moco_v2"])
    assert sorted(p.name for p in paths.raw_dir("synthetic_ctpa").iterdir()) == [
        "001.nrrd", "001RefStd.nrrd", "002.nrrd", "002RefStd.nrrd", "021.nrrd", "021RefStd.nrrd"]
    assert [(r["method"], r["seed"]) for r in metrics["runs"]] == [
        ("scratch", 0), ("scratch", 1), ("models_genesis", 0), ("models_genesis", 1)]
    assert metrics["skipped"] == {"moco_v2": "no unet3d.pt (a 2D-only method)"}
    assert set(metrics["summary"]["models_genesis"]) == {"fp_1", "fp_2", "fp_4", "froc_score"}
    assert {"mean", "std", "p", "stars"} <= set(metrics["summary"]["models_genesis"]["fp_2"])
    written = json.loads(paths.metrics_file("froc", "pe_detection").read_text())
    assert written["n_test_scans"] == 1 and len(written["mean_curves"]["scratch"]["sensitivity"]) == 81
    assert (paths.figures_dir("froc") / "froc_curves.png").stat().st_size > 1000
