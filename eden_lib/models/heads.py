"""Projection and prediction MLPs of the two-view methods, described as data: a list of (in, out, norm, ReLU) blocks.

* MoCo-v2 (Chen et al., 2020, arXiv:2003.04297): "a 2-layer MLP head (hidden layer 2048-d, with ReLU)", output
  128-d: Linear-ReLU-Linear.
* Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230): "The projector network has three linear layers, each with
  8192 output units. The first two layers of the projector are followed by a batch normalization layer and
  rectified linear units."
* SimSiam (Chen & He, 2021, arXiv:2011.10566): projector of 3 layers with BN on every layer (also the output,
  without ReLU there), output 2048-d; predictor "h has 2 layers ... input and output 2048-d, hidden 512-d", BN and
  ReLU on the hidden layer only.

A linear layer followed by batch norm has no bias (the norm removes it), as in the released code. Barlow Twins'
last layer keeps one here (the released code has none): the loss standardises every dimension, so it is inert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import nn


class Block(NamedTuple):
    """One layer: ``Linear(in_dim, out_dim)`` then optional batch norm (``"bn"``, or ``"bn_plain"`` without affine
    parameters) and optional ReLU."""

    in_dim: int
    out_dim: int
    norm: str | None = None
    relu: bool = False


class MLPHead(nn.Sequential):
    """``(B, blocks[0].in_dim)`` -> ``(B, blocks[-1].out_dim)``."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        layers: list[nn.Module] = []
        for block in blocks:
            if block.norm not in (None, "bn", "bn_plain"):
                raise ValueError(f"unknown norm {block.norm!r}; allowed: None, 'bn', 'bn_plain'")
            layers.append(nn.Linear(block.in_dim, block.out_dim, bias=block.norm is None))
            if block.norm is not None:
                layers.append(nn.BatchNorm1d(block.out_dim, affine=block.norm == "bn"))
            if block.relu:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def moco_v2_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> MLPHead:
    """MoCo-v2: Linear-ReLU-Linear (paper 2048 -> 2048 -> 128)."""
    return MLPHead([Block(in_dim, hidden_dim, relu=True), Block(hidden_dim, out_dim)])


def barlow_twins_projector(in_dim: int, dim: int = 8192) -> MLPHead:
    """Barlow Twins: three linear layers of ``dim`` units, BN + ReLU after the first two (paper 8192)."""
    return MLPHead([Block(in_dim, dim, "bn", True), Block(dim, dim, "bn", True), Block(dim, dim)])


def simsiam_projector(in_dim: int, dim: int = 2048) -> MLPHead:
    """SimSiam: three layers of ``dim`` units with BN, ReLU on the first two, a non-affine BN on the output."""
    return MLPHead([Block(in_dim, dim, "bn", True), Block(dim, dim, "bn", True), Block(dim, dim, "bn_plain")])


def simsiam_predictor(dim: int = 2048, hidden_dim: int = 512) -> MLPHead:
    """SimSiam: bottleneck ``dim -> hidden_dim -> dim`` with BN + ReLU on the hidden layer (paper 2048-512-2048)."""
    return MLPHead([Block(dim, hidden_dim, "bn", True), Block(hidden_dim, dim)])
