"""Adam-v1 and Adam-v2 checkpoint layouts (adam_ark.md 1.6, 2.6) load strictly into our ResNet / ConvNeXt encoders.

Each file is built from our own tiny models' state dicts under the release's prefixes, plus the head keys under their
release names, in the release's dict structure.
"""

from argparse import Namespace
from collections.abc import Callable

import pytest
import torch
from torch import nn

from eden_lib.checkpoints import CheckpointError, detect_source, load_checkpoint, load_pretrained
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.convnext import ConvNeXtEncoder
from eden_lib.models.dino_head import DINOHead

RESNET = (4, 4, 8, 8)  # ResNet-18 widths: out_dim 8
CONVNEXT = (8, 8, 16, 16)  # ConvNeXt atto widths: out_dim 16
Weights = dict[str, torch.Tensor]


def _resnet(in_channels: int = 1) -> ResNetEncoder:
    return ResNetEncoder("resnet18", RESNET, in_channels=in_channels)


def _convnext(in_channels: int = 1) -> ConvNeXtEncoder:
    return ConvNeXtEncoder("convnext_atto", CONVNEXT, in_channels=in_channels)


ARCHS: dict[str, Callable[..., nn.Module]] = {"resnet18": _resnet, "convnext": _convnext}


def _trained(make: Callable[..., nn.Module], in_channels: int = 1) -> Weights:
    """A backbone state dict with every float weight drawn anew (so teacher and student differ)."""
    state = make(in_channels).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else torch.full_like(v, 7) for k, v in state.items()}


def _dino_head(in_dim: int) -> Weights:
    """The DINO head under the release's names: ``mlp.{0,2,4}.*``, ``last_layer.weight_g`` / ``weight_v``."""
    state = DINOHead(in_dim, out_dim=16, hidden_dim=8, bottleneck_dim=4).state_dict()
    release = {
        "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
        "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
    }
    return {release.get(k, k): v for k, v in state.items()}


def _network(backbone: Weights, dim: int, prefix: str) -> Weights:
    """A DINO-style wrapper's state dict: ``<prefix>backbone.*`` and ``<prefix>head.*``."""
    return {
        **{f"{prefix}backbone.{k}": v for k, v in backbone.items()},
        **{f"{prefix}head.{k}": v for k, v in _dino_head(dim).items()},
    }


def _part_whole_heads(dim: int) -> Weights:
    """Stage 2's compose (4D -> D -> D) and decompose (D -> D -> 4D) MLPs inside ``model``."""
    shapes = {
        "compose_head.0": (dim, 4 * dim), "compose_head.2": (dim, dim),
        "decompose_head.0": (dim, dim), "decompose_head.2": (4 * dim, dim),
    }
    return {
        f"module.{name}.{part}": torch.randn(shape if part == "weight" else shape[:1])
        for name, shape in shapes.items()
        for part in ("weight", "bias")
    }


def adam_v2_file(teacher: Weights, student: Weights, dim: int, stage: int, ddp_teacher: bool) -> dict:
    """Adam-v2's ``checkpoint.pth``: stage 1 {student (DDP), teacher, optimizer, epoch, localizability_loss,
    fp16_scaler}; stage 2 adds ``model`` and saves both networks unwrapped."""
    ckpt = {
        "student": _network(student, dim, "module." if stage == 1 else ""),
        "teacher": _network(teacher, dim, "module." if stage == 1 and ddp_teacher else ""),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.04, "params": [0, 1]}]},
        "epoch": 264,
        "localizability_loss": {"center": torch.zeros(1, 16)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                        "_growth_tracker": 0},
    }
    if stage == 2:
        ckpt["model"] = {
            **_network(student, dim, "module.student."),
            **_network(teacher, dim, "module.teacher."),
            **_part_whole_heads(dim),
        }
    return ckpt


#: case -> (stage, teacher DDP-wrapped, entries kept in the file, entry read)
ADAM_V2_CASES = {
    "stage2": (2, False, None, "teacher"),
    "stage1_ddp_teacher": (1, True, None, "teacher"),  # a ResNet's (SyncBN)
    "stage1_plain_teacher": (1, False, None, "teacher"),  # a ConvNeXt's
    "stage2_model_only": (2, False, ("model", "epoch"), "model"),
    "stage1_student_only": (1, False, ("student", "epoch"), "student"),
}


def _adam_v2_case(arch: str, case: str) -> tuple[dict, Weights, str]:
    """The file, the backbone weights it must load, and the entry they come from."""
    stage, ddp_teacher, kept, entry = ADAM_V2_CASES[case]
    make = ARCHS[arch]
    teacher, student = _trained(make), _trained(make)
    ckpt = adam_v2_file(teacher, student, make().out_dim, stage, ddp_teacher)
    if kept:
        ckpt = {k: ckpt[k] for k in kept}
    return ckpt, student if entry == "student" else teacher, entry


def _dropped(weights: Weights, backbone: Weights) -> list[str]:
    """The entry's keys that are not the loaded backbone: heads, and inside ``model`` the whole student."""
    loaded = {p + k for p in ("backbone.", "module.backbone.", "module.teacher.backbone.") for k in backbone}
    dropped = sorted(set(weights) - loaded)
    assert len(weights) - len(dropped) == len(backbone)
    return dropped


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("case", sorted(ADAM_V2_CASES))
@pytest.mark.parametrize("source", ["auto", "adam_v2"])
def test_adam_v2_layouts_load_strictly(tmp_path, arch, case, source):
    torch.manual_seed(0)
    ckpt, expected, entry = _adam_v2_case(arch, case)
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    assert detect_source(load_checkpoint(tmp_path / "checkpoint.pth")) == "adam_v2"
    model = ARCHS[arch]()
    info = load_pretrained(tmp_path / "checkpoint.pth", model, source=source)
    assert info == {"source": "adam_v2", "keys": len(expected), "converted": [], "filled": [],
                    "dropped": _dropped(ckpt[entry], expected), "entry": entry}
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    if arch == "convnext":  # the final LayerNorm is loaded, not left at its initial values
        assert torch.equal(model.norm.weight, expected["norm.weight"])


def test_dropped_keys_are_exactly_the_heads_and_the_student(tmp_path):
    ckpt, _, _ = _adam_v2_case("convnext", "stage2_model_only")
    torch.save(ckpt, tmp_path / "model.pth")
    dropped = load_pretrained(tmp_path / "model.pth", _convnext())["dropped"]
    prefixes = {".".join(k.split(".")[:3]) for k in dropped}
    assert prefixes == {
        "module.compose_head.0", "module.compose_head.2", "module.decompose_head.0", "module.decompose_head.2",
        "module.student.backbone", "module.student.head", "module.teacher.head",
    }
    assert {"module.teacher.head.last_layer.weight_g", "module.teacher.head.last_layer.weight_v"} <= set(dropped)


@pytest.mark.parametrize(
    ("arch", "change", "message"),
    [
        ("convnext", ("backbone.stages.2.1.gamma", None), r"missing keys \(1\): \['stages.2.1.gamma'\]"),
        (
            "convnext",
            ("backbone.norm.weight", "backbone.final_norm.weight"),
            r"missing keys \(1\): \['norm.weight'\]; unexpected keys \(1\): \['final_norm.weight'\]",
        ),
        ("resnet18", ("backbone.layer3.1.bn2.running_var", None), r"missing keys \(1\): \['layer3.1.bn2.running_var'"),
        ("resnet18", ("head.mlp.0.weight", "head.proj.weight"), r"unexpected keys \(1\): \['head.proj.weight'\]"),
        ("convnext", ("backbone.norm.bias", "backbone.head.bias"), r"unexpected keys \(1\): \['head.bias'\]"),
    ],
)
def test_a_missing_renamed_or_unlisted_key_is_named(tmp_path, arch, change, message):
    ckpt, _, _ = _adam_v2_case(arch, "stage2")
    old, new = change
    value = ckpt["teacher"].pop(old)
    if new:
        ckpt["teacher"][new] = value
    torch.save(ckpt, tmp_path / "bad.pth")
    for source in ("auto", "adam_v2"):
        with pytest.raises(CheckpointError, match=rf"\(adam_v2 layout\) does not fit .*{message}"):
            load_pretrained(tmp_path / "bad.pth", ARCHS[arch](), source=source)


def test_a_resnet_teacher_does_not_fit_a_convnext(tmp_path):
    ckpt, _, _ = _adam_v2_case("resnet18", "stage2")
    torch.save(ckpt, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"missing keys .*'downsample_layers.0.0.bias'.*unexpected keys .*'bn1"):
        load_pretrained(tmp_path / "resnet.pth", _convnext())


def test_rgb_convnext_teacher_loads_into_a_grey_encoder(tmp_path):
    torch.manual_seed(0)
    teacher = _trained(_convnext, in_channels=3)
    torch.save(adam_v2_file(teacher, _trained(_convnext, 3), CONVNEXT[3], 2, False), tmp_path / "rgb.pth")
    encoder = _convnext(in_channels=1)
    info = load_pretrained(tmp_path / "rgb.pth", encoder)
    assert info["converted"] == ["downsample_layers.0.0.weight"]
    expected = teacher["downsample_layers.0.0.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(encoder.downsample_layers[0][0].weight, expected)


def test_forced_adam_v2_on_another_layout_names_the_entries(tmp_path):
    torch.save(_trained(_resnet), tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"no teacher / model / student entry .*top-level keys: \['bn1"):
        load_pretrained(tmp_path / "tv.pth", _resnet(), source="adam_v2")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_pretrained(tmp_path / "other.pth", _resnet())


def test_a_pickled_object_is_refused(tmp_path):
    ckpt, _, _ = _adam_v2_case("convnext", "stage2")
    ckpt["args"] = Namespace(arch="convnext_base", lr=1e-3)  # an arbitrary class: weights_only refuses to build it
    torch.save(ckpt, tmp_path / "args.pth")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_pretrained(tmp_path / "args.pth", _convnext(), source="adam_v2")


def _moco_v2_extras(encoder_q: Weights, dim: int) -> Weights:
    """The query projector fc.0 / fc.2 (``--mlp``), the key encoder and the queue of a DDP MoCo-v2 wrapper."""
    return {
        "module.encoder_q.fc.0.weight": torch.randn(dim, dim), "module.encoder_q.fc.0.bias": torch.randn(dim),
        "module.encoder_q.fc.2.weight": torch.randn(4, dim), "module.encoder_q.fc.2.bias": torch.randn(4),
        **{k.replace("module.encoder_q.", "module.encoder_k.", 1): v for k, v in encoder_q.items()},
        "module.queue": torch.randn(4, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }


def adam_v1_checkpoint(encoder: Weights) -> dict:
    """``checkpoint.pth``: {epoch, arch, state_dict (the DDP MoCo wrapper), optimizer, best_loss}."""
    q = {f"module.encoder_q.{k}": v for k, v in encoder.items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "params": [0]}]}
    return {"epoch": 200, "arch": "resnet50", "state_dict": {**q, **_moco_v2_extras(q, 8)}, "optimizer": optimizer,
            "best_loss": 6.2}


def adam_v1_best(encoder: Weights) -> Weights:
    """``best_checkpoint.pth`` / ``last_checkpoint.pth``: the bare query encoder with its MLP projector."""
    q = {k.removeprefix("module.encoder_q."): v for k, v in _moco_v2_extras({}, 8).items() if "encoder_q.fc" in k}
    return {**encoder, **q}


@pytest.mark.parametrize(
    ("build", "detected", "prefix"),
    [(adam_v1_checkpoint, "moco", "module.encoder_q."), (adam_v1_best, "torchvision", "")],
    ids=["checkpoint", "best_checkpoint"],
)
def test_adam_v1_layouts_load_as_moco_or_torchvision(tmp_path, build, detected, prefix):
    torch.manual_seed(0)
    encoder = _trained(_resnet)
    ckpt = build(encoder)
    torch.save(ckpt, tmp_path / "adam_v1.pth")
    assert detect_source(load_checkpoint(tmp_path / "adam_v1.pth")) == detected
    weights = ckpt.get("state_dict", ckpt)
    dropped = sorted(set(weights) - {prefix + k for k in encoder})  # projector (+ key encoder and queue)
    assert len(dropped) == (4 + len(encoder) + 2 if prefix else 4)
    for source in ("auto", "adam_v1"):
        model = _resnet()
        info = load_pretrained(tmp_path / "adam_v1.pth", model, source=source)
        assert info == {"source": detected if source == "auto" else "adam_v1", "keys": len(encoder), "converted": [],
                        "filled": [], "dropped": dropped}
        assert all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())


def test_adam_v1_missing_or_unexpected_key_is_named(tmp_path):
    ckpt = adam_v1_checkpoint(_trained(_resnet))
    del ckpt["state_dict"]["module.encoder_q.layer2.0.downsample.1.running_mean"]
    ckpt["state_dict"]["module.encoder_q.layer5.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError,
        match=r"\(adam_v1 layout\).*missing keys \(1\): \['layer2.0.downsample.1.running_mean'\]; "
        r"unexpected keys \(1\): \['layer5.weight'\]",
    ):
        load_pretrained(tmp_path / "bad.pth", _resnet(), source="adam_v1")
