"""Adam-v2's composability and decomposability heads (Hosseinzadeh Taher et al., CVPR 2024, arXiv 2404.15672).

Both are two-layer MLPs on pooled backbone features of dimension D, student side only; as ``nn.Sequential`` their
keys are ``0.*`` and ``2.*`` (the release's ``compose_head.{0,2}``, ``decompose_head.{0,2}`` when a method holds
them under those names). PyTorch's default ``nn.Linear`` initialisation.
"""

from __future__ import annotations

from torch import nn


def compose_head(dim: int, n_parts: int = 4) -> nn.Sequential:
    """h_C: the concatenated part features ``(B, n_parts * D)`` -> a whole feature ``(B, D)``."""
    return nn.Sequential(nn.Linear(n_parts * dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def decompose_head(dim: int, n_parts: int = 4) -> nn.Sequential:
    """h_D: a whole feature ``(B, D)`` -> the concatenated part features ``(B, n_parts * D)``."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, n_parts * dim))
