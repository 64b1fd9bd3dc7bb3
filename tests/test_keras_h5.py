"""Keras ``.h5`` weights of the Genesis-family U-Net: nearest-upsampling UNet3D, the Keras head, the reader, loading.

The files are written here with h5py in the layout Keras 2 saves (``layer_names`` / ``weight_names`` attributes,
datasets ``<layer>/<layer>/kernel:0``, optionally under ``model_weights``) at base width 4; the filter plan, the
layer -> module mapping and the parameter counts come from ``reference/genesis_family.md`` §1.1-1.3, §5.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from eden_lib.checkpoints import CheckpointError, load_pretrained
from eden_lib.keras_h5 import KerasH5Error, is_keras_h5, keras_to_state_dict, read_keras_h5
from eden_lib.models.unet3d import ClassificationHead, KerasClassificationHead, UNet3D, YNet3D

Layers = dict[str, dict[str, np.ndarray]]

#: fact sheet §1.3: depth_i -> PyTorch module (two LUConvs per level), in Keras order
MODULES = ["down_tr64.ops.0", "down_tr64.ops.1", "down_tr128.ops.0", "down_tr128.ops.1", "down_tr256.ops.0",
           "down_tr256.ops.1", "down_tr512.ops.0", "down_tr512.ops.1", "up_tr256.ops.0", "up_tr256.ops.1",
           "up_tr128.ops.0", "up_tr128.ops.1", "up_tr64.ops.0", "up_tr64.ops.1"]


def keras_plan(w: int) -> list[tuple[int, int]]:
    """(in, out) channels of depth_0 ... depth_13: filters w, 2w, 2w, 4w, ... 16w, then 8w, 8w, 4w, 4w, 2w, 2w;
    depth_8 / 10 / 12 take the upsampled previous output concatenated with depth_5 / 3 / 1."""
    filters = [w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w, 16 * w, 8 * w, 8 * w, 4 * w, 4 * w, 2 * w, 2 * w]
    skips = {8: filters[5], 10: filters[3], 12: filters[1]}
    plan, cin = [], 1
    for i, out in enumerate(filters):
        cin += skips.get(i, 0)
        plan.append((cin, out))
        cin = out
    return plan


def keras_layers(w: int, n_classes: int | None = None, final: str = "final_conv", seed: int | None = 0) -> Layers:
    """Keras-layout weights (kernels ``(k, k, k, in, out)``, Dense ``(in, out)``); zeros when ``seed`` is None."""
    rng = np.random.default_rng(seed)

    def draw(*shape: int, low: float = -0.5, high: float = 0.5) -> np.ndarray:
        if seed is None:
            return np.zeros(shape, dtype=np.float32)
        return rng.uniform(low, high, shape).astype(np.float32)

    def block(cin: int, cout: int) -> tuple[dict, dict]:
        bound = 1 / np.sqrt(27 * cin)  # keeps activations moderate through 15 layers
        conv = {"kernel": draw(3, 3, 3, cin, cout, low=-bound, high=bound), "bias": draw(cout)}
        # variances small enough that Keras's eps 1e-3 (not PyTorch's 1e-5) visibly matters
        bn = {"gamma": draw(cout, low=0.5, high=1.5), "beta": draw(cout), "moving_mean": draw(cout),
              "moving_variance": draw(cout, low=0.05, high=0.5)}
        return conv, bn

    layers: Layers = {}
    plan = keras_plan(w) + ([(16 * w, 16 * w)] if n_classes else [])
    for i, (cin, cout) in enumerate(plan):
        layers[f"depth_{i}_conv"], layers[f"depth_{i}_bn"] = block(cin, cout)
        if i == 13:
            layers[final] = {"kernel": draw(1, 1, 1, 2 * w, 1), "bias": draw(1)}
    if n_classes:
        layers["cls_fc"] = {"kernel": draw(16 * w, 32 * w), "bias": draw(32 * w)}
        layers["cls_output"] = {"kernel": draw(32 * w, n_classes), "bias": draw(n_classes)}
    return layers


WEIGHTLESS = ["input_1", "max_pooling3d_1", "up_sampling3d_1", "concatenate_1", "global_average_pooling3d_1"]


def write_keras_h5(path, layers: Layers, full_model: bool = True, chunked: bool = False) -> None:
    """Write ``layers`` as Keras 2 does: ``model.save`` (``model_weights`` group) or ``save_weights`` (root)."""
    names = WEIGHTLESS[:1] + [n for n in layers] + [f"{n[:-3]}_relu" for n in layers if n.endswith("_bn")]
    names += WEIGHTLESS[1:]
    with h5py.File(path, "w") as fh:
        fh.attrs["keras_version"], fh.attrs["backend"] = b"2.2.4", b"tensorflow"
        root = fh
        if full_model:
            fh.attrs["model_config"] = b'{"class_name": "Model", "config": {"name": "model_1"}}'
            root = fh.create_group("model_weights")
            root.attrs["keras_version"], root.attrs["backend"] = b"2.2.4", b"tensorflow"
        encoded = [n.encode("utf8") for n in names]
        if chunked:  # the form Keras uses when an attribute outgrows the HDF5 object header
            root.attrs["layer_names0"], root.attrs["layer_names1"] = encoded[:7], encoded[7:]
        else:
            root.attrs["layer_names"] = encoded
        for name in names:
            group = root.create_group(name)
            weights = layers.get(name, {})
            group.attrs["weight_names"] = [f"{name}/{w}:0".encode("utf8") for w in weights]
            for w, array in weights.items():
                group.create_dataset(f"{name}/{w}:0", data=array)


def reference_state(layers: Layers) -> dict[str, torch.Tensor]:
    """Our state dict from Keras weights, mapped by the fact sheet and permuted with numpy (independent of the
    library): kernel (a, b, c, in, out) -> (out, in, a, b, c); Dense kernel transposed."""
    ref: dict[str, torch.Tensor] = {}
    for i, module in enumerate([*MODULES, "clc_out"]):
        if f"depth_{i}_conv" not in layers:
            continue
        conv, bn = layers[f"depth_{i}_conv"], layers[f"depth_{i}_bn"]
        ref[f"{module}.conv1.weight"] = torch.tensor(np.transpose(conv["kernel"], (4, 3, 0, 1, 2)))
        ref[f"{module}.conv1.bias"] = torch.tensor(conv["bias"])
        for ours, theirs in [("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")]:
            ref[f"{module}.bn1.{ours}"] = torch.tensor(bn[theirs])
        ref[f"{module}.bn1.num_batches_tracked"] = torch.tensor(0)
    final = layers.get("final_conv") or next(v for k, v in layers.items() if k.startswith("conv3d"))
    ref["out_tr.final_conv.weight"] = torch.tensor(np.transpose(final["kernel"], (4, 3, 0, 1, 2)))
    ref["out_tr.final_conv.bias"] = torch.tensor(final["bias"])
    for name in ("cls_fc", "cls_output"):
        if name in layers:
            ref[f"clc_out.{name}.weight"] = torch.tensor(layers[name]["kernel"].T)
            ref[f"clc_out.{name}.bias"] = torch.tensor(layers[name]["bias"])
    return ref


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the nearest-upsampling UNet3D and the Keras head --------------------------------------------------------------


def test_full_width_keras_layout_matches_the_fact_sheet():
    """Base 32, C = 44, on the meta device: the Keras plan, key names, shapes and parameter counts."""
    assert keras_plan(32) == [(1, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512),
                              (768, 256), (256, 256), (384, 128), (128, 128), (192, 64), (64, 64)]  # §1.1 table
    converted = keras_to_state_dict(keras_layers(32, 44, seed=None))
    with torch.device("meta"):
        official, ynet = UNet3D(), YNet3D(n_classes=44)
        nearest, keras_ynet = UNet3D(upsample="nearest"), YNet3D(n_classes=44, upsample="nearest", head="keras")
        keras_head = KerasClassificationHead(512, 44)
    expected_backbone = {k: tuple(v.shape) for k, v in official.state_dict().items() if ".up_conv." not in k}
    assert len(official.state_dict()) == 106 and len(expected_backbone) == 100
    assert {k: tuple(v.shape) for k, v in nearest.state_dict().items()} == expected_backbone
    shapes = {k: tuple(v.shape) for k, v in converted.items()}
    assert shapes == {k: tuple(v.shape) for k, v in keras_ynet.state_dict().items()}
    assert {k: v for k, v in shapes.items() if not k.startswith("clc_out.")} == expected_backbone
    assert {k: v for k, v in shapes.items() if k.startswith("clc_out.")} == {
        "clc_out.conv1.weight": (512, 512, 3, 3, 3), "clc_out.conv1.bias": (512,), "clc_out.bn1.weight": (512,),
        "clc_out.bn1.bias": (512,), "clc_out.bn1.running_mean": (512,), "clc_out.bn1.running_var": (512,),
        "clc_out.bn1.num_batches_tracked": (), "clc_out.cls_fc.weight": (1024, 512), "clc_out.cls_fc.bias": (1024,),
        "clc_out.cls_output.weight": (44, 1024), "clc_out.cls_output.bias": (44,)}
    # parameter counts (documented in eden_lib.models.unet3d)
    assert len(ynet.state_dict()) == 115 and n_params(ynet) == 33_277_613  # fact sheet §1.2
    assert n_params(official) == 19_073_665 and n_params(nearest) == 16_320_257
    assert n_params(ynet.clc_out) == 14_203_948 and n_params(keras_head) == 7_649_836
    assert len(keras_ynet.state_dict()) == 111 and n_params(keras_ynet) == 23_970_093


def test_default_upsampling_is_the_official_transposed_conv():
    torch.manual_seed(0)
    default = UNet3D(base_width=4)
    torch.manual_seed(0)
    explicit = UNet3D(base_width=4, upsample="transpose")
    assert default.upsample == "transpose" and isinstance(default.up_tr64.up_conv, torch.nn.ConvTranspose3d)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))
    nearest = UNet3D(base_width=4, upsample="nearest")
    assert not [k for k in nearest.state_dict() if "up_conv" in k]
    with pytest.raises(ValueError, match="upsample='bilinear'"):
        UNet3D(base_width=4, upsample="bilinear")
    with pytest.raises(ValueError, match="head='timm'"):
        YNet3D(base_width=4, head="timm")


def test_nearest_upsampling_repeats_every_voxel_before_the_concatenation():
    torch.manual_seed(0)
    up = UNet3D(base_width=4, upsample="nearest").eval().up_tr128  # 32 channels in, 16-channel skip
    x, skip = torch.randn(2, 32, 2, 3, 1), torch.randn(2, 16, 4, 6, 2)
    repeated = np.repeat(np.repeat(np.repeat(x.numpy(), 2, axis=2), 2, axis=3), 2, axis=4)  # Keras UpSampling3D
    with torch.no_grad():
        expected = up.ops(torch.cat([torch.from_numpy(repeated), skip], dim=1))
        assert torch.equal(up(x, skip), expected)
    out = UNet3D(base_width=4, upsample="nearest").eval()(torch.rand(1, 1, 16, 16, 8))
    assert out.shape == (1, 1, 16, 16, 8)


def test_keras_head_is_conv_block_pool_dense_relu_dense():
    torch.manual_seed(0)
    head = KerasClassificationHead(8, 3).eval()
    with torch.no_grad():
        head.bn1.running_mean.uniform_(-1, 1)
        head.bn1.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 2, 2, 1)
    y = F.conv3d(x, head.conv1.weight, head.conv1.bias, padding=1)
    y = F.batch_norm(y, head.bn1.running_mean, head.bn1.running_var, head.bn1.weight, head.bn1.bias, eps=head.bn1.eps)
    hidden = F.relu(F.linear(F.relu(y).mean(dim=(2, 3, 4)), head.cls_fc.weight, head.cls_fc.bias))
    logits = F.linear(hidden, head.cls_output.weight, head.cls_output.bias)
    with torch.no_grad():
        torch.testing.assert_close(head(x), logits)  # logits by default: the softmax is left to the loss
        recon, probs = YNet3D(base_width=4, n_classes=3, head="keras").eval()(torch.rand(2, 1, 16, 16, 8))
    assert recon.shape == (2, 1, 16, 16, 8) and probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))  # YNet3D keeps the official softmax output
    assert isinstance(YNet3D(base_width=4).clc_out, ClassificationHead)
    with pytest.raises(ValueError, match="n_classes"):
        KerasClassificationHead(8, 0)


# --- reading and loading .h5 files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("full_model", "chunked"), [(True, False), (False, False), (False, True)])
def test_h5_weights_land_in_place(tmp_path, full_model, chunked):
    layers = keras_layers(4, n_classes=3)
    write_keras_h5(tmp_path / "TransVW_chest_ct.h5", layers, full_model, chunked)
    assert list(read_keras_h5(tmp_path / "TransVW_chest_ct.h5")) == list(layers)  # weightless layers skipped
    model = YNet3D(base_width=4, n_classes=3, upsample="nearest", head="keras")
    info = load_pretrained(tmp_path / "TransVW_chest_ct.h5", model)
    assert info == {"source": "keras_h5", "keys": 111, "converted": [], "filled": [], "dropped": [], "bn_eps": 1e-3}
    kernel = layers["depth_3_conv"]["kernel"]  # (3, 3, 3, in 8, out 16)
    weight = model.down_tr128.ops[1].conv1.weight  # (out 16, in 8, 3, 3, 3)
    assert weight.shape == (16, 8, 3, 3, 3) and weight[5, 2, 0, 1, 2] == torch.tensor(kernel[0, 1, 2, 2, 5])
    assert torch.equal(weight, torch.tensor(np.transpose(kernel, (4, 3, 0, 1, 2))))
    bn = model.up_tr128.ops[0].bn1  # depth_10
    assert torch.equal(bn.running_var, torch.tensor(layers["depth_10_bn"]["moving_variance"]))
    assert torch.equal(bn.weight, torch.tensor(layers["depth_10_bn"]["gamma"]))
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(model.clc_out.cls_fc.weight, torch.tensor(layers["cls_fc"]["kernel"]).T)
    assert torch.equal(model.out_tr.final_conv.bias, torch.tensor(layers["final_conv"]["bias"]))
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)} == {1e-3}


def test_loaded_model_equals_a_hand_computation_and_an_independent_reference(tmp_path):
    layers = keras_layers(4, n_classes=3, seed=1)
    write_keras_h5(tmp_path / "w.h5", layers)
    model = YNet3D(base_width=4, n_classes=3, upsample="nearest", head="keras")
    load_pretrained(tmp_path / "w.h5", model)
    model.eval()
    x = np.random.default_rng(2).uniform(0, 1, (1, 16, 16, 8))
    # depth_0 by hand, Keras's way: 'same' cross-correlation with the (a, b, c, in, out) kernel, BN eps 1e-3, ReLU
    conv, bn = layers["depth_0_conv"], layers["depth_0_bn"]
    windows = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1))), (3, 3, 3), axis=(1, 2, 3))
    y = np.einsum("cdhwabe,abeco->odhw", windows, conv["kernel"].astype(np.float64)) + conv["bias"][:, None, None, None]
    stats = [bn[k][:, None, None, None].astype(np.float64) for k in ("moving_mean", "moving_variance", "gamma", "beta")]
    y = np.maximum((y - stats[0]) / np.sqrt(stats[1] + 1e-3) * stats[2] + stats[3], 0)
    inp = torch.tensor(x[None], dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(model.down_tr64.ops[0](inp)[0].numpy(), y, rtol=1e-4, atol=1e-5)
        # the whole network against weights mapped and permuted independently (fact sheet mapping, numpy)
        reference = YNet3D(base_width=4, n_classes=3, upsample="nearest", head="keras")
        reference.load_state_dict(reference_state(layers), strict=True)
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.eps = 1e-3
        batch = torch.rand(2, 1, 16, 16, 8)
        for ours, theirs in zip(model(batch), reference.eval()(batch)):
            assert torch.equal(ours, theirs)


def test_transvw_h5_into_a_unet3d_lists_the_dropped_head(tmp_path):
    write_keras_h5(tmp_path / "w.h5", keras_layers(4, n_classes=3))
    info = load_pretrained(tmp_path / "w.h5", UNet3D(base_width=4, upsample="nearest"))
    assert info["keys"] == 100 and len(info["dropped"]) == 11
    assert info["dropped"] == sorted(info["dropped"]) and all(k.startswith("clc_out.") for k in info["dropped"])
    with pytest.raises(CheckpointError, match=r"unexpected keys .*'clc_out.cls_fc.bias'"):
        load_pretrained(tmp_path / "w.h5", YNet3D(base_width=4, n_classes=3, upsample="nearest"))  # PyTorch head


def test_models_genesis_h5_with_an_auto_named_final_conv(tmp_path):
    layers = keras_layers(4, final="conv3d_15")
    write_keras_h5(tmp_path / "Genesis_Chest_CT.h5", layers, full_model=False)
    model = UNet3D(base_width=4, upsample="nearest")
    info = load_pretrained(tmp_path / "Genesis_Chest_CT.h5", model)
    assert info["keys"] == 100 and info["dropped"] == []
    assert torch.equal(model.out_tr.final_conv.weight.flatten(), torch.tensor(layers["conv3d_15"]["kernel"]).flatten())
    layers["conv3d_2"] = layers["conv3d_15"]
    with pytest.raises(KerasH5Error, match=r"'conv3d_15' is ambiguous: .*\['conv3d_15', 'conv3d_2'\]"):
        keras_to_state_dict(layers)


def test_a_transpose_conv_model_is_refused_with_the_reason(tmp_path):
    write_keras_h5(tmp_path / "w.h5", keras_layers(4))
    with pytest.raises(CheckpointError, match=r"6 up_conv weights .*no up_conv weights.*upsample='nearest'"):
        load_pretrained(tmp_path / "w.h5", UNet3D(base_width=4))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ls: ls.__setitem__("depth_3_batchnorm", ls.pop("depth_3_bn")),
         r"unknown Keras layer 'depth_3_batchnorm' .*expected depth_<0-14>_conv"),
        (lambda ls: ls.pop("depth_5_conv"),
         r"missing Keras layers \['depth_5_conv'\] \(for \['down_tr256.ops.1.conv1'\]"),
        (lambda ls: ls.pop("cls_output"), r"missing Keras layers \['cls_output'\]"),
        (lambda ls: ls["depth_9_bn"].pop("gamma"),
         r"layer 'depth_9_bn' has weights \['beta', 'moving_mean', 'moving_variance'\], expected \['gamma'"),
        (lambda ls: ls["cls_fc"].__setitem__("kernel", np.zeros((1, 16, 32), np.float32)),
         r"layer 'cls_fc' kernel \(1, 16, 32\), expected 2 axes"),
    ],
)
def test_an_unknown_or_missing_layer_is_named(tmp_path, edit, message):
    layers = keras_layers(4, n_classes=3)
    edit(layers)
    write_keras_h5(tmp_path / "bad.h5", layers)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(tmp_path / "bad.h5", YNet3D(base_width=4, n_classes=3, upsample="nearest", head="keras"))


def test_detection_and_unreadable_files(tmp_path):
    write_keras_h5(tmp_path / "weights.bin", keras_layers(4))  # no .h5 suffix: found by the HDF5 signature
    assert is_keras_h5(tmp_path / "weights.bin") and is_keras_h5(tmp_path / "absent.h5")
    assert load_pretrained(tmp_path / "weights.bin", UNet3D(base_width=4, upsample="nearest"))["source"] == "keras_h5"
    torch.save({"state_dict": {}}, tmp_path / "torch.pt")
    assert not is_keras_h5(tmp_path / "torch.pt")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match=r"cannot read .*fake.h5 as HDF5"):
        load_pretrained(tmp_path / "fake.h5", UNet3D(base_width=4, upsample="nearest"))
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*absent.h5"):
        load_pretrained(tmp_path / "absent.h5", UNet3D(base_width=4, upsample="nearest"))
    with h5py.File(tmp_path / "keras3.weights.h5", "w") as fh:
        fh.create_group("layers")
    with pytest.raises(CheckpointError, match="no 'layer_names' attribute"):
        load_pretrained(tmp_path / "keras3.weights.h5", UNet3D(base_width=4, upsample="nearest"))
