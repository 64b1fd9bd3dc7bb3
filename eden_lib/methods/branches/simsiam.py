"""SimSiam: two views, a predictor and a stop-gradient (Chen & He, CVPR 2021, arXiv:2011.10566).

Encoder + 3-layer projector (2048-d, BN on every layer, the output's without affine parameters) gives ``z``; a
2-layer predictor (2048-512-2048) gives ``p``; the loss is the symmetric negative cosine
``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` (:class:`~eden_lib.losses.SymmetricNegativeCosineLoss`).
Paper optimiser: SGD, lr 0.05 x batch / 256 (batch 512: 0.1), momentum 0.9, weight decay 1e-4, cosine; views as
MoCo-v2 (area scale (0.2, 1.0)). Not ported: the optional fixed predictor lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eden_lib.losses import SymmetricNegativeCosineLoss
from eden_lib.methods.branches.two_view import Discriminative, TwoViewConfig
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.heads import simsiam_predictor, simsiam_projector


@dataclass(frozen=True)
class SimSiamConfig(TwoViewConfig):
    """``methods.simsiam``.

    Attributes:
        simsiam_dim: projector width and output (paper 2048).
        simsiam_pred_dim: predictor bottleneck (paper 512).
    """

    batch_size: int = 512
    lr: float = 0.1
    simsiam_dim: int = 2048
    simsiam_pred_dim: int = 512

    def validate_branch(self, name: str) -> None:
        for key in ("simsiam_dim", "simsiam_pred_dim"):
            if getattr(self, key) <= 0:
                raise self.fail(name, key, "> 0")


class SimSiamBranch(Discriminative):
    """Encoder + projector + predictor; ``cfg`` carries the :class:`SimSiamConfig` fields."""

    def __init__(self, encoder: ResNetEncoder, cfg: Any) -> None:
        super().__init__(encoder)
        self.projector = simsiam_projector(encoder.out_dim, cfg.simsiam_dim)
        self.predictor = simsiam_predictor(cfg.simsiam_dim, cfg.simsiam_pred_dim)
        self.criterion = SymmetricNegativeCosineLoss()

    def loss(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        generator: torch.Generator,
        stages1: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        z1 = self.projected_view1(view1, stages1)
        z2 = self.projector(self.encoder(view2))
        return {"loss_dis": self.criterion(self.predictor(z1), self.predictor(z2), z1, z2)}

