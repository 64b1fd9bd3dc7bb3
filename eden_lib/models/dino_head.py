"""The DINO projection head (Caron et al., ICCV 2021, https://arxiv.org/abs/2104.14294).

"The projection head consists of a 3-layer multi-layer perceptron (MLP) with hidden dimension 2048 followed by l2
normalization and a weight normalized fully connected layer with K dimensions" (paper, section 3.1); the bottleneck
before the normalisation is 256-d, the MLP uses GELU and no batch norm, and K = 65,536. The last layer's weight norm
``g`` is fixed to 1 ("norm_last_layer"), so every prototype row of the last layer has unit norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP ``in -> hidden -> hidden -> bottleneck``, L2 normalisation, weight-normalised ``bottleneck -> out``.

    Args:
        in_dim: encoder feature dimension.
        out_dim: K prototypes (paper 65,536).
        hidden_dim: MLP width (paper 2048).
        bottleneck_dim: dimension that is L2-normalised (paper 256).
        norm_last_layer: freeze the weight norm ``g`` of the last layer at 1 (paper: True).

    ``forward(x, freeze_last_layer)``: ``(B, in_dim)`` -> logits ``(B, out_dim)``; with ``freeze_last_layer`` the
    last layer takes part in the forward pass but receives no gradient (the paper freezes it in the first epoch).
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, norm_last_layer: bool = True
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # g, (out_dim, 1)
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        if freeze_last_layer:
            return F.linear(z, self.last_layer.weight.detach())
        return self.last_layer(z)


class DinoNetwork(nn.Module):
    """Encoder + DINO head: images ``(B, 1, S, S)`` -> logits ``(B, out_dim)``."""

    def __init__(self, encoder: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        return self.head(self.encoder(x), freeze_last_layer)
