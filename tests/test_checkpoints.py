import pytest
import torch
from torch import nn

from eden_lib.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_atomic,
    save_weights,
)


def test_atomic_save_keeps_the_previous_file_when_a_write_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        save_atomic({"epoch": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_weights_round_trip_and_strict_errors(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    info = save_weights(net, tmp_path / "w.pt", method="m")
    assert info.is_file()
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert load_weights(other, tmp_path / "w.pt") == {"method": "m"}
    assert torch.equal(other[0].weight, net[0].weight)
    wider = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*'0.weight: checkpoint \(4, 3\) vs model \(5, 3\)"):
        load_weights(wider, tmp_path / "w.pt")
    deeper = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): \['3.bias', '3.weight'\]"):
        load_weights(deeper, tmp_path / "w.pt")


def test_unsafe_or_missing_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_official_models_genesis_layout_loads_strictly(tmp_path):
    from eden_lib.checkpoints import load_pretrained
    from eden_lib.models.unet3d import UNet3D, YNet3D

    torch.manual_seed(0)
    released = UNet3D(base_width=4)
    # the released Genesis_Chest_CT.pt: a dict with "state_dict", keys prefixed "module." (nn.DataParallel)
    torch.save({"state_dict": {f"module.{k}": v for k, v in released.state_dict().items()}}, tmp_path / "g.pt")
    ours = UNet3D(base_width=4)
    info = load_pretrained(tmp_path / "g.pt", ours)
    assert info == {"source": "models_genesis", "keys": len(released.state_dict()), "converted": [], "filled": [],
                    "dropped": []}
    assert all(torch.equal(a, b) for a, b in zip(released.state_dict().values(), ours.state_dict().values()))
    # a TransVW / Semantic Genesis YNet3D checkpoint has the classification head too: named, never dropped silently
    ynet = YNet3D(base_width=4, n_classes=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ynet.state_dict().items()}}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys .*clc_out\."):
        load_pretrained(tmp_path / "y.pt", UNet3D(base_width=4))
    with pytest.raises(CheckpointError, match=r"shape mismatches"):
        load_pretrained(tmp_path / "g.pt", UNet3D(base_width=8))


def test_unknown_layout_is_named(tmp_path):
    from eden_lib.checkpoints import load_pretrained

    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint layout .*'model'"):
        load_pretrained(tmp_path / "x.pt", nn.Linear(2, 2))
