"""Random initialisation: the floor every table compares against."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import Method


@dataclass(frozen=True)
class ScratchConfig:
    """No hyper-parameters: the networks are exported as initialised (seeded by the study seed)."""

    dims: tuple[int, ...] = (2, 3)


class Scratch(Method):
    name = "scratch"
    config_cls = ScratchConfig
    trains = False

    def __init__(self, cfg: ScratchConfig, ctx) -> None:
        super().__init__(cfg, ctx)
        self.net = networks.encoder_2d(ctx) if ctx.spatial_dims == 2 else networks.unet_3d(ctx)

    def exports(self) -> dict[str, nn.Module]:
        return {"encoder" if self.ctx.spatial_dims == 2 else "unet3d": self.net}
