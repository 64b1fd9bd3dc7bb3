"""Models Genesis' "3D beats 2D and 2.5D": slicing cubes, reassembling predictions, comparisons and the verdict."""

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib.analysis import slices as sl
from eden_lib.pipeline.genesis_dims import check_genesis_dims, comparisons, segment, verdict_sentence


def test_slices_and_stack_slices_are_inverse_along_every_axis():
    cubes = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    for axis, shape in ((0, (6, 4, 5)), (1, (8, 3, 5)), (2, (10, 3, 4))):
        cut = sl.slices(cubes, axis)
        assert cut.shape == shape
        assert np.array_equal(sl.stack_slices(cut, 2, axis), cubes)
    assert np.array_equal(sl.slices(cubes, 2)[1], cubes[0, :, :, 1])  # cube-major: cube 0's second axial slice
    with pytest.raises(ValueError, match="axis 0, 1 or 2"):
        sl.slices(cubes, 3)


def test_central_slices_cross_at_the_centre():
    cubes = np.zeros((1, 5, 5, 5), dtype=np.float32)
    cubes[0, 2, 2, 2] = 1.0
    for s in sl.central_slices(cubes):
        assert s.shape == (1, 5, 5) and s[0, 2, 2] == 1.0 and s.sum() == 1.0


def test_resampling_round_trip_keeps_a_constant_image():
    img = np.full((3, 8, 8), 0.25, dtype=np.float32)
    x = sl.to_inputs(img, 32)
    assert x.shape == (3, 1, 32, 32)
    assert sl.from_outputs(x[:, 0].numpy(), (8, 8)) == pytest.approx(img)


def test_segment_averages_the_per_axis_predictions():
    class Identity(torch.nn.Module):  # logits = 10 * (input - 0.5): prob > 0.5 exactly where the input is bright
        def forward(self, x):
            return 10 * (x - 0.5)

    cubes = np.zeros((2, 8, 8, 8), dtype=np.float32)
    cubes[:, 2:6, 2:6, 2:6] = 1.0
    for axes in ((2,), (0, 1, 2)):
        prob = segment(Identity(), cubes, axes, size=32, device="cpu")
        assert prob.shape == cubes.shape and ((prob > 0.5) == (cubes > 0.5)).mean() > 0.95


def _runs(mg3d_gain: float) -> pd.DataFrame:
    g = np.random.default_rng(0)
    rows = []
    for task, protocol, metric, budget in (("ct_nodule_classification", "linear_probe", "auc", "1"),
                                           ("ct_nodule_segmentation", "finetune", "dice", "260_cubes")):
        for seed in range(5):
            for method in ("scratch", "models_genesis"):
                for variant, base in (("2D", 0.6), ("2.5D", 0.62), ("3D", 0.6 + (mg3d_gain if method ==
                                                                               "models_genesis" else 0))):
                    rows.append({"method": method, "variant": variant, "task": task, "protocol": protocol,
                                 "budget": budget, "seed": seed, "metric": metric,
                                 "value": base + g.normal(0, 0.01)})
    return pd.DataFrame(rows)


def test_verdict_held_when_genesis_3d_beats_every_2d_and_25d_run():
    metrics = {"comparisons": comparisons(_runs(0.2))}
    refs = {r["reference"] for r in metrics["comparisons"]}
    assert refs == {"models_genesis 3D", "scratch 3D"}
    mine = [r for r in metrics["comparisons"] if r["reference"] == "models_genesis 3D" and r["arm"] != r["reference"]]
    assert len(mine) == 2 * 4 and all(r["diff_ref_minus_arm"] > 0.1 for r in mine)  # 2 tasks x 4 2D / 2.5D arms
    sentence = verdict_sentence(metrics)
    assert sentence.count(": held (ahead in 4 of 4 comparisons with 2D / 2.5D arms, significantly in 4,") == 2
    assert "did not hold" in verdict_sentence({"comparisons": comparisons(_runs(-0.2))})
    assert "not tested" in verdict_sentence({"comparisons": []})


@pytest.mark.parametrize("block, key", [({"methods": ["scratch"], "slice_size": 30, "seg_epochs": 1}, "slice_size"),
                                        ({"methods": "scratch", "slice_size": 32, "seg_epochs": 1}, "methods"),
                                        ({"methods": [], "slice_size": 32, "seg_epochs": 0}, "seg_epochs")])
def test_bad_blocks_fail_naming_the_key(block, key):
    with pytest.raises(ValueError, match=rf"claims.genesis_dims.{key}"):
        check_genesis_dims(block)
    with pytest.raises(ValueError, match="unknown keys"):
        check_genesis_dims({**block, "extra": 1})
