"""Alice: anatomical invariance modelling and semantic alignment (Jiang et al., "Anatomical Invariance Modeling and
Semantic Alignment for Self-supervised Learning in 3D Medical Image Analysis", ICCV 2023,
https://arxiv.org/abs/2302.05615), 3D.

A DINO / iBOT-style student and EMA teacher see two CT crops from *different* scans centred on the same anatomy
(mined by the data pipeline; the batch holds ``query`` and ``key``). The student sees both crops with 75 % of a
4 x 4 in-plane grid of columns zeroed through the whole depth (:func:`column_mask`), the teacher sees them unmasked.
Three losses, total ``lambda_cls * L_cls + lambda_patch * L_patch + lambda_rec * L_rec`` (paper 1, 1, 10):

* ``L_cls`` (inter-volume): DINO's cross-entropy between the centred, sharpened teacher [CLS] of one view and the
  student [CLS] of the other, averaged over the two cross pairs (:class:`~eden_lib.losses.dino.DINOLoss`).
* ``L_patch`` (intra-volume): token-wise cross-entropy, with its own centre, between the aligned tokens
  ``T = CASA(student encoder tokens, teacher decoder tokens)`` (the target, no gradient) and
  ``S = CASA(student encoder tokens, student decoder tokens)`` of the same view, averaged over tokens and views
  (:class:`~eden_lib.losses.token_distillation.TokenDistillationLoss`,
  :class:`~eden_lib.methods.branches.casa.CASA`; one CASA serves both paths and is trained with the student, as in
  the released code). Ablation ``casa: false``: no alignment module; ``L_patch`` is computed directly between the
  teacher's and the student's *encoder* tokens of the same view through the patch head (iBOT-style).
* ``L_rec``: mean squared error between the student's full-resolution output and the *unmasked* crops, over all
  voxels, both views averaged (the released code's choice, not restricted to masked voxels).

Our adaptation:

* Backbone: the study's 3D network in place of nnFormer, so the pretrained network plugs into every 3D transfer
  task: the Models Genesis :class:`~eden_lib.models.unet3d.UNet3D` (width ``ctx.unet3d_width``, sigmoid output), or
  with ``backbone_3d: swin_unetr`` (the paper profile) MONAI's Swin-UNETR
  (:class:`~eden_lib.models.swin_unetr.SwinUNETR3D`, feature size f = 48, one of the paper's encoders); nnFormer is
  not built. Inputs ``(B, 1, X, Y, Z)``, depth = the last axis. [CLS] = global average of the bottleneck (UNet3D
  ``out512``: 16w channels at stride 8; Swin-UNETR: 16f at stride 32); encoder ("query") tokens = the bottleneck
  voxels; decoder ("anchor") tokens = the first decoder stage (``up_tr256``: 8w channels at stride 4; ``decoder5``:
  8f at stride 16; nnFormer: its first decoder stage); reconstruction = the network's sigmoid output (both networks'
  ``encode_decode``).
* :class:`AliceHead`: ``Linear 16w -> head_in_dim`` for the bottleneck ([CLS] and encoder tokens) and
  ``Linear 8w -> head_in_dim`` for decoder tokens (16f and 8f for Swin-UNETR), then DINO's shared 3-layer MLP, L2
  normalisation and two weight-normalised last layers (``out_dim`` for [CLS], ``patch_out_dim`` for tokens). The
  released teacher shares the [CLS] last layer for its tokens while the student has a separate one; here both
  networks use the separate token layer (iBOT's default), so the teacher stays an exact EMA of the student.
* Teacher batch-norm statistics: the teacher runs the whole UNet3D on the unmasked crops and keeps its own running
  statistics (the EMA moves parameters only, :meth:`Alice.after_step`); copying the student's would give the
  exported teacher the statistics of 75 %-masked inputs (Swin-UNETR's instance and layer norms keep none).
* Export: ``{"unet3d": the teacher's UNet3D / Swin-UNETR}`` (encoder and decoder): the EMA teacher is the network
  the released extraction script writes with its full decoder (the student extraction drops the output layers), it
  is the temporal ensemble of the student that DINO / iBOT report as the better feature extractor, and it is the
  network that saw unmasked crops, as transfer will.

Schedules run per optimizer step (fractions are of all steps; the pretrain pipeline calls
:meth:`Alice.set_total_steps`): teacher temperature 0.008 -> 0.01 linear over ``teacher_temp_warmup`` (paper 30 of
1,000 epochs), teacher EMA momentum 0.996 -> 1 cosine, weight decay 0.04 -> 0.4 cosine (set on the decayed
parameter group at each training forward, so the value of step s is the one ``optimizer.step()`` applies after it),
last layers frozen over ``freeze_last_layer``. The step counter and both centres are buffers, so a resumed run
continues every schedule. Optimiser: AdamW over student and CASA, ``lr = base_lr * batch_size / 256``
(:attr:`AliceConfig.lr`; README ``base_lr`` 5e-5), biases and norm parameters not decayed. Differences from the
paper: the lr follows the engine's per-epoch cosine (no 50-epoch linear warm-up, no ``min_lr``); gradient
clipping (per-parameter norm 3.0) runs as a gradient hook on every trained parameter, so under DDP each rank clips
its own gradient before the all-reduce (the paper clips the reduced one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from eden_lib.losses.dino import DINOLoss, teacher_temperature
from eden_lib.losses.token_distillation import TokenDistillationLoss
from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext, Method, MethodConfigError, adamw_no_norm_decay, config_failure
from eden_lib.methods.branches.casa import CASA
from eden_lib.models.dino_head import DINOHead
from eden_lib.models.ema import CosineEMATeacher, momentum_copy
from eden_lib.models.swin_unetr import DIVISOR, SWIN_UNETRS, SwinUNETR3D
from eden_lib.models.unet3d import UNet3D

VIEW_PAIRS = ("matched", "oracle", "random")


@dataclass(frozen=True)
class AliceConfig:
    """``methods.alice``: paper defaults (released code and README; fractions are of all optimizer steps).

    Attributes:
        base_lr: lr per 256 samples (the lr is ``base_lr * batch_size / 256``, :attr:`lr`; README 5e-5).
        weight_decay, weight_decay_end: AdamW weight decay, cosine from the first to the second over the run.
        out_dim: [CLS] prototypes (paper 512). patch_out_dim: token prototypes and CASA width (paper 512).
        head_in_dim: width the backbone features are projected to before the shared MLP (paper 384).
        hidden_dim, bottleneck_dim: the shared MLP (paper 2048, 256).
        student_temp: tau_s of both losses.
        teacher_temp, warmup_teacher_temp, teacher_temp_warmup: tau_t rises linearly from ``warmup_teacher_temp``
            to ``teacher_temp`` over this fraction of the steps (paper 0.008 -> 0.01 over 30 of 1,000 epochs).
        center_momentum: EMA momentum of both loss centres.
        momentum: base momentum of the teacher EMA (cosine to 1).
        mask_ratio, mask_grid: fraction of the ``mask_grid x mask_grid`` in-plane squares zeroed through the whole
            depth in the student's input (paper 0.75 of 4 x 4).
        casa: use the CASA alignment for ``L_patch`` (False: iBOT-style teacher vs student encoder tokens).
        casa_heads, casa_dropout: the CASA layer (paper 8, 0.1).
        lambda_cls, lambda_patch, lambda_rec: loss weights (paper 1, 1, 10).
        clip_grad: per-parameter gradient-norm clip of :meth:`Alice.before_step` (paper 3.0; 0 disables).
        freeze_last_layer: fraction of the steps during which the head's last layers are not updated (paper: 1 of
            1,000 epochs).
        crop: ``(x, y, z)`` size of both views (paper 64^3): multiples of 8 (UNet3D; 32 for Swin-UNETR), x and y of
            ``mask_grid``.
        views: which mined view pairs the data pipeline reads: ``matched`` (anatomy matching, the paper),
            ``oracle`` (ground-truth correspondence) or ``random`` (unrelated locations); the method only checks it.
        backbone_3d: ``""``: the study's UNet3D (``pretrain.unet3d_width``); ``swin_unetr``: MONAI's Swin-UNETR
            (feature size 48), for this method alone (:func:`~eden_lib.pipeline.pretrain.build_context`; transfer
            loads the export into the same network).
    """

    dims: tuple[int, ...] = (3,)
    batch_size: int = 8
    base_lr: float = 5e-5
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    out_dim: int = 512
    patch_out_dim: int = 512
    head_in_dim: int = 384
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.01
    warmup_teacher_temp: float = 0.008
    teacher_temp_warmup: float = 0.03
    center_momentum: float = 0.9
    momentum: float = 0.996
    mask_ratio: float = 0.75
    mask_grid: int = 4
    casa: bool = True
    casa_heads: int = 8
    casa_dropout: float = 0.1
    lambda_cls: float = 1.0
    lambda_patch: float = 1.0
    lambda_rec: float = 10.0
    clip_grad: float = 3.0
    freeze_last_layer: float = 0.001
    crop: tuple[int, ...] = (64, 64, 64)
    views: str = "matched"
    backbone_3d: str = ""

    @property
    def lr(self) -> float:
        """The AdamW learning rate, ``base_lr * batch_size / 256`` (the paper's linear scaling rule)."""
        return self.base_lr * self.batch_size / 256

    def validate(self, name: str) -> None:
        def fail(key: str, expected: str) -> MethodConfigError:
            return config_failure(name, self, key, expected)

        if not self.dims or set(self.dims) != {3}:
            raise fail("dims", "[3] (Alice is implemented for 3D only)")
        for key in ("batch_size", "base_lr", "out_dim", "patch_out_dim", "head_in_dim", "hidden_dim",
                    "bottleneck_dim", "student_temp", "teacher_temp", "warmup_teacher_temp", "mask_grid",
                    "casa_heads"):
            if getattr(self, key) <= 0:
                raise fail(key, "> 0")
        for key in ("weight_decay", "weight_decay_end", "lambda_cls", "lambda_patch", "lambda_rec", "clip_grad"):
            if getattr(self, key) < 0:
                raise fail(key, ">= 0")
        if self.lambda_cls + self.lambda_patch + self.lambda_rec <= 0:
            raise fail("lambda_rec", "a positive weight on at least one of lambda_cls, lambda_patch, lambda_rec")
        for key in ("teacher_temp_warmup", "center_momentum", "momentum", "freeze_last_layer"):
            if not 0 <= getattr(self, key) <= 1:
                raise fail(key, "a value in [0, 1]")
        for key in ("mask_ratio", "casa_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise fail(key, "a value in [0, 1)")
        if self.casa and self.patch_out_dim % self.casa_heads:
            raise fail("patch_out_dim", f"a multiple of casa_heads = {self.casa_heads} (the CASA width)")
        if self.backbone_3d not in ("", *SWIN_UNETRS):
            raise fail("backbone_3d", f"'' (the study's UNet3D) or one of {sorted(SWIN_UNETRS)}")
        if self.backbone_3d and (len(self.crop) != 3 or any(s <= 0 or s % DIVISOR for s in self.crop)):
            raise fail("crop", f"[x, y, z], each a positive multiple of {DIVISOR} (Swin-UNETR: patch 2, four 2x "
                               f"mergings)")
        if len(self.crop) != 3 or any(s <= 0 or s % 8 for s in self.crop):
            raise fail("crop", "[x, y, z], each a positive multiple of 8 (three 2x poolings of the UNet3D)")
        if any(s % self.mask_grid for s in self.crop[:2]):
            raise fail("crop", f"x and y multiples of mask_grid = {self.mask_grid} (the in-plane mask squares)")
        if self.views not in VIEW_PAIRS:
            raise fail("views", f"one of {list(VIEW_PAIRS)}")


def tokens(features: torch.Tensor) -> torch.Tensor:
    """Feature map ``(B, C, x, y, z)`` -> tokens ``(B, x*y*z, C)`` (x-major order)."""
    return features.flatten(2).transpose(1, 2)


def column_mask(shape: tuple[int, ...], grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Alice's column mask: ``round(ratio * grid^2)`` of the ``grid x grid`` in-plane squares of each sample,
    drawn from ``generator``, each through the whole depth.

    Args:
        shape: ``(B, C, X, Y, Z)``; X and Y multiples of ``grid``.

    Returns:
        Boolean ``(B, 1, X, Y, Z)`` on the CPU, True where the student input is zeroed.
    """
    b, _, x, y, z = shape
    if x % grid or y % grid:
        raise ValueError(f"column_mask: in-plane size {(x, y)} is not a multiple of the grid {grid}")
    n_masked = round(ratio * grid * grid)
    order = torch.rand(b, grid * grid, generator=generator).argsort(dim=1)
    squares = torch.zeros(b, grid * grid, dtype=torch.bool)
    squares.scatter_(1, order[:, :n_masked], True)
    cells = squares.view(b, 1, grid, grid, 1)
    return cells.repeat_interleave(x // grid, dim=2).repeat_interleave(y // grid, dim=3).expand(b, 1, x, y, z)


def cosine_schedule(start: float, end: float, step: int, total: int) -> float:
    """From ``start`` at step 0 to ``end`` at ``total`` along a half cosine (DINO's weight-decay schedule)."""
    if total <= 1:
        return start
    return end + (start - end) * (1 + math.cos(math.pi * min(step, total) / total)) / 2


class AliceHead(DINOHead):
    """Projections of the bottleneck and the decoder tokens, DINO's shared MLP, two weight-normalised last layers.

    Args:
        query_dim: bottleneck channels (16w; Swin-UNETR 16f). anchor_dim: decoder-token channels (8w; 8f); 0: no
            decoder projection (the ``casa: false`` ablation, which reads no decoder tokens).
        in_dim: projection width (paper 384). out_dim: [CLS] prototypes. patch_out_dim: token prototypes.
        hidden_dim, bottleneck_dim: the shared MLP.

    ``cls(pooled)``: ``(B, query_dim)`` -> ``(B, out_dim)``; ``query_tokens(t)``: ``(B, N, query_dim)`` and
    ``anchor_tokens(t)``: ``(B, N, anchor_dim)`` -> ``(B, N, patch_out_dim)``. Both last layers have their weight
    norm fixed at 1; with ``freeze_last_layer`` they take part in the forward pass but receive no gradient.
    """

    def __init__(self, query_dim: int, anchor_dim: int, in_dim: int, out_dim: int, patch_out_dim: int,
                 hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__(in_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=True)
        self.query_proj = nn.Linear(query_dim, in_dim)
        self.anchor_proj = nn.Linear(anchor_dim, in_dim) if anchor_dim else None
        for layer in (self.query_proj, self.anchor_proj):
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.patch_last_layer = weight_norm(nn.Linear(bottleneck_dim, patch_out_dim, bias=False))
        gain = self.patch_last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(False)

    def cls(self, pooled: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        return self(self.query_proj(pooled), freeze_last_layer)

    def _tokens(self, x: torch.Tensor, freeze_last_layer: bool) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        if freeze_last_layer:
            return F.linear(z, self.patch_last_layer.weight.detach())
        return self.patch_last_layer(z)

    def query_tokens(self, t: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        return self._tokens(self.query_proj(t), freeze_last_layer)

    def anchor_tokens(self, t: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        if self.anchor_proj is None:
            raise RuntimeError("AliceHead was built without the decoder-token projection (anchor_dim 0)")
        return self._tokens(self.anchor_proj(t), freeze_last_layer)


class AliceNetwork(nn.Module):
    """The 3D network (UNet3D or Swin-UNETR) + :class:`AliceHead`; ``forward(x)`` on crops ``(B, 1, X, Y, Z)`` returns
    a dict: ``cls`` ``(B, out_dim)``, ``query`` ``(B, N_q, patch_out_dim)`` (UNet3D: ``X/8*Y/8*Z/8`` tokens;
    Swin-UNETR: ``X/32*Y/32*Z/32``), ``anchor`` ``(B, N_a, patch_out_dim)`` (``X/4*Y/4*Z/4``; ``X/16*Y/16*Z/16``;
    only when the head projects decoder tokens) and ``reconstruction`` ``(B, 1, X, Y, Z)``."""

    def __init__(self, unet: UNet3D | SwinUNETR3D, head: AliceHead) -> None:
        super().__init__()
        self.unet = unet
        self.head = head

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> dict[str, torch.Tensor]:
        bottleneck, anchor, reconstruction = self.unet.encode_decode(x)
        out = {
            "cls": self.head.cls(bottleneck.mean(dim=(2, 3, 4)), freeze_last_layer),
            "query": self.head.query_tokens(tokens(bottleneck), freeze_last_layer),
            "reconstruction": reconstruction,
        }
        if self.head.anchor_proj is not None:
            out["anchor"] = self.head.anchor_tokens(tokens(anchor), freeze_last_layer)
        return out


class Alice(CosineEMATeacher, Method):
    """Alice on CT view pairs: masked student, EMA teacher, CASA-aligned token loss; exports the teacher's 3D
    network (``unet3d``: the UNet3D or the Swin-UNETR)."""

    name = "alice"
    config_cls = AliceConfig
    data = {3: "ct_view_pairs"}
    views = 2
    steps_done: torch.Tensor

    def __init__(self, cfg: AliceConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        unet = networks.unet_3d(ctx, out_channels=1)
        head = AliceHead(unet.feature_channels, unet.anchor_channels if cfg.casa else 0, cfg.head_in_dim, cfg.out_dim,
                         cfg.patch_out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.student = AliceNetwork(unet, head)
        self.teacher = momentum_copy(self.student)
        self.casa = CASA(cfg.patch_out_dim, cfg.casa_heads, cfg.casa_dropout) if cfg.casa else None
        self.cls_loss = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
        self.patch_loss = TokenDistillationLoss(cfg.patch_out_dim, cfg.student_temp, cfg.center_momentum)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        # the frozen last layers are left out of the graph in the first steps
        self.ddp_find_unused_parameters = cfg.freeze_last_layer > 0
        if cfg.clip_grad:
            for param in self.trained_parameters():
                if param.requires_grad:  # not the frozen weight norm of the last layers
                    param.register_hook(self._clip)

    def _clip(self, grad: torch.Tensor) -> torch.Tensor:
        """One parameter's gradient scaled to norm at most ``clip_grad`` (DINO / Alice ``clip_gradients``, per
        parameter), applied as the gradient is computed."""
        return grad * (self.cfg.clip_grad / (grad.norm() + 1e-6)).clamp(max=1.0)

    def set_total_steps(self, n: int) -> None:
        """The number of optimizer steps of the whole run, which every schedule spans (called before training)."""
        if n < 1:
            raise ValueError(f"total steps must be >= 1, got {n}")
        self.total_steps = n

    def student_inputs(self, views: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Column-masked student input and the mask, both ``(2B, 1, X, Y, Z)`` (mask True where zeroed)."""
        mask = column_mask(tuple(views.shape), self.cfg.mask_grid, self.cfg.mask_ratio, generator).to(views.device)
        return views.masked_fill(mask, 0.0), mask

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step on ``batch = {"query": (B, 1, X, Y, Z), "key": (B, 1, X, Y, Z)}`` in [0, 1] (two scans).

        Returns ``loss`` and the unweighted ``loss_cls``, ``loss_patch``, ``loss_rec``.
        """
        if self.total_steps is None:
            raise RuntimeError("alice needs the run's length: call set_total_steps(n) before training")
        cfg = self.cfg
        query, key = batch["query"], batch["key"]
        if query.shape != key.shape or tuple(query.shape[2:]) != tuple(cfg.crop) or query.shape[1] != 1:
            raise ValueError(f"alice: expected query and key (B, 1, {', '.join(map(str, cfg.crop))}), got "
                             f"{tuple(query.shape)} and {tuple(key.shape)}")
        b, step = query.shape[0], int(self.steps_done)
        if self.training and self.optimizer is not None:
            self.optimizer.param_groups[0]["weight_decay"] = cosine_schedule(
                cfg.weight_decay, cfg.weight_decay_end, step, self.total_steps)
        views = torch.cat([query, key]).float()  # view-major: rows i*B:(i+1)*B are view i
        with torch.no_grad():
            masked, _ = self.student_inputs(views, generator)
            teacher = self.teacher(views)
        freeze = step < cfg.freeze_last_layer * self.total_steps
        student = self.student(masked, freeze)
        temp = teacher_temperature(step, self.total_steps, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                   cfg.teacher_temp_warmup)
        loss_cls = self.cls_loss(student["cls"].unflatten(0, (2, b)), teacher["cls"].unflatten(0, (2, b)), temp)
        if self.casa is not None:
            aligned_student = self.casa(student["query"], student["anchor"])
            with torch.no_grad():  # the target: CASA(student encoder tokens, teacher decoder tokens)
                aligned_teacher = self.casa(student["query"], teacher["anchor"])
        else:
            aligned_student, aligned_teacher = student["query"], teacher["query"]
        loss_patch = self.patch_loss(aligned_student.unflatten(0, (2, b)), aligned_teacher.unflatten(0, (2, b)), temp)
        loss_rec = F.mse_loss(student["reconstruction"].float(), views)
        loss = cfg.lambda_cls * loss_cls + cfg.lambda_patch * loss_patch + cfg.lambda_rec * loss_rec
        return {"loss": loss, "loss_cls": loss_cls.detach(), "loss_patch": loss_patch.detach(),
                "loss_rec": loss_rec.detach()}

    def trained_parameters(self) -> list[nn.Parameter]:
        """Student and CASA parameters (the teacher follows by EMA)."""
        params = list(self.student.parameters())
        return params + (list(self.casa.parameters()) if self.casa is not None else [])

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA of the teacher's parameters (cosine momentum), then count the step; the teacher keeps its own
        batch-norm running statistics (of unmasked crops) instead of copying the student's."""
        running = [b.clone() for b in self.teacher.buffers()]
        super().after_step()
        for buffer, kept in zip(self.teacher.buffers(), running):
            buffer.copy_(kept)

    @torch.no_grad()
    def exports(self) -> dict[str, nn.Module]:
        return {"unet3d": self.teacher.unet}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over student and CASA, lr ``base_lr * batch_size / 256``; group 0 (decayed weights) follows the
        weight-decay schedule, group 1 (biases, norms) is not decayed."""
        self.optimizer = adamw_no_norm_decay(self.trained_parameters(), self.cfg.lr, self.cfg.weight_decay)
        return self.optimizer
