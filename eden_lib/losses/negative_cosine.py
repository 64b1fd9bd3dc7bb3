"""SimSiam's symmetric negative cosine similarity with stop-gradient (Chen & He, CVPR 2021, arXiv:2011.10566).

``L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` with ``D(p, z) = -cos(p, z)`` averaged over the batch;
the minimum is -1. MONAI has no such loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-cos(p, z)`` averaged over the batch, no gradient through ``z``; ``p``, ``z``: ``(B, D)``."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


class SymmetricNegativeCosineLoss(nn.Module):
    """The SimSiam objective over both predictor/projector pairs."""

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``p1``, ``p2``: predictor outputs ``(B, D)``; ``z1``, ``z2``: projector outputs ``(B, D)`` -> scalar."""
        return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
