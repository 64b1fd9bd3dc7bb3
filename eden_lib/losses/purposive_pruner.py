"""Adam-v1's purposive pruner: InfoNCE over a queue without the negatives that are too similar to the query
(Hosseinzadeh Taher et al., MICCAI-DART 2023, arXiv:2309.15358).

At fine granularity many keys in the queue are the same anatomy as the anchor, from other patients: false negatives.
For each query ``q`` the raw cosine ``s_j = q . k_j`` to every queue key (before the temperature) is computed, and
the keys with ``s_j >= threshold`` (paper 0.8) are dropped from the denominator; the positive is always kept:

``L = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_{j: s_j < threshold} exp(q.k_j / tau)) )``, mean over the batch.

The released code loops over the samples; here the pruned logits are set to ``-inf`` in one ``(B, 1 + K)`` matrix.
With nothing pruned it is :class:`eden_lib.losses.info_nce.InfoNCELoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PurposivePrunerLoss(nn.Module):
    """InfoNCE with queue negatives of raw cosine ``>= threshold`` to the query removed.

    Args:
        temperature: ``tau`` (Adam-v1 0.2).
        threshold: cosine at and above which a queue key is no negative (paper 0.8), in (-1, 1); ``None`` or
            ``>= 1`` prunes nothing (a cosine of unit vectors is at most 1; rounding can push an identical key to
            1 + 1e-7, which is not pruned either), so the loss is plain InfoNCE.
    """

    def __init__(self, temperature: float = 0.2, threshold: float | None = 0.8) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if threshold is not None and threshold <= -1:
            raise ValueError(f"threshold must be > -1 (at -1 every negative is pruned), got {threshold}")
        self.temperature = temperature
        self.threshold = None if threshold is None or threshold >= 1 else threshold

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch and the fraction of queue negatives pruned.

        Args:
            q: ``(B, D)`` queries, L2-normalised.
            k: ``(B, D)`` positive keys, L2-normalised.
            queue: ``(K, D)`` negative keys, L2-normalised.
        Returns:
            ``(loss, pruned_fraction)``, both scalars; ``pruned_fraction`` is over all ``B x K`` query-key pairs
            (no gradient).
        """
        positive = (q * k).sum(dim=1, keepdim=True).float()  # (B, 1)
        negative = (q @ queue.t()).float()  # (B, K), raw cosines
        if self.threshold is None:
            pruned = torch.zeros_like(negative, dtype=torch.bool)
        else:
            pruned = negative.detach() >= self.threshold
        logits = torch.cat([positive, negative.masked_fill(pruned, float("-inf"))], dim=1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        return loss, pruned.float().mean()
