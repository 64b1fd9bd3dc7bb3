"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022, https://arxiv.org/abs/2201.03545) as an encoder.

Module names are those of the Facebook release, which Adam-v2's ConvNeXt-B checkpoint uses:

- ``downsample_layers.0``: the stem, ``0`` = Conv 4x4 stride 4, ``1`` = channels-first LayerNorm;
- ``downsample_layers.{1,2,3}``: ``0`` = channels-first LayerNorm, ``1`` = Conv 2x2 stride 2;
- ``stages.{i}.{j}``: blocks with ``dwconv`` (7x7 depthwise), ``norm`` (LayerNorm over channels, channels-last),
  ``pwconv1`` (Linear d -> 4d), GELU, ``pwconv2`` (Linear 4d -> d) and ``gamma`` (layer scale, d);
- ``norm``: the final LayerNorm after global average pooling.

The classifier ``head`` is not built (the encoder returns the normed pooled features). Every LayerNorm has eps 1e-6;
convolutions and linears are initialised truncated-normal (std 0.02) with zero biases, as in the paper.

ConvNeXt has no stride-2 feature map (its stem is stride 4). :meth:`ConvNeXtEncoder.stages` supplies one for U-Net
decoders by x2 nearest up-sampling of the stem output: parameter-free, so the state dict stays exactly the release's
layout, but that map carries no detail finer than stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: registry name -> blocks per stage. tiny / small / base are the paper's (its widths: 96-768, 96-768, 128-1024);
#: atto, for synthetic-scale runs, takes ConvNeXt V2's smallest depth plan (Woo et al., CVPR 2023) with V1 blocks.
CONVNEXTS: dict[str, tuple[int, int, int, int]] = {
    "convnext_atto": (2, 2, 6, 2),
    "convnext_tiny": (3, 3, 9, 3),
    "convnext_small": (3, 3, 27, 3),
    "convnext_base": (3, 3, 27, 3),
}

LN_EPS = 1e-6


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al., ECCV 2016): zero a residual branch per sample with probability ``rate`` and
    scale the kept ones by ``1 / (1 - rate)``. ``x``: ``(B, ...)``; the identity at eval or ``rate == 0``."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class Block(nn.Module):
    """``x + drop_path(gamma * pwconv2(GELU(pwconv1(norm(dwconv(x))))))``: ``(B, d, H, W)`` -> ``(B, d, H, W)``."""

    def __init__(self, dim: int, drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))  # channels-last (B, H, W, d)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + drop_path(y.permute(0, 3, 1, 2), self.drop_path_rate, self.training)


class ConvNeXtEncoder(nn.Module):
    """A ConvNeXt without its classifier, with the interface of :class:`~eden_lib.models.backbones.ResNetEncoder`.

    Args:
        name: a key of :data:`CONVNEXTS` (the depths).
        widths: the four stage widths (ConvNeXt-B: 128, 256, 512, 1024).
        in_channels: image channels (1 for radiographs; the Adam-v2 release has 3).
        drop_path_rate: the stochastic-depth rate of the last block; block k of n gets ``drop_path_rate * k / (n - 1)``.
        layer_scale_init: initial value of every ``gamma``.

    ``forward(x)``: ``(B, C, H, W)`` -> ``(B, out_dim)``, the final LayerNorm of the globally average-pooled stride-32
    map. ``stages(x)``: five maps at strides 2, 4, 8, 16, 32 with :attr:`stage_channels` (the stride-2 map is the
    stem output up-sampled x2, see the module docstring; the others are the outputs of stages 0 ... 3).

    The block stages are registered as the submodule ``stages`` (the release's key prefix), which the method
    :meth:`stages` shadows as an attribute: they are reached as :attr:`blocks` (``get_submodule("stages...")``
    fails for the same reason; state dicts, ``named_modules`` and ``apply`` see them normally).
    """

    def __init__(
        self,
        name: str,
        widths: Sequence[int],
        in_channels: int = 1,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        if name not in CONVNEXTS:
            raise ValueError(f"unknown ConvNeXt {name!r}; allowed: {sorted(CONVNEXTS)}")
        if len(widths) != 4:
            raise ValueError(f"backbone widths must list 4 stage widths, got {list(widths)}")
        depths = CONVNEXTS[name]
        self.name = name
        stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 4, stride=4), LayerNorm2d(widths[0], eps=LN_EPS))
        downs = [
            nn.Sequential(LayerNorm2d(cin, eps=LN_EPS), nn.Conv2d(cin, cout, 2, stride=2))
            for cin, cout in zip(widths[:-1], widths[1:])
        ]
        self.downsample_layers = nn.ModuleList([stem, *downs])
        n = sum(depths)
        rates = [drop_path_rate * k / max(n - 1, 1) for k in range(n)]
        starts = [sum(depths[:i]) for i in range(4)]
        # nn.Module.__setattr__ registers the submodule ``stages`` even though the method of that name shadows it
        self.stages = nn.ModuleList(  # type: ignore[method-assign]
            nn.Sequential(*(Block(w, rates[s + j], layer_scale_init) for j in range(d)))
            for w, d, s in zip(widths, depths, starts)
        )
        self.norm = nn.LayerNorm(widths[3], eps=LN_EPS)
        self.stem_channels = widths[0]
        self.stage_channels = (widths[0], *widths)
        self.out_dim = widths[3]
        self.apply(_init_weights)

    @property
    def blocks(self) -> nn.ModuleList:
        """The four block stages (state-dict prefix ``stages.``)."""
        return self._modules["stages"]

    def _pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem output (stride 4, before stage 0's blocks) and the four stage outputs (strides 4 ... 32)."""
        stem = self.downsample_layers[0](x)
        maps, y = [], stem
        for i, stage in enumerate(self.blocks):
            y = stage(y if i == 0 else self.downsample_layers[i](y))
            maps.append(y)
        return stem, maps

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem, maps = self._pyramid(x)
        return [F.interpolate(stem, scale_factor=2.0, mode="nearest"), *maps]

    def stage_modules(self) -> list[nn.Module]:
        """The modules behind each map of :meth:`stages`: the stem (``downsample_layers.0``), stage 0's blocks, then
        for i = 1, 2, 3 ``downsample_layers.i`` with stage i's blocks (the final ``norm`` belongs to none)."""
        down, blocks = self.downsample_layers, self.blocks
        return [down[0], blocks[0], *(nn.ModuleList([down[i], blocks[i]]) for i in (1, 2, 3))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self._pyramid(x)[1][-1].mean(dim=(-2, -1)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
