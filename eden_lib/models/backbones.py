"""2D backbones: ResNets from MONAI with torchvision-compatible module names, ConvNeXts
(:mod:`eden_lib.models.convnext`, Facebook-release names; MONAI has no ConvNeXt) and Swin Transformers
(:mod:`eden_lib.models.swin`, timm-0.5.4 names from MONAI's Swin blocks: Ark's Swin-B).

MONAI's ``ResNet`` keeps the torchvision names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so weights
released for a torchvision ResNet map in by name. We always pass the torchvision-like stem (7x7 conv, stride 2,
then max-pool): MONAI's default stride-1 stem costs about 4x the FLOPs at the same input size.

MONAI's shortcut convolution carries a bias by default (``bias_downsample=True``) where torchvision's has none:
that adds one ``layerN.0.downsample.0.bias`` per stage with a shortcut (4 for ResNet-50, whose 318 encoder keys plus
the 2 ``fc`` keys make torchvision's 320). Every backbone is built without it, so torchvision weights load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eden_lib.models.convnext import CONVNEXTS, ConvNeXtEncoder
from eden_lib.models.swin import SWINS, SwinEncoder, build_swin

#: registry name -> (block type, blocks per stage) of the ResNets
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """A MONAI ResNet without its classifier that also exposes its multi-scale features.

    Args:
        name: a key of :data:`BACKBONES`.
        widths: the four stage widths (torchvision: 64, 128, 256, 512).
        in_channels: image channels (1 for radiographs).
        spatial_dims: 2 or 3.

    ``forward(x)``: ``(B, C, H, W)`` -> pooled features ``(B, out_dim)``.
    ``stages(x)``: the five feature maps at strides 2, 4, 8, 16, 32 (stem, layer1 ... layer4).
    """

    def __init__(self, name: str, widths: Sequence[int], in_channels: int = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; allowed: {sorted(BACKBONES)}")
        if len(widths) != 4:
            raise ValueError(f"backbone widths must list 4 stage widths, got {list(widths)}")
        from monai.networks.nets import ResNet

        block, layers = BACKBONES[name]
        self.name = name
        self.spatial_dims = spatial_dims
        net = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,
        )
        expansion = 4 if block == "bottleneck" else 1
        # Adopt MONAI's modules under the torchvision names (no wrapper prefix in the state dict).
        for child in ("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, child, getattr(net, child))
        self.stem_channels = widths[0]
        self.stage_channels = (widths[0], *(w * expansion for w in widths))
        self.out_dim = widths[3] * expansion

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        s0 = self.act(self.bn1(self.conv1(x)))
        s1 = self.layer1(self.maxpool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return [s0, s1, s2, s3, s4]

    def stage_modules(self) -> list[nn.Module]:
        """The modules behind each map of :meth:`stages`: the stem (``conv1``, ``bn1``), ``layer1`` ... ``layer4``."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.stages(x)[-1]), 1)


#: every name :func:`build_backbone_2d` accepts
BACKBONES_2D: tuple[str, ...] = tuple(sorted((*BACKBONES, *CONVNEXTS, *SWINS)))


def build_backbone_2d(cfg: dict, in_channels: int = 1) -> ResNetEncoder | ConvNeXtEncoder | SwinEncoder:
    """The study's 2D encoder from ``pretrain.backbone_2d`` (``name``, ``widths``): a name of :data:`BACKBONES_2D`.

    A Swin name needs no ``widths`` (its preset's) and takes the keys of :data:`~eden_lib.models.swin.SPEC_KEYS`
    (:func:`~eden_lib.models.swin.swin_spec`); ``methods.ark.backbone_2d`` selects one for Ark alone.
    """
    name = cfg["name"]
    if name in SWINS:
        return build_swin(cfg, in_channels=in_channels)
    if name in CONVNEXTS:
        return ConvNeXtEncoder(name, cfg["widths"], in_channels=in_channels)
    if name not in BACKBONES:
        raise ValueError(f"unknown 2D backbone {name!r}; allowed: {list(BACKBONES_2D)}")
    return ResNetEncoder(name, cfg["widths"], in_channels=in_channels, spatial_dims=2)
