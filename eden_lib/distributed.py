"""The few collective operations methods need beyond DistributedDataParallel, each a no-op in a single process.

DDP averages the gradients of the main optimiser's parameters. It does not know about state a method updates
itself: MoCo's queue must hold the keys of every rank (the global batch), and DiRA's discriminator, stepped by its
own optimiser outside the DDP forward, must see gradients averaged over ranks. ``torchrun`` sets the world up; the
study's default runs with a world of one, where every function here returns its input unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Processes in the default group; 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` on every rank -> ``(world * B, ...)``, rank 0's rows first, identical on every rank.

    No gradient flows through (MoCo's keys come from the momentum encoder). Needs equal ``B`` on every rank.
    """
    world = world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks (parameters without a gradient are skipped)."""
    world = world_size()
    if world == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def ignored_names(model: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Fully qualified parameter and buffer names of ``model`` under the submodules ``prefixes``: what DDP must leave
    alone because the method synchronises it itself (e.g. ``["discriminator"]``)."""
    heads = tuple(f"{p}." for p in prefixes)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return [n for n in names if n.startswith(heads)]
