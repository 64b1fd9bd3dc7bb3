"""Released checkpoint layouts (torchvision, MoCo, PyContrast, SwAV, DiRA / CAiD) load strictly into our modules.

Each file is built from the architecture's key names and shapes (facts of the released formats), with tiny widths
except where the real ResNet-50 layout itself is under test.
"""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from eden_lib.checkpoints import CheckpointError, detect_source, load_checkpoint, load_pretrained, rgb_to_gray
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.discriminator import PatchDiscriminator
from eden_lib.models.unet2d import ResNetUNet

Shapes = dict[str, tuple[int, ...]]

TINY = (4, 4, 8, 8)  # ResNet-50 stage widths for small files (expansion 4: stage outputs 16, 16, 32, 32)
TINY_DECODER = (8, 8, 4, 4, 4)


def _bn(prefix: str, c: int) -> Shapes:
    stats = ("weight", "bias", "running_mean", "running_var")
    return {**{f"{prefix}.{s}": (c,) for s in stats}, f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet50(widths=(64, 128, 256, 512), in_channels: int = 3, num_classes: int = 1000) -> Shapes:
    """torchvision's ResNet-50 state-dict names and shapes: 7x7 stem, Bottleneck stages (3, 4, 6, 3), expansion 4."""
    shapes = {"conv1.weight": (widths[0], in_channels, 7, 7), **_bn("bn1", widths[0])}
    inplanes = widths[0]
    for stage, (blocks, w) in enumerate(zip((3, 4, 6, 3), widths), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            shapes[f"{p}.conv1.weight"] = (w, inplanes, 1, 1)
            shapes.update(_bn(f"{p}.bn1", w))
            shapes[f"{p}.conv2.weight"] = (w, w, 3, 3)
            shapes.update(_bn(f"{p}.bn2", w))
            shapes[f"{p}.conv3.weight"] = (4 * w, w, 1, 1)
            shapes.update(_bn(f"{p}.bn3", 4 * w))
            if b == 0:  # every stage's first block changes width (and stride, from layer2 on)
                shapes[f"{p}.downsample.0.weight"] = (4 * w, inplanes, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", 4 * w))
            inplanes = 4 * w
    shapes.update({"fc.weight": (num_classes, inplanes), "fc.bias": (num_classes,)})
    return shapes


def smp_unet_resnet50(widths=TINY, decoder=TINY_DECODER, in_channels: int = 3, classes: int = 1) -> Shapes:
    """smp 0.1.3 ``Unet('resnet50')``: ``encoder.*`` (torchvision names, no fc), five decoder blocks, conv head.

    Encoder outputs (stem, layer1..4): w0, 4*w0 ... 4*w3; block i upsamples the previous output and concatenates
    the skip (layer3, layer2, layer1, stem, none), then two conv3x3 (no bias) + BN.
    """
    encoder = torchvision_resnet50(widths, in_channels)
    shapes = {f"encoder.{k}": v for k, v in encoder.items() if not k.startswith("fc.")}
    skips = (4 * widths[2], 4 * widths[1], 4 * widths[0], widths[0], 0)
    ins = (4 * widths[3], *decoder[:-1])
    for i, (cin, skip, cout) in enumerate(zip(ins, skips, decoder)):
        shapes[f"decoder.blocks.{i}.conv1.0.weight"] = (cout, cin + skip, 3, 3)
        shapes.update(_bn(f"decoder.blocks.{i}.conv1.1", cout))
        shapes[f"decoder.blocks.{i}.conv2.0.weight"] = (cout, cout, 3, 3)
        shapes.update(_bn(f"decoder.blocks.{i}.conv2.1", cout))
    shapes.update({"segmentation_head.0.weight": (classes, decoder[-1], 3, 3), "segmentation_head.0.bias": (classes,)})
    return shapes


def _tensors(shapes: Shapes, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        prefix + k: torch.tensor(5) if k.endswith("num_batches_tracked") else torch.randn(s) for k, s in shapes.items()
    }


def _moco_extras(encoder: dict[str, torch.Tensor], fc_in: int) -> dict[str, torch.Tensor]:
    """MoCo-v2 query projector (fc.0, fc.2), key network and queue, as in a DDP-saved wrapper."""
    return {
        "module.encoder_q.fc.0.weight": torch.randn(fc_in, fc_in),
        "module.encoder_q.fc.0.bias": torch.randn(fc_in),
        "module.encoder_q.fc.2.weight": torch.randn(8, fc_in),
        "module.encoder_q.fc.2.bias": torch.randn(8),
        **{k.replace("module.encoder_q.", "module.encoder_k.", 1): v for k, v in encoder.items()},
        "module.queue": torch.randn(8, 32),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }


def _torchvision_file() -> dict:
    return _tensors(torchvision_resnet50(TINY))


def _backbone(prefix: str) -> dict[str, torch.Tensor]:
    """The tiny ResNet-50's torchvision-named backbone weights (no ``fc``), each name prefixed."""
    return _tensors({k: v for k, v in torchvision_resnet50(TINY).items() if not k.startswith("fc.")}, prefix)


def _moco_file() -> dict:
    q = _backbone("module.encoder_q.")
    return {"epoch": 200, "arch": "resnet50", "state_dict": {**q, **_moco_extras(q, 4 * TINY[3])}}


def _dira_unet_file() -> dict:
    return _tensors(smp_unet_resnet50())


def _dira_wrapper_file() -> dict:
    q = _tensors(smp_unet_resnet50(), "module.encoder_q.backbone.")
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}
    state = {**q, **_moco_extras(q, 4 * TINY[3])}
    return {"epoch": 3, "arch": "resnet50", "state_dict": state, "optimizer": optimizer, "best_loss": 0.5}


def _discriminator_file() -> dict:
    state = {f"module.{k}": v for k, v in PatchDiscriminator(widths=(4, 8, 8, 16)).state_dict().items()}
    return {"epoch": 3, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def _encoder(in_channels: int = 1) -> ResNetEncoder:
    return ResNetEncoder("resnet50", TINY, in_channels=in_channels)


def _unet(in_channels: int = 1) -> ResNetUNet:
    return ResNetUNet(_encoder(in_channels), TINY_DECODER, 1)


#: source -> (file builder, target model, a weight's name in the file, its name in the model)
LAYOUTS: dict[str, tuple[Callable[[], dict], Callable[[], torch.nn.Module], str, str]] = {
    "torchvision": (_torchvision_file, _encoder, "layer3.1.conv2.weight", "layer3.1.conv2.weight"),
    "moco": (_moco_file, _encoder, "module.encoder_q.layer3.1.conv2.weight", "layer3.1.conv2.weight"),
    "dira_unet": (_dira_unet_file, _unet, "decoder.blocks.2.conv1.0.weight", "decoder.blocks.2.conv1.0.weight"),
    "dira_unet->encoder": (_dira_unet_file, _encoder, "encoder.layer4.2.bn3.running_var", "layer4.2.bn3.running_var"),
    "dira_moco_wrapper": (
        _dira_wrapper_file,
        _unet,
        "module.encoder_q.backbone.segmentation_head.0.weight",
        "segmentation_head.0.weight",
    ),
    "dira_moco_wrapper->encoder": (
        _dira_wrapper_file,
        _encoder,
        "module.encoder_q.backbone.encoder.layer2.0.downsample.0.weight",
        "layer2.0.downsample.0.weight",
    ),
    "dira_discriminator": (
        _discriminator_file,
        lambda: PatchDiscriminator(widths=(4, 8, 8, 16)),
        "module.model.8.weight",
        "model.8.weight",
    ),
}


def _weights(ckpt: dict) -> dict:
    return ckpt.get("state_dict", ckpt)


def test_monai_resnet50_has_torchvision_names_and_shapes():
    torchvision = torchvision_resnet50()
    assert len(torchvision) == 320  # 318 encoder keys + fc.weight + fc.bias
    encoder = {k: v for k, v in torchvision.items() if not k.startswith("fc.")}
    state = ResNetEncoder("resnet50", (64, 128, 256, 512), in_channels=3).state_dict()
    ours = {k: tuple(v.shape) for k, v in state.items()}
    assert ours == encoder
    assert list(ours) == list(encoder)  # same order too


def test_no_backbone_has_a_shortcut_bias():
    """torchvision's shortcut convolutions have no bias; MONAI's default would add one per stage with a shortcut."""
    for name in ("resnet18", "resnet34", "resnet50"):
        keys = ResNetEncoder(name, (8, 16, 32, 64)).state_dict()
        assert not [k for k in keys if k.endswith("downsample.0.bias")], name


def test_resnet_unet_matches_smp_unet_resnet50_at_paper_size():
    """DiRA's smp.Unet('resnet50', in_channels=3, classes=1), decoder (256, 128, 64, 32, 16), key for key."""
    expected = smp_unet_resnet50((64, 128, 256, 512), (256, 128, 64, 32, 16), in_channels=3)
    plan = [expected[f"decoder.blocks.{i}.conv1.0.weight"][:2] for i in range(5)]
    assert plan == [(256, 2048 + 1024), (128, 256 + 512), (64, 128 + 256), (32, 64 + 64), (16, 32)]  # fact sheet
    unet = ResNetUNet(ResNetEncoder("resnet50", (64, 128, 256, 512), in_channels=3), (256, 128, 64, 32, 16), 1)
    assert {k: tuple(v.shape) for k, v in unet.state_dict().items()} == expected


def test_real_torchvision_resnet50_file_loads_into_a_grey_encoder(tmp_path):
    torch.manual_seed(0)
    state = _tensors(torchvision_resnet50())
    torch.save(state, tmp_path / "resnet50.pth")
    encoder = ResNetEncoder("resnet50", (64, 128, 256, 512), in_channels=1)
    info = load_pretrained(tmp_path / "resnet50.pth", encoder)
    assert info == {"source": "torchvision", "keys": 318, "converted": ["conv1.weight"], "filled": [],
                    "dropped": ["fc.bias", "fc.weight"]}
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(encoder.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_loads_strictly_and_is_detected(tmp_path, layout):
    build, make_model, file_key, model_key = LAYOUTS[layout]
    torch.manual_seed(0)
    ckpt = build()
    torch.save(ckpt, tmp_path / "ckpt.pth")
    model = make_model()
    info = load_pretrained(tmp_path / "ckpt.pth", model)
    assert info["source"] == layout.split("->")[0]
    assert detect_source(load_checkpoint(tmp_path / "ckpt.pth")) == info["source"]
    assert info["keys"] == len(model.state_dict())
    assert torch.equal(model.state_dict()[model_key], _weights(ckpt)[file_key])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_missing_or_unexpected_key_is_named(tmp_path, layout):
    build, make_model, file_key, model_key = LAYOUTS[layout]
    ckpt = build()
    del _weights(ckpt)[file_key]
    torch.save(ckpt, tmp_path / "missing.pth")
    source = layout.split("->")[0]
    with pytest.raises(CheckpointError, match=rf"missing keys \(1\): \['{model_key}'\]"):
        load_pretrained(tmp_path / "missing.pth", make_model(), source=source)
    ckpt = build()
    extra = file_key.replace("weight", "extra").replace("running_var", "extra")
    _weights(ckpt)[extra] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): \['[\w.]*extra'\]"):
        load_pretrained(tmp_path / "extra.pth", make_model())


def test_only_the_named_heads_are_dropped(tmp_path):
    ckpt = _torchvision_file()
    ckpt["head.weight"] = torch.zeros(2)  # not fc.*: refused
    torch.save(ckpt, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): \['head.weight'\]"):
        load_pretrained(tmp_path / "tv.pth", _encoder())
    ckpt = _moco_file()
    ckpt["state_dict"]["module.encoder_q.prototypes.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "moco.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): \['prototypes.weight'\]"):
        load_pretrained(tmp_path / "moco.pth", _encoder())


def test_mlp_head_of_dira_di_mode_is_dropped(tmp_path):
    """DiRA's mode-``di`` resnet50.pth is torchvision names with an MLP ``fc.0`` / ``fc.2``."""
    ckpt = {k: v for k, v in _torchvision_file().items() if not k.startswith("fc.")}
    ckpt.update({"fc.0.weight": torch.zeros(32, 32), "fc.0.bias": torch.zeros(32), "fc.2.weight": torch.zeros(8, 32)})
    torch.save(ckpt, tmp_path / "di.pth")
    assert load_pretrained(tmp_path / "di.pth", _encoder(3))["source"] == "torchvision"


@pytest.mark.parametrize(
    ("layout", "model", "message"),
    [
        ("torchvision", _unet, r"missing keys .*'decoder\.blocks\.0\.conv1\.0\.weight'"),
        ("dira_discriminator", _encoder, r"missing keys .*'bn1\.bias'.*unexpected keys .*'model\.0\.bias'"),
        ("moco", lambda: PatchDiscriminator(widths=(4, 8, 8, 16)), r"unexpected keys .*'bn1\.bias'"),
    ],
)
def test_a_file_of_another_layout_fails_clearly(tmp_path, layout, model, message):
    torch.save(LAYOUTS[layout][0](), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=rf"\({layout} layout\) does not fit .*{message}"):
        load_pretrained(tmp_path / "other.pth", model())


def test_a_forced_wrong_source_fails_clearly(tmp_path):
    torch.save(_torchvision_file(), tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"\(dira_moco_wrapper layout\).*unexpected keys .*'fc\.bias'"):
        load_pretrained(tmp_path / "tv.pth", _encoder(), source="dira_moco_wrapper")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint source 'timm'"):
        load_pretrained(tmp_path / "tv.pth", _encoder(), source="timm")


def test_summed_rgb_filter_equals_the_rgb_filter_on_a_replicated_grey_image():
    torch.manual_seed(0)
    rgb = {"conv1.weight": torch.randn(4, 3, 7, 7)}
    grey = dict(rgb)
    assert rgb_to_gray(grey, {"conv1.weight": torch.zeros(4, 1, 7, 7)}) == ["conv1.weight"]
    image = torch.randn(2, 1, 16, 16)
    expected = F.conv2d(image.expand(-1, 3, -1, -1), rgb["conv1.weight"])
    torch.testing.assert_close(F.conv2d(image, grey["conv1.weight"]), expected, rtol=1e-5, atol=1e-5)
    # only the stem is converted, and only from 3 channels to 1
    inner = "layer1.0.conv1.weight"
    assert rgb_to_gray({inner: torch.zeros(4, 3, 1, 1)}, {inner: torch.zeros(4, 1, 1, 1)}) == []
    assert rgb_to_gray({"conv1.weight": torch.zeros(4, 2, 7, 7)}, {"conv1.weight": torch.zeros(4, 1, 7, 7)}) == []


def test_pre_0_4_1_file_without_batch_counters(tmp_path):
    """An old torchvision file has no num_batches_tracked at all: zeroed like PyTorch does; one missing is refused."""
    state = {k: v for k, v in _torchvision_file().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    encoder = _encoder()
    info = load_pretrained(tmp_path / "old.pth", encoder)
    assert len(info["filled"]) == 53 and int(encoder.bn1.num_batches_tracked) == 0
    partial = _torchvision_file()
    del partial["layer1.0.bn2.num_batches_tracked"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['layer1.0.bn2.num_batches_tracked'\]"):
        load_pretrained(tmp_path / "partial.pth", _encoder())


FEATURES = 4 * TINY[3]  # the tiny ResNet-50's pooled feature width (2048 at full size)


def _pycontrast_file(heads: dict[str, tuple[int, ...]]) -> dict:
    """A PyContrast file: the DDP network (``module.encoder.*`` backbone and ``heads``) under ``model``, beside the
    memory of the contrast and the epoch."""
    model = {**_backbone("module.encoder."), **_tensors(heads)}
    return {"model": model, "contrast": {"memory": torch.randn(16, 8)}, "epoch": 200}


def _insdis_file() -> dict:
    return _pycontrast_file({"module.head.fc.weight": (8, FEATURES), "module.head.fc.bias": (8,)})


def _pirl_file() -> dict:
    """PIRL: the instance head and the jigsaw head over nine patch features."""
    jigsaw = {"module.head_jig.fc1.weight": (8, FEATURES), "module.head_jig.fc1.bias": (8,),
              "module.head_jig.fc2.weight": (8, 9 * 8), "module.head_jig.fc2.bias": (8,)}
    return _pycontrast_file({"module.head.fc.weight": (8, FEATURES), "module.head.fc.bias": (8,), **jigsaw})


def _infomin_file() -> dict:
    """InfoMin: an MLP projection head."""
    mlp = {"module.head.head.0.weight": (FEATURES, FEATURES), "module.head.head.0.bias": (FEATURES,),
           "module.head.head.2.weight": (8, FEATURES), "module.head.head.2.bias": (8,)}
    return _pycontrast_file(mlp)


def _swav_state(prototypes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A SwAV-family state dict: ``module.`` backbone, MLP projection head (Linear, BN, ReLU, Linear), prototypes."""
    projection = {"module.projection_head.0.weight": (16, FEATURES), "module.projection_head.0.bias": (16,),
                  **{f"module.{k}": v for k, v in _bn("projection_head.1", 16).items()},
                  "module.projection_head.3.weight": (8, 16), "module.projection_head.3.bias": (8,)}
    return {**_backbone("module."), **_tensors({**projection, **prototypes})}


def _swav_file() -> dict:
    return _swav_state({"module.prototypes.weight": (30, 8)})


def _deepcluster_v2_file() -> dict:
    """DeepCluster-v2: one prototype matrix per clustering head."""
    return _swav_state({f"module.prototypes.prototypes{i}.weight": (30, 8) for i in range(3)})


def _selav2_file() -> dict:
    """SeLa-v2, here as a training checkpoint with the weights under ``state_dict``."""
    return {"epoch": 400, "state_dict": _swav_state({"module.prototypes.weight": (30, 8)}), "optimizer": {}}


#: release -> (file builder, its layout, its backbone prefix, the entry holding the weights)
RELEASES: dict[str, tuple[Callable[[], dict], str, str, str | None]] = {
    "InsDis": (_insdis_file, "pycontrast", "module.encoder.", "model"),
    "PIRL": (_pirl_file, "pycontrast", "module.encoder.", "model"),
    "InfoMin": (_infomin_file, "pycontrast", "module.encoder.", "model"),
    "SwAV": (_swav_file, "swav", "module.", None),
    "DeepCluster-v2": (_deepcluster_v2_file, "swav", "module.", None),
    "SeLa-v2": (_selav2_file, "swav", "module.", "state_dict"),
}


def _release_weights(ckpt: dict, entry: str | None) -> dict:
    return ckpt if entry is None else ckpt[entry]


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_ssl_release_is_detected_and_loads_its_backbone(tmp_path, release):
    build, source, prefix, entry = RELEASES[release]
    torch.manual_seed(0)
    ckpt = build()
    torch.save(ckpt, tmp_path / "release.pth")
    assert detect_source(load_checkpoint(tmp_path / "release.pth")) == source
    encoder = _encoder()
    info = load_pretrained(tmp_path / "release.pth", encoder)
    weights = _release_weights(ckpt, entry)
    heads = sorted(set(weights) - set(_backbone(prefix)))
    assert heads and info["dropped"] == heads
    assert info["source"] == source and info["keys"] == len(encoder.state_dict()) == len(weights) - len(heads)
    assert info["converted"] == ["conv1.weight"] and info["filled"] == []
    assert info.get("entry") == (entry if source == "pycontrast" else None)
    assert torch.equal(encoder.layer1[0].conv1.weight, weights[f"{prefix}layer1.0.conv1.weight"])
    assert torch.equal(encoder.layer4[2].bn3.running_var, weights[f"{prefix}layer4.2.bn3.running_var"])
    assert torch.equal(encoder.conv1.weight, weights[f"{prefix}conv1.weight"].sum(dim=1, keepdim=True))


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_ssl_release_missing_or_extra_backbone_key_is_named(tmp_path, release):
    build, source, prefix, entry = RELEASES[release]
    ckpt = build()
    del _release_weights(ckpt, entry)[f"{prefix}layer1.0.conv1.weight"]
    torch.save(ckpt, tmp_path / "missing.pth")
    layout = rf"\({source} layout\) does not fit ResNetEncoder"
    with pytest.raises(CheckpointError, match=rf"{layout}: missing keys \(1\): \['layer1.0.conv1.weight'\]"):
        load_pretrained(tmp_path / "missing.pth", _encoder())
    ckpt = build()
    _release_weights(ckpt, entry)[f"{prefix}layer1.0.conv1.extra"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=rf"{layout}: unexpected keys \(1\): \['layer1.0.conv1.extra'\]"):
        load_pretrained(tmp_path / "extra.pth", _encoder())


def test_pycontrast_ema_copy_never_replaces_the_backbone(tmp_path):
    """``module.encoder_ema.`` starts like ``module.encoder``: the EMA copy, placed after the backbone, is dropped."""
    torch.manual_seed(0)
    ckpt = _insdis_file()
    ema = {k: v + 1 for k, v in _backbone("module.encoder_ema.").items()}
    ckpt["model"].update(ema)
    torch.save(ckpt, tmp_path / "ema.pth")
    encoder = _encoder()
    info = load_pretrained(tmp_path / "ema.pth", encoder)
    assert info["source"] == "pycontrast" and "module.encoder_ema.conv1.weight" in info["dropped"]
    assert set(ema) <= set(info["dropped"])
    assert torch.equal(encoder.conv1.weight, ckpt["model"]["module.encoder.conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(encoder.layer1[0].conv1.weight, ckpt["model"]["module.encoder.layer1.0.conv1.weight"])


def test_ssl_releases_are_not_read_as_older_layouts():
    """A SwAV file is all ``module.`` like Models Genesis, a PyContrast one sits under ``model`` like Ark / Adam-v2
    engine files: each still detects as its own layout, and without its heads a ``module.`` backbone is not SwAV."""
    assert detect_source(_swav_file()) == "swav"
    assert detect_source({"model": _insdis_file()["model"], "epoch": 1}) == "pycontrast"
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        detect_source(_backbone("module."))
