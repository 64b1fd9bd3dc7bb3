"""DiRA's PatchGAN-style discriminator (Haghighi et al., MICCAI 2022 / MedIA 2024, "DiRA").

Layout as released (``D_checkpoint.pth`` after stripping ``module.``): one ``nn.Sequential`` named ``model`` whose
convolutions sit at indices 0, 2, 5, 8, 11 (LeakyReLU and parameter-free InstanceNorm in between), so the
state-dict keys are exactly ``model.{0,2,5,8,11}.{weight,bias}``. Trained with least-squares (LSGAN) targets.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Three stride-2 and two stride-1 3x3 convolutions; one real/fake score per 8x8 input patch.

    Args:
        in_channels: image channels (1: DiRA scores the restored single-channel image).
        widths: the four hidden widths (DiRA: 64, 128, 256, 512).

    ``forward(x)``: ``(B, in_channels, H, W)`` -> ``(B, 1, H/8, W/8)`` raw scores (224 -> 28).
    Convolution weights are drawn from N(0, 0.02); biases keep PyTorch's default initialisation.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"discriminator widths must list 4 widths, got {list(widths)}")
        w0, w1, w2, w3 = widths
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, w0, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            *_conv_in_lrelu(w0, w1, stride=2),
            *_conv_in_lrelu(w1, w2, stride=2),
            *_conv_in_lrelu(w2, w3, stride=1),
            nn.Conv2d(w3, 1, 3, stride=1, padding=1),
        )
        for module in self.model:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _conv_in_lrelu(c_in: int, c_out: int, stride: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Conv3x3 -> InstanceNorm (no affine, no running statistics) -> LeakyReLU(0.2)."""
    return (nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.InstanceNorm2d(c_out), nn.LeakyReLU(0.2))
