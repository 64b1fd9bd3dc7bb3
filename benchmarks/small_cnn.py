"""The small CNN probe the SynthCXR benchmarks train (difficulty of findings, laterality and rib patches)."""

from __future__ import annotations

from torch import nn


def small_cnn(widths: tuple[int, ...], n_out: int) -> nn.Sequential:
    """conv3x3-BN-ReLU-maxpool blocks of ``widths`` on a 1-channel image, global average pool, linear ``n_out``.

    ``(B, 1, H, W) -> (B, n_out)``; H and W divisible by ``2 ** len(widths)``.
    """
    blocks, c_in = [], 1
    for c_out in widths:
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_out))
