"""UNet3D / YNet3D: official key names, shapes and parameter counts; batch-norm modes; shapes; bad input."""

from __future__ import annotations

import pytest
import torch

from eden_lib.models.unet3d import ClassificationHead, UNet3D, YNet3D


def lu_conv(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    """Keys of one official LUConv: conv1 (3x3x3, bias) and the ContBatchNorm3d bn1."""
    keys = {f"{prefix}.conv1.weight": (cout, cin, 3, 3, 3), f"{prefix}.conv1.bias": (cout,)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.bn1.{name}"] = (cout,)
    keys[f"{prefix}.bn1.num_batches_tracked"] = ()
    return keys


def official_keys() -> dict[str, tuple[int, ...]]:
    """The 106 state-dict entries of the official UNet3D (fact sheet genesis_family.md §1.1 table, §5.1)."""
    keys: dict[str, tuple[int, ...]] = {}
    for name, convs in [("down_tr64", [(1, 32), (32, 64)]), ("down_tr128", [(64, 64), (64, 128)]),
                        ("down_tr256", [(128, 128), (128, 256)]), ("down_tr512", [(256, 256), (256, 512)])]:
        for i, (cin, cout) in enumerate(convs):
            keys.update(lu_conv(f"{name}.ops.{i}", cin, cout))
    for name, up, convs in [("up_tr256", 512, [(768, 256), (256, 256)]), ("up_tr128", 256, [(384, 128), (128, 128)]),
                            ("up_tr64", 128, [(192, 64), (64, 64)])]:
        keys[f"{name}.up_conv.weight"] = (up, up, 2, 2, 2)
        keys[f"{name}.up_conv.bias"] = (up,)
        for i, (cin, cout) in enumerate(convs):
            keys.update(lu_conv(f"{name}.ops.{i}", cin, cout))
    keys["out_tr.final_conv.weight"] = (1, 64, 1, 1, 1)
    keys["out_tr.final_conv.bias"] = (1,)
    return keys


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_official_width_has_the_official_keys_shapes_and_parameter_count():
    model = UNet3D()
    expected = official_keys()
    assert len(expected) == 106
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert list(model.state_dict()) == list(expected)  # same order as the official module
    assert n_params(model) == 19_073_665


def test_ynet3d_adds_the_clc_out_head_with_official_shapes():
    model = YNet3D(n_classes=44)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    head = {k: v for k, v in state.items() if k.startswith("clc_out.")}
    assert len(state) == 115 and n_params(model) == 33_277_613
    assert {k: v for k, v in state.items() if not k.startswith("clc_out.")} == official_keys()
    assert head == {"clc_out.conv1.weight": (1024, 512, 3, 3, 3), "clc_out.conv1.bias": (1024,),
                    "clc_out.bn1.weight": (1024,), "clc_out.bn1.bias": (1024,), "clc_out.bn1.running_mean": (1024,),
                    "clc_out.bn1.running_var": (1024,), "clc_out.bn1.num_batches_tracked": (),
                    "clc_out.fc1.weight": (44, 1024), "clc_out.fc1.bias": (44,)}


def test_encoder_prefixes_select_the_56_down_transition_keys():
    keys = [k for k in UNet3D().state_dict() if k.startswith(UNet3D.encoder_state_prefixes)]
    assert len(keys) == 56 and all(k.startswith("down_tr") for k in keys)


def test_dataparallel_checkpoint_round_trip(tmp_path):
    source = UNet3D(base_width=8)
    path = tmp_path / "Genesis_Chest_CT.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    loaded = torch.load(path, weights_only=True)["state_dict"]
    target = UNet3D(base_width=8)
    target.load_state_dict({k.removeprefix("module."): v for k, v in loaded.items()}, strict=True)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="module.down_tr64"):
        UNet3D(base_width=8).load_state_dict(loaded)


def _warmed(bn_mode: str) -> UNet3D:
    torch.manual_seed(0)
    model = UNet3D(base_width=4, bn_mode=bn_mode)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 1, 16, 16, 8))
    return model.eval()


def test_batch_stats_mode_depends_on_batch_composition_in_eval():
    model = _warmed("batch_stats")
    x = torch.rand(3, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        alone, batched = model(x[:1]), model(x)[:1]
    assert (alone - batched).abs().max() > 1e-4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # eval never updates stats


def test_running_stats_mode_is_per_sample_in_eval():
    model = _warmed("running_stats")
    assert model.down_tr64.ops[0].bn1.running_mean.abs().sum() > 0
    x = torch.rand(3, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone, batched = model(x[:1]), model(x)[:1]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spatial", [(32, 32, 16), (64, 64, 32)])
def test_forward_encode_and_pooled_shapes(spatial):
    model = UNet3D(base_width=8).eval()
    x = torch.rand(2, 1, *spatial)
    with torch.no_grad():
        out, features, pooled = model(x), model.encode(x), model.pooled_features(x)
    assert out.shape == (2, 1, *spatial) and 0 < out.min() and out.max() < 1
    assert features.shape == (2, 128, *(s // 8 for s in spatial))
    assert pooled.shape == (2, 128) and model.feature_channels == 128
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3, 4)))


def test_ynet3d_returns_reconstruction_and_class_probabilities():
    model = YNet3D(base_width=4, n_classes=5, out_channels=2).eval()
    with torch.no_grad():
        recon, probs = model(torch.rand(3, 1, 16, 16, 8))
    assert recon.shape == (3, 2, 16, 16, 8) and probs.shape == (3, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    logits = ClassificationHead(64, 5, activation="none").eval()(torch.rand(2, 64, 2, 2, 1))
    assert logits.shape == (2, 5) and not torch.allclose(logits.sum(1), torch.ones(2))


@pytest.mark.parametrize("shape, match", [((2, 1, 32, 32), "5D|\\(B, 1, D, H, W\\)"),
                                          ((2, 2, 32, 32, 16), "\\(B, 1, D, H, W\\)"),
                                          ((2, 1, 32, 32, 12), "divisible by 8")])
def test_bad_input_is_rejected(shape, match):
    with pytest.raises(ValueError, match=match):
        UNet3D(base_width=4)(torch.rand(*shape))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="bn_mode"):
        UNet3D(bn_mode="frozen")
    with pytest.raises(ValueError, match="base_width"):
        UNet3D(base_width=0)
    with pytest.raises(ValueError, match="activation"):
        YNet3D(base_width=4, head_activation="relu")
