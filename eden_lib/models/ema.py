"""Momentum (exponential moving average) copies of a network: MoCo's key encoder, DINO's teacher.

``target <- m * target + (1 - m) * online`` for parameters; buffers (batch-norm statistics) are copied. The target
never receives gradients (MoCo, He et al., CVPR 2020; DINO, Caron et al., ICCV 2021).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(online: nn.Module) -> nn.Module:
    """A frozen deep copy of ``online`` to be updated by :func:`momentum_update`."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """In place: ``target = m * target + (1 - m) * online`` (parameters); buffers are copied from ``online``."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, [p.detach() for p in o_params], alpha=1 - m)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def cosine_momentum(base: float, step: int, total: int) -> float:
    """DINO / BYOL schedule: from ``base`` at step 0 to 1.0 at ``total`` along a half cosine."""
    if total <= 1:
        return base
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


class CosineEMATeacher:
    """Mixin of a student/teacher method (DINO, Adam-v2): after every optimiser step, ``teacher`` follows ``student``
    by EMA with :func:`cosine_momentum` from ``cfg.momentum``; the step counter is the ``steps_done`` buffer and the
    run's length ``total_steps``, both set by the method, so a resumed run continues the schedule."""

    teacher: nn.Module
    student: nn.Module
    steps_done: torch.Tensor
    total_steps: int | None

    def after_step(self) -> None:
        """EMA update of the teacher with the cosine momentum of this step, then count the step."""
        assert self.total_steps is not None
        m = cosine_momentum(self.cfg.momentum, int(self.steps_done), self.total_steps)  # type: ignore[attr-defined]
        momentum_update(self.teacher, self.student, m)
        self.steps_done += 1
