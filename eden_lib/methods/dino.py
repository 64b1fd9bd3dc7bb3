"""DINO: self-distillation with no labels (Caron et al., ICCV 2021, https://arxiv.org/abs/2104.14294), 2D.

A student (the study's ResNet encoder + :class:`~eden_lib.models.dino_head.DINOHead`) learns to match, on every crop
of a radiograph, the centred and sharpened output of a momentum teacher on the *other* global crops
(:class:`~eden_lib.losses.dino.DINOLoss`). The teacher is an EMA of the student with a cosine momentum schedule
0.996 -> 1 over all steps; it sees only the 2 global crops, the student sees those and ``n_local`` local crops.

Multi-crop, from the whole render (``cxr_renders``) with :mod:`eden_lib.transforms.views`: global crops at
``image_size`` with area scale (0.4, 1.0) (side (0.63, 1.0)), local crops at ``image_size // 2`` (paper 96 / 224)
with area scale (0.05, 0.4) (side (0.22, 0.63)); brightness/contrast jitter p 0.8, Gaussian blur p 1.0 / 0.1 on
the two global crops and 0.5 on the local ones, horizontal flip p ``flip_p``. Not ported: solarisation of the second
global crop and grey-scale / colour steps (a radiograph has one channel).

Schedules run per optimizer step and need the run's total number of steps: the pretrain pipeline calls
:meth:`Dino.set_total_steps` before training. The step counter and the loss centre are buffers, so a resumed run
continues every schedule where it stopped. Optimiser: AdamW, lr ``base_lr * batch_size / 256`` (paper 5e-4), no
weight decay on biases; differences from the paper: weight decay fixed at 0.04 (paper: cosine 0.04 -> 0.4), no
linear lr warm-up (the engine's per-epoch cosine), no gradient clipping (paper 3.0). The exported encoder is the
student's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eden_lib.losses.dino import DINOLoss, teacher_temperature
from eden_lib.methods import networks
from eden_lib.methods.base import (
    BuildContext,
    Method,
    MethodConfigError,
    adamw_no_norm_decay,
    check_2d_batch,
    config_failure,
)
from eden_lib.models.dino_head import DINOHead, DinoNetwork
from eden_lib.models.ema import CosineEMATeacher, momentum_copy
from eden_lib.transforms.views import ViewConfig, make_view


@dataclass(frozen=True)
class DinoConfig:
    """``methods.dino``: paper defaults (ViT-S/16 recipe, 100 epochs; fractions are of all optimizer steps).

    Attributes:
        base_lr: lr per 256 images (the lr is ``base_lr * batch_size / 256``).
        out_dim, hidden_dim, bottleneck_dim, norm_last_layer: the head (:class:`DINOHead`).
        n_local: local crops per image (paper code default 8).
        global_scale, local_scale: crop side ranges as fractions of the render side.
        flip_p: horizontal flip probability (paper 0.5; a flip hides the laterality of a radiograph).
        student_temp: tau_s.
        teacher_temp, warmup_teacher_temp, teacher_temp_warmup: tau_t rises linearly from ``warmup_teacher_temp``
            to ``teacher_temp`` over this fraction of the steps (paper: 0.04 -> 0.07 over 30 of 100 epochs).
        center_momentum: EMA momentum of the loss centre.
        momentum: base momentum of the teacher EMA (cosine to 1).
        freeze_last_layer: fraction of the steps during which the head's last layer is not updated (paper: 1 of
            100 epochs).
    """

    dims: tuple[int, ...] = (2,)
    batch_size: int = 1024
    base_lr: float = 5e-4
    weight_decay: float = 0.04
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    n_local: int = 8
    global_scale: tuple[float, ...] = (0.63, 1.0)
    local_scale: tuple[float, ...] = (0.22, 0.63)
    flip_p: float = 0.5
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.3
    center_momentum: float = 0.9
    momentum: float = 0.996
    freeze_last_layer: float = 0.01

    def validate(self, name: str) -> None:
        def fail(key: str, expected: str) -> MethodConfigError:
            return config_failure(name, self, key, expected)

        check_2d_batch(name, self, "DINO")
        for key in ("out_dim", "hidden_dim", "bottleneck_dim", "base_lr", "student_temp", "teacher_temp",
                    "warmup_teacher_temp"):
            if getattr(self, key) <= 0:
                raise fail(key, "> 0")
        for key in ("n_local", "weight_decay"):
            if getattr(self, key) < 0:
                raise fail(key, ">= 0")
        for key in ("flip_p", "teacher_temp_warmup", "center_momentum", "momentum", "freeze_last_layer"):
            if not 0 <= getattr(self, key) <= 1:
                raise fail(key, "a value in [0, 1]")
        for key in ("global_scale", "local_scale"):
            scale = getattr(self, key)
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise fail(key, "[low, high] with 0 < low <= high <= 1")


class Dino(CosineEMATeacher, Method):
    """DINO on radiographs: multi-crop student, EMA teacher on the global crops, exported student encoder."""

    name = "dino"
    config_cls = DinoConfig
    data = {2: "cxr_renders"}
    steps_done: torch.Tensor

    def __init__(self, cfg: DinoConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        encoder = networks.encoder_2d(ctx)
        head = DINOHead(encoder.out_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer)
        self.student = DinoNetwork(encoder, head)
        self.teacher = momentum_copy(self.student)
        self.loss = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
        local_size = ctx.image_size // 2
        g_scale, l_scale = (cfg.global_scale[0], cfg.global_scale[1]), (cfg.local_scale[0], cfg.local_scale[1])
        self.global_views = (
            ViewConfig(ctx.image_size, g_scale, blur_p=1.0, flip_p=cfg.flip_p),
            ViewConfig(ctx.image_size, g_scale, blur_p=0.1, flip_p=cfg.flip_p),
        )
        self.local_view = ViewConfig(local_size, l_scale, blur_p=0.5, flip_p=cfg.flip_p)
        #: encoder passes per sample for the shared budget: a local crop costs its area relative to a global crop
        self.views = 2 + cfg.n_local * (local_size / ctx.image_size) ** 2
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None
        # the frozen last layer is left out of the graph in the first steps
        self.ddp_find_unused_parameters = cfg.freeze_last_layer > 0

    def set_total_steps(self, n: int) -> None:
        """The number of optimizer steps of the whole run, which every schedule spans (called before training)."""
        if n < 1:
            raise ValueError(f"total steps must be >= 1, got {n}")
        self.total_steps = n

    def multi_crop(self, renders: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """Renders ``(B, 1, R, R)`` -> crops grouped by size, crop-major: the 2 global crops ``(2B, 1, S, S)``
        (rows ``i*B:(i+1)*B`` are crop i) and, if ``n_local``, the local crops ``(n_local*B, 1, S/2, S/2)``."""
        groups = [torch.cat([make_view(renders, v, generator)[0] for v in self.global_views])]
        if self.cfg.n_local:
            groups.append(torch.cat([make_view(renders, self.local_view, generator)[0]
                                     for _ in range(self.cfg.n_local)]))
        return groups

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.total_steps is None:
            raise RuntimeError("dino needs the run's length: call set_total_steps(n) before training")
        cfg, b = self.cfg, batch["image"].shape[0]
        step = int(self.steps_done)
        with torch.no_grad():
            crops = self.multi_crop(batch["image"], generator)
            teacher = self.teacher(crops[0])
        freeze = step < cfg.freeze_last_layer * self.total_steps
        student = torch.cat([self.student(x, freeze) for x in crops])
        temp = teacher_temperature(step, self.total_steps, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                   cfg.teacher_temp_warmup)
        loss = self.loss(student.unflatten(0, (-1, b)), teacher.unflatten(0, (2, b)), temp)
        return {"loss": loss}

    @torch.no_grad()
    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.student.encoder}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return adamw_no_norm_decay(list(self.student.parameters()), self.cfg.base_lr * self.cfg.batch_size / 256,
                                   self.cfg.weight_decay)
