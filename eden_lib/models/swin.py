"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021,
https://arxiv.org/abs/2103.14030) as a 2D encoder with the layout of timm 0.5.4's ``SwinTransformer``, the network of
Ark's released weights (Ma et al., MICCAI 2023; fact sheet adam_ark.md 3.2, 3.9), built from MONAI's Swin blocks
(:mod:`monai.networks.nets.swin_unetr`; no timm).

State-dict keys (E = embedding width; stage i has width E * 2^i):

- ``patch_embed.proj`` (Conv 4x4 stride 4, in -> E) and ``patch_embed.norm`` (LayerNorm E): MONAI's ``PatchEmbed``;
- ``layers.{i}.blocks.{j}``: MONAI's ``SwinTransformerBlock`` (``norm1``, ``attn.qkv`` / ``attn.proj`` /
  ``attn.relative_position_bias_table``, the buffer ``attn.relative_position_index``, ``norm2``, ``mlp.linear1`` /
  ``mlp.linear2`` where timm has ``mlp.fc1`` / ``mlp.fc2``); odd blocks are shifted by half a window;
- ``layers.{i}.downsample`` for i = 0, 1, 2: patch merging (``norm`` over 4C, ``reduction`` 4C -> 2C without bias) at
  the *end* of stage i, none after stage 3, as in timm 0.5.4 (MONAI's own ``SwinTransformer`` merges after every stage,
  timm >= 0.9 merges at the start of the next one; :func:`eden_lib.checkpoints.from_timm_v09` maps that layout here);
- ``norm``: the final LayerNorm (8E). The classifier ``head`` is not built.

Pooled features (:meth:`SwinEncoder.forward`): the mean over tokens of the final LayerNorm of stage 3's tokens, 8E =
1024 for Swin-B. Patch merging concatenates the four 2 x 2 neighbours in timm's order over (H, W): x0 = [0::2, 0::2],
x1 = [1::2, 0::2], x2 = [0::2, 1::2], x3 = [1::2, 1::2] (MONAI's ``PatchMergingV2`` in 2D; timm >= 0.9 keeps it), so
released ``reduction`` weights mean the same here.

Differences from timm 0.5.4, none of which changes a released weight's meaning at the release's input size: the MLP
names (mapped by :func:`eden_lib.checkpoints.timm_swin_name`); no ``attn_mask`` buffer (MONAI builds the same
shifted-window mask in every forward pass; a released one is dropped); any input size (MONAI pads a map to whole
windows where timm fixes 224). Where a stage's map is no larger than the window, both use one window of the map's size
without shift, but MONAI then reads the top-left n x n corner of the full window's relative-position index where timm
builds a smaller window's: at 224 (Swin-B) and 768 (Swin-L, Ark+) no stage is smaller than its window; at smaller
inputs (the synthetic study's 64 px) the late stages are, which only matters for released weights at those sizes.

Initialisation (timm's): linear weights truncated normal (std 0.02) with zero biases, relative-position bias tables
truncated normal (std 0.02, MONAI's), LayerNorms 1 and 0. Stochastic depth rises linearly over the blocks to
``drop_path_rate`` (timm's default 0.1 for every preset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SwinSpec:
    """A Swin Transformer's shape: embedding width, blocks and heads per stage, window side, stochastic depth."""

    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    window: int
    drop_path_rate: float = 0.1

    @property
    def widths(self) -> tuple[int, ...]:
        """The four stage widths E, 2E, 4E, 8E."""
        return tuple(self.embed_dim * 2**i for i in range(4))


#: registry name -> shape. swin_b: Ark (timm ``swin_base_patch4_window7_224``, 224 px); swin_l: Ark+ (Swin-L,
#: window 12, 768 px); adam_ark.md 3.2
SWINS: dict[str, SwinSpec] = {
    "swin_b": SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32), 7),
    "swin_l": SwinSpec(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
#: keys a Swin backbone block may hold besides ``name``: ``widths`` (E, 2E, 4E, 8E: sets E, as a ConvNeXt's widths do)
#: and the :class:`SwinSpec` fields, each replacing the preset's (a variant, e.g. a small one for tests)
SPEC_KEYS = ("widths", "embed_dim", "depths", "heads", "window", "drop_path_rate")


def _positive_ints(value: Any, n: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def swin_spec(cfg: Mapping[str, Any]) -> SwinSpec:
    """The shape a 2D backbone block (``{"name": "swin_b", ...}``) asks for: the preset of :data:`SWINS`, with any of
    :data:`SPEC_KEYS` replacing its values.

    Raises:
        ValueError: an unknown name or key, or a value that does not make a Swin Transformer (named).
    """
    name = cfg["name"]
    if name not in SWINS:
        raise ValueError(f"unknown Swin Transformer {name!r}; allowed: {sorted(SWINS)}")
    unknown = sorted(set(cfg) - {"name", *SPEC_KEYS})
    if unknown:
        raise ValueError(f"2D backbone {name}: unknown keys {unknown}; allowed: {['name', *SPEC_KEYS]}")
    spec = replace(SWINS[name], **{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()
                                   if k in SPEC_KEYS and k != "widths"})
    if "widths" in cfg:
        widths = cfg["widths"]
        doubling = _positive_ints(widths, 4) and all(w == widths[0] * 2**i for i, w in enumerate(widths))
        if not doubling or ("embed_dim" in cfg and widths[0] != cfg["embed_dim"]):
            raise ValueError(f"2D backbone {name}: widths = {list(widths)}; expected 4 widths doubling from the "
                             f"embedding width (E, 2E, 4E, 8E){', E = embed_dim' if 'embed_dim' in cfg else ''}")
        spec = replace(spec, embed_dim=widths[0])
    checks = {
        "embed_dim": (isinstance(spec.embed_dim, int) and not isinstance(spec.embed_dim, bool) and spec.embed_dim > 0,
                      "a positive integer"),
        "depths": (_positive_ints(spec.depths, 4), "4 positive integers (blocks per stage)"),
        "heads": (_positive_ints(spec.heads, 4), "4 positive integers (attention heads per stage)"),
        "window": (isinstance(spec.window, int) and not isinstance(spec.window, bool) and spec.window > 0,
                   "a positive integer (window side in tokens)"),
        "drop_path_rate": (isinstance(spec.drop_path_rate, (int, float)) and 0 <= spec.drop_path_rate < 1,
                           "a rate in [0, 1)"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"2D backbone {name}: {key} = {getattr(spec, key)!r}; expected {expected}")
    if any(w % h for w, h in zip(spec.widths, spec.heads)):
        raise ValueError(f"2D backbone {name}: stage widths {list(spec.widths)} are not multiples of heads "
                         f"{list(spec.heads)}")
    return spec


def _run_blocks(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A stage's blocks on a channels-last map ``(B, H, W, C)`` -> ``(B, H, W, C)``, with the shifted-window mask and
    window size MONAI's ``BasicLayer`` uses (its forward would also apply the stage's patch merging)."""
    from monai.networks.nets.swin_unetr import compute_mask, get_window_size

    size = tuple(x.shape[1:3])
    window, shift = get_window_size(size, layer.window_size, layer.shift_size)
    padded = [math.ceil(s / w) * w for s, w in zip(size, window)]
    mask = compute_mask(padded, window, shift, x.device)
    for block in layer.blocks:
        x = block(x, mask)
    return x


class SwinEncoder(nn.Module):
    """A Swin Transformer without its classifier (timm 0.5.4 layout, module docstring), with the interface of
    :class:`~eden_lib.models.backbones.ResNetEncoder`.

    Args:
        name: a key of :data:`SWINS` (for errors and :attr:`name`).
        spec: the shape (:func:`swin_spec`).
        in_channels: image channels (1 for radiographs; the Ark release has 3, summed to grey on loading).

    ``forward(x)``: ``(B, C, H, W)`` -> ``(B, 8E)``, the token mean of the final LayerNorm of stage 3.
    ``stages(x)``: five maps ``(B, c, H/s, W/s)`` at strides s = 2, 4, 8, 16, 32 with :attr:`stage_channels`
    (E, E, 2E, 4E, 8E): the patch embedding up-sampled x2 (nearest; parameter-free, so no detail finer than stride 4),
    then the outputs of stages 0 ... 3 before their patch merging, the last one after the final LayerNorm.
    """

    def __init__(self, name: str, spec: SwinSpec, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import BasicLayer, PatchEmbed, PatchMergingV2

        self.name, self.spec = name, spec
        e, window = spec.embed_dim, (spec.window, spec.window)
        self.patch_embed = PatchEmbed(patch_size=4, in_chans=in_channels, embed_dim=e, norm_layer=nn.LayerNorm,
                                      spatial_dims=2)
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths), device="cpu").tolist()  # timm's float32
        starts = [sum(spec.depths[:i]) for i in range(4)]
        self.layers = nn.ModuleList(
            BasicLayer(dim=w, depth=d, num_heads=h, window_size=window, drop_path=rates[s:s + d], qkv_bias=True,
                       norm_layer=nn.LayerNorm, downsample=PatchMergingV2 if i < 3 else None)
            for i, (w, d, h, s) in enumerate(zip(spec.widths, spec.depths, spec.heads, starts))
        )
        self.norm = nn.LayerNorm(spec.widths[3])
        self.stem_channels = e
        self.stage_channels = (e, *spec.widths)
        self.out_dim = spec.widths[3]
        self.apply(_init_linear)

    def _pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The patch embedding ``(B, E, H/4, W/4)`` and the four stage outputs (channels-first, the last normed)."""
        stem = self.patch_embed(x)
        y, maps = stem.permute(0, 2, 3, 1), []
        for layer in self.layers:
            y = _run_blocks(layer, y)
            maps.append(y)
            if layer.downsample is not None:
                y = layer.downsample(y)
        maps[-1] = self.norm(maps[-1])
        return stem, [m.permute(0, 3, 1, 2) for m in maps]

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem, maps = self._pyramid(x)
        return [F.interpolate(stem, scale_factor=2.0, mode="nearest"), *maps]

    def stage_modules(self) -> list[nn.Module]:
        """The modules behind each map of :meth:`stages`: the patch embedding, stage 0's blocks, then for i = 1, 2, 3
        stage i-1's patch merging with stage i's blocks (the final ``norm`` belongs to none)."""
        layers = self.layers
        return [self.patch_embed, layers[0].blocks,
                *(nn.ModuleList([layers[i - 1].downsample, layers[i].blocks]) for i in (1, 2, 3))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pyramid(x)[1][-1].mean(dim=(-2, -1))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_swin(cfg: Mapping[str, Any], in_channels: int = 1) -> SwinEncoder:
    """The :class:`SwinEncoder` a 2D backbone block names (:func:`swin_spec`)."""
    return SwinEncoder(cfg["name"], swin_spec(cfg), in_channels=in_channels)
