"""Collectives under a real two-process gloo group (torch.multiprocessing): MoCo's queue gathers the keys of both
ranks, DiRA's discriminator (outside DDP) stays identical on both ranks through the engine's DDP loop."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from eden_lib.distributed import average_gradients, gather_rows, ignored_names, world_size
from eden_lib.engine import TrainConfig, fit
from eden_lib.methods import BuildContext, build_method

CTX = BuildContext(spatial_dims=2, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                   unet2d_decoder=(16, 8, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=32)
MOCO = {"batch_size": 4, "lr": 0.05, "queue_size": 16, "bn_splits": 2, "moco_hidden": 32, "moco_dim": 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _renders(seed: int) -> dict:
    return {"image": torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(seed))}


def _collectives(rank: int, out: str) -> dict:
    x = torch.full((2, 3), float(rank))
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.full((2,), float(rank + 1))
    average_gradients([p])
    torch.manual_seed(0)
    moco = build_method("moco_v2", MOCO, CTX)
    moco.set_total_steps(2)  # 2 steps x 4 keys x 2 ranks = the queue of 16
    moco(_renders(rank), torch.Generator().manual_seed(rank))
    return {"world": world_size(), "gathered": gather_rows(x), "grad": p.grad,
            "queue": moco.discriminative.queue, "ptr": moco.discriminative.queue_ptr}


def _dira(rank: int, out: str) -> dict:
    torch.manual_seed(0)
    dira = build_method("dira", {**MOCO, "d_widths": [8, 8, 8, 8], "warmup_fraction": 0.0}, CTX)
    dira.set_total_steps(2)
    d_before = [p.clone() for p in dira.discriminator.parameters()]

    def batches(epoch, generator):
        for step in range(4):  # rank r takes steps r, r + 2: different images on each rank
            yield _renders(10 * epoch + step)

    history = fit(dira, batches, dira.configure_optimizer(), TrainConfig(epochs=1, device="cpu", verbose=False),
                  steps_per_epoch=4)
    return {"d": [p.detach() for p in dira.discriminator.parameters()], "d_before": d_before,
            "g": [p.detach() for p in dira.discriminative.encoder.parameters()], "adv": history[0]["loss_adv"]}


def _worker(rank: int, world: int, port: int, task: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save({"collectives": _collectives, "dira": _dira}[task](rank, out), f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(task: str, tmp_path) -> list[dict]:
    mp.spawn(_worker, args=(2, _free_port(), task, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]


def test_single_process_calls_are_identities():
    x = torch.randn(3, 2)
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    average_gradients([p])
    assert world_size() == 1 and gather_rows(x) is x and torch.equal(p.grad, torch.ones(2))


def test_ignored_names_cover_a_submodule_parameters_and_buffers():
    torch.manual_seed(0)
    dira = build_method("dira", {**MOCO, "d_widths": [8, 8, 8, 8]}, CTX)
    names = ignored_names(dira, ["discriminator"])
    assert names and all(n.startswith("discriminator.") for n in names)
    assert len(names) == len(list(dira.discriminator.parameters())) + len(list(dira.discriminator.buffers()))


def test_moco_queue_holds_the_keys_of_every_rank(tmp_path):
    r0, r1 = _spawn("collectives", tmp_path)
    assert r0["world"] == 2
    assert torch.equal(r0["gathered"], torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))
    assert torch.equal(r0["grad"], torch.full((2,), 1.5)) and torch.equal(r1["grad"], r0["grad"])
    assert int(r0["ptr"]) == int(r1["ptr"]) == 8  # 4 keys of each rank
    assert torch.equal(r0["queue"], r1["queue"])
    assert not torch.equal(r0["queue"][:4], r0["queue"][4:8])  # rank 0's keys, then rank 1's


def test_dira_discriminator_stays_in_sync_under_ddp(tmp_path):
    r0, r1 = _spawn("dira", tmp_path)
    assert r0["adv"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(r0["d"], r0["d_before"]))  # it trained
    assert all(torch.equal(a, b) for a, b in zip(r0["d"], r1["d"]))  # the same steps on both ranks
    assert all(torch.equal(a, b) for a, b in zip(r0["g"], r1["g"]))  # DDP kept the generator in sync
