"""The contract every pretraining method follows, and per-method config validation.

A method is an ``nn.Module`` built for one ``spatial_dims`` (2: SynthCXR / radiographs, 3: SynthCT / CT). The
engine calls ``forward(batch, generator) -> {"loss": ..., **scalars}``; ``exports()`` names the modules transfer
reuses (``encoder`` for 2D, ``unet3d`` for 3D, plus ``unet`` where a 2D decoder is pretrained too).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


class MethodConfigError(ValueError):
    """A method block of ``params.yaml`` with an unknown key or a bad value."""


@dataclass(frozen=True)
class BuildContext:
    """What a method needs to know about the study to build its networks.

    Attributes:
        spatial_dims: 2 or 3.
        backbone_2d: ``pretrain.backbone_2d`` (``name``, ``widths``), or ``{"name": ...}`` where the method's block
            names its own (Ark's ``backbone_2d``; :func:`~eden_lib.pipeline.pretrain.build_context`).
        unet2d_decoder: five decoder widths of the 2D U-Net.
        unet3d_width: base width of the Models Genesis UNet3D (paper 32).
        n_labels: supervised targets per sample (findings for 2D, 1 for 3D candidates).
        image_size: the 2D training resolution (``data.image_size``); methods reading ``cxr_renders`` crop their
            views from the full render and resample them to this size.
        site_label_counts: labels of each site of the prepared sites data, in training order (``cxr_sites``
            methods: one head per site); empty otherwise.
        in_channels: image channels of the 2D encoder (1: radiographs; 3: the RGB natural source of the
            domain-transfer claim, :mod:`eden_lib.pipeline.natural_source`).
        backbone_3d: ``None`` for the study's UNet3D, else a Swin-UNETR block (``{"name": "swin_unetr", ...}``,
            :func:`~eden_lib.models.swin_unetr.swin_unetr_spec`; Alice's ``backbone_3d``).
    """

    spatial_dims: int
    backbone_2d: Mapping[str, Any]
    unet2d_decoder: tuple[int, ...]
    unet3d_width: int
    n_labels: int
    image_size: int = 64
    site_label_counts: tuple[int, ...] = ()
    in_channels: int = 1
    backbone_3d: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MethodConfig:
    """Fields shared by every trainable method."""

    dims: tuple[int, ...] = (2, 3)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0


def config_failure(name: str, cfg: Any, key: str, expected: str) -> MethodConfigError:
    """An error naming ``methods.<name>.<key>``, its value in ``cfg`` (tuples shown as lists) and what was expected."""
    value = getattr(cfg, key)
    shown = list(value) if isinstance(value, tuple) else value
    return MethodConfigError(f"methods.{name}.{key} = {shown!r}; expected {expected}")


def check_2d_batch(name: str, cfg: Any, label: str) -> None:
    """The checks of every 2D-only, batch-norm method: ``dims`` is [2] and ``batch_size`` >= 2."""
    if not cfg.dims or set(cfg.dims) != {2}:
        raise config_failure(name, cfg, "dims", f"[2] ({label} is implemented for 2D only)")
    if cfg.batch_size < 2:
        raise config_failure(name, cfg, "batch_size", ">= 2 (batch norm needs two samples)")


def adamw_no_norm_decay(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with ``weight_decay`` on weight matrices and kernels only; biases and norm parameters (ndim <= 1) are
    not decayed (DINO's recipe, also Adam-v2's)."""
    params = [p for p in params if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _check_type(name: str, key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise MethodConfigError(f"methods.{name}.{key} = {value!r}; expected a list")
        (inner, *_) = typing.get_args(hint)
        return tuple(_check_type(name, key, v, inner) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise MethodConfigError(f"methods.{name}.{key} = {value!r}; expected {getattr(hint, '__name__', hint)}")


def parse_config(name: str, config_cls: type, block: Mapping[str, Any]) -> Any:
    """Build ``config_cls`` from a ``params.yaml`` block: unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(block) - set(fields))
    if unknown:
        raise MethodConfigError(f"methods.{name}: unknown keys {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(config_cls)
    values = {k: _check_type(name, k, v, hints[k]) for k, v in block.items()}
    cfg = config_cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate(name)
    return cfg


class Method(nn.Module):
    """Base class: subclasses set ``name``, ``config_cls``, ``trains`` and the data they read."""

    name: ClassVar[str]
    config_cls: ClassVar[type] = MethodConfig
    trains: ClassVar[bool] = True
    #: prepared data each spatial_dims reads: "cxr_images" (training-size crops), "cxr_renders" (whole renders, the
    #: method draws its views), "ct_subvolumes" or "ct_candidates"
    data: ClassVar[Mapping[int, str]] = {}
    #: encoder passes per sample and step (2 for two-view methods; a 32-pixel local crop counts 1/4), for the shared
    #: pretraining budget
    views: float = 1

    def __init__(self, cfg: Any, ctx: BuildContext) -> None:
        super().__init__()
        if ctx.spatial_dims not in getattr(cfg, "dims", (2, 3)):
            raise MethodConfigError(f"method {self.name} is not configured for {ctx.spatial_dims}D")
        self.cfg = cfg
        self.ctx = ctx

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def exports(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def configure_scheduler(
        self, optimizer: torch.optim.Optimizer, epochs: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
