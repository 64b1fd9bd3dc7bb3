"""Ark: accruing knowledge from heterogeneous expert labels of many data sets, 2D.

Ma et al., "Foundation Ark: Accruing and Reusing Knowledge for Superior and Robust Performance", MICCAI 2023
(fact sheet: adam_ark.md section 3). Supervised, not self-supervised: a student (the study's 2D encoder, a projector
of ``projector_dim`` = 1376 units, linear or Linear-ReLU-Linear, and one linear head per site, ``omni_heads``) is
trained on one site (data set) at a time, cyclically; after each site's turn its weights are accrued into a
teacher by EMA ("epoch-wise EMA"); the teacher feeds back through a consistency loss. For a batch of site d with
student view x' and teacher view x''::

    L = (1 - lambda) * BCE(head_d(proj_s(x')), y) + lambda * MSE(proj_s(x'), proj_t(x''))

with the BCE over the known labels only (NaN = unknown: masked, where the release sets blanks to 0) and the MSE
over all ``projector_dim`` entries. Turn u of U = epochs x sites: lambda = ``consistency_weight`` x (1 - cos(pi u /
U)) / 2 (a cosine ramp 0 -> 0.5) and, at the end of the turn, the teacher update with momentum m = 1 - (1 -
``ema_momentum``) (1 + cos(pi u / U)) / 2 (cosine 0.9 -> 1). The teacher is the whole student network (heads
included, as in the release; its heads take no part in the loss) and never receives gradients. It runs in eval mode,
batch norm on the running statistics the EMA copies from the student, as the release's teacher does after its first
evaluation (fact sheet 3.5): its state changes only at the end of a turn.

The loss's weighting moves with lambda, so across epochs ``loss_cls`` (and its monitored ``monitor_loss_cls`` on the
sites' validation rows) is the comparable number; in eval mode a batch of any site is scored with that site's head.

Cyclic schedule: an epoch is site 0's turn, then site 1's, ... (``cxr_sites`` batches from
:func:`eden_lib.data.batches.site_batches`, each batch from one site with a ``site`` tensor); the pipeline calls
:meth:`Ark.set_schedule` with the steps of each turn before training: the shared budget's steps of an epoch split in
proportion to the sites' training rows, at least one each (:func:`eden_lib.data.batches.site_steps`; the release's turn
is one pass over the data set, so its turns are proportional too). Turn, site and schedules derive from the
``steps_done`` buffer, so a resumed run continues them exactly.

Views (the release's albumentations recipe, batched): both views share one geometric transform per sample, a random
resized square crop of the whole render (side fraction ``scale``; release: area 0.08-1.0, aspect 3/4-4/3) composed
with, at probability ``geometric_p``, a rotation of +-``rotate`` degrees, a zoom of 1 +- ``zoom`` and a shift of
+-``shift`` of the side (ShiftScaleRotate), resampled once to ``data.image_size``; only the student's view then gets,
at probability ``intensity_p``, one of brightness/contrast (``brightness``, ``contrast``) or gamma (``gamma``).
Differences from the release: one bilinear resampling of the render for both views (the release resamples the
teacher's view with nearest neighbours and reflects the crop's border where we read the render around it), square
crops, no ImageNet normalisation (one grey channel).

Backbone: the study's 2D backbone (``pretrain.backbone_2d``: ResNet or ConvNeXt), or with ``backbone_2d: swin_b`` (the
``paper`` profile) the paper's Swin-B for Ark alone: :class:`~eden_lib.models.swin.SwinEncoder`, timm 0.5.4's layout
from MONAI's Swin blocks (1024 pooled features), into which the released Ark weights load strictly
(:func:`~eden_lib.checkpoints.load_pretrained` with ``source="ark"``, e.g. as ``pretrain.init.ark``).

Optimiser: SGD (Nesterov, as timm's ``sgd``) at ``lr`` 0.3, momentum 0.9, weight decay 0, under the engine's per-epoch
cosine; not reproduced: the 20 warm-up epochs and the release's scheduler quirk (the validation loss passed as the
epoch, which pins the lr near 0.015 x val loss; fact sheet 3.5). The exported ``encoder`` is the teacher's (the
released Ark weights are the teacher); ``teacher`` exports the whole teacher network (``encoder.*``,
``projector.*``, ``omni_heads.*``) for the 1376-d embeddings and zero-shot use of the heads.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext, Method, MethodConfigError, check_2d_batch, config_failure
from eden_lib.methods.supervised import masked_bce
from eden_lib.models.ema import cosine_momentum, momentum_copy, momentum_update
from eden_lib.models.swin import SWINS
from eden_lib.transforms.views import crop_boxes


@dataclass(frozen=True)
class ArkViewConfig:
    """The supervised half of ``methods.ark``, shared with ``supervised_site``: optimiser, projector, views
    (fact sheet 3.2-3.5, MICCAI 2023 Swin-B recipe).

    Attributes:
        backbone_2d: ``""``: the study's ``pretrain.backbone_2d``; a name of :data:`~eden_lib.models.swin.SWINS`
            (``swin_b``: the paper's Swin-B) for this method alone (:func:`~eden_lib.pipeline.pretrain.build_context`;
            transfer loads the export into the same network).
        batch_size: images per step, all from one site (release 200).
        lr, momentum, nesterov, weight_decay: SGD (release 0.3, 0.9, Nesterov, 0).
        projector_dim: units of the projector, the consistency space and the embedding (release 1376).
        projector_mlp: Linear-ReLU-Linear (the released ``_mlp`` weights) instead of one Linear.
        scale: crop side as a fraction of the render side (release: area 0.08-1.0, side 0.28-1.0).
        geometric_p: probability of the shift / zoom / rotation (release 0.5).
        rotate: degrees, uniform in +-rotate (release 10).
        shift: fraction of the crop side, uniform in +-shift per axis (release 0.0625).
        zoom: the crop is zoomed by a factor uniform in 1 +- zoom (release 0.1).
        intensity_p: probability that the student's view gets one intensity transform (release 0.3).
        brightness, contrast: ``x * (1 + c) + b`` with c in +-contrast and b in +-brightness (release 0.2, 0.2).
        gamma: ``x ** g`` with g uniform in this range (release 0.8-1.2).
    """

    dims: tuple[int, ...] = (2,)
    backbone_2d: str = ""
    batch_size: int = 200
    lr: float = 0.3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    projector_dim: int = 1376
    projector_mlp: bool = True
    scale: tuple[float, ...] = (0.28, 1.0)
    geometric_p: float = 0.5
    rotate: float = 10.0
    shift: float = 0.0625
    zoom: float = 0.1
    intensity_p: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, ...] = (0.8, 1.2)

    def validate(self, name: str) -> None:
        def fail(key: str, expected: str) -> MethodConfigError:
            return config_failure(name, self, key, expected)

        check_2d_batch(name, self, name)
        if self.backbone_2d not in ("", *SWINS):
            raise fail("backbone_2d", f"'' (pretrain.backbone_2d) or one of {sorted(SWINS)} (a ResNet or ConvNeXt "
                                      f"is set in pretrain.backbone_2d, with its widths)")
        for key in ("lr", "projector_dim"):
            if getattr(self, key) <= 0:
                raise fail(key, "> 0")
        for key in ("weight_decay", "rotate", "shift", "brightness", "contrast"):
            if getattr(self, key) < 0:
                raise fail(key, ">= 0")
        for key in ("momentum", "geometric_p", "intensity_p"):
            if not 0 <= getattr(self, key) <= 1:
                raise fail(key, "a value in [0, 1]")
        if not 0 <= self.zoom < 1:
            raise fail("zoom", "a value in [0, 1)")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise fail("scale", "[low, high] with 0 < low <= high <= 1")
        if len(self.gamma) != 2 or not 0 < self.gamma[0] <= self.gamma[1]:
            raise fail("gamma", "[low, high] with 0 < low <= high")


@dataclass(frozen=True)
class ArkConfig(ArkViewConfig):
    """``methods.ark``: :class:`ArkViewConfig` and the knowledge accrual.

    Attributes:
        ema_momentum: base momentum of the teacher, cosine to 1 over the turns (release 0.9).
        consistency_weight: lambda at the end of its cosine ramp from 0 (release 0.5).
        sites: names of the prepared sites to train on, in training order (``data.sites`` keys); empty: all of them.
    """

    ema_momentum: float = 0.9
    consistency_weight: float = 0.5
    sites: tuple[str, ...] = ()

    def validate(self, name: str) -> None:
        super().validate(name)
        for key in ("ema_momentum", "consistency_weight"):
            if not 0 <= getattr(self, key) <= 1:
                raise config_failure(name, self, key, "a value in [0, 1]")
        if len(set(self.sites)) != len(self.sites):
            raise config_failure(name, self, "sites", "distinct site names")


def consistency_ramp(turn: int, turns: int, weight: float) -> float:
    """lambda of ``turn`` (0-based) of ``turns``: ``weight * (1 - cos(pi turn / turns)) / 2``, 0 at the first turn."""
    return weight * (1 - math.cos(math.pi * min(turn, turns) / max(turns, 1))) / 2


def ark_projector(in_dim: int, dim: int, mlp: bool) -> nn.Module:
    """The release's projector: ``Linear(in, dim)`` (keys ``projector.weight/bias``) or Linear-ReLU-Linear
    (``projector.0.*``, ``projector.2.*``)."""
    if not mlp:
        return nn.Linear(in_dim, dim)
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


class ArkNetwork(nn.Module):
    """Encoder, projector and one linear head per site, under the release's names (``encoder.`` where the release's
    backbone keys have no prefix).

    ``forward(x)``: ``(B, 1, S, S)`` -> the projected embedding ``(B, projector_dim)``; ``omni_heads[d]`` maps it to
    site d's logits ``(B, C_d)``.
    """

    def __init__(self, encoder: nn.Module, projector_dim: int, mlp: bool, head_sizes: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = ark_projector(encoder.out_dim, projector_dim, mlp)
        self.omni_heads = nn.ModuleList(nn.Linear(projector_dim, c) for c in head_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def shared_geometry(renders: torch.Tensor, cfg: ArkConfig, size: int, generator: torch.Generator) -> torch.Tensor:
    """Renders ``(B, C, R, R)`` -> one geometric view per sample ``(B, C, size, size)``: a random resized crop
    (:func:`~eden_lib.transforms.views.crop_boxes`) composed with a shift / zoom / rotation at ``geometric_p``,
    resampled once (bilinear, the render reflected past its border)."""
    b = renders.shape[0]
    boxes = crop_boxes(b, (cfg.scale[0], cfg.scale[1]), generator)  # (B, 3): side fraction, centre x, y
    on = (torch.rand(b, generator=generator) < cfg.geometric_p).float()
    angle = torch.deg2rad(cfg.rotate * (2 * torch.rand(b, generator=generator) - 1)) * on
    zoom = 1 + cfg.zoom * (2 * torch.rand(b, generator=generator) - 1) * on
    shift = 2 * cfg.shift * (2 * torch.rand(b, 2, generator=generator) - 1) * on[:, None]  # [-1, 1] crop coords
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    side = boxes[:, 0]
    theta = torch.zeros(b, 2, 3)
    # output -> crop coordinates: rotate and zoom about the centre, then shift; crop -> render: side * p + centre
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = side * cos, -side * sin, side * sin, side * cos
    theta[:, :, 2] = boxes[:, 1:] - side[:, None] * shift
    theta = theta.to(renders)
    grid = F.affine_grid(theta, [b, renders.shape[1], size, size], align_corners=False)
    return F.grid_sample(renders, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def intensity(x: torch.Tensor, cfg: ArkConfig, generator: torch.Generator) -> torch.Tensor:
    """``(B, C, S, S)`` in [0, 1] -> the same with, at ``intensity_p`` per sample, one of brightness/contrast or gamma
    (equally likely); clamped to [0, 1]."""
    b = x.shape[0]
    on = torch.rand(b, generator=generator) < cfg.intensity_p
    use_gamma = torch.rand(b, generator=generator) < 0.5
    contrast = 1 + cfg.contrast * (2 * torch.rand(b, generator=generator) - 1)
    bright = cfg.brightness * (2 * torch.rand(b, generator=generator) - 1)
    g = cfg.gamma[0] + (cfg.gamma[1] - cfg.gamma[0]) * torch.rand(b, generator=generator)
    linear = on & ~use_gamma
    contrast = torch.where(linear, contrast, torch.ones(b)).view(b, 1, 1, 1).to(x)
    bright = torch.where(linear, bright, torch.zeros(b)).view(b, 1, 1, 1).to(x)
    g = torch.where(on & use_gamma, g, torch.ones(b)).view(b, 1, 1, 1).to(x)
    return (x.clamp(0, 1) ** g * contrast + bright).clamp(0, 1)


class Ark(Method):
    """Ark on several CXR sites: cyclic student with per-site heads, epoch-wise EMA teacher; exported teacher."""

    name = "ark"
    config_cls = ArkConfig
    data: ClassVar[Mapping[int, str]] = {2: "cxr_sites"}
    #: two views per sample: the student's and the teacher's
    views = 2
    steps_done: torch.Tensor

    def __init__(self, cfg: ArkConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not ctx.site_label_counts:
            raise MethodConfigError(
                "ark needs the label count of every site (BuildContext.site_label_counts is empty); it trains on the "
                "prepared sites data (data/prepared/sites)"
            )
        self.student = ArkNetwork(networks.encoder_2d(ctx), cfg.projector_dim, cfg.projector_mlp,
                                  ctx.site_label_counts)
        self.teacher = momentum_copy(self.student).eval()
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.steps_per_site: tuple[int, ...] | None = None
        self.epochs = 0
        # the heads of the other sites take no part in a batch's loss
        self.ddp_find_unused_parameters = True

    @property
    def n_sites(self) -> int:
        return len(self.ctx.site_label_counts)

    def set_schedule(self, steps_per_site: Sequence[int], epochs: int) -> None:
        """Optimizer steps of each site's turn (this process's, under DDP), the same every epoch, and the number of
        epochs: the cyclic schedule the batches follow (called before training)."""
        steps = [int(s) for s in steps_per_site]
        if len(steps) != self.n_sites or min(steps) < 1:
            raise ValueError(f"ark schedule: steps per site {steps}; expected {self.n_sites} values >= 1, one per site")
        if epochs < 1:
            raise ValueError(f"ark schedule: epochs must be >= 1, got {epochs}")
        self.steps_per_site, self.epochs = tuple(steps), epochs

    @property
    def turns(self) -> int:
        """U: site turns of the whole run (epochs x sites), the length of the lambda and momentum schedules."""
        return self.epochs * self.n_sites

    def turn_at(self, step: int) -> tuple[int, int, bool]:
        """``(turn u, site d, whether the step ends the turn)`` of optimizer step ``step`` (0-based)."""
        if self.steps_per_site is None:
            raise RuntimeError("ark needs its cyclic schedule: call set_schedule(steps_per_site, epochs) first")
        ends = list(itertools.accumulate(self.steps_per_site))
        epoch, position = divmod(step, ends[-1])
        site = bisect.bisect_right(ends, position)
        return epoch * self.n_sites + site, site, position == ends[site] - 1

    def consistency_weight(self, turn: int) -> float:
        """lambda of turn ``turn``: cosine 0 -> ``consistency_weight`` over the turns."""
        return consistency_ramp(turn, self.turns, self.cfg.consistency_weight)

    def ema_momentum(self, turn: int) -> float:
        """Teacher momentum at the end of turn ``turn``: cosine ``ema_momentum`` -> 1 over the turns."""
        return cosine_momentum(self.cfg.ema_momentum, turn, self.turns)

    def views_of(self, renders: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Renders ``(B, 1, R, R)`` -> ``(student view, teacher view)``, both ``(B, 1, S, S)`` at ``image_size``: one
        geometry, intensity only on the student's."""
        teacher_view = shared_geometry(renders, self.cfg, self.ctx.image_size, generator)
        return intensity(teacher_view, self.cfg, generator), teacher_view

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``image`` ``(B, 1, R, R)`` renders of one site, ``label`` ``(B, K_max)`` (NaN = unknown or padding), ``site``
        ``(B,)`` -> ``loss``, ``loss_cls``, ``loss_cons`` and ``lambda``. In training the site must be the schedule's."""
        sites = batch["site"].unique()
        if sites.numel() != 1:
            raise ValueError(f"an ark batch holds one site; got sites {sites.tolist()}")
        site = int(sites)
        if not 0 <= site < self.n_sites:
            raise ValueError(f"ark batch of site {site}; the method has {self.n_sites} site heads")
        turn, expected, _ = self.turn_at(int(self.steps_done))
        if self.training and site != expected:
            raise RuntimeError(f"ark step {int(self.steps_done)} belongs to site {expected}'s turn, got a batch of "
                               f"site {site}: the batches do not follow set_schedule")
        student_view, teacher_view = self.views_of(batch["image"], generator)
        with torch.no_grad():
            target = self.teacher(teacher_view)
        embedding = self.student(student_view)
        logits = self.student.omni_heads[site](embedding)
        loss_cls = masked_bce(logits, batch["label"][:, : logits.shape[1]])
        loss_cons = F.mse_loss(embedding.float(), target.float())
        lam = self.consistency_weight(turn)
        return {"loss": (1 - lam) * loss_cls + lam * loss_cons, "loss_cls": loss_cls.detach(),
                "loss_cons": loss_cons.detach(), "lambda": torch.tensor(lam)}

    @torch.no_grad()
    def after_step(self) -> None:
        """Count the step; when it ends a site's turn, accrue the student into the teacher (epoch-wise EMA)."""
        turn, _, last = self.turn_at(int(self.steps_done))
        if last:
            momentum_update(self.teacher, self.student, self.ema_momentum(turn))
        self.steps_done += 1

    def train(self, mode: bool = True) -> Ark:
        """Set the student's mode; the teacher always runs in eval mode (module docstring)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.teacher.encoder, "teacher": self.teacher}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.SGD(self.student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
