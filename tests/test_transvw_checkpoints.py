"""TransVW / Semantic Genesis PyTorch releases (``TransVW_chest_ct.pt``, ``semantic_genesis_chest_ct.pt``).

Files are built as ``pytorch/train.py`` saves them (``reference/genesis_family.md`` §3.6, §5.2): a dict with
``epoch``, ``state_dict`` (the 115 YNet3D keys), ``optimizer_state_dict``, ``num_epoch_no_improvement``,
``best_loss``, ``best_acc``; keys with or without the ``module.`` (DataParallel) and ``classficationNet.`` (sic)
prefixes the official loading recipe strips. Base width 4 except the key-list check.
"""

from __future__ import annotations

import pytest
import torch

from eden_lib.checkpoints import KEY_MAPS, CheckpointError, detect_source, load_pretrained
from eden_lib.models.unet3d import UNet3D, YNet3D

PREFIXES = ["", "module.", "classficationNet.", "module.classficationNet."]

#: fact sheet §5.2: the YNet3D head keys of the released files (C = 44)
CLC_OUT = {"clc_out.conv1.weight": (1024, 512, 3, 3, 3), "clc_out.conv1.bias": (1024,), "clc_out.bn1.weight": (1024,),
           "clc_out.bn1.bias": (1024,), "clc_out.bn1.running_mean": (1024,), "clc_out.bn1.running_var": (1024,),
           "clc_out.bn1.num_batches_tracked": (), "clc_out.fc1.weight": (44, 1024), "clc_out.fc1.bias": (44,)}


def released(prefix: str) -> tuple[dict, YNet3D]:
    torch.manual_seed(0)
    ynet = YNet3D(base_width=4, n_classes=3)
    with torch.no_grad():
        for name, buffer in ynet.named_buffers():
            buffer.copy_(torch.randint(1, 9, buffer.shape) if name.endswith("tracked") else torch.rand_like(buffer))
    state = {prefix + k: v for k, v in ynet.state_dict().items()}
    ckpt = {"epoch": 12, "state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []},
            "num_epoch_no_improvement": 3, "best_loss": 0.25, "best_acc": 0.5}
    return ckpt, ynet


def same_weights(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    theirs = source.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_full_width_key_list_matches_the_fact_sheet():
    """The 115 official YNet3D keys under every prefix: all kept for a YNet3D, the 9 of §5.2 dropped for a UNet3D."""
    with torch.device("meta"):
        ynet, unet = YNet3D(n_classes=44).state_dict(), UNet3D().state_dict()
    assert len(ynet) == 115 and len(unet) == 106
    assert {k: tuple(v.shape) for k, v in ynet.items() if k not in unet} == CLC_OUT
    for prefix in PREFIXES:
        keys = [prefix + k for k in ynet]
        expected_source = "models_genesis" if prefix == "module." else "transvw"
        assert detect_source({"state_dict": dict.fromkeys(keys)}) == expected_source
        into_ynet = [KEY_MAPS["transvw"](k, frozenset(ynet)) for k in keys]
        assert into_ynet == list(ynet)
        into_unet = {k: KEY_MAPS["transvw"](k, frozenset(unet)) for k in keys}
        assert [v for v in into_unet.values() if v is not None] == list(unet)
        assert [k for k, v in into_unet.items() if v is None] == [prefix + k for k in CLC_OUT]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_released_file_loads_strictly_into_ynet3d(tmp_path, prefix):
    ckpt, ynet = released(prefix)
    torch.save(ckpt, tmp_path / "TransVW_chest_ct.pt")
    model = YNet3D(base_width=4, n_classes=3)
    info = load_pretrained(tmp_path / "TransVW_chest_ct.pt", model, source="transvw")
    assert info == {"source": "transvw", "keys": 115, "converted": [], "filled": [], "dropped": []}
    assert same_weights(model, ynet)
    auto = YNet3D(base_width=4, n_classes=3)
    info = load_pretrained(tmp_path / "TransVW_chest_ct.pt", auto)
    # all-"module." files read as the Models Genesis layout, which strips the same prefix and is strict too
    assert info["source"] == ("models_genesis" if prefix == "module." else "transvw")
    assert same_weights(auto, ynet)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_into_a_unet3d_only_the_head_is_dropped_and_listed(tmp_path, prefix):
    ckpt, ynet = released(prefix)
    torch.save(ckpt, tmp_path / "semantic_genesis_chest_ct.pt")
    model = UNet3D(base_width=4)
    info = load_pretrained(tmp_path / "semantic_genesis_chest_ct.pt", model, source="transvw")
    assert info["keys"] == 106 and info["dropped"] == sorted(prefix + k for k in CLC_OUT)
    theirs = ynet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    if prefix == "module.":
        with pytest.raises(CheckpointError, match=r"unexpected keys \(9\): \['clc_out\..*pass source='transvw'"):
            load_pretrained(tmp_path / "semantic_genesis_chest_ct.pt", UNet3D(base_width=4))
    else:
        assert load_pretrained(tmp_path / "semantic_genesis_chest_ct.pt", UNet3D(base_width=4)) == info


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("target", ["ynet", "unet"])
def test_extra_or_missing_keys_are_named(tmp_path, prefix, target):
    make = (lambda: YNet3D(base_width=4, n_classes=3)) if target == "ynet" else (lambda: UNet3D(base_width=4))
    ckpt, _ = released(prefix)
    ckpt["state_dict"][prefix + "projection_head.0.weight"] = torch.zeros(2)  # not dropped: only clc_out is
    torch.save(ckpt, tmp_path / "extra.pt")
    message = r"\(transvw layout\).*unexpected keys \(1\): \['projection_head.0.weight'\]"
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(tmp_path / "extra.pt", make(), source="transvw")
    ckpt, _ = released(prefix)
    del ckpt["state_dict"][prefix + "down_tr256.ops.1.bn1.running_var"]
    torch.save(ckpt, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['down_tr256.ops.1.bn1.running_var'\]"):
        load_pretrained(tmp_path / "missing.pt", make(), source="transvw")


def test_a_model_of_another_variant_fails_clearly(tmp_path):
    ckpt, _ = released("classficationNet.")
    torch.save(ckpt, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(6\): \['up_tr128.up_conv.bias'"):
        load_pretrained(tmp_path / "t.pt", UNet3D(base_width=4, upsample="nearest"))
    with pytest.raises(CheckpointError, match=r"missing keys .*'clc_out.cls_fc.bias'.*shape mismatches: "
                                              r"\['clc_out.bn1.bias: checkpoint \(128,\) vs model \(64,\)'"):
        load_pretrained(tmp_path / "t.pt", YNet3D(base_width=4, n_classes=3, head="keras"))


def test_files_are_read_without_unpickling_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    ckpt, _ = released("")
    ckpt["optimizer_state_dict"] = {"state": Payload()}
    torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_pretrained(tmp_path / "evil.pt", YNet3D(base_width=4, n_classes=3))
