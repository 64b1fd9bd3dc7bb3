"""The study's networks, built from a :class:`BuildContext` so every method uses the same architectures."""

from __future__ import annotations

from torch import nn

from eden_lib.methods.base import BuildContext
from eden_lib.models.backbones import ResNetEncoder, build_backbone_2d
from eden_lib.models.swin_unetr import SwinUNETR3D, build_swin_unetr, swin_unetr_spec
from eden_lib.models.unet2d import ResNetUNet
from eden_lib.models.unet3d import UNet3D


def encoder_2d(ctx: BuildContext) -> ResNetEncoder:
    return build_backbone_2d(dict(ctx.backbone_2d), in_channels=ctx.in_channels)


def unet_2d(ctx: BuildContext, out_channels: int, encoder: ResNetEncoder | None = None) -> ResNetUNet:
    return ResNetUNet(encoder or encoder_2d(ctx), ctx.unet2d_decoder, out_channels)


def unet_3d(ctx: BuildContext, out_channels: int = 1) -> UNet3D | SwinUNETR3D:
    """The study's 3D network: the UNet3D of ``unet3d_width``, or the Swin-UNETR ``ctx.backbone_3d`` names."""
    if ctx.backbone_3d is not None:
        return build_swin_unetr(ctx.backbone_3d, out_channels)
    return UNet3D(in_channels=1, out_channels=out_channels, base_width=ctx.unet3d_width)


def feature_dim_3d(ctx: BuildContext) -> int:
    """Channels of the 3D network's bottleneck: 16 x base width (UNet3D ``out512``) or 16 x feature size
    (Swin-UNETR)."""
    if ctx.backbone_3d is not None:
        return 16 * swin_unetr_spec(ctx.backbone_3d).feature_size
    return 16 * ctx.unet3d_width


def head(in_dim: int, out_dim: int) -> nn.Linear:
    return nn.Linear(in_dim, out_dim)
