"""Swin Transformer encoder (timm 0.5.4 layout from MONAI blocks): patch-merging order, shapes, Swin-B's size and the
released Ark key layout loaded strictly, round trips through the timm 0.5.4 and >= 0.9 layouts, strictness, the
registry and Ark's own backbone (adam_ark.md 3.2, 3.9)."""

import pytest
import torch

from eden_lib.checkpoints import CheckpointError, from_timm_v09, load_pretrained, save_atomic, timm_swin_name
from eden_lib.methods import BuildContext, MethodConfigError, build_method
from eden_lib.methods.ark import ArkNetwork
from eden_lib.models.backbones import build_backbone_2d
from eden_lib.models.swin import SWINS, SwinEncoder, build_swin, swin_spec
from eden_lib.models.unet2d import ResNetUNet

TINY = {"name": "swin_b", "widths": [16, 32, 64, 128], "depths": [2, 2, 2, 2], "heads": [1, 2, 4, 8], "window": 4}
HEADS = (14, 14, 14, 3, 6, 1)  # Ark-6's omni_heads: MIMIC, CheXpert, ChestX-ray14, RSNA, VinDr-CXR, Shenzhen


def _tiny(seed: int = 0, in_channels: int = 1) -> SwinEncoder:
    torch.manual_seed(seed)
    return build_swin(TINY, in_channels=in_channels).eval()


def _timm_index(w: int) -> torch.Tensor:
    """timm 0.5.4's ``relative_position_index`` of a w x w window, written out independently of MONAI."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def _release_shapes(spec, size: int = 224, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a timm 0.5.4 Swin state dict at ``size`` px (buffers included), from its shape alone."""
    e, w = spec.embed_dim, spec.window
    shapes = {"patch_embed.proj.weight": (e, in_channels, 4, 4), "patch_embed.proj.bias": (e,),
              "patch_embed.norm.weight": (e,), "patch_embed.norm.bias": (e,)}
    res = size // 4
    for i, (depth, heads) in enumerate(zip(spec.depths, spec.heads)):
        c, win = e * 2**i, min(w, res)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update({
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.relative_position_bias_table": ((2 * win - 1) ** 2, heads),
                p + "attn.relative_position_index": (win * win, win * win),
                p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,),
            })
            if j % 2 and res > w:  # shifted blocks of stages larger than one window keep their mask as a buffer
                shapes[p + "attn_mask"] = ((res // w) ** 2, w * w, w * w)
        if i < 3:
            shapes.update({f"layers.{i}.downsample.norm.weight": (4 * c,), f"layers.{i}.downsample.norm.bias": (4 * c,),
                           f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c)})
        res //= 2
    shapes.update({"norm.weight": (8 * e,), "norm.bias": (8 * e,), "head.weight": (1000, 8 * e), "head.bias": (1000,)})
    return shapes


def _ark_heads(dim: int, projector: int = 1376) -> dict[str, torch.Tensor]:
    """The release's MLP projector and Ark-6 heads (``*_projector1376_mlp``)."""
    out = {"projector.0.weight": torch.randn(projector, dim), "projector.0.bias": torch.randn(projector),
           "projector.2.weight": torch.randn(projector, projector), "projector.2.bias": torch.randn(projector)}
    for k, n in enumerate(HEADS):
        out[f"omni_heads.{k}.weight"], out[f"omni_heads.{k}.bias"] = torch.randn(n, projector), torch.randn(n)
    return out


def _to_timm(encoder: SwinEncoder, size: int, v09: bool = False) -> dict[str, torch.Tensor]:
    """``encoder``'s weights as timm writes them: fc names, attn_mask buffers and the classifier; with ``v09`` timm
    >= 0.9.6's layout (patch merging opening the next stage, no position index, ``head.fc``)."""
    state = {k.replace(".mlp.linear", ".mlp.fc"): v.clone() for k, v in encoder.state_dict().items()}
    for key, shape in _release_shapes(encoder.spec, size, encoder.patch_embed.proj.in_channels).items():
        if key.endswith("attn_mask"):
            state[key] = torch.full(shape, -100.0)
    state["head.weight"], state["head.bias"] = torch.randn(1000, encoder.out_dim), torch.randn(1000)
    if v09:
        state = {_next_stage(k): v for k, v in state.items() if not k.endswith("relative_position_index")}
        state["head.fc.weight"], state["head.fc.bias"] = state.pop("head.weight"), state.pop("head.bias")
    return state


def _next_stage(key: str) -> str:
    """``layers.{i}.downsample.*`` -> ``layers.{i+1}.downsample.*`` (timm >= 0.9); other keys unchanged."""
    parts = key.split(".")
    if parts[0] == "layers" and parts[2] == "downsample":
        parts[1] = str(int(parts[1]) + 1)
    return ".".join(parts)


def test_patch_merging_concatenates_neighbours_in_timm_order():
    """timm 0.5.4: x0 = [0::2, 0::2], x1 = [1::2, 0::2], x2 = [0::2, 1::2], x3 = [1::2, 1::2] over (H, W)."""
    merge = _tiny().layers[0].downsample
    torch.manual_seed(1)
    with torch.no_grad():
        merge.norm.weight.normal_(), merge.norm.bias.normal_()
    x = torch.randn(2, 6, 4, 16)  # (B, H, W, C), channels-last as the stages hand it over

    def expected(order):
        return merge.reduction(merge.norm(torch.cat([x[:, i::2, j::2] for i, j in order], -1)))

    with torch.no_grad():
        out = merge(x)
        assert out.shape == (2, 3, 2, 32)
        torch.testing.assert_close(out, expected([(0, 0), (1, 0), (0, 1), (1, 1)]))
        assert not torch.allclose(out, expected([(0, 0), (0, 1), (1, 0), (1, 1)]), atol=1e-3)  # W-major would differ


def test_forward_stages_and_the_unet():
    encoder = _tiny()
    x = torch.randn(2, 1, 64, 96)
    assert encoder.stage_channels == (16, 16, 32, 64, 128) and encoder.out_dim == 128
    maps = encoder.stages(x)
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(encoder.stage_channels, (2, 4, 8, 16, 32))]
    features = encoder(x)
    # forward = token mean of the final LayerNorm of stage 3 (timm's norm, then average pooling)
    torch.testing.assert_close(features, maps[-1].mean(dim=(-2, -1)))
    assert torch.allclose(maps[-1].mean(dim=1), torch.zeros(2, 2, 3), atol=1e-5)  # normed over channels
    covered = {id(p) for m in encoder.stage_modules() for p in m.parameters()}
    assert covered | {id(encoder.norm.weight), id(encoder.norm.bias)} == {id(p) for p in encoder.parameters()}
    unet = ResNetUNet(encoder.train(), (16, 8, 8, 4, 4), 2)
    out = unet(torch.randn(1, 1, 64, 64))
    out.sum().backward()
    assert out.shape == (1, 2, 64, 64) and encoder.patch_embed.proj.weight.grad is not None


@pytest.fixture(scope="module")
def swin_b():
    torch.manual_seed(0)
    return build_backbone_2d({"name": "swin_b"}, in_channels=3)


def test_swin_b_has_timms_size_and_the_release_loads_strictly_key_by_key(swin_b, tmp_path):
    """Swin-B: 86,743,224 backbone parameters, 87,768,224 with timm's 1000-class head (timm's 87.8M); pooled width
    1024. The released Ark-6 teacher layout (bare state dict: backbone, attn_mask buffers, head, MLP projector 1376,
    six heads) loads strictly, every tensor to the name the map gives it."""
    assert isinstance(swin_b, SwinEncoder) and swin_b.out_dim == 1024 and swin_b.stage_channels[-1] == 1024
    n = sum(p.numel() for p in swin_b.parameters())
    assert n == 86_743_224 and n + 1024 * 1000 + 1000 == 87_768_224
    shapes = _release_shapes(SWINS["swin_b"])
    release = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("relative_position_index"):
            release[key] = _timm_index(int(shape[0] ** 0.5))
        else:
            release[key] = torch.full(shape, float(i))  # a distinct value per tensor: a swapped key would show
    params = {k: v for k, v in release.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    assert sum(v.numel() for v in params.values()) == 87_768_224  # the architecture alone gives timm's count
    release.update(_ark_heads(1024))
    save_atomic(release, tmp_path / "ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar")
    info = load_pretrained(tmp_path / "ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar", swin_b)
    assert info["source"] == "ark" and "entry" not in info and info["converted"] == [] and info["filled"] == []
    dropped = set(info["dropped"])
    assert {"head.weight", "head.bias", "projector.0.weight", "omni_heads.5.bias"} <= dropped
    assert len([k for k in dropped if k.endswith("attn_mask")]) == 1 + 1 + 9  # odd blocks of stages 0-2
    assert all(k.startswith(("head.", "projector.", "omni_heads.")) or k.endswith("attn_mask") for k in dropped)
    own = swin_b.state_dict()
    assert len(own) == info["keys"] == 351
    for key, value in release.items():
        if key not in dropped:
            assert torch.equal(own[timm_swin_name(key)], value), key


def test_the_release_round_trips_through_both_timm_layouts(tmp_path):
    source = _tiny(0, in_channels=3)
    x = torch.rand(2, 3, 64, 64)
    for v09 in (False, True):
        state = {f"module.{k}": v for k, v in {**_to_timm(source, 64, v09), **_ark_heads(128, 32)}.items()}
        save_atomic({"teacher": state, "state_dict": {}, "epoch": 3}, tmp_path / "ark.pth.tar")
        encoder = _tiny(1, in_channels=3)
        info = load_pretrained(tmp_path / "ark.pth.tar", encoder, source="ark")
        assert info["entry"] == "teacher"
        assert len(info["filled"]) == (8 if v09 else 0)  # timm >= 0.9.6 saves no position index: the model's
        torch.testing.assert_close(encoder(x), source(x))
        assert torch.equal(encoder.layers[0].downsample.reduction.weight, source.layers[0].downsample.reduction.weight)
    # into Ark's network the projector and heads come too; a grey model gets the RGB stem summed
    torch.manual_seed(2)
    net = ArkNetwork(build_swin(TINY), 32, True, HEADS)
    info = load_pretrained(tmp_path / "ark.pth.tar", net)
    assert info["source"] == "ark" and info["converted"] == ["encoder.patch_embed.proj.weight"]
    torch.testing.assert_close(net.encoder.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, True))
    assert torch.equal(net.projector[2].weight, state["module.projector.2.weight"])
    gray = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(net.encoder.eval()(gray), source(gray.expand(-1, 3, -1, -1)))


def test_from_timm_v09_reads_the_layout_from_the_whole_key_set():
    old = {"layers.0.downsample.norm.weight": 0, "layers.2.downsample.norm.weight": 2, "norm.weight": 9}
    assert from_timm_v09(old) == old
    new = {"module.layers.1.downsample.reduction.weight": 1, "module.layers.3.downsample.norm.bias": 3,
           "module.layers.3.blocks.0.norm1.weight": 4}
    assert from_timm_v09(new) == {"module.layers.0.downsample.reduction.weight": 1,
                                  "module.layers.2.downsample.norm.bias": 3, "module.layers.3.blocks.0.norm1.weight": 4}
    assert timm_swin_name("layers.1.blocks.0.mlp.fc2.bias") == "layers.1.blocks.0.mlp.linear2.bias"
    assert timm_swin_name("layers.0.blocks.1.attn_mask") is None
    assert timm_swin_name("layer1.0.conv1.weight") == "layer1.0.conv1.weight"


def test_a_missing_or_unexpected_backbone_key_or_another_window_fails_naming_it(tmp_path):
    source = _tiny()
    good = {**_to_timm(source, 64), **_ark_heads(128, 32)}

    def load(state: dict) -> None:
        save_atomic(state, tmp_path / "ark.pth.tar")
        load_pretrained(tmp_path / "ark.pth.tar", _tiny(1))

    load(good)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['layers.2.blocks.1.mlp.linear1.weight'\]"):
        load({k: v for k, v in good.items() if k != "layers.2.blocks.1.mlp.fc1.weight"})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): \['absolute_pos_embed', "
                                              r"'layers.3.downsample.norm.weight'\]"):
        load({**good, "layers.3.downsample.norm.weight": torch.ones(1024), "absolute_pos_embed": torch.zeros(1, 16)})
    wrong = {**good, "layers.1.blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long)}
    with pytest.raises(CheckpointError, match=r"layers.1.blocks.0.attn.relative_position_index \(shape \(16, 16\)\) "
                                              r"differs from the model's"):
        load(wrong)
    with pytest.raises(CheckpointError, match="shape mismatches: .*relative_position_bias_table"):
        load({**good, "layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(169, 1)})


def test_spec_and_registry():
    assert swin_spec({"name": "swin_b"}) == SWINS["swin_b"]
    assert swin_spec({"name": "swin_b", "widths": [128, 256, 512, 1024]}) == SWINS["swin_b"]
    spec = swin_spec({"name": "swin_l", "widths": [48, 96, 192, 384], "depths": [1, 1, 1, 1]})
    assert spec.embed_dim == 48 and spec.heads == (6, 12, 24, 48) and spec.window == 12
    for cfg, match in [({"name": "swin_b", "widths": [32, 64, 128, 512]}, "doubling from the embedding width"),
                       ({"name": "swin_l", "widths": [8, 16, 32, 64]}, "not multiples of heads"),
                       ({"name": "swin_b", "patch": 4}, r"unknown keys \['patch'\]"),
                       ({"name": "swin_b", "depths": [2, 2, 2]}, "depths = .*4 positive integers"),
                       ({"name": "swin_b", "window": 0}, "window = 0")]:
        with pytest.raises(ValueError, match=match):
            swin_spec(cfg)
    with torch.device("meta"):
        large = build_backbone_2d({"name": "swin_l"})
    assert large.out_dim == 1536 and large.patch_embed.proj.in_channels == 1


def _ark_ctx() -> BuildContext:
    return BuildContext(spatial_dims=2, backbone_2d=TINY, unet2d_decoder=(8, 8, 8, 8, 8), unet3d_width=4,
                        n_labels=3, image_size=64, site_label_counts=(3, 2))


def test_ark_trains_on_a_swin_backbone():
    torch.manual_seed(0)
    method = build_method("ark", {"batch_size": 2, "lr": 0.05, "projector_dim": 16, "backbone_2d": "swin_b"},
                          _ark_ctx())
    method.set_schedule([1, 1], 1)
    batch = {"image": torch.rand(2, 1, 96, 96), "label": torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 1.0]]),
             "site": torch.zeros(2, dtype=torch.long)}
    out = method(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and isinstance(method.exports()["encoder"], SwinEncoder)
    assert method.student.encoder.layers[3].blocks[1].mlp.linear2.weight.grad.abs().sum() > 0
    with pytest.raises(MethodConfigError, match=r"methods.ark.backbone_2d = 'resnet50'; expected '' "
                                                r"\(pretrain.backbone_2d\) or one of \['swin_b', 'swin_l'\]"):
        build_method("ark", {"backbone_2d": "resnet50"}, _ark_ctx())


def test_the_release_starts_arks_student_and_teacher_as_pretrain_init(tmp_path):
    """``pretrain.init.ark`` with the released layout: the exported teacher encoder and the student's both load it."""
    from eden_lib.pipeline.pretrain import load_init

    source = _tiny(3, in_channels=3)
    save_atomic({**_to_timm(source, 64), **_ark_heads(128, 32)}, tmp_path / "ark6.pth.tar")
    torch.manual_seed(0)
    method = build_method("ark", {"batch_size": 2, "projector_dim": 16, "backbone_2d": "swin_b"}, _ark_ctx())
    info = load_init(method, tmp_path / "ark6.pth.tar", "auto", 2)
    assert info["source"] == "ark" and info["synchronised"] == ["student.encoder"]
    gray = torch.rand(1, 1, 64, 64)
    for encoder in (method.teacher.encoder, method.student.encoder):
        torch.testing.assert_close(encoder.eval()(gray), source(gray.expand(-1, 3, -1, -1)))


def test_profiles_give_ark_swin_b_in_the_paper_profile_only():
    from eden_lib.config import load_params
    from eden_lib.pipeline.pretrain import build_context

    paper, default = load_params(profile="paper"), load_params(profile="synthetic")
    assert build_context(paper, 2, 0, method="ark").backbone_2d == {"name": "swin_b"}
    assert build_context(paper, 2, 0, method="supervised_site").backbone_2d == {"name": "swin_b"}
    assert build_context(paper, 2, 0, method="moco_v2").backbone_2d == paper["pretrain"]["backbone_2d"]
    assert build_context(default, 2, 0, method="ark").backbone_2d == default["pretrain"]["backbone_2d"]
    assert default["pretrain"]["backbone_2d"]["name"] == "resnet18" and default["methods"]["ark"]["backbone_2d"] == ""
