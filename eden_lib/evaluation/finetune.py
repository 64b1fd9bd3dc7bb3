"""Full fine-tuning on a downstream task, through the same engine as pretraining.

A downstream network is wrapped as a :class:`Downstream` module whose ``forward(batch, generator)`` returns the
task loss, so :func:`eden_lib.engine.fit` trains it like any method (device, AMP, NaN guard).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eden_lib.data.batches import _permuted_batches
from eden_lib.engine import TrainConfig, fit, select_device


@dataclass(frozen=True)
class FinetuneConfig:
    """``transfer.finetune`` of params.yaml."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    min_steps: int = 0
    device: str = "auto"


class Downstream(nn.Module):
    """A network and its loss: ``forward(batch, generator) -> {"loss"}``; ``predict(x)`` for evaluation."""

    def __init__(self, net: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.net(batch["image"]), batch["target"])}


def finetune(
    net: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FinetuneConfig,
    seed: int,
) -> nn.Module:
    """Train ``net`` on (x, y) for ``cfg.epochs`` epochs (at least ``cfg.min_steps`` steps in all).

    Args:
        net: the downstream network (pretrained encoder + new head / decoder).
        loss: ``loss(net(x_batch), y_batch)``.
        x: inputs (N, C, *spatial); y: targets (N, ...).
        cfg: optimiser settings.
        seed: seeds the batch order (the network was initialised by the caller).
    """
    n = len(x)
    bs = min(cfg.batch_size, n)
    steps = max(math.ceil(n / bs) * cfg.epochs, cfg.min_steps)
    epochs = max(1, cfg.epochs)
    per_epoch = math.ceil(steps / epochs)

    def batches(epoch: int, generator: torch.Generator):
        for idx in _permuted_batches(n, bs, per_epoch, generator):
            yield {"image": x[idx], "target": y[idx]}

    model = Downstream(net, loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fit(model, batches, optimizer, TrainConfig(epochs=epochs, seed=seed, device=cfg.device, amp=True, verbose=False))
    return net


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor, batch: int = 256,
            device: str = "auto") -> np.ndarray:
    """``fn`` over ``x`` in evaluation mode, in batches; returns a float32 NumPy array."""
    dev = select_device(device)
    module.to(dev).eval()
    outs = [fn(x[i : i + batch].to(dev)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(outs).numpy()
