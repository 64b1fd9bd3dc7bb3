"""MoCo-v2: momentum contrast with a queue of negatives (He et al., CVPR 2020; Chen et al., 2020, arXiv:2003.04297).

A query encoder (the study ResNet + MLP projector 2048-2048-128) and a momentum key encoder (an EMA of it, m 0.999,
no gradients); the loss is InfoNCE of each query against its key and a FIFO queue of earlier keys (65,536 x 128,
temperature 0.2 as in MoCo-v2 and DiRA). The queue and its pointer are buffers, so they are checkpointed. MoCo-v2
is asymmetric: view 1 is the query, view 2 the key (one encoder pass each).

Shuffle-BN, single process: the papers compute batch-norm statistics per GPU and shuffle the keys across GPUs, so
a query and its key never share batch statistics. Here the query encoder runs over ``bn_splits`` sub-batches in
natural order and the key encoder over ``bn_splits`` sub-batches of a random permutation (then un-shuffled), so each
sees per-sub-batch statistics, as ``bn_splits`` GPUs would (MoCo: 8 GPUs x 32 images; DiRA: 4 x 64). Running
statistics are updated once per sub-batch. Under DDP each rank keeps emulating its own splits, and the keys of all
ranks are gathered before they enter the queue (as the released code does), so the queue is the same everywhere
and holds ``world x batch_size`` keys per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.distributed import gather_rows, world_size
from eden_lib.losses import InfoNCELoss, in_batch_info_nce
from eden_lib.methods.base import MethodConfigError
from eden_lib.methods.branches.two_view import Discriminative, TwoViewConfig
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.ema import momentum_copy, momentum_update
from eden_lib.models.heads import moco_v2_projector


@dataclass(frozen=True)
class MoCoV2Config(TwoViewConfig):
    """``methods.moco_v2`` (paper defaults; SGD lr 0.03, momentum 0.9, weight decay 1e-4, batch 256, cosine).

    Attributes:
        queue_size: negatives kept (paper 65,536); a multiple of ``batch_size`` (as in the released code), and at
            most the keys the run enqueues (checked when the pipeline announces the run's length).
        temperature: tau (MoCo-v2 / DiRA 0.2).
        key_momentum: EMA momentum of the key encoder (0.999).
        bn_splits: sub-batches with their own batch-norm statistics (the papers' GPUs; MoCo 8, DiRA 4).
        moco_hidden, moco_dim: projector widths (2048, 128).
    """

    queue_size: int = 65536
    temperature: float = 0.2
    key_momentum: float = 0.999
    bn_splits: int = 8
    moco_hidden: int = 2048
    moco_dim: int = 128

    def validate_branch(self, name: str) -> None:
        for key in ("queue_size", "temperature", "bn_splits", "moco_hidden", "moco_dim"):
            if getattr(self, key) <= 0:
                raise self.fail(name, key, "> 0")
        if self.queue_size % self.batch_size:
            raise self.fail(name, "queue_size", f"a multiple of batch_size ({self.batch_size}): whole batches enqueue")
        if not 0 <= self.key_momentum <= 1:
            raise self.fail(name, "key_momentum", "a value in [0, 1]")
        if self.batch_size % self.bn_splits or self.batch_size // self.bn_splits < 2:
            raise self.fail(name, "bn_splits", f"a divisor of batch_size ({self.batch_size}) leaving >= 2 samples "
                                               f"per split")


def split_forward(net: nn.Module, x: torch.Tensor, splits: int, order: torch.Tensor) -> torch.Tensor:
    """``net`` over ``splits`` sub-batches of ``x[order]`` (per-sub-batch batch norm), returned in ``x``'s order.

    Args:
        x: ``(B, ...)``; ``order``: a permutation ``(B,)``.
    Returns:
        ``(B, ...)``: row i of the output belongs to ``x[i]``.
    """
    out = torch.cat([net(chunk) for chunk in x[order].chunk(splits)])
    return out[order.argsort()]


class MoCoV2Branch(Discriminative):
    """Query encoder + projector, their momentum copies, the queue ``(K, D)`` of keys and its pointer.

    Args:
        encoder: the query encoder.
        cfg: a config with the :class:`MoCoV2Config` fields (also CAiD / DiRA's).
    """

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, encoder: ResNetEncoder, cfg: Any) -> None:
        super().__init__(encoder)
        self.cfg = cfg
        self.projector = moco_v2_projector(encoder.out_dim, cfg.moco_hidden, cfg.moco_dim)
        self.key_encoder = momentum_copy(encoder)
        self.key_projector = momentum_copy(self.projector)
        self.criterion = InfoNCELoss(cfg.temperature)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.moco_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def set_total_steps(self, n: int) -> None:
        """Refuse a queue the run cannot fill: its random initial entries would stay negatives to the end.
        ``n``: optimizer steps of this process (every rank enqueues the keys of all ranks)."""
        world = world_size()
        keys = n * self.cfg.batch_size * world
        if self.cfg.queue_size > keys:
            ranks = f" x {world} ranks" if world > 1 else ""
            raise MethodConfigError(f"queue_size = {self.cfg.queue_size} exceeds the {keys} keys this run enqueues "
                                    f"({n} steps x batch_size {self.cfg.batch_size}{ranks}); lower queue_size")

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Query feature maps over ``bn_splits`` sub-batches in natural order."""
        chunks = [self.encoder.stages(c) for c in x.chunk(self.cfg.bn_splits)]
        return [torch.cat(level) for level in zip(*chunks)]

    @torch.no_grad()
    def keys(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Momentum keys ``(B, D)``, L2-normalised, over randomly composed sub-batches (shuffle-BN)."""
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        key_net = nn.Sequential(self.key_encoder, self.key_projector)
        return F.normalize(split_forward(key_net, x, self.cfg.bn_splits, order), dim=1)

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """FIFO: overwrite the B oldest keys (from the pointer, wrapping) with ``k`` ``(B, D)``; advance the pointer."""
        size = self.queue.shape[0]
        rows = (self.queue_ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.queue[rows] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + k.shape[0]) % size)

    def loss(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        generator: torch.Generator,
        stages1: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """InfoNCE against the queue, which then takes the keys; in eval mode (monitoring) the other keys of the
        batch are the negatives and the queue is left as it is."""
        q = F.normalize(self.projected_view1(view1, stages1), dim=1)
        k = self.keys(view2, generator)
        if not self.training:
            return {"loss_dis": in_batch_info_nce(q, k, self.cfg.temperature)}
        loss = self.criterion(q, k, self.queue.clone())
        self.enqueue(gather_rows(k))
        return {"loss_dis": loss}

    def after_step(self) -> None:
        momentum_update(self.key_encoder, self.encoder, self.cfg.key_momentum)
        momentum_update(self.key_projector, self.projector, self.cfg.key_momentum)

