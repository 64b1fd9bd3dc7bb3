"""Token-wise self-distillation (iBOT's patch loss, Zhou et al., ICLR 2022, https://arxiv.org/abs/2111.07832), as
Alice's intra-volume loss L_patch (Jiang et al., ICCV 2023, https://arxiv.org/abs/2302.05615).

For every view v, sample b and token n, the teacher token is centred and sharpened,
``P_t = softmax((t[v, b, n] - c) / tau_t)``, the student token of the *same* view and position gives
``log P_s = log_softmax(s[v, b, n] / tau_s)``, and the loss is the cross-entropy ``-sum_k P_t log P_s`` averaged over
all tokens, samples and views (Alice averages over every token; iBOT over the masked ones only). The centre ``c`` is
its own exponential moving average of the teacher tokens (iBOT's ``center2``), separate from the [CLS] centre.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eden_lib.losses.dino import DINOLoss


class TokenDistillationLoss(DINOLoss):
    """Cross-entropy between centred, sharpened teacher tokens and the student tokens at the same view and position.

    Args:
        out_dim: K, the token dimension (Alice: ``patch_out_dim`` 512).
        student_temp: tau_s (paper 0.1).
        center_momentum: m of ``c <- m c + (1 - m) mean(t)`` over all teacher tokens of the batch (paper 0.9).

    The centre ``(1, K)`` is a buffer (saved with the method's checkpoint); it is updated in training mode only.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The loss; updates the centre from ``teacher`` afterwards.

        Args:
            student: logits ``(V, B, N, K)``: V views, B samples, N tokens.
            teacher: target logits of the same shape and order; no gradient flows into them.
            teacher_temp: tau_t for this step.

        Returns:
            The scalar ``mean_{v, b, n} -sum_k P_t log P_s``.
        """
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} tokens differ")
        targets = F.softmax((teacher.detach().float() - self.center) / teacher_temp, dim=-1)
        log_probs = F.log_softmax(student.float() / self.student_temp, dim=-1)
        with torch.autocast(student.device.type, enabled=False):  # keep the K-way sums in float32 under bf16
            loss = -(targets * log_probs).sum(dim=-1).mean()
        if self.training:  # eval mode (monitoring) leaves the centre as it is
            self.update_center(teacher.detach().flatten(0, -2))
        return loss
