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
