"""U-Net with a ResNet encoder, for 2D restoration (Models Genesis 2D) and segmentation.

Module names follow the layout of the released DiRA / CAiD / Genesis-2D checkpoints (a segmentation-models-style
U-Net): ``encoder.*`` (torchvision ResNet names), ``decoder.blocks.{0..4}.conv{1,2}.{0,1}``, and
``segmentation_head.0``. Decoder channels (paper: 256, 128, 64, 32, 16) are a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.models.backbones import ResNetEncoder


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """x2 nearest up-sampling, concatenation with the skip (if any), two conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + skip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """Five decoder blocks from stride 32 back to stride 1, fed with the encoder's stride-16 ... stride-2 maps."""

    def __init__(self, stage_channels: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"decoder needs 5 channel counts, got {list(channels)}")
        skips = [stage_channels[3], stage_channels[2], stage_channels[1], stage_channels[0], 0]
        ins = [stage_channels[4], *channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, channels))

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        x = stages[4]
        skips = [stages[3], stages[2], stages[1], stages[0], None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


class ResNetUNet(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, out_channels, H, W)`` logits; H and W divisible by 32.

    Args:
        encoder: the ResNet encoder (its weights are what transfer reuses).
        decoder_channels: five decoder widths.
        out_channels: output maps (1 for restoration, one per structure for segmentation).
    """

    def __init__(self, encoder: ResNetEncoder, decoder_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.stage_channels, decoder_channels)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"ResNetUNet needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        return self.segmentation_head(self.decoder(self.encoder.stages(x)))
