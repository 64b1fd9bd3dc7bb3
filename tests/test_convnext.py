"""ConvNeXt encoder: shapes, the Facebook-release key layout, ConvNeXt-B's size, the 2D backbone registry."""

import pytest
import torch

from eden_lib.models.backbones import BACKBONES_2D, ResNetEncoder, build_backbone_2d
from eden_lib.models.convnext import CONVNEXTS, ConvNeXtEncoder
from eden_lib.models.dino_head import DINOHead
from eden_lib.models.unet2d import ResNetUNet

BASE = (128, 256, 512, 1024)
TINY = (8, 16, 32, 64)


def _base(in_channels: int = 3) -> ConvNeXtEncoder:
    """ConvNeXt-B on the meta device: names and shapes without allocating 88M weights."""
    with torch.device("meta"):
        return ConvNeXtEncoder("convnext_base", BASE, in_channels=in_channels)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_forward_and_stage_shapes():
    torch.manual_seed(0)
    encoder = ConvNeXtEncoder("convnext_atto", TINY, in_channels=1)
    x = torch.randn(2, 1, 64, 96)
    assert encoder.stage_channels == (8, 8, 16, 32, 64) and encoder.out_dim == 64
    maps = encoder.stages(x)
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(encoder.stage_channels, (2, 4, 8, 16, 32))
    ]
    features = encoder(x)
    assert features.shape == (2, 64)
    # forward = final LayerNorm of the pooled stride-32 map
    torch.testing.assert_close(features, encoder.norm(maps[-1].mean(dim=(-2, -1))))
    # the stride-2 map is the stem output up-sampled (no weights of its own)
    stem = encoder.downsample_layers[0](x)
    torch.testing.assert_close(maps[0], stem.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1))


def test_the_unet_runs_on_a_convnext_encoder():
    unet = ResNetUNet(ConvNeXtEncoder("convnext_atto", TINY), (16, 8, 8, 4, 4), 2)
    assert unet(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_convnext_base_has_the_facebook_key_layout():
    shapes = {k: tuple(v.shape) for k, v in _base().state_dict().items()}
    # 4 stem + 3 x 4 down-sampling + 36 blocks x 9 + the final norm's 2 (the release adds head.weight / head.bias)
    assert len(shapes) == 4 + 12 + 36 * 9 + 2 == 342
    assert list(shapes)[:4] == [
        "downsample_layers.0.0.weight", "downsample_layers.0.0.bias",
        "downsample_layers.0.1.weight", "downsample_layers.0.1.bias",
    ]
    assert list(shapes)[-2:] == ["norm.weight", "norm.bias"]
    expected = {
        "downsample_layers.0.0.weight": (128, 3, 4, 4),
        "downsample_layers.0.1.weight": (128,),
        "downsample_layers.1.0.weight": (128,),
        "downsample_layers.1.1.weight": (256, 128, 2, 2),
        "downsample_layers.3.1.bias": (1024,),
        "stages.0.0.gamma": (128,),
        "stages.0.2.dwconv.weight": (128, 1, 7, 7),
        "stages.1.2.norm.bias": (256,),
        "stages.2.26.pwconv1.weight": (2048, 512),
        "stages.2.26.pwconv2.weight": (512, 2048),
        "stages.3.2.pwconv2.bias": (1024,),
        "norm.weight": (1024,),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert "stages.2.27.gamma" not in shapes and "stages.3.3.gamma" not in shapes
    blocks = {".".join(k.split(".")[:3]) for k in shapes if k.startswith("stages.")}
    assert len(blocks) == sum(CONVNEXTS["convnext_base"]) == 36


def test_convnext_base_parameter_count_matches_the_fact_sheet():
    """Backbone 87.57M (88.59M with the 1000-class head), 111.23M with Adam-v2's DINO head (adam_ark.md 2.2)."""
    dims = BASE

    def block(d: int) -> int:  # dwconv 49d + d, norm 2d, pwconv1 4d^2 + 4d, pwconv2 4d^2 + d, gamma d
        return 8 * d * d + 58 * d

    stem = 3 * dims[0] * 16 + dims[0] + 2 * dims[0]
    downs = sum(2 * a + 4 * a * b + b for a, b in zip(dims[:-1], dims[1:]))
    analytic = stem + downs + sum(n * block(d) for n, d in zip(CONVNEXTS["convnext_base"], dims)) + 2 * dims[3]
    encoder = _base()
    assert _n_params(encoder) == analytic == 87_566_464
    assert round(analytic / 1e6, 2) == 87.57
    assert round((analytic + 1024 * 1000 + 1000) / 1e6, 2) == 88.59
    with torch.device("meta"):
        head = DINOHead(encoder.out_dim, 65536)
    assert round((analytic + _n_params(head)) / 1e6, 2) == 111.23


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    trained = ConvNeXtEncoder("convnext_atto", TINY, in_channels=1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # move every weight (gamma and norms included) off its initial value
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    fresh = ConvNeXtEncoder("convnext_atto", TINY, in_channels=1)
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(fresh(x), trained(x))


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    encoder = ConvNeXtEncoder("convnext_atto", TINY, drop_path_rate=0.5, layer_scale_init=1.0)
    rates = [b.drop_path_rate for stage in encoder.blocks for b in stage]
    assert rates[0] == 0.0 and rates[-1] == 0.5 and rates == sorted(rates)
    x = torch.randn(4, 1, 32, 32)
    encoder.train()
    assert not torch.equal(encoder(x), encoder(x))
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))
    assert torch.all(encoder.blocks[0][0].gamma == 1.0)


def test_registry_builds_both_families_and_names_every_choice():
    assert isinstance(build_backbone_2d({"name": "resnet18", "widths": [8, 8, 16, 16]}), ResNetEncoder)
    with torch.device("meta"):
        base = build_backbone_2d({"name": "convnext_base", "widths": list(BASE)})
    assert isinstance(base, ConvNeXtEncoder) and base.out_dim == 1024 and base.downsample_layers[0][0].in_channels == 1
    assert set(BACKBONES_2D) == {"resnet18", "resnet34", "resnet50", *CONVNEXTS, "swin_b", "swin_l"}
    with pytest.raises(ValueError, match="unknown 2D backbone 'vit_b'; allowed: ") as err:
        build_backbone_2d({"name": "vit_b", "widths": [8, 8, 16, 16]})
    assert all(repr(name) in str(err.value) for name in BACKBONES_2D)
    with pytest.raises(ValueError, match="4 stage widths"):
        ConvNeXtEncoder("convnext_atto", (8, 16, 32))


@pytest.mark.parametrize("name, block", [
    ("adam_v2", {"batch_size": 4, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local": 2,
                 "warmup_fraction": 0.0}),
    ("adam_v1", {"batch_size": 4, "queue_size": 16, "bn_splits": 2, "moco_hidden": 32, "moco_dim": 16}),
])
def test_methods_train_on_a_convnext_study_backbone(name, block):
    """``pretrain.backbone_2d.name: convnext_*`` swaps the encoder of every 2D method (Adam-v2's released model)."""
    from eden_lib.methods import BuildContext, build_method

    ctx = BuildContext(spatial_dims=2, backbone_2d={"name": "convnext_atto", "widths": [8, 16, 32, 64]},
                       unet2d_decoder=(32, 16, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=64)
    torch.manual_seed(0)
    method = build_method(name, block, ctx)
    method.set_total_steps(4)
    out = method({"image": torch.rand(4, 1, 128, 128)}, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and type(method.exports()["encoder"]).__name__ == "ConvNeXtEncoder"
    trained = method.student.encoder if name == "adam_v2" else method.exports()["encoder"]  # adam_v2 exports the EMA
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
