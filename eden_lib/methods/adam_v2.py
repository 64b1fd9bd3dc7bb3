"""Adam-v2 (Eden): localizability, composability and decomposability of anatomy, 2D.

Hosseinzadeh Taher et al., "Representing part-whole hierarchies in foundation models by learning localizability,
composability, and decomposability from anatomy via self-supervision", CVPR 2024 (arXiv 2404.15672).

A DINO student (the study's ResNet encoder + :class:`~eden_lib.models.dino_head.DINOHead`, as
:class:`~eden_lib.models.dino_head.DinoNetwork`: keys ``student.encoder.*`` / ``student.head.*`` where the release writes
``backbone.*`` / ``head.*``, a prefix every loader strips) and its EMA teacher (cosine momentum 0.996 -> 1 over all
steps) learn from wholes W at granularity g (side R / 2^g) of the renders (``cxr_renders``) and W's 2x2 parts
(:mod:`eden_lib.transforms.part_whole`). ``L = loc_weight L_loc + comp_weight L_comp + dec_weight L_dec``:

* stage 0, warm-up ("L", the first ``warmup_fraction`` of the steps): DINO on a multi-crop of W (2 global crops
  through both networks, ``n_local`` local crops through the student; pairs of equal crops skipped), localizability
  only;
* stage 1, full ("LCD"): the teacher sees view 0 (W resized), the student view 1 and the local crops, all nested on
  W; ``L_loc`` over all ``1 + n_local`` pairs; ``L_comp``: ``compose_head`` maps the student's pooled features of
  the 4 parts to the teacher's of W; ``L_dec``: ``decompose_head`` maps the student's pooled features of W (view 0)
  to the teacher's of the 4 parts (:mod:`eden_lib.losses.part_whole`; ``decompose_norm``). A weight 0 turns its
  branch off (no forward pass, no gradient to its head); with ``comp_weight = dec_weight = 0`` stage 1 is
  localizability on the nested views.

Within each stage the granularities follow in order, each for its share of the stage's steps (the release: L 200-200-100
epochs at g = 0-1-2, then LCD 10-90-165). Stage and granularity derive from the ``steps_done`` buffer and the run's
length (:meth:`AdamV2.set_total_steps`, called by the pipeline before training), so a resumed run continues them.

Budget (:attr:`AdamV2.views`): distinct crops encoded per sample, a local crop counted by its area relative to a
global one and a crop counted once however many networks encode it (as :class:`~eden_lib.methods.dino.Dino` counts
its global crops): stage 0 ``2 + n_local/4``; stage 1 ``1`` (view 0) ``+ 1 + n_local/4`` (if ``loc_weight``) ``+ 4``
(the parts, if ``comp_weight`` or ``dec_weight``); averaged over the steps with ``warmup_fraction``. Network passes
in stage 1 are more: view 0 through the teacher and (decomposability) the student, the parts through the student
(composability) and the teacher (decomposability).

Differences from the release: one run with one optimiser and one lr / momentum schedule (the release runs the two
stages separately, each restarting its schedules, stage 2 from stage 1's networks and centre); weight decay fixed at
0.04 (release: cosine 0.04 -> 0.4), no linear lr warm-up (the engine's per-epoch cosine), no gradient clipping, no
fp16 scaler; the view differences listed in :mod:`eden_lib.transforms.part_whole`. The exported encoder is the
teacher's (the release fine-tunes from ``teacher``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eden_lib.losses.dino import DINOLoss
from eden_lib.losses.part_whole import DECOMPOSE_NORMS, composability_loss, decomposability_loss
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
from eden_lib.models.part_whole_heads import compose_head, decompose_head
from eden_lib.transforms.part_whole import LOCAL_AREA_BIN_EDGES, PartWholeRecipe, WholeMultiCrop, spread_bins


@dataclass(frozen=True)
class AdamV2Config:
    """``methods.adam_v2``: the release's ResNet-50 / ChestX-ray14 recipe (fractions are of all optimizer steps).

    Attributes:
        base_lr: lr per 256 images (the lr is ``base_lr * batch_size / 256``).
        out_dim, hidden_dim, bottleneck_dim: the DINO head (:class:`DINOHead`, last-layer norm fixed at 1).
        n_local: local crops per sample (release 8).
        global_area: area fraction range of the global crops of W (both stages; release 0.8-1.0).
        local_area: area fraction range of the warm-up's local crops of W (release 0.05-0.4).
        local_area_bins: edges of the full stage's local-crop area bins, one crop per bin
            (:func:`~eden_lib.transforms.part_whole.spread_bins` when ``n_local`` differs from their number).
        student_temp, teacher_temp: tau_s, tau_t (release 0.1, 0.04 without warm-up).
        center_momentum: EMA momentum of the DINO loss centre.
        momentum: base momentum of the teacher EMA (cosine to 1 over all steps).
        freeze_last_layer: fraction of the steps during which the DINO head's last layer is not updated (release:
            epoch 0, ~1 of 765).
        granularities: g of each level, in training order (a whole has side R / 2^g).
        warmup_fraction: share of the steps in the warm-up "L" stage (release 500 of 765 epochs).
        warmup_granularity_fractions, full_granularity_fractions: share of each granularity within the warm-up and
            the full stage (release 200-200-100 and 10-90-165 epochs); each sums to 1.
        loc_weight, comp_weight, dec_weight: lambda_L, lambda_C, lambda_D; 0 turns a branch off.
        decompose_norm: ``faithful`` (the release's joint normalisation of the 4D output) or ``per_part``
            (:mod:`eden_lib.losses.part_whole`). Default ``faithful``: both are minimised by the same directions
            (the faithful optimum is each slice at half its target), so it changes no learnt direction and keeps
            loss values comparable with the release's; ``per_part`` is the ablation.
    """

    dims: tuple[int, ...] = (2,)
    batch_size: int = 512
    base_lr: float = 5e-4
    weight_decay: float = 0.04
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_local: int = 8
    global_area: tuple[float, ...] = (0.8, 1.0)
    local_area: tuple[float, ...] = (0.05, 0.4)
    local_area_bins: tuple[float, ...] = LOCAL_AREA_BIN_EDGES
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    momentum: float = 0.996
    freeze_last_layer: float = 0.0013
    granularities: tuple[int, ...] = (0, 1, 2)
    warmup_fraction: float = 0.65
    warmup_granularity_fractions: tuple[float, ...] = (0.4, 0.4, 0.2)
    full_granularity_fractions: tuple[float, ...] = (0.04, 0.34, 0.62)
    loc_weight: float = 1.0
    comp_weight: float = 1.0
    dec_weight: float = 1.0
    decompose_norm: str = "faithful"

    def validate(self, name: str) -> None:
        def fail(key: str, expected: str) -> MethodConfigError:
            return config_failure(name, self, key, expected)

        check_2d_batch(name, self, "Adam-v2")
        for key in ("out_dim", "hidden_dim", "bottleneck_dim", "base_lr", "student_temp", "teacher_temp"):
            if getattr(self, key) <= 0:
                raise fail(key, "> 0")
        for key in ("n_local", "weight_decay", "loc_weight", "comp_weight", "dec_weight"):
            if getattr(self, key) < 0:
                raise fail(key, ">= 0")
        for key in ("center_momentum", "momentum", "freeze_last_layer", "warmup_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise fail(key, "a value in [0, 1]")
        for key in ("global_area", "local_area"):
            area = getattr(self, key)
            if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
                raise fail(key, "[low, high] with 0 < low <= high <= 1")
        edges = self.local_area_bins
        if len(edges) < 2 or not 0 < edges[0] or edges[-1] > 1 or any(a >= b for a, b in zip(edges, edges[1:])):
            raise fail("local_area_bins", "at least 2 increasing bin edges in (0, 1]")
        if not self.granularities or min(self.granularities) < 0:
            raise fail("granularities", "a non-empty list of integers >= 0")
        for key in ("warmup_granularity_fractions", "full_granularity_fractions"):
            fractions = getattr(self, key)
            if (len(fractions) != len(self.granularities) or min(fractions) < 0
                    or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)):
                raise fail(key, f"{len(self.granularities)} values >= 0 (one per granularity) summing to 1")
        if self.loc_weight == 0 and self.warmup_fraction > 0:
            raise fail("loc_weight", "> 0 while warmup_fraction > 0 (the warm-up trains localizability only)")
        if self.loc_weight == self.comp_weight == self.dec_weight == 0:
            raise fail("dec_weight", "> 0 when loc_weight and comp_weight are 0 (no loss left)")
        if self.decompose_norm not in DECOMPOSE_NORMS:
            raise fail("decompose_norm", f"one of {list(DECOMPOSE_NORMS)}")


class AdamV2(CosineEMATeacher, Method):
    """Adam-v2 on radiographs: DINO student / EMA teacher plus part-whole heads; exported teacher encoder."""

    name = "adam_v2"
    config_cls = AdamV2Config
    data = {2: "cxr_renders"}
    steps_done: torch.Tensor

    def __init__(self, cfg: AdamV2Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        encoder = networks.encoder_2d(ctx)
        head = DINOHead(encoder.out_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.student = DinoNetwork(encoder, head)
        self.teacher = momentum_copy(self.student)
        self.compose_head = compose_head(encoder.out_dim)
        self.decompose_head = decompose_head(encoder.out_dim)
        self.loss = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
        global_area = (cfg.global_area[0], cfg.global_area[1])
        self.warmup_views = WholeMultiCrop(ctx.image_size, cfg.n_local, global_area,
                                           (cfg.local_area[0], cfg.local_area[1]))
        self.full_views = PartWholeRecipe(ctx.image_size, global_area, spread_bins(cfg.local_area_bins, cfg.n_local))
        local = cfg.n_local * ((ctx.image_size // 2) / ctx.image_size) ** 2
        full = 1 + (1 + local if cfg.loc_weight else 0) + (4 if cfg.comp_weight or cfg.dec_weight else 0)
        #: distinct crops encoded per sample and step, averaged over the two stages (module docstring)
        self.views = cfg.warmup_fraction * (2 + local) + (1 - cfg.warmup_fraction) * full
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None
        # the heads idle in the warm-up, a branch at weight 0 always, the frozen last layer in the first steps
        self.ddp_find_unused_parameters = True

    def set_total_steps(self, n: int) -> None:
        """The number of optimizer steps of the whole run, which the stages and schedules span (before training)."""
        if n < 1:
            raise ValueError(f"total steps must be >= 1, got {n}")
        self.total_steps = n

    def stage_and_granularity(self, step: int) -> tuple[int, int]:
        """``(stage, g)`` of optimizer step ``step``: stage 0 (warm-up) or 1 (full) and the granularity g."""
        if self.total_steps is None:
            raise RuntimeError("adam_v2 needs the run's length: call set_total_steps(n) before training")
        cfg, total = self.cfg, self.total_steps
        warmup = cfg.warmup_fraction * total
        if step < warmup:
            stage, position, fractions = 0, step / warmup, cfg.warmup_granularity_fractions
        else:
            position = (step - warmup) / (total - warmup) if total > warmup else 1.0
            stage, fractions = 1, cfg.full_granularity_fractions
        bound = 0.0
        for g, fraction in zip(cfg.granularities, fractions):
            bound += fraction
            if position < bound:
                return stage, g
        return stage, cfg.granularities[-1]

    def warmup_terms(self, renders: torch.Tensor, g: int, generator: torch.Generator,
                     freeze: bool) -> dict[str, torch.Tensor]:
        """Stage 0: DINO over the multi-crop of W (teacher: the 2 global crops; pairs of equal crops skipped)."""
        b = renders.shape[0]
        crops = self.warmup_views.views(renders, g, generator)
        with torch.no_grad():
            teacher = self.teacher(crops[0])
        student = torch.cat([self.student(x, freeze) for x in crops])
        loss = self.loss(student.unflatten(0, (-1, b)), teacher.unflatten(0, (2, b)), self.cfg.teacher_temp)
        return {"loss_loc": loss}

    def full_terms(self, renders: torch.Tensor, g: int, generator: torch.Generator,
                   freeze: bool) -> dict[str, torch.Tensor]:
        """Stage 1: the branches with a weight > 0, on the nested views and parts of W."""
        cfg, b = self.cfg, renders.shape[0]
        views = self.full_views.views(renders, g, generator)
        with torch.no_grad():
            t_whole = self.teacher.encoder(views.whole)  # (B, D)
        terms: dict[str, torch.Tensor] = {}
        if cfg.loc_weight:
            with torch.no_grad():
                t_logits = self.teacher.head(t_whole)[None]  # (1, B, K)
            crops = [views.global_view, views.local] if cfg.n_local else [views.global_view]
            student = torch.cat([self.student(x, freeze) for x in crops]).unflatten(0, (-1, b))  # (1 + n, B, K)
            # DINOLoss skips the pair of equal crop indices; here every pair counts, so the teacher's view 0 takes an
            # empty student slot 0 that is left out of the loss
            student = torch.cat([torch.zeros_like(student[:1]), student])
            terms["loss_loc"] = self.loss(student, t_logits, cfg.teacher_temp)
        if cfg.comp_weight:
            s_parts = self.student.encoder(views.parts).unflatten(0, (4, b))  # (4, B, D)
            composed = self.compose_head(s_parts.transpose(0, 1).flatten(1))  # (B, 4D) -> (B, D)
            terms["loss_comp"] = composability_loss(composed, t_whole)
        if cfg.dec_weight:
            with torch.no_grad():
                t_parts = self.teacher.encoder(views.parts).unflatten(0, (4, b))  # (4, B, D)
            decomposed = self.decompose_head(self.student.encoder(views.whole))  # (B, D) -> (B, 4D)
            terms["loss_dec"] = decomposability_loss(decomposed, t_parts, cfg.decompose_norm)
        return terms

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Renders ``batch["image"]`` ``(B, 1, R, R)`` -> ``loss``, its terms ``loss_loc`` / ``loss_comp`` /
        ``loss_dec`` (0 when off or in the warm-up), ``stage`` (0 warm-up, 1 full) and ``granularity``."""
        cfg, renders = self.cfg, batch["image"]
        step = int(self.steps_done)
        stage, g = self.stage_and_granularity(step)
        assert self.total_steps is not None
        freeze = step < cfg.freeze_last_layer * self.total_steps
        terms = (self.warmup_terms if stage == 0 else self.full_terms)(renders, g, generator, freeze)
        weights = {"loss_loc": cfg.loc_weight, "loss_comp": cfg.comp_weight, "loss_dec": cfg.dec_weight}
        loss = sum(weights[key] * value for key, value in terms.items())
        zero = renders.new_zeros(())
        return {"loss": loss, **{key: terms.get(key, zero).detach() for key in weights},
                "stage": torch.tensor(float(stage)), "granularity": torch.tensor(float(g))}

    @torch.no_grad()
    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.teacher.encoder}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """AdamW at ``base_lr * batch_size / 256`` over the student and both heads; no decay on biases and norms."""
        modules = (self.student, self.compose_head, self.decompose_head)
        return adamw_no_norm_decay([p for m in modules for p in m.parameters()],
                                   self.cfg.base_lr * self.cfg.batch_size / 256, self.cfg.weight_decay)
