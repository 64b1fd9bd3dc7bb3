"""Models Genesis: restore the original from a Genesis-corrupted input (Zhou et al., MICCAI 2019, MedIA 2021).

The corruptions (flip, local pixel shuffling, Bezier intensity, in-/out-painting) come from
:mod:`eden_lib.transforms.genesis` with the official probabilities; the loss is the mean squared error between the
restored image (sigmoid output) and the original. 3D: the official UNet3D on CT sub-volumes; 2D: the ResNet U-Net on
radiographs. The released optimiser is SGD (lr 1.0, momentum 0.9) with the lr halved after 80 % of the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import Method, MethodConfigError
from eden_lib.transforms.genesis import GenesisConfig, genesis_corrupt


@dataclass(frozen=True)
class ModelsGenesisConfig:
    dims: tuple[int, ...] = (2, 3)
    batch_size: int = 6
    optimizer: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    lr_step_fraction: float = 0.8
    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    flip_axes: str = "all"

    def validate(self, name: str) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise MethodConfigError(f"methods.{name}.optimizer = {self.optimizer!r}; allowed: 'sgd', 'adam'")
        if not 0 < self.lr_step_fraction <= 1:
            raise MethodConfigError(f"methods.{name}.lr_step_fraction = {self.lr_step_fraction}; expected (0, 1]")
        try:
            self.corruption()
        except ValueError as exc:
            raise MethodConfigError(f"methods.{name}: {exc}") from None

    def corruption(self) -> GenesisConfig:
        return GenesisConfig(
            flip_rate=self.flip_rate,
            local_rate=self.local_rate,
            nonlinear_rate=self.nonlinear_rate,
            paint_rate=self.paint_rate,
            inpaint_rate=self.inpaint_rate,
            flip_axes=self.flip_axes,
        )


class ModelsGenesis(Method):
    name = "models_genesis"
    config_cls = ModelsGenesisConfig
    data = {2: "cxr_images", 3: "ct_subvolumes"}

    def __init__(self, cfg: ModelsGenesisConfig, ctx) -> None:
        super().__init__(cfg, ctx)
        self.corruption = cfg.corruption()
        if ctx.spatial_dims == 2:
            self.unet = networks.unet_2d(ctx, out_channels=1)
        else:
            self.unet3d = networks.unet_3d(ctx, out_channels=1)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Corrupted (B, 1, *spatial) in [0, 1] -> restored, same shape, in [0, 1]."""
        if self.ctx.spatial_dims == 2:
            return torch.sigmoid(self.unet(x))
        return self.unet3d(x)  # the official UNet3D ends in a sigmoid

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            corrupted, target = genesis_corrupt(batch["image"], self.corruption, generator)
        return {"loss": F.mse_loss(self.restore(corrupted).float(), target.float())}

    def exports(self) -> dict[str, nn.Module]:
        if self.ctx.spatial_dims == 2:
            return {"encoder": self.unet.encoder, "unet": self.unet}
        return {"unet3d": self.unet3d}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum)
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr)

    def configure_scheduler(self, optimizer, epochs):
        step = max(1, int(self.cfg.lr_step_fraction * epochs))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=0.5)
