"""Full fine-tuning on a downstream task, through the same engine as pretraining.

A downstream network is wrapped as a :class:`Downstream` module whose ``forward(batch, generator)`` returns the
task loss, so :func:`eden_lib.engine.fit` trains it like any method (device, AMP, NaN guard). With a
:class:`Validation`, the run is scored on held-out samples at ``evaluations`` evenly spaced points (the validation
curve), stops early after ``patience`` points without improvement, and ends with the weights of the best point (the
transfer-learning benchmark's protocol, dira_caid_transfer_alice_cadpe.md §3).

``FinetuneConfig.freeze_stages = k`` freezes the first k of the 2D encoder's five stages (stem, layer1 ... layer4, as
:meth:`~eden_lib.models.backbones.ResNetEncoder.stages` returns their maps) for CAiD's transfer ablation
(dira_caid_transfer_alice_cadpe.md §2.3 (ii), stage ``separability``): :func:`freeze_stages`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eden_lib.data.batches import _permuted_batches
from eden_lib.engine import TrainConfig, fit, select_device

#: ``score(predictions, targets) -> float``, higher is better (mean AUC, mean Dice)
Score = Callable[[np.ndarray, np.ndarray], float]

#: stages of the study's 2D encoders that ``freeze_stages`` counts: stem, layer1 ... layer4
N_STAGES = 5


@dataclass(frozen=True)
class FinetuneConfig:
    """``transfer.finetune`` of params.yaml, and ``freeze_stages``: the first k encoder stages frozen
    (:func:`freeze_stages`; 0 = nothing frozen, the transfer stage's protocol)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    min_steps: int = 0
    device: str = "auto"
    evaluations: int = 0
    patience: int = 0
    freeze_stages: int = 0

    def __post_init__(self) -> None:
        k = self.freeze_stages
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= N_STAGES:
            raise ValueError(f"FinetuneConfig.freeze_stages = {k!r}: expected an integer from 0 (nothing frozen) to "
                             f"{N_STAGES} (stem and layer1-4 frozen)")

    def rounds(self, validated: bool) -> int:
        """Training rounds (engine epochs): ``epochs``, or ``max(epochs, evaluations)`` with a validation set, one
        validation score after each round."""
        return max(1, self.epochs, self.evaluations if validated else 0)


@dataclass(frozen=True)
class Validation:
    """Held-out samples scored during fine-tuning: inputs ``x (M, C, *spatial)``, targets ``y (M, ...)`` and
    ``score(net(x) as NumPy, y) -> float`` (higher is better)."""

    x: torch.Tensor
    y: np.ndarray
    score: Score


class Downstream(nn.Module):
    """A network and its loss: ``forward(batch, generator) -> {"loss"}``; ``predict(x)`` for evaluation.

    ``frozen``: submodules of ``net`` that stay in evaluation mode when the module trains (:func:`freeze_stages`).
    """

    def __init__(self, net: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 frozen: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.frozen = list(frozen)  # a plain list: already registered under ``net``

    def train(self, mode: bool = True) -> Downstream:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.net(batch["image"]), batch["target"])}


class EarlyStopping(Downstream):
    """A :class:`Downstream` scored on a :class:`Validation` after every round (the engine's ``after_epoch`` hook).

    It keeps the best weights seen (a copy on the CPU), counts rounds without improvement and asks the engine to stop
    (``stop_requested``) after ``patience`` of them (0: never stops early). ``curve`` holds one
    ``{"step", "value"}`` per round.
    """

    def __init__(self, net: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 validation: Validation, steps_per_round: int, patience: int, device: str,
                 frozen: Sequence[nn.Module] = ()) -> None:
        super().__init__(net, loss, frozen)
        self.validation = validation
        self.steps_per_round = steps_per_round
        self.patience = patience
        self.device = device
        self.curve: list[dict[str, float]] = []
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.best_round = -1
        self.stop_requested = False

    def after_epoch(self, epoch: int) -> dict[str, float]:
        pred = predict(self.net, self.net, self.validation.x, batch=64, device=self.device)
        value = float(self.validation.score(pred, self.validation.y))
        self.curve.append({"step": (epoch + 1) * self.steps_per_round, "value": value})
        if self.best is None or value > self.best[0]:
            self.best = (value, {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()})
            self.best_round = len(self.curve) - 1
        elif self.patience and len(self.curve) - 1 - self.best_round >= self.patience:
            self.stop_requested = True
        return {"val_score": value}

    def restore_best(self) -> None:
        """Load the weights of the best round into ``net``."""
        if self.best is not None:
            self.net.load_state_dict(self.best[1])


def freeze_stages(net: nn.Module, k: int) -> list[nn.Module]:
    """Freeze the first ``k`` stages of the 2D encoder inside ``net`` (CAiD's transfer ablation).

    The encoder is the first submodule of ``net`` with ``stage_modules()`` (the study's ResNet and ConvNeXt
    encoders: the modules behind the five maps of ``stages(x)``, stem, layer1 ... layer4). Their parameters get
    ``requires_grad = False`` (no gradient, no optimiser update; they stay so afterwards) and the returned modules
    are to be kept in evaluation mode while training (:class:`Downstream` does), so batch norm neither uses batch
    statistics nor updates its running statistics there (and ConvNeXt's stochastic depth is off). ``k = 0``
    freezes nothing and returns ``[]``.

    Raises:
        ValueError: ``k`` outside 0 ... the encoder's stage count, or ``k > 0`` and ``net`` holds no such encoder.
    """
    if k == 0:
        return []
    encoder = next((m for m in net.modules() if callable(getattr(m, "stage_modules", None))), None)
    if encoder is None:
        raise ValueError(f"freeze_stages = {k}: {type(net).__name__} holds no 2D encoder with stage_modules() "
                         "(ResNetEncoder, ConvNeXtEncoder)")
    stages = encoder.stage_modules()
    if not 0 <= k <= len(stages):
        raise ValueError(f"freeze_stages = {k}: expected 0 ... {len(stages)} ({type(encoder).__name__} has "
                         f"{len(stages)} stages)")
    for module in stages[:k]:
        module.requires_grad_(False)
    return stages[:k]


def finetune(
    net: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FinetuneConfig,
    seed: int,
    validation: Validation | None = None,
) -> list[dict[str, float]]:
    """Train ``net`` on (x, y) for ``cfg.epochs`` epochs (at least ``cfg.min_steps`` steps in all).

    Args:
        net: the downstream network (pretrained encoder + new head / decoder).
        loss: ``loss(net(x_batch), y_batch)``.
        x: inputs (N, C, *spatial); y: targets (N, ...).
        cfg: optimiser settings; ``cfg.freeze_stages`` encoder stages are frozen (:func:`freeze_stages`).
        seed: seeds the batch order (the network was initialised by the caller).
        validation: held-out samples; the steps are split into ``cfg.rounds(True)`` rounds, each followed by a
            validation score, with early stopping (``cfg.patience``) and the best round's weights at the end.

    Returns:
        The validation curve, ``[{"step", "value"}]`` per round (empty without ``validation``).
    """
    n = len(x)
    bs = min(cfg.batch_size, n)
    steps = max(math.ceil(n / bs) * cfg.epochs, cfg.min_steps)
    rounds = cfg.rounds(validation is not None)
    per_round = math.ceil(steps / rounds)

    def batches(epoch: int, generator: torch.Generator):
        for idx in _permuted_batches(n, bs, per_round, generator):
            yield {"image": x[idx], "target": y[idx]}

    frozen = freeze_stages(net, cfg.freeze_stages)
    model = (Downstream(net, loss, frozen) if validation is None
             else EarlyStopping(net, loss, validation, per_round, cfg.patience, cfg.device, frozen))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fit(model, batches, optimizer, TrainConfig(epochs=rounds, seed=seed, device=cfg.device, amp=True, verbose=False))
    if isinstance(model, EarlyStopping):
        model.restore_best()
        return model.curve
    return []


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor, batch: int = 256,
            device: str = "auto") -> np.ndarray:
    """``fn`` over ``x`` in evaluation mode, in batches; returns a float32 NumPy array."""
    dev = select_device(device)
    module.to(dev).eval()
    outs = [fn(x[i : i + batch].to(dev)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(outs).numpy()
