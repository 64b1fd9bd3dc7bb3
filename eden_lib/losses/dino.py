"""The DINO self-distillation loss (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021, https://arxiv.org/abs/2104.14294).

The teacher's output for each global crop is centred and sharpened, ``P_t = softmax((t - c) / tau_t)``, the student's
output for every crop is ``log P_s = log_softmax(s / tau_s)``, and the loss is the cross-entropy
``-sum_k P_t log P_s`` averaged over the batch and over every (teacher crop, student crop) pair with different crop
indices. The centre ``c`` is an exponential moving average of the teacher's raw outputs: "centering prevents one
dimension to dominate but encourages collapse to the uniform distribution, while the sharpening has the opposite
effect" (paper, section 3.1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def teacher_temperature(step: int, total: int, start: float, end: float, warmup_fraction: float) -> float:
    """Teacher temperature at ``step`` of ``total``: linear from ``start`` to ``end`` over the first
    ``warmup_fraction`` of the steps, then ``end`` (paper: 0.04 to 0.07 over the first 30 epochs)."""
    warmup = warmup_fraction * total
    if warmup <= 0:
        return end
    return start + (end - start) * min(1.0, step / warmup)


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher and student distributions over all crop pairs.

    Args:
        out_dim: K, the head's output dimension (paper 65,536).
        student_temp: tau_s (paper 0.1).
        center_momentum: m of ``c <- m c + (1 - m) mean(t)`` (paper 0.9).

    The centre ``(1, K)`` is a buffer, so it is saved with the method's checkpoint.
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The loss; updates the centre from ``teacher`` afterwards (as the paper's pseudo-code does).

        Args:
            student: logits ``(V, B, K)`` for V crops, the first G being the global crops the teacher saw.
            teacher: logits ``(G, B, K)`` of the global crops, in the same order; no gradient flows into them.
            teacher_temp: tau_t for this step.

        Returns:
            The scalar loss, averaged over the ``G * V - min(G, V)`` pairs of different crops and the batch.
        """
        n_global, n_views = teacher.shape[0], student.shape[0]
        targets = F.softmax((teacher.detach().float() - self.center) / teacher_temp, dim=-1)
        log_probs = F.log_softmax(student.float() / self.student_temp, dim=-1)
        with torch.autocast(student.device.type, enabled=False):  # keep the K-way sums in float32 under bf16
            # cross[g, v] = mean over the batch of -sum_k P_t[g] log P_s[v]
            cross = -torch.einsum("gbk,vbk->gv", targets, log_probs) / student.shape[1]
        different = ~torch.eye(n_global, n_views, dtype=torch.bool, device=cross.device)
        loss = cross[different].mean()
        if self.training:  # eval mode (monitoring) leaves the centre as it is
            self.update_center(teacher.detach().flatten(0, 1))
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher)`` over ``teacher`` ``(N, K)`` (and over ranks when distributed)."""
        batch_sum = teacher.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher.shape[0]), device=teacher.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)
