"""DiRA's localisation claim: Grad-CAM, the pointing game, IoU, the floor and the control on known answers; the
stage's box matching, statistics, verdict and params block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from eden_lib.analysis.localisation import (
    box_iou,
    box_masks,
    bootstrap_mean,
    grad_cam,
    normalise_maps,
    paired_difference,
    peak_points,
    pointing_hits,
    prior_maps,
    random_maps,
    stage_layer,
)

S = 32


def _peak(x: float, y: float, n: int = 1) -> np.ndarray:
    ys, xs = np.mgrid[:S, :S] + 0.5
    return np.repeat(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8.0)[None], n, axis=0)


def test_pointing_game_hits_inside_the_box_and_misses_outside():
    box = np.array([[8.0, 4.0, 10.0, 6.0]])  # x 8-18, y 4-10
    assert pointing_hits(_peak(12.5, 6.5), box).tolist() == [True]
    assert pointing_hits(_peak(25.5, 20.5), box).tolist() == [False]
    assert pointing_hits(_peak(19.5, 6.5), box).tolist() == [False]  # one pixel right of the box
    assert pointing_hits(_peak(19.5, 6.5), box, tolerance=2.0).tolist() == [True]
    assert pointing_hits(np.zeros((1, S, S)), box).tolist() == [False]  # no positive value: a miss
    flat_corner = np.zeros((1, S, S))
    flat_corner[0, :8, :8] = 1.0  # a plateau: the pixel nearest the centre counts
    np.testing.assert_allclose(peak_points(flat_corner), [[7.5, 7.5]])


def test_iou_of_the_box_indicator_is_one_and_of_half_the_box_a_half():
    boxes = np.array([[4.0, 6.0, 12.0, 8.0], [0.0, 0.0, 32.0, 32.0]])
    masks = box_masks(boxes, S).astype(float)
    assert masks[0].sum() == 96 and masks[1].all()
    np.testing.assert_allclose(box_iou(masks, boxes, 0.5), [1.0, 1.0])
    half = masks.copy()
    half[0, :, 10:] = 0  # keeps x 4-10 of the box's x 4-16
    np.testing.assert_allclose(box_iou(half[:1], boxes[:1], 0.5), [0.5])
    assert box_iou(np.zeros((1, S, S)), boxes[:1], 0.5).tolist() == [0.0]
    with pytest.raises(ValueError, match="fraction"):
        box_iou(masks, boxes, 0.0)


class _Spots(nn.Module):
    """Class 0: bright spots (channel 0), class 1: dark spots (channel 1) on a mid-grey background."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.stack([torch.ones(1, 3, 3), -torch.ones(1, 3, 3)]))
            conv.bias.copy_(torch.tensor([-4.5, 4.5]))  # zero response on the 0.5 background
        self.features = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_peaks_where_the_class_evidence_is():
    x = torch.full((2, 1, S, S), 0.5)
    x[:, 0, 4:8, 20:24] = 1.0  # bright spot: class 0's evidence, top right
    x[:, 0, 22:26, 6:10] = 0.0  # dark spot: class 1's evidence, bottom left
    maps = grad_cam(_Spots(), "features", x, [0, 1])
    assert maps.shape == (2, S, S) and maps.dtype == np.float32 and maps.min() == 0.0 and maps.max() == 1.0
    bright, dark = np.array([[20.0, 4.0, 4.0, 4.0]]), np.array([[6.0, 22.0, 4.0, 4.0]])
    assert pointing_hits(maps[:1], bright).all() and not pointing_hits(maps[:1], dark).any()
    assert pointing_hits(maps[1:], dark).all() and not pointing_hits(maps[1:], bright).any()
    assert box_iou(maps[:1], bright, 0.5)[0] > 0.3
    with pytest.raises(ValueError, match="one class per image"):
        grad_cam(_Spots(), "features", x, [0])


def test_grad_cam_runs_on_the_study_classifier_at_its_last_stage():
    from eden_lib.models.backbones import ResNetEncoder

    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18", [4, 8, 8, 8])
    assert stage_layer(encoder, 4) == "layer4" and stage_layer(encoder, 2) == "layer2"
    with pytest.raises(ValueError, match="stage"):
        stage_layer(encoder, 5)
    net = nn.Sequential(encoder, nn.Linear(encoder.out_dim, 3))
    maps = grad_cam(net, f"0.{stage_layer(encoder, 4)}", torch.rand(5, 1, 64, 64), [0, 1, 2, 2, 0], batch=2)
    assert maps.shape == (5, 64, 64) and (maps >= 0).all() and (maps <= 1).all()
    assert net.training  # the caller's mode is restored


def test_random_floor_points_with_the_chance_of_its_grid_cells():
    maps = random_maps(np.random.default_rng(0), 4000, 2, S)
    assert maps.shape == (4000, S, S) and maps.min() >= 0 and maps.max() <= 1
    left_half = np.tile([0.0, 0.0, S / 2, S], (4000, 1))
    assert abs(pointing_hits(maps, left_half).mean() - 0.5) < 0.03
    again = random_maps(np.random.default_rng(0), 4000, 2, S)
    np.testing.assert_array_equal(maps, again)


def test_prior_is_the_mean_box_of_other_patients():
    boxes = np.array([[4.0, 4.0, 8.0, 8.0], [4.0, 4.0, 8.0, 8.0], [20.0, 20.0, 8.0, 8.0], [0.0, 0.0, 4.0, 4.0]])
    findings = np.array(["Mass", "Mass", "Mass", "Nodule"])
    prior = prior_maps(boxes, findings, np.array([1, 2, 3, 4]), S)
    # patient 1's prior: the boxes of patients 2 and 3 (its own excluded); the only nodule has no prior
    np.testing.assert_allclose(prior[0], 0.5 * (box_masks(boxes[1:2], S)[0] + box_masks(boxes[2:3], S)[0]) / 0.5)
    assert prior[3].max() == 0 and not pointing_hits(prior[3:], boxes[3:]).any()
    assert box_iou(prior[2:3], boxes[2:3], 0.5)[0] == 0.0  # the other Mass boxes lie elsewhere


def test_normalise_and_bootstrap():
    m = normalise_maps(torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[2.0, 2.0], [2.0, 2.0]]]]))
    np.testing.assert_allclose(m, [[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    v = np.r_[np.ones(30), np.zeros(10)]
    ci = bootstrap_mean(v, np.random.default_rng(0), 200)
    assert ci["mean"] == 0.75 and ci["ci_low"] < 0.75 < ci["ci_high"] and ci["n"] == 40
    assert bootstrap_mean(np.zeros(0), np.random.default_rng(0), 10)["n"] == 0
    d = paired_difference(v, np.zeros(40), np.random.default_rng(0), 200)
    assert d["diff"] == 0.75 and d["ci_low"] > 0.5 and d["p"] == pytest.approx(2 / 201)
    same = paired_difference(v, v, np.random.default_rng(0), 50)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0


def test_box_table_matches_prepared_test_images_and_scales_to_the_input(tmp_path):
    from PIL import Image

    from eden_lib.data.chestxray14 import BBOX_HEADER, BBOX_LIST
    from eden_lib.data.prepared import PreparedCXR
    from eden_lib.pipeline.localisation import box_table

    (tmp_path / "images").mkdir()
    for name in ("00000001_000.png", "00000002_000.png"):
        Image.fromarray(np.zeros((96, 128), np.uint8)).save(tmp_path / "images" / name)  # stored 128 wide, 96 high
    (tmp_path / BBOX_LIST).write_text(BBOX_HEADER + "\n" + "\n".join([
        "00000002_000.png,Mass,64.0,48.0,32.0,24.0",
        "00000001_000.png,Mass,0,0,8,8",  # a training image: left out
        "00000002_000.png,Infiltrate,1,1,2,2",  # no such class: left out
        "00000002_000.png,Effusion,0.0,0.0,128.0,96.0"]) + "\n")
    meta = pd.DataFrame({"image_index": ["00000001_000.png", "00000002_000.png"], "patient_id": [1, 2],
                         "split": ["train", "test"]})
    cxr = PreparedCXR(np.zeros((2, 64, 64), np.uint8), None, None, np.zeros((2, 2), np.float32), meta,
                      {"labels": ["Effusion", "Mass"]})
    boxes, dropped = box_table({"data": {"image_size": 32}}, cxr, tmp_path)
    assert dropped == {"not a prepared test image": 1, "finding not in data.cxr.labels": {"Infiltration": 1}}
    assert boxes["finding"].tolist() == ["Mass", "Effusion"] and boxes["cls"].tolist() == [1, 0]
    assert boxes["row"].tolist() == [1, 1] and boxes["patient_id"].tolist() == [2, 2]
    np.testing.assert_allclose(boxes[["x", "y", "w", "h"]].to_numpy(), [[16, 16, 8, 8], [0, 0, 32, 32]])


def _metrics(claim_pointing, base_pointing, random_pointing, n=40, seed=0):
    from eden_lib.pipeline.localisation import PRIOR, RANDOM, summarise, verdict_sentence

    g = np.random.default_rng(seed)
    per_box = {name: {"pointing": (g.random(n) < p).astype(float), "iou": g.random(n) * p}
               for name, p in (("scratch", 0.2), ("moco_v2", base_pointing), ("dira", claim_pointing),
                               (RANDOM, random_pointing), (PRIOR, 0.3))}
    c = {"method": "dira", "base": "moco_v2", "n_bootstrap": 200}
    m = {"method": "dira", "base": "moco_v2", "n_boxes": n,
         **summarise(per_box, np.array(["Mass", "Nodule"] * (n // 2)), c, 0)}
    return m, verdict_sentence(m)


def test_summary_and_verdict():
    m, sentence = _metrics(0.9, 0.3, 0.25)
    assert set(m["scores"]) == {"scratch", "moco_v2", "dira", "random map", "prior (no image)"}
    assert set(m["scores"]["dira"]["per_finding"]) == {"Mass", "Nodule"}
    assert m["scores"]["dira"]["per_finding"]["Mass"]["pointing"]["n"] == 20
    assert set(m["claim_tests"]) == {"dira - moco_v2", "dira - scratch"}
    assert m["claim_tests"]["dira - moco_v2"]["pointing"]["ci_low"] > 0
    assert "moco_v2`) held: pointing game +" in sentence and "against `scratch` +" in sentence
    assert sentence.endswith("`dira` beat the random-map floor and the image-free prior on the pointing game.")
    assert "did not hold" in _metrics(0.1, 0.9, 0.05)[1]
    assert "was not supported (its maps do not beat the random-map floor)" in _metrics(0.6, 0.05, 0.9)[1]
    m["claim_tests"] = {}
    from eden_lib.pipeline.localisation import verdict_sentence

    assert "was not testable: `dira` and `moco_v2` are not both" in verdict_sentence(m)
    assert "was not testable: no bounding box" in verdict_sentence({**m, "n_boxes": 0})


@pytest.mark.parametrize("key, value", [("stage", 5), ("threshold", 0.0), ("tolerance", -1), ("methods", []),
                                        ("n_bootstrap", 5), ("base", None)])
def test_bad_blocks_fail_naming_the_key(key, value):
    from eden_lib.config import ConfigError, load_params
    from eden_lib.pipeline.localisation import check_localisation

    block = load_params(validate_methods=False)["claims"]["localisation"]
    check_localisation(block)
    with pytest.raises(ValueError, match=rf"claims.localisation.{key}"):
        check_localisation({**block, key: value})
    with pytest.raises(ConfigError, match=rf"claims.localisation.{key}"):
        load_params(overrides={f"claims.localisation.{key}": value}, validate_methods=False)


def test_figure_shows_examples_and_bars_or_says_there_are_no_boxes():
    import matplotlib

    matplotlib.use("Agg")
    from eden_lib.pipeline.localisation import PRIOR, localisation_figure

    m, _ = _metrics(0.9, 0.3, 0.25)
    m.update(threshold=0.5)
    maps = {"dira": np.zeros((2, 16, 16)), PRIOR: np.ones((2, 16, 16))}
    fig = localisation_figure(m, np.zeros((2, 16, 16)), np.array([[1.0, 1, 4, 4], [2, 2, 3, 3]]),
                              np.array(["Mass", "Nodule"]), maps)
    assert len(fig.axes) == 2 * 3 + 2  # image, dira, prior per example; two bar charts
    empty = localisation_figure({"scores": {}, "threshold": 0.5, "n_boxes": 0, "method": "dira"}, None,
                                np.zeros((0, 4)), np.array([]), {})
    assert len(empty.axes) == 2 and "no boxes" in [t.get_text() for t in empty.axes[0].texts]
