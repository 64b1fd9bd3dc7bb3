"""Supervised pretraining on the synthetic labels: the ceiling of the study's tables.

2D: the ResNet encoder with a linear multi-label head on the SynthCXR findings (binary cross-entropy, unknown
labels masked). 3D: the UNet3D encoder, global-average pooled, with a linear head on nodule candidate labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.methods import networks
from eden_lib.methods.base import Method, MethodConfig


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known (non-NaN) entries of ``labels`` (B, K)."""
    known = ~torch.isnan(labels)
    loss = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(labels), reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


class Supervised(Method):
    name = "supervised"
    config_cls = MethodConfig
    data = {2: "cxr_images", 3: "ct_candidates"}

    def __init__(self, cfg: MethodConfig, ctx) -> None:
        super().__init__(cfg, ctx)
        if ctx.spatial_dims == 2:
            self.encoder = networks.encoder_2d(ctx)
            self.head = networks.head(self.encoder.out_dim, ctx.n_labels)
        else:
            self.unet3d = networks.unet_3d(ctx)  # the decoder is exported untrained, so DDP must tolerate it
            self.head = networks.head(networks.feature_dim_3d(ctx), ctx.n_labels)
            self.ddp_find_unused_parameters = True

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) if self.ctx.spatial_dims == 2 else self.unet3d.pooled_features(x)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        logits = self.head(self.features(batch["image"]))
        return {"loss": masked_bce(logits, batch["label"].reshape(logits.shape))}

    def exports(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder} if self.ctx.spatial_dims == 2 else {"unet3d": self.unet3d}
