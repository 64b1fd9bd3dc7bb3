"""MoCo's InfoNCE over a queue of negatives (He et al., CVPR 2020, arXiv:1911.05722; MoCo-v2, arXiv:2003.04297).

``L = CE([q.k+, q.queue^T] / tau, label 0)``: each query must pick its own key among the keys of a queue of earlier
batches. MONAI's ``ContrastiveLoss`` is SimCLR's NT-Xent over the 2B views of one batch (no queue, no separate
positive), so it does not compute this.

:func:`in_batch_info_nce` scores the same queries with the other keys of their batch as negatives: the queue is a
training device whose keys drift with the encoder, so the study monitors MoCo on fixed held-out batches this way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """Cross-entropy of the positive key against the queue.

    Args:
        temperature: ``tau`` (MoCo-v1 0.07; MoCo-v2 and DiRA 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch.

        Args:
            q: ``(B, D)`` queries, L2-normalised.
            k: ``(B, D)`` positive keys, L2-normalised (no gradient is taken through them by MoCo).
            queue: ``(K, D)`` negative keys, L2-normalised.
        Returns:
            scalar.
        """
        positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
        negative = q @ queue.t()  # (B, K)
        logits = torch.cat([positive, negative], dim=1).float() / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def in_batch_info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """``CE(q k^T / tau, diag)``: each query must pick its own key among the ``B`` keys of its batch (chance ``ln B``).

    Args:
        q: ``(B, D)`` queries, L2-normalised.
        k: ``(B, D)`` keys, L2-normalised; row i is query i's positive.
    Returns:
        scalar.
    """
    logits = (q @ k.t()).float() / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
