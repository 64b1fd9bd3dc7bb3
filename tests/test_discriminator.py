import pytest
import torch

from eden_lib.models.discriminator import PatchDiscriminator

#: the state-dict keys of DiRA's ``D_checkpoint.pth`` after stripping ``module.``
RELEASED_KEYS = sorted(f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias"))


def test_output_is_one_score_per_8x8_patch():
    disc = PatchDiscriminator(widths=(4, 8, 8, 16))
    assert disc(torch.randn(2, 1, 224, 224)).shape == (2, 1, 28, 28)
    assert disc(torch.randn(1, 1, 64, 96)).shape == (1, 1, 8, 12)
    assert PatchDiscriminator(in_channels=3, widths=(4, 8, 8, 16))(torch.randn(1, 3, 32, 32)).shape == (1, 1, 4, 4)


def test_state_dict_matches_the_released_layout():
    state = PatchDiscriminator().state_dict()
    assert sorted(state) == RELEASED_KEYS
    shapes = {k: tuple(v.shape) for k, v in state.items() if k.endswith("weight")}
    assert shapes == {
        "model.0.weight": (64, 1, 3, 3),
        "model.2.weight": (128, 64, 3, 3),
        "model.5.weight": (256, 128, 3, 3),
        "model.8.weight": (512, 256, 3, 3),
        "model.11.weight": (1, 512, 3, 3),
    }


def test_conv_weights_are_drawn_from_n_0_002():
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    weights = torch.cat([disc.model[i].weight.flatten() for i in (0, 2, 5, 8, 11)])
    assert weights.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)


def test_widths_must_list_four():
    with pytest.raises(ValueError, match="4 widths"):
        PatchDiscriminator(widths=(64, 128))
