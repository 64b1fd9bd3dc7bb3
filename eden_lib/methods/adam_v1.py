"""Adam-v1: coarse-to-fine anatomy learning with a purposive pruner (Hosseinzadeh Taher et al., "Towards foundation
models learned from anatomy in medical imaging via self-supervision", MICCAI-DART 2023, arXiv:2309.15358).

MoCo-v2 (:mod:`eden_lib.methods.branches.moco`: queue, momentum key encoder, shuffle-BN emulation) on anatomy parts:
at granularity ``n`` the anatomy decomposer (:mod:`eden_lib.transforms.decomposer`) splits each render into ``2**n``
parts, one part is the anchor, and both views are random resized crops within it (area (0.2, 1.0)), jittered,
blurred and rotated by up to +-30 degrees, never flipped. At ``n = 0`` the loss is MoCo-v2's InfoNCE; at ``n > 0``
the purposive pruner (:class:`~eden_lib.losses.purposive_pruner.PurposivePrunerLoss`) drops the queue negatives
whose cosine to the query is >= ``sim_threshold`` (0.8), as the same anatomy of other patients is no negative.

Stages: the paper trains n = 0, 2, 4 for 200 epochs each, every stage started from the previous stage's full MoCo
checkpoint (encoders, momentum encoder and queue) with a fresh SGD optimiser and its own cosine schedule. Here one
run does all stages in sequence: stage ``i`` takes ``stage_fractions[i]`` of the run's optimizer steps, the stage is
read from the ``steps_done`` buffer and the run's length announced by :meth:`AdamV1.set_total_steps`, so a resumed
run continues in the right stage. The queue and the momentum encoder carry over, as in the paper; unlike the paper,
one optimiser (momentum state kept) and one cosine schedule span the whole run, so the later stages train at lower
learning rates than the paper's restarts.

Monitoring (eval mode, the engine's loss on fixed batches): the views of the current stage's granularity, scored
with the batch's other keys as negatives as MoCo-v2 does (no pruning, the queue untouched); the monitored loss
therefore jumps where a stage begins. Paper defaults: ResNet-50 from scratch, batch 256 on 4 GPUs (shuffle-BN over
4 splits), SGD lr 0.03, momentum 0.9, weight decay 1e-4, tau 0.2, m 0.999, queue 65,536, projector 2048-2048-128.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from eden_lib.distributed import gather_rows
from eden_lib.losses import PurposivePrunerLoss
from eden_lib.methods.base import BuildContext
from eden_lib.methods.branches.moco import MoCoV2Branch, MoCoV2Config
from eden_lib.methods.branches.two_view import TwoViewMethod
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.transforms.decomposer import choose_parts, crop_parts, part_view


@dataclass(frozen=True)
class AdamV1Config(MoCoV2Config):
    """``methods.adam_v1``: MoCo-v2's fields (paper values; 4 shuffle-BN splits, no flip) plus the stages.

    Attributes:
        granularities: the decomposer's level per stage, coarse to fine (paper 0, 2, 4); ``2**n`` parts.
        stage_fractions: share of the run's optimizer steps per stage (paper: 200 epochs each); one per level,
            summing to 1 (within 1e-3; the last stage runs to the end).
        pruner: the purposive pruner on the stages with ``n > 0`` (the paper's ablation turns it off).
        sim_threshold: queue keys with cosine to the query >= this are pruned (0.8), in (-1, 1]; 1 prunes nothing.
        rotation: views are rotated by an angle uniform in [-rotation, rotation] degrees (30).
    """

    bn_splits: int = 4
    flip_p: float = 0.0
    granularities: tuple[int, ...] = (0, 2, 4)
    stage_fractions: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    pruner: bool = True
    sim_threshold: float = 0.8
    rotation: float = 30.0

    def validate_branch(self, name: str) -> None:
        super().validate_branch(name)
        if not self.granularities or min(self.granularities) < 0:
            raise self.fail(name, "granularities", "a non-empty list of levels >= 0 (2**n parts)")
        if (len(self.stage_fractions) != len(self.granularities) or min(self.stage_fractions) <= 0
                or not math.isclose(sum(self.stage_fractions), 1, abs_tol=1e-3)):
            raise self.fail(name, "stage_fractions", f"{len(self.granularities)} fractions > 0, one per granularity, "
                                                     f"summing to 1")
        if not -1 < self.sim_threshold <= 1:
            raise self.fail(name, "sim_threshold", "a cosine in (-1, 1]")
        if not 0 <= self.rotation <= 180:
            raise self.fail(name, "rotation", "degrees in [0, 180]")


class AdamV1Branch(MoCoV2Branch):
    """MoCo-v2's branch whose training loss can prune the queue (:class:`PurposivePrunerLoss`)."""

    def __init__(self, encoder: ResNetEncoder, cfg: AdamV1Config) -> None:
        super().__init__(encoder, cfg)
        self.pruner = PurposivePrunerLoss(cfg.temperature, cfg.sim_threshold)

    def loss(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        generator: torch.Generator,
        stages1: list[torch.Tensor] | None = None,
        prune: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Two views ``(B, 1, S, S)`` -> ``{"loss_dis", "pruned_fraction"}``: with ``prune`` in training the purposive
        pruner against the queue (which then takes the keys), otherwise :meth:`MoCoV2Branch.loss` (plain InfoNCE;
        in eval mode in-batch negatives, queue untouched) and a pruned fraction of 0."""
        if not (prune and self.training):
            out = super().loss(view1, view2, generator, stages1)
            return {**out, "pruned_fraction": torch.zeros((), device=out["loss_dis"].device)}
        q = F.normalize(self.projected_view1(view1, stages1), dim=1)
        k = self.keys(view2, generator)
        loss, pruned = self.pruner(q, k, self.queue.clone())
        self.enqueue(gather_rows(k))
        return {"loss_dis": loss, "pruned_fraction": pruned}


class AdamV1(TwoViewMethod):
    """Adam-v1 on radiographs: every stage of the coarse-to-fine schedule in one run; exports the query encoder."""

    name = "adam_v1"
    config_cls = AdamV1Config
    branch_cls = AdamV1Branch
    discriminative: AdamV1Branch
    steps_done: torch.Tensor

    def __init__(self, cfg: AdamV1Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None

    def set_total_steps(self, n: int) -> None:
        """The run's optimizer steps (called by the pipeline before training): where each stage begins."""
        super().set_total_steps(n)
        self.total_steps = n

    def granularity(self) -> int:
        """The current stage's level: stage ``i`` starts at step ``round(sum(stage_fractions[:i]) * total_steps)``."""
        if self.total_steps is None:
            raise RuntimeError("adam_v1 needs the run's length: call set_total_steps(n) before training")
        starts = [round(c * self.total_steps) for c in accumulate(self.cfg.stage_fractions[:-1])]
        return self.cfg.granularities[bisect_right(starts, int(self.steps_done))]

    def anchor_views(
        self, images: torch.Tensor, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Renders ``(B, 1, R, R)`` -> two views ``(B, 1, S, S)`` of one random part per render at level ``n``,
        S = ``ctx.image_size``."""
        parts = crop_parts(images, choose_parts(images.shape[0], n, generator), n)
        view1 = part_view(parts, self.view_cfg, self.cfg.rotation, generator)
        return view1, part_view(parts, self.view_cfg, self.cfg.rotation, generator)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"loss", "loss_dis"`` (the same), ``"granularity"`` (the stage's n), ``"pruned_fraction"}``, scalars."""
        n = self.granularity()
        with torch.no_grad():
            view1, view2 = self.anchor_views(batch["image"], n, generator)
        out = self.discriminative.loss(view1, view2, generator, prune=self.cfg.pruner and n > 0)
        return {"loss": out["loss_dis"], **out, "granularity": out["loss_dis"].new_tensor(float(n))}

    def after_step(self) -> None:
        """The momentum update, then count the step."""
        super().after_step()
        self.steps_done += 1
