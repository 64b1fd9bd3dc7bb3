"""Swin-UNETR (Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI
Images", BrainLes 2021, https://arxiv.org/abs/2201.01266; Tang et al., CVPR 2022) as the study's 3D network, with the
interface of :class:`~eden_lib.models.unet3d.UNet3D`: Alice's paper-profile encoder (dira_caid_transfer_alice_cadpe.md
section 4: the paper names Swin-UNETR and ViT encoders, the released code builds nnFormer).

MONAI's ``SwinUNETR`` supplies every module under its own names (``swinViT.*``: the Swin Transformer, patch 2, four
stages with a patch merging after each; ``encoder1`` ... ``encoder4``, ``encoder10``: residual conv blocks on the input,
the skips and the bottleneck; ``decoder5`` ... ``decoder1``: up-sampling blocks), except its output block: the output
is the study's :class:`~eden_lib.models.unet3d.OutputTransition` ``out_tr`` (1 x 1 x 1 ``final_conv`` and a sigmoid,
MONAI's ``out.conv.conv`` under UNet3D's name), so the transfer tasks swap it for logits exactly as for the UNet3D.

With feature size f (48 in the Swin-UNETR papers) and input ``(B, 1, X, Y, Z)``, sizes multiples of 32:

- encoder features: the last Swin stage, layer-normed (MONAI's ``normalize``), ``(B, 16f, X/32, Y/32, Z/32)`` --
  :meth:`SwinUNETR3D.encode`, [CLS] by average pooling (:meth:`SwinUNETR3D.pooled_features`, the classification
  transfer's input) and Alice's encoder ("query") tokens, as UNet3D's ``out512``;
- first decoder stage (``decoder5`` after the ``encoder10`` block): ``(B, 8f, X/16, Y/16, Z/16)`` -- Alice's decoder
  ("anchor") tokens, as UNet3D's ``up_tr256`` output;
- output: ``(B, out, X, Y, Z)`` in (0, 1).

The encoder is the Swin Transformer ``swinViT.*`` alone (``encoder_state_prefixes``, the ``finetune_encoder``
protocol): what Swin-UNETR's self-supervised pretraining (Tang et al.) trains; the conv blocks on the input, skips and
bottleneck belong to the decoder side. At Alice's 64^3 crops that is 8 encoder and 64 decoder tokens (nnFormer: 64
and 512). The whole network cannot train on a 32^3 input: its bottleneck is then one voxel, which the instance norm of
``encoder10`` refuses in training; the encoder alone (classification of 32^3 nodule cubes) can.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from eden_lib.models.unet3d import OutputTransition

#: input sizes must be multiples of this: patch 2, then four 2x patch mergings
DIVISOR = 32


@dataclass(frozen=True)
class SwinUNETRSpec:
    """Swin-UNETR's shape: feature size (the Swin embedding width), blocks and heads per stage, window side."""

    feature_size: int
    depths: tuple[int, ...] = (2, 2, 2, 2)
    heads: tuple[int, ...] = (3, 6, 12, 24)
    window: int = 7


#: registry name -> shape; swin_unetr: the papers' (feature size 48, MONAI's default depths, heads and window 7)
SWIN_UNETRS: dict[str, SwinUNETRSpec] = {"swin_unetr": SwinUNETRSpec(48)}
#: keys a 3D backbone block may hold besides ``name``, each replacing the preset's (a small variant for tests)
SPEC_KEYS = ("feature_size", "depths", "heads", "window")


def swin_unetr_spec(cfg: Mapping[str, Any]) -> SwinUNETRSpec:
    """The shape a 3D backbone block (``{"name": "swin_unetr", ...}``) asks for; :data:`SPEC_KEYS` replace the
    preset's values.

    Raises:
        ValueError: an unknown name or key, or a value MONAI's Swin-UNETR does not take (named).
    """
    name = cfg["name"]
    if name not in SWIN_UNETRS:
        raise ValueError(f"unknown 3D backbone {name!r}; allowed: {sorted(SWIN_UNETRS)}")
    unknown = sorted(set(cfg) - {"name", *SPEC_KEYS})
    if unknown:
        raise ValueError(f"3D backbone {name}: unknown keys {unknown}; allowed: {['name', *SPEC_KEYS]}")
    spec = replace(SWIN_UNETRS[name], **{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()
                                         if k in SPEC_KEYS})
    f = spec.feature_size
    if isinstance(f, bool) or not isinstance(f, int) or f <= 0 or f % 12:
        raise ValueError(f"3D backbone {name}: feature_size = {f!r}; expected a positive multiple of 12 (MONAI)")
    for key in ("depths", "heads"):
        value = getattr(spec, key)
        if len(value) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
            raise ValueError(f"3D backbone {name}: {key} = {list(value)}; expected 4 positive integers")
    if any((f * 2**i) % h for i, h in enumerate(spec.heads)):
        raise ValueError(f"3D backbone {name}: stage widths {[f * 2**i for i in range(4)]} are not multiples of "
                         f"heads {list(spec.heads)}")
    if isinstance(spec.window, bool) or not isinstance(spec.window, int) or spec.window <= 0:
        raise ValueError(f"3D backbone {name}: window = {spec.window!r}; expected a positive integer")
    return spec


class SwinUNETR3D(nn.Module):
    """MONAI's Swin-UNETR with UNet3D's interface (module docstring): ``(B, in, X, Y, Z)`` -> sigmoid
    ``(B, out, X, Y, Z)``.

    Args:
        spec: the shape (:func:`swin_unetr_spec`).
        in_channels, out_channels: as :class:`~eden_lib.models.unet3d.UNet3D`'s.
    """

    spatial_dims = 3
    encoder_state_prefixes: tuple[str, ...] = ("swinViT.",)

    def __init__(self, spec: SwinUNETRSpec, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        net = SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=spec.feature_size,
                        depths=spec.depths, num_heads=spec.heads, window_size=spec.window)
        # adopt MONAI's modules under their names, all but its output block (replaced by ``out_tr``)
        for child in ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10",
                      "decoder5", "decoder4", "decoder3", "decoder2", "decoder1"):
            setattr(self, child, getattr(net, child))
        self.out_tr = OutputTransition(spec.feature_size, out_channels)
        self.spec, self.in_channels = spec, in_channels

    @property
    def feature_channels(self) -> int:
        """Channels of the bottleneck: 16 x feature size (768 for the papers' 48)."""
        return 16 * self.spec.feature_size

    @property
    def anchor_channels(self) -> int:
        """Channels of the first decoder stage (``decoder5``): 8 x feature size."""
        return 8 * self.spec.feature_size

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SwinUNETR3D: expected input (B, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        if any(s % DIVISOR for s in x.shape[2:]):
            raise ValueError(f"SwinUNETR3D: spatial sizes must be multiples of {DIVISOR} (patch 2 and four 2x "
                             f"mergings), got {tuple(x.shape[2:])}")

    def _hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The patch embedding and the four Swin stages, layer-normed: strides 2, 2, 4, 8, 16, 32 -> five maps."""
        self._check_input(x)
        return self.swinViT(x, normalize=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, 16f, X/32, Y/32, Z/32)``: the last Swin stage."""
        return self._hidden(x)[4]

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled encoder features ``(B, 16f)`` (the classification-transfer input, as UNet3D's)."""
        return self.encode(x).mean(dim=(2, 3, 4))

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder features ``(B, 16f, X/32, Y/32, Z/32)``, the first decoder stage ``(B, 8f, X/16, Y/16, Z/16)`` and
        the output ``(B, out, X, Y, Z)`` in one pass (MONAI's forward, with ``out_tr``)."""
        if self.training and all(s == DIVISOR for s in x.shape[2:]):
            raise ValueError(f"SwinUNETR3D: the whole network cannot train on {tuple(x.shape[2:])} inputs: the "
                             f"bottleneck is one voxel, which encoder10's instance norm refuses in training; use a "
                             f"size of 64 along at least one axis")
        hidden = self._hidden(x)
        anchor = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        y = self.decoder4(anchor, self.encoder4(hidden[2]))
        y = self.decoder3(y, self.encoder3(hidden[1]))
        y = self.decoder2(y, self.encoder2(hidden[0]))
        y = self.decoder1(y, self.encoder1(x))
        return hidden[4], anchor, self.out_tr(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output ``(B, out, X, Y, Z)`` in (0, 1)."""
        return self.encode_decode(x)[2]


def build_swin_unetr(cfg: Mapping[str, Any], out_channels: int = 1) -> SwinUNETR3D:
    """The :class:`SwinUNETR3D` a 3D backbone block names (one input channel)."""
    return SwinUNETR3D(swin_unetr_spec(cfg), in_channels=1, out_channels=out_channels)
