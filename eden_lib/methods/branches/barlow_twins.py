"""Barlow Twins: redundancy reduction between two views (Zbontar et al., ICML 2021, arXiv:2103.03230).

Both views go through the same encoder and 3-layer projector (8192-8192-8192, BN + ReLU after the first two); the
loss drives the cross-correlation of the batch-standardised embeddings to the identity (lambda 5.1e-3,
:class:`~eden_lib.losses.BarlowTwinsLoss`). Symmetric, no momentum branch, no stop-gradient.

Paper optimiser: LARS (lr 0.2 for weights, 0.0048 for biases and norms, weight decay 1.5e-6, batch 2048, 10-epoch
warm-up then cosine). PyTorch has no LARS: here SGD with momentum, cosine per epoch, lr 0.03 by default (DiRA's
generator setting, since DiRA_BarlowTwins' optimiser is unpublished), weight decay 1.5e-6. Views: area scale
(0.08, 1.0) (side (0.28, 1.0)); the paper's asymmetric blur (p 1.0 / 0.1) and solarisation (0 / 0.2) are replaced
by the symmetric blur p 0.5 of :class:`TwoViewConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eden_lib.losses import BarlowTwinsLoss
from eden_lib.methods.branches.two_view import Discriminative, TwoViewConfig
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.heads import barlow_twins_projector


@dataclass(frozen=True)
class BarlowTwinsConfig(TwoViewConfig):
    """``methods.barlow_twins``.

    Attributes:
        bt_dim: width of the three projector layers (paper 8192).
        bt_lambda: weight of the off-diagonal term (paper 5.1e-3).
    """

    batch_size: int = 2048
    weight_decay: float = 1.5e-6
    scale: tuple[float, ...] = (0.28, 1.0)
    bt_dim: int = 8192
    bt_lambda: float = 5.1e-3

    def validate_branch(self, name: str) -> None:
        if self.bt_dim <= 0:
            raise self.fail(name, "bt_dim", "> 0")
        if self.bt_lambda < 0:
            raise self.fail(name, "bt_lambda", ">= 0")


class BarlowTwinsBranch(Discriminative):
    """Encoder + projector; ``cfg`` carries the :class:`BarlowTwinsConfig` fields."""

    def __init__(self, encoder: ResNetEncoder, cfg: Any) -> None:
        super().__init__(encoder)
        self.projector = barlow_twins_projector(encoder.out_dim, cfg.bt_dim)
        self.criterion = BarlowTwinsLoss(cfg.bt_lambda)

    def loss(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        generator: torch.Generator,
        stages1: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        z1 = self.projected_view1(view1, stages1)
        z2 = self.projector(self.encoder(view2))
        return {"loss_dis": self.criterion(z1, z2)}

