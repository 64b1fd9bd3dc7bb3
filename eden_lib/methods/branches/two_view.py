"""The instance-discrimination branch shared by MoCo-v2, Barlow Twins, SimSiam and by CAiD / DiRA.

A :class:`Discriminative` module is built from the study encoder and owns everything else of its method (heads,
momentum copies, queue, loss): ``loss(view1, view2, stages1)`` returns ``{"loss_dis": ...}``, ``after_step()`` does
its per-step updates (MoCo's momentum encoder). The plain methods (:class:`TwoViewMethod`) and the
discriminative-restorative family (:mod:`eden_lib.methods.branches.restorative`) use the same branches, so a branch is written
once. ``stages1`` lets CAiD / DiRA pass the encoder's feature maps of ``view1`` that its decoder also reads, so the
restoration costs no extra encoder pass.

Views: two random resized crops of the whole render (``cxr_renders``) with :func:`eden_lib.transforms.views.make_view`
(paper defaults: area scale (0.2, 1.0), i.e. side (0.45, 1.0); brightness/contrast jitter p 0.8; Gaussian blur
p 0.5; horizontal flip p 0.5). Optimiser: SGD with momentum, cosine decay per epoch (MoCo-v2 / DiRA: lr 0.03,
momentum 0.9, weight decay 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext, Method, MethodConfigError
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.transforms.views import ViewConfig, make_view


@dataclass(frozen=True)
class TwoViewConfig:
    """Fields of every two-view method: the 2D-only switch, the optimiser and the view recipe (``ViewConfig``).

    Attributes:
        scale: crop side range as a fraction of the render side (area (0.2, 1.0) = side (0.45, 1.0)).
        jitter_p, brightness, contrast, blur_p, blur_sigma, flip_p: as :class:`ViewConfig`.
    """

    dims: tuple[int, ...] = (2,)
    batch_size: int = 256
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scale: tuple[float, ...] = (0.45, 1.0)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.5
    blur_sigma: tuple[float, ...] = (0.1, 2.0)
    flip_p: float = 0.5

    def fail(self, name: str, key: str, expected: str) -> MethodConfigError:
        """An error naming ``methods.<name>.<key>``, its value and what was expected."""
        value = getattr(self, key)
        return MethodConfigError(f"methods.{name}.{key} = {list(value) if isinstance(value, tuple) else value!r}; "
                                 f"expected {expected}")

    def validate(self, name: str) -> None:
        """Check the shared fields, then the branch's (:meth:`validate_branch`)."""
        self.validate_shared(name)
        self.validate_branch(name)

    def validate_branch(self, name: str) -> None:
        """The fields a subclass adds (none here)."""

    def validate_shared(self, name: str) -> None:
        if set(self.dims) != {2}:
            raise self.fail(name, "dims", "[2] (implemented for 2D only)")
        for key in ("batch_size", "lr"):
            if getattr(self, key) <= 0:
                raise self.fail(name, key, "> 0")
        if self.batch_size < 2:
            raise self.fail(name, "batch_size", ">= 2 (batch norm and the losses need two samples)")
        if not 0 <= self.momentum < 1:
            raise self.fail(name, "momentum", "a value in [0, 1)")
        for key in ("weight_decay", "brightness", "contrast"):
            if getattr(self, key) < 0:
                raise self.fail(name, key, ">= 0")
        for key in ("jitter_p", "blur_p", "flip_p"):
            if not 0 <= getattr(self, key) <= 1:
                raise self.fail(name, key, "a probability in [0, 1]")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise self.fail(name, "scale", "[low, high] with 0 < low <= high <= 1")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise self.fail(name, "blur_sigma", "[low, high] with 0 < low <= high")

    def view_config(self, size: int) -> ViewConfig:
        return ViewConfig(size=size, scale=(self.scale[0], self.scale[1]), jitter_p=self.jitter_p,
                          brightness=self.brightness, contrast=self.contrast, blur_p=self.blur_p,
                          blur_sigma=(self.blur_sigma[0], self.blur_sigma[1]), flip_p=self.flip_p)


def pooled(stages: list[torch.Tensor]) -> torch.Tensor:
    """Encoder feature maps (:meth:`ResNetEncoder.stages`) -> globally average-pooled ``(B, out_dim)``."""
    return stages[-1].mean(dim=(2, 3))


class Discriminative(nn.Module):
    """Base of the instance-discrimination branches; subclasses build their heads from ``cfg`` in ``__init__``."""

    projector: nn.Module  #: the online projection head every branch builds

    def __init__(self, encoder: ResNetEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The online encoder's five feature maps of ``x`` ``(B, 1, S, S)`` (what a restoration decoder reads)."""
        return self.encoder.stages(x)

    def view1_stages(self, view1: torch.Tensor, stages1: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """``stages1`` when the caller already ran :meth:`stages` on ``view1`` (CAiD / DiRA), else that pass."""
        return stages1 if stages1 is not None else self.stages(view1)

    def projected_view1(self, view1: torch.Tensor, stages1: list[torch.Tensor] | None) -> torch.Tensor:
        """The online projection of ``view1``: ``projector(pooled(stages))`` ``(B, projector output)``; every
        branch names its projection head ``projector``."""
        return self.projector(pooled(self.view1_stages(view1, stages1)))

    def loss(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        generator: torch.Generator,
        stages1: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Two views ``(B, 1, S, S)`` of the same images -> ``{"loss_dis": scalar, **scalars}``.

        ``generator``: the step's randomness (MoCo's key shuffle); ``stages1``: ``self.stages(view1)`` when the
        caller already ran it.
        """
        raise NotImplementedError

    def after_step(self) -> None:
        """Per-step update after the optimiser step (none by default)."""

    def set_total_steps(self, n: int) -> None:
        """The run's optimizer steps (for checks that depend on the run's length; none by default)."""


class TwoViewMethod(Method):
    """A plain two-view method: the loss of its :class:`Discriminative` branch on two views of each render."""

    data = {2: "cxr_renders"}
    views = 2
    branch_cls: ClassVar[type[Discriminative]]

    def __init__(self, cfg: Any, ctx: BuildContext, encoder: ResNetEncoder | None = None) -> None:
        super().__init__(cfg, ctx)
        self.discriminative = self.make_branch(encoder or networks.encoder_2d(ctx))
        self.view_cfg = cfg.view_config(ctx.image_size)

    def make_branch(self, encoder: ResNetEncoder) -> Discriminative:
        return self.branch_cls(encoder, self.cfg)

    def two_views(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Renders ``(B, 1, R, R)`` -> ``(view1, view2, clean1)``, each ``(B, 1, S, S)``, S = ``ctx.image_size``;
        ``clean1`` is view 1's crop before jitter, blur and flip."""
        view1, clean1 = make_view(images, self.view_cfg, generator)
        view2, _ = make_view(images, self.view_cfg, generator)
        return view1, view2, clean1

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            view1, view2, _ = self.two_views(batch["image"], generator)
        out = self.discriminative.loss(view1, view2, generator)
        return {"loss": out.pop("loss_dis"), **out}

    def after_step(self) -> None:
        self.discriminative.after_step()

    def set_total_steps(self, n: int) -> None:
        """Called by the pretrain pipeline with the run's optimizer steps, before training."""
        self.discriminative.set_total_steps(n)

    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.discriminative.encoder}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the main optimiser updates (momentum copies have ``requires_grad`` off)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.trainable_parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay)
