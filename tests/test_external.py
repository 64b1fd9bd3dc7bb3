"""External initialisations: the ``external`` method and continual pretraining (``pretrain.init``).

Every file is made here with the released key names and dict structure of its layout (dira_caid_transfer_alice_cadpe.md
3.2, 1.8; adam_ark.md) at the ResNet-50 key structure with tiny widths, then loaded into the study network of the same
geometry through the method or the pretraining stage.
"""

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib import paths
from eden_lib.checkpoints import CheckpointError, load_weights, save_atomic
from eden_lib.config import ConfigError, load_params
from eden_lib.methods import BuildContext, MethodConfigError, build_method
from eden_lib.methods.networks import encoder_2d
from eden_lib.models.unet3d import UNet3D, YNet3D
from eden_lib.pipeline import pretrain
from tests.test_checkpoint_layouts import smp_unet_resnet50, torchvision_resnet50

Weights = dict[str, torch.Tensor]

WIDTHS = [4, 4, 8, 8]  # ResNet-50 (Bottleneck, expansion 4): stage outputs 16, 16, 32, 32
OUT = 4 * WIDTHS[-1]
DECODER = (8, 8, 4, 4, 4)
CTX = {"backbone_2d": {"name": "resnet50", "widths": WIDTHS}, "unet2d_decoder": DECODER, "unet3d_width": 4,
       "image_size": 32}
TINY_MOCO = {"batch_size": 4, "lr": 0.05, "queue_size": 4, "bn_splits": 2, "moco_hidden": 16, "moco_dim": 8}
TINY_DINO = {"batch_size": 4, "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "n_local": 2, "base_lr": 0.5}


def ctx(dims: int = 2) -> BuildContext:
    return BuildContext(spatial_dims=dims, n_labels=3 if dims == 2 else 1, **CTX)


def backbone(seed: int = 0) -> Weights:
    """A trained RGB ResNet-50 backbone under torchvision's names, no ``fc``: convolutions He-scaled (activations
    stay finite), batch-norm affine and running statistics drawn around 1 / 0, counters 5."""
    g = torch.Generator().manual_seed(seed)

    def draw(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key.endswith("num_batches_tracked"):
            return torch.tensor(5)
        noise = torch.randn(shape, generator=g)
        if len(shape) == 4:
            return noise * (2 / (shape[1] * shape[2] * shape[3])) ** 0.5
        if key.endswith(("weight", "running_var")):
            return 1 + 0.2 * noise.abs()
        return 0.1 * noise

    shapes = torchvision_resnet50(tuple(WIDTHS), in_channels=3)
    return {k: draw(k, s) for k, s in shapes.items() if not k.startswith("fc.")}


def grey(weights: Weights) -> Weights:
    """What the study's one-channel encoder holds after loading ``weights``: the RGB stem summed."""
    return {**weights, "conv1.weight": weights["conv1.weight"].sum(dim=1, keepdim=True)}


def _mlp(prefix: str, dims: list[int]) -> Weights:
    """Linear layers ``<prefix>.{0,2,...}`` mapping ``dims[i] -> dims[i + 1]``."""
    out = {}
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        out[f"{prefix}.{2 * i}.weight"], out[f"{prefix}.{2 * i}.bias"] = torch.randn(b, a), torch.randn(b)
    return out


def _optimizer() -> dict:
    return {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}


def _moco_wrapper(query: Weights, prefix: str) -> Weights:
    """A DDP MoCo wrapper: ``module.encoder_q.<prefix>*``, its MLP ``fc``, the key network and the queue."""
    q = {f"module.encoder_q.{prefix}{k}": v for k, v in query.items()}
    k = {key.replace("encoder_q", "encoder_k", 1): torch.randn_like(v) if v.is_floating_point() else v
         for key, v in q.items()}
    fc = _mlp("module.encoder_q.fc", [OUT, OUT, 8])
    return {**q, **fc, **k, "module.queue": torch.randn(8, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}


def imagenet_torchvision(bb: Weights) -> dict:
    """torchvision's ``resnet50-*.pth``: a bare state dict with the 1000-class ``fc``."""
    return {**bb, "fc.weight": torch.randn(1000, OUT), "fc.bias": torch.randn(1000)}


def inat2021(bb: Weights) -> dict:
    """visipedia/newt's iNat2021 supervised ResNet-50: ``state_dict`` (torchvision names, a 10,000-class ``fc``) in an
    ImageNet-example training checkpoint."""
    state = {**bb, "fc.weight": torch.randn(10000, OUT), "fc.bias": torch.randn(10000)}
    return {"epoch": 100, "arch": "resnet50", "state_dict": state, "best_acc1": torch.tensor(70.0),
            "optimizer": _optimizer()}


def backbone_only(bb: Weights) -> dict:
    """Barlow Twins' ``resnet50.pth`` and DINO's ResNet-50 backbone release: torchvision names without ``fc``."""
    return dict(bb)


def moco_v2(bb: Weights) -> dict:
    """FAIR's ``moco_v2_800ep_pretrain.pth.tar`` (also MoCo-v1, PCL, Adam-v1's ``checkpoint.pth``)."""
    return {"epoch": 800, "arch": "resnet50", "state_dict": _moco_wrapper(bb, ""), "optimizer": _optimizer()}


def adam_v1_best(bb: Weights) -> dict:
    """Adam-v1's ``best_checkpoint.pth``: the bare query encoder with its MLP projector ``fc.0`` / ``fc.2``."""
    return {**bb, **_mlp("fc", [OUT, OUT, 8])}


def adam_v2(bb: Weights) -> dict:
    """Adam-v2's stage-1 ``checkpoint.pth``: DDP student and teacher, each ``backbone.*`` + the DINO ``head.*``."""
    head = {**_mlp("head.mlp", [OUT, 16, 8]), "head.last_layer.weight_g": torch.ones(16, 1),
            "head.last_layer.weight_v": torch.randn(16, 8)}
    student = {f"module.backbone.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in bb.items()}
    return {"student": {**student, **{f"module.{k}": v for k, v in head.items()}},
            "teacher": {**{f"backbone.{k}": v for k, v in bb.items()}, **head},
            "optimizer": _optimizer(), "epoch": 264, "localizability_loss": {"center": torch.zeros(1, 16)}}


def _smp_unet(bb: Weights) -> Weights:
    """smp ``Unet('resnet50')`` around ``bb``: ``encoder.*``, ``decoder.blocks.*``, ``segmentation_head.*``."""
    shapes = smp_unet_resnet50(tuple(WIDTHS), DECODER, in_channels=3)
    rest = {k: torch.tensor(5) if k.endswith("tracked") else torch.randn(s)
            for k, s in shapes.items() if not k.startswith("encoder.")}
    return {**{f"encoder.{k}": v for k, v in bb.items()}, **rest}


def dira_unet(bb: Weights) -> dict:
    """DiRA / CAiD ``best_checkpoint.pth`` / ``unet.pth``: the raw smp U-Net state dict."""
    return _smp_unet(bb)


def dira_moco_wrapper(bb: Weights) -> dict:
    """DiRA's full ``checkpoint.pth``: the DDP MoCo wrapper around the U-Net (``module.encoder_q.backbone.*``)."""
    return {"epoch": 3, "arch": "resnet50", "state_dict": _moco_wrapper(_smp_unet(bb), "backbone."),
            "optimizer": _optimizer(), "best_loss": 0.5}


def ark(bb: Weights) -> dict:
    """An Ark teacher in the release's layout: bare backbone keys, ``projector.*``, ``omni_heads.*``, timm's head."""
    heads = {f"omni_heads.{i}.{p}": torch.randn((n, 16) if p == "weight" else (n,))
             for i, n in enumerate((3, 2)) for p in ("weight", "bias")}
    return {"teacher": {**bb, **_mlp("projector", [OUT, 16, 16]), **heads, "head.weight": torch.randn(1000, OUT),
                        "head.bias": torch.randn(1000)}, "epoch": 200}


def eden(bb: Weights) -> dict:
    """This study's own export (:func:`save_weights`): ``{"state_dict", "info"}`` of a one-channel encoder."""
    return {"state_dict": grey(bb), "info": {"method": "moco_v2", "spatial_dims": 2, "export": "encoder"}}


#: layout -> (file maker, ``methods.external.source``, the layout load_pretrained reports)
LAYOUTS_2D: dict[str, tuple[Callable[[Weights], dict], str, str]] = {
    "imagenet_torchvision": (imagenet_torchvision, "auto", "torchvision"),
    "inat2021": (inat2021, "auto", "torchvision"),
    "barlow_twins_dino_backbone": (backbone_only, "auto", "torchvision"),
    "moco_v2": (moco_v2, "auto", "moco"),
    "adam_v1_checkpoint": (moco_v2, "adam_v1", "adam_v1"),
    "adam_v1_best": (adam_v1_best, "adam_v1", "adam_v1"),
    "adam_v2": (adam_v2, "auto", "adam_v2"),
    "dira_unet": (dira_unet, "auto", "dira_unet"),
    "dira_moco_wrapper": (dira_moco_wrapper, "auto", "dira_moco_wrapper"),
    "ark": (ark, "auto", "ark"),
    "eden": (eden, "auto", "eden"),
}


def assert_holds(module: torch.nn.Module, expected: Weights) -> None:
    state = module.state_dict()
    assert state.keys() == expected.keys()
    for k, v in state.items():
        assert torch.equal(v, expected[k]), k


def external(path: Path, dims: int = 2, **block):
    key = f"path_{dims}d"
    return build_method("external", {"dims": [dims], key: str(path), **block}, ctx(dims))


@pytest.mark.parametrize("layout", sorted(LAYOUTS_2D))
def test_each_2d_layout_loads_strictly_into_the_study_encoder(tmp_path, layout):
    make, source, reported = LAYOUTS_2D[layout]
    bb = backbone()
    save_atomic(make(bb), tmp_path / "weights.pth")
    method = external(tmp_path / "weights.pth", source=source)
    assert method.loaded["source"] == reported and method.loaded["keys"] == len(bb)
    (name, encoder), = method.exports().items()
    assert name == "encoder"
    assert_holds(encoder, grey(bb))


@pytest.mark.parametrize(("prefix", "source", "reported"), [
    ("module.", "auto", "models_genesis"),  # Genesis_Chest_CT.pt (nn.DataParallel)
    ("module.classficationNet.", "transvw", "transvw"),  # TransVW_chest_ct.pt: YNet3D, its clc_out head dropped
])
def test_each_3d_layout_loads_strictly_into_the_study_unet3d(tmp_path, prefix, source, reported):
    torch.manual_seed(0)
    net = UNet3D(base_width=4) if reported == "models_genesis" else YNet3D(base_width=4, n_classes=5)
    save_atomic({"epoch": 12, "state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, tmp_path / "g.pt")
    method = external(tmp_path / "g.pt", dims=3, source=source)
    assert method.loaded["source"] == reported
    unet = method.exports()["unet3d"]
    assert_holds(unet, {k: v for k, v in net.state_dict().items() if not k.startswith("clc_out.")})


def test_broken_files_fail_naming_the_parameter_the_file_and_the_key(tmp_path):
    state = imagenet_torchvision(backbone())
    del state["layer3.1.conv2.weight"]
    save_atomic(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"methods\.external\.path_2d: .*missing\.pth \(torchvision layout\) "
                                              r"does not fit .*missing keys \(1\): \['layer3\.1\.conv2\.weight'\]"):
        external(tmp_path / "missing.pth")
    wide = {k: torch.zeros(s) for k, s in torchvision_resnet50((4, 4, 8, 16), in_channels=3).items()}
    save_atomic(wide, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches: \['layer4\.0\.bn1\.bias: checkpoint \(16,\) vs "
                                              r"model \(8,\)"):
        external(tmp_path / "wide.pth")
    save_atomic(imagenet_torchvision(backbone()), tmp_path / "resnet50.pth")
    resnet18 = BuildContext(**{**CTX, "backbone_2d": {"name": "resnet18", "widths": WIDTHS}}, spatial_dims=2,
                            n_labels=3)
    with pytest.raises(CheckpointError, match=r"unexpected keys .*\['layer1\.0\.bn3\.bias'"):  # ResNet-18 study
        build_method("external", {"path_2d": str(tmp_path / "resnet50.pth")}, resnet18)
    save_atomic(moco_v2(backbone()), tmp_path / "moco.pth")
    with pytest.raises(CheckpointError, match=r"\(torchvision layout\).*unexpected keys .*'module\.encoder_k\."):
        external(tmp_path / "moco.pth", source="torchvision")  # a forced wrong layout


def test_a_hostile_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "executed"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {"conv1.weight": Hostile()}}, tmp_path / "hostile.pth")
    with pytest.raises(CheckpointError, match=r"methods\.external\.path_2d: cannot read checkpoint .*hostile\.pth"):
        external(tmp_path / "hostile.pth")
    assert not marker.exists()


def test_unset_or_missing_paths_and_bad_values_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    with pytest.raises(MethodConfigError, match=r"methods\.external\.path_2d is unset"):
        build_method("external", {}, ctx(2))
    with pytest.raises(MethodConfigError, match=r"methods\.external\.path_3d = 'w/g\.pt': no such file \(.*w/g\.pt\)"):
        build_method("external", {"dims": [3], "path_3d": "w/g.pt"}, ctx(3))
    (tmp_path / "w").mkdir()
    save_atomic(moco_v2(backbone()), tmp_path / "w" / "moco.pth")  # relative paths: from the repository root
    assert build_method("external", {"path_2d": "w/moco.pth"}, ctx(2)).loaded["source"] == "moco"
    with pytest.raises(MethodConfigError, match=r"methods\.external\.source = 'timm'; allowed: auto, adam_v1"):
        build_method("external", {"path_2d": "w/moco.pth", "source": "timm"}, ctx(2))
    with pytest.raises(MethodConfigError, match=r"methods\.external\.dims = \[4\]"):
        build_method("external", {"dims": [4]}, ctx(2))
    with pytest.raises(MethodConfigError, match="not configured for 3D"):
        build_method("external", {"path_2d": "w/moco.pth"}, ctx(3))


# --- the pipeline: a scratch EDEN_ROOT with a tiny prepared CXR set ---------------------------------------------


def study(tmp_path: Path, monkeypatch, methods: dict, init: dict | None = None) -> dict:
    """A tiny configuration rooted at ``tmp_path`` with 12 prepared 32 x 32 radiographs (3 landmarks each)."""
    from eden_lib.data.prepared import write_cxr

    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    n = 12
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    landmarks = np.full((n, 3, 2), 16.0)
    meta = pd.DataFrame({"patient_id": np.arange(n), "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2})
    write_cxr(paths.prepared_dir("cxr"), images, np.zeros((n, 2, 32, 32)), landmarks, np.zeros((n, 3)), meta, {})
    return {"profile": "test", "seed": 0,
            "data": {"image_size": 32, "cxr": {"labels": ["a", "b", "c"], "val_fraction": 0.2}},
            "pretrain": {"device": "cpu", "amp": False, "image_passes_2d": 16, "volume_passes_3d": 1, "epochs": 1,
                         "monitor_samples": 0, "backbone_2d": {"name": "resnet50", "widths": WIDTHS},
                         "unet2d_decoder": list(DECODER), "unet3d_width": 4, "init": init or {}},
            "methods": methods, "embedding": {"n_patients": 2, "patch_size": 16}}


def test_pretrain_stage_exports_the_file_and_transfer_extracts_features(tmp_path, monkeypatch):
    from eden_lib.data import prepared
    from eden_lib.pipeline.transfer import extract_features

    bb = backbone()
    save_atomic(imagenet_torchvision(bb), tmp_path / "resnet50.pth")
    cfg = study(tmp_path, monkeypatch, {"external": {"path_2d": "resnet50.pth"}})
    result = pretrain.pretrain_dims(cfg, "external", 2)
    assert result["complete"] and result["history"] == [] and result["passes"] == 0
    exported = encoder_2d(ctx())
    assert load_weights(exported, paths.models_dir("external") / "encoder.pt")["method"] == "external"
    assert_holds(exported, grey(bb))
    assert not (paths.models_dir("external") / "unet3d.pt").exists()
    cxr = prepared.load_cxr()
    x = torch.from_numpy(np.asarray(cxr.images, dtype=np.float32) / 255).unsqueeze(1)
    feats = extract_features(cfg, "external", x, cxr, None)
    exported.eval()
    with torch.no_grad():
        expected = exported(x).numpy()
    assert feats["cxr"].shape == (12, OUT) and np.allclose(feats["cxr"], expected, atol=1e-5)
    assert feats["landmark"].shape == (2 * 3, OUT) and np.isfinite(feats["landmark"]).all()


def test_fingerprint_follows_the_bytes_of_the_files_a_run_starts_from(tmp_path, monkeypatch):
    save_atomic(imagenet_torchvision(backbone(0)), tmp_path / "a.pth")
    cfg = study(tmp_path, monkeypatch, {"external": {"path_2d": "a.pth"}, "moco_v2": TINY_MOCO, "dino": TINY_DINO},
                init={"moco_v2": {"path": "a.pth", "source": "torchvision"}})
    before = {m: pretrain.fingerprint(cfg, m, 2) for m in ("external", "moco_v2", "dino")}
    assert pretrain.fingerprint(cfg, "moco_v2", 2) == before["moco_v2"]
    save_atomic(imagenet_torchvision(backbone(1)), tmp_path / "a.pth")  # the same path, other weights
    after = {m: pretrain.fingerprint(cfg, m, 2) for m in ("external", "moco_v2", "dino")}
    assert after["external"] != before["external"] and after["moco_v2"] != before["moco_v2"]
    assert after["dino"] == before["dino"]  # another method's init entry is not part of dino's run
    cfg["pretrain"]["init"] = {}
    assert pretrain.fingerprint(cfg, "moco_v2", 2) != after["moco_v2"]


def _record_fit(monkeypatch, seen: dict) -> None:
    """Replace the engine's ``fit`` by one that records the method it is handed (step 0) and completes at once."""
    import eden_lib.engine

    def fit(method, factory, optimizer, cfg, scheduler=None, steps_per_epoch=1):
        seen["method"], seen["fingerprint"] = method, cfg.fingerprint
        return [{"epoch": e, "loss": 0.0, "lr": 0.0, "seconds": 0.0} for e in range(cfg.epochs)]

    monkeypatch.setattr(eden_lib.engine, "fit", fit)


#: method -> (block, the online encoder and the copies that must start from the file, at step 0)
CONTINUAL: dict[str, tuple[dict, Callable, list[Callable]]] = {
    "moco_v2": (TINY_MOCO, lambda m: m.discriminative.encoder, [lambda m: m.discriminative.key_encoder]),
    "dino": (TINY_DINO, lambda m: m.student.encoder, [lambda m: m.teacher.encoder]),
    "adam_v2": ({**TINY_DINO, "warmup_fraction": 0.0}, lambda m: m.student.encoder, [lambda m: m.teacher.encoder]),
}


@pytest.mark.parametrize("name", sorted(CONTINUAL))
def test_continual_pretraining_starts_online_and_momentum_networks_from_the_file(tmp_path, monkeypatch, name):
    block, online, copies = CONTINUAL[name]
    bb = backbone()
    save_atomic(moco_v2(bb), tmp_path / "moco.pth")
    cfg = study(tmp_path, monkeypatch, {name: block}, init={name: {"path": "moco.pth"}})
    seen: dict = {}
    _record_fit(monkeypatch, seen)
    result = pretrain.pretrain_dims(cfg, name, 2)
    method = seen["method"]
    for module in (online(method), *(c(method) for c in copies)):
        assert_holds(module, grey(bb))
    assert result["init"]["source"] == "moco" and len(result["init"]["synchronised"]) == len(copies)
    first = seen["fingerprint"]
    assert first == pretrain.fingerprint(cfg, name, 2)
    del cfg["pretrain"]["init"][name]  # the same run without the file: random weights, another fingerprint
    pretrain.pretrain_dims(cfg, name, 2)
    assert not torch.equal(online(seen["method"]).conv1.weight, grey(bb)["conv1.weight"])
    assert seen["fingerprint"] != first


def test_a_missing_or_unfitting_init_file_fails_naming_the_parameter(tmp_path, monkeypatch):
    cfg = study(tmp_path, monkeypatch, {"dino": TINY_DINO}, init={"dino": {"path": "none.pth"}})
    with pytest.raises(MethodConfigError, match=r"pretrain\.init\.dino\.path = 'none\.pth': no such file"):
        pretrain.pretrain_dims(cfg, "dino", 2)
    genesis = {"state_dict": {f"module.{k}": v for k, v in UNet3D(base_width=4).state_dict().items()}}
    save_atomic(genesis, tmp_path / "none.pth")  # a Models Genesis UNet3D for a 2D encoder
    with pytest.raises(CheckpointError, match=r"pretrain\.init\.dino\.path: .*none\.pth \(models_genesis layout\) "
                                              r"does not fit ResNetEncoder: missing keys"):
        pretrain.pretrain_dims(cfg, "dino", 2)


def test_continual_moco_v2_trains_on_from_the_file(tmp_path, monkeypatch):
    """A real one-step run from the file: the exported encoder moved off the file's weights, but only by one step."""
    bb = backbone()
    save_atomic(imagenet_torchvision(bb), tmp_path / "resnet50.pth")
    cfg = study(tmp_path, monkeypatch, {"moco_v2": TINY_MOCO}, init={"moco_v2": {"path": "resnet50.pth"}})
    cfg["pretrain"]["image_passes_2d"] = 8  # one step of 4 renders x 2 views
    result = pretrain.pretrain_dims(cfg, "moco_v2", 2)
    assert result["complete"] and len(result["history"]) == 1
    exported = encoder_2d(ctx())
    load_weights(exported, paths.models_dir("moco_v2") / "encoder.pt")
    start = grey(bb)
    moved = [k for k, v in exported.state_dict().items() if not torch.equal(v, start[k])]
    assert "layer1.0.conv1.weight" in moved
    # the step started from the file: a single SGD step leaves the weights close to it, a random start would not
    assert torch.allclose(exported.layer4[0].conv1.weight, start["layer4.0.conv1.weight"], atol=0.1)


def test_pretrain_init_is_validated_with_clear_messages():
    ok = load_params(profile="smoke", overrides={"pretrain.init.moco_v2": {"path": "w/moco.pth"}})
    assert ok["pretrain"]["init"] == {"moco_v2": {"path": "w/moco.pth"}}
    cases = [
        ({"pretrain.init.simclr": {"path": "x.pt"}}, r"'pretrain\.init\.simclr' names no method; allowed: .*'ark'"),
        ({"pretrain.init.moco_v2": {"path": "x.pt", "weights": 1}},
         r"'pretrain\.init\.moco_v2' has unknown keys \['weights'\]; allowed: \['path', 'source', 'dims'\]"),
        ({"pretrain.init.moco_v2": {"source": "moco"}}, r"'pretrain\.init\.moco_v2\.path' = None"),
        ({"pretrain.init.moco_v2": {"path": "x.pt", "source": "timm"}},
         r"'pretrain\.init\.moco_v2\.source' = 'timm'; allowed: 'auto', 'adam_v1'"),
        ({"pretrain.init.moco_v2": {"path": "x.pt", "dims": [3]}},
         r"'pretrain\.init\.moco_v2\.dims' = \[3\]; methods\.moco_v2\.dims is \[2\]"),
        ({"pretrain.init.models_genesis": {"path": "x.pt"}},
         r"models_genesis pretrains \[2, 3\].*set 'pretrain\.init\.models_genesis\.dims'"),
        ({"pretrain.init.scratch": {"path": "x.pt"}}, r"scratch does not train.*methods\.external\.path_2d"),
        ({"pretrain.init": {"moco_v2": "x.pt"}}, r"'pretrain\.init\.moco_v2' = 'x\.pt'; expected a mapping"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_params(profile="smoke", overrides=overrides)
    cfg = load_params(profile="smoke", overrides={"pretrain.init.models_genesis": {"path": "g.pt", "dims": [3]}})
    assert pretrain.init_entry(cfg, "models_genesis", 3) is not None
    assert pretrain.init_entry(cfg, "models_genesis", 2) is None
