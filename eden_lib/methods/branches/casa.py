"""CASA, Alice's Conditional Anatomical Semantic Alignment module (Jiang et al., "Anatomical Invariance Modeling and
Semantic Alignment for Self-supervised Learning in 3D Medical Image Analysis", ICCV 2023,
https://arxiv.org/abs/2302.05615).

One post-norm transformer cross-attention layer: the queries (tokens of one network's encoder) attend to a context
(tokens of a decoder), ``x = LN(q + Dropout(MHA(q, ctx, ctx)))``, then a position-wise feed-forward block
``LN(x + Dropout(W2 ReLU(W1 x)))`` with ``W1: d -> 4d``, ``W2: 4d -> d`` (released code: d 512, 8 heads, dropout
0.1). Alice uses the same module on two paths: ``S = CASA(student encoder tokens, student decoder tokens)`` and the
target ``T = CASA(student encoder tokens, teacher decoder tokens)``.
"""

from __future__ import annotations

import torch
from torch import nn


class CASA(nn.Module):
    """Cross-attention + feed-forward, each with a residual and LayerNorm.

    Args:
        d_model: token dimension (Alice: ``patch_out_dim``); must be divisible by ``heads``.
        heads: attention heads (paper 8).
        dropout: dropout on the attention weights and on both residual branches (paper 0.1).

    ``forward(query, context)``: ``(B, Nq, d)``, ``(B, Nk, d)`` -> ``(B, Nq, d)``.
    """

    def __init__(self, d_model: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"CASA: d_model={d_model} is not divisible by heads={heads}")
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Linear(4 * d_model, d_model)
        )
        self.feed_forward_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if query.ndim != 3 or context.ndim != 3 or query.shape[0] != context.shape[0]:
            raise ValueError(f"CASA: expected (B, Nq, d) and (B, Nk, d), got {tuple(query.shape)}, "
                             f"{tuple(context.shape)}")
        attended, _ = self.attention(query, context, context, need_weights=False)
        x = self.attention_norm(query + self.dropout(attended))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
