"""Keras TransVW / Semantic Genesis painting: one constant per sample, official box sides scaled to the crop."""

from __future__ import annotations

import pytest
import torch

from eden_lib.transforms.keras_painting import keras_inpaint, keras_outpaint, side_range


def _x(b: int = 6, spatial: tuple[int, ...] = (32, 32, 16)) -> torch.Tensor:
    return torch.rand((b, 1, *spatial), generator=torch.Generator().manual_seed(1)) * 0.5 + 0.5  # no value < 0.5


@pytest.mark.parametrize("spatial, low, high", [((64, 64, 32), [10] * 3, [20] * 3), ((32, 32, 16), [5] * 3, [10] * 3),
                                                ((64, 64), [10, 10], [20, 20]), ((8, 8, 4), [1] * 3, [2] * 3)])
def test_side_range_is_the_official_one_scaled_to_the_crop(spatial, low, high):
    lo, hi = side_range(spatial)
    assert lo.tolist() == low and hi.tolist() == high


def _bbox(mask: torch.Tensor) -> list[int]:
    """Side lengths of the bounding box of a boolean (*spatial) mask."""
    idx = mask.nonzero()
    return (idx.max(0).values - idx.min(0).values + 1).tolist()


@pytest.mark.parametrize("spatial", [(32, 32, 16), (64, 64)])
def test_inpaint_sets_one_box_per_applied_sample_to_one_constant(spatial):
    x = _x(spatial=spatial)
    apply = torch.tensor([True, False, True, True, False, True])
    y = keras_inpaint(x, apply, torch.Generator().manual_seed(0))
    lo, hi = side_range(spatial)
    for i in range(len(x)):
        changed = (y[i, 0] != x[i, 0])
        if not apply[i]:
            assert not changed.any()
            continue
        values = y[i, 0][changed].unique()
        assert len(values) == 1 and 0 <= values.item() < 1  # one constant
        sides = torch.tensor(_bbox(changed))
        assert changed.sum() == sides.prod()  # a full box
        assert ((sides >= lo) & (sides <= hi)).all()


def test_outpaint_keeps_one_window_and_fills_the_rest_with_one_constant():
    spatial = (32, 32, 16)
    x = _x(spatial=spatial)
    y = keras_outpaint(x, torch.ones(len(x), dtype=torch.bool), torch.Generator().manual_seed(0))
    lo, hi = side_range(spatial)
    for i in range(len(x)):
        kept = y[i, 0] == x[i, 0]
        sides = torch.tensor(_bbox(kept))
        assert kept.sum() == sides.prod()
        assert ((sides >= torch.tensor(spatial) - hi) & (sides <= torch.tensor(spatial) - lo)).all()
        assert len(y[i, 0][~kept].unique()) == 1


def test_painting_is_seeded():
    x, apply = _x(), torch.ones(6, dtype=torch.bool)
    a = keras_inpaint(x, apply, torch.Generator().manual_seed(3))
    assert torch.equal(a, keras_inpaint(x, apply, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, keras_inpaint(x, apply, torch.Generator().manual_seed(4)))


def test_the_method_uses_the_keras_recipe_when_asked():
    from eden_lib.methods import BuildContext, MethodConfigError, build_method

    ctx = BuildContext(spatial_dims=3, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                       unet2d_decoder=(32, 16, 8, 8, 8), unet3d_width=4, n_labels=1, image_size=64)
    block = {"dims": [3], "n_classes": 4, "elastic_rate": 0.0, "shuffle_p": 0.0, "nonlinear_p": 0.0,
             "inpaint_p": 1.0, "outpaint_p": 0.0}
    x = _x(4, (32, 32, 16))
    keras = build_method("transvw", {**block, "painting": "keras"}, ctx).transform(x, torch.Generator().manual_seed(0))
    noise = build_method("transvw", block, ctx).transform(x, torch.Generator().manual_seed(0))
    for i in range(4):
        assert len(keras[i, 0][keras[i, 0] != x[i, 0]].unique()) == 1  # a constant box
        assert len(noise[i, 0][noise[i, 0] != x[i, 0]].unique()) > 1  # a noise box
    with pytest.raises(MethodConfigError, match="painting"):
        build_method("transvw", {**block, "painting": "tf"}, ctx)
