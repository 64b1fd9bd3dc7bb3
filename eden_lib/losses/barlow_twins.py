"""Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML 2021, arXiv:2103.03230).

``C = bn(z1)^T bn(z2) / B`` with ``bn`` a per-dimension standardisation over the batch (batch norm without affine
parameters: biased variance, eps 1e-5, as in the official code); ``L = sum_i (1 - C_ii)^2 + lambda sum_{i!=j}
C_ij^2``, lambda = 5.1e-3 ("lambda = 5e-3"; the released code uses 0.0051).

Not MONAI's ``BarlowTwinsLoss``: it standardises with the *unbiased* standard deviation (+1e-6), so the
correlation of a batch with itself is ``(B - 1) / B`` on the diagonal and the invariance term never vanishes (a
bias of ``D / B^2``, large at small batches).
"""

from __future__ import annotations

import torch
from torch import nn


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(B, D)`` -> zero mean, unit (biased) variance per dimension: ``BatchNorm1d(affine=False)`` in training."""
    z = z.float()
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


class BarlowTwinsLoss(nn.Module):
    """Args: lambd: weight of the off-diagonal (redundancy) term (paper 5.1e-3)."""

    def __init__(self, lambd: float = 5.1e-3) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``z1``, ``z2``: ``(B, D)`` projector outputs of the two views (B >= 2) -> scalar."""
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
            raise ValueError(f"expected two (B, D) embeddings with B >= 2, got {tuple(z1.shape)}, {tuple(z2.shape)}")
        c = standardise(z1).t() @ standardise(z2) / z1.shape[0]  # (D, D)
        diagonal = torch.diagonal(c)
        on = (1 - diagonal).pow(2).sum()
        off = c.pow(2).sum() - diagonal.pow(2).sum()
        return on + self.lambd * off
