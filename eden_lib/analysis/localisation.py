"""Weakly supervised localisation: Grad-CAM of a classifier's class against the finding's bounding box (DiRA,
Haghighi et al., CVPR 2022; dira_caid_transfer_alice_cadpe.md §1.5: Grad-CAM heat-maps of fine-tuned ChestX-ray14
classifiers against the ChestX-ray14 boxes).

Maps are ``(N, H, W)`` float in [0, 1] at the classifier's input size; boxes are ``(N, 4)`` ``(x, y, w, h)`` in the
same pixels, ``(x, y)`` the top-left corner, pixel ``(r, c)`` covering ``[c, c + 1) x [r, r + 1)`` (the NIH box
convention). Two scores per (map, box):

- pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the box, widened by ``tolerance``
  pixels on each side. Where several pixels share the maximum (an upsampled coarse map is flat near the border), the
  one nearest the image centre counts; a map without a positive value is a miss.
- IoU of the map's region at or above ``fraction`` of its maximum with the box's pixels (pixel centres inside).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: relative tolerance under which two map values count as the same maximum
TIE = 1e-6


def normalise_maps(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each map of ``(N, 1, H, W)`` or ``(N, H, W)`` scaled to [0, 1] by its own min and max; a flat map becomes 0.
    Returns float32 ``(N, H, W)``."""
    m = np.asarray(maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else maps, np.float32)
    m = m.reshape(len(m), *m.shape[-2:])
    lo = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def stage_layer(encoder: nn.Module, stage: int) -> str:
    """Name (inside ``encoder``) of the module whose output is stage ``stage`` (1-4, stride ``2 ** (stage + 1)``) of a
    study 2D encoder: ``layer<stage>`` of a ResNet, ``stages.<stage - 1>`` (the blocks) of a ConvNeXt."""
    if stage not in (1, 2, 3, 4):
        raise ValueError(f"stage_layer: stage={stage!r}, expected 1, 2, 3 or 4 (layer1 ... layer4)")
    names = dict(encoder.named_modules())
    for name in (f"layer{stage}", f"stages.{stage - 1}"):
        if name in names:
            return name
    raise ValueError(f"stage_layer: {type(encoder).__name__} has neither layer{stage} nor stages.{stage - 1}")


def grad_cam(net: nn.Module, layer: str, x: torch.Tensor, classes: Sequence[int] | np.ndarray, batch: int = 64,
             device: str = "cpu") -> np.ndarray:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of ``net`` for one class per image, through MONAI's ``GradCAM``.

    Args:
        net: a classifier returning logits ``(B, K)`` (encoder + linear head); evaluated in eval mode.
        layer: the module (a name of ``net.named_modules()``) whose activations and gradients weigh the map.
        x: images ``(N, C, H, W)``; classes: the class of each image's map ``(N,)``.

    Returns:
        float32 ``(N, H, W)``: ReLU of the gradient-weighted activations, bilinearly upsampled to ``(H, W)`` and
        scaled to [0, 1] per map (:func:`normalise_maps`).
    """
    from monai.visualize import GradCAM

    from eden_lib.engine import select_device

    classes = np.asarray(classes, dtype=np.int64)
    if len(classes) != len(x):
        raise ValueError(f"grad_cam: {len(classes)} classes for {len(x)} images; expected one class per image")
    dev = select_device(device)
    net = net.to(dev)
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=normalise_maps)
    out = np.zeros((len(x), *x.shape[-2:]), np.float32)
    with warnings.catch_warnings():  # a target layer fed by the input itself: its output gradient is what we want
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for k in np.unique(classes):
            rows = np.flatnonzero(classes == k)
            for i in range(0, len(rows), batch):
                part = rows[i:i + batch]
                out[part] = cam(x[torch.from_numpy(part)].to(dev), class_idx=int(k))
    return out


def box_masks(boxes: np.ndarray, size: int) -> np.ndarray:
    """bool ``(N, size, size)``: the pixels whose centres lie inside each box ``(x, y, w, h)``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = np.arange(size) + 0.5
    cols = (centre[None, :] >= b[:, :1]) & (centre[None, :] < b[:, :1] + b[:, 2:3])
    rows = (centre[None, :] >= b[:, 1:2]) & (centre[None, :] < b[:, 1:2] + b[:, 3:4])
    return rows[:, :, None] & cols[:, None, :]


def peak_points(maps: np.ndarray) -> np.ndarray:
    """``(x, y)`` pixel centre of each map's maximum (ties: the one nearest the image centre), float ``(N, 2)``;
    NaN for a map without a positive value."""
    m = np.asarray(maps, np.float64)
    n, h, w = m.shape
    top = m.max(axis=(1, 2), keepdims=True)
    ys, xs = np.mgrid[:h, :w] + 0.5
    far = (xs - w / 2) ** 2 + (ys - h / 2) ** 2
    cost = np.where(m >= top - TIE * np.abs(top), far[None], np.inf).reshape(n, -1)
    best = cost.argmin(axis=1)
    points = np.stack([xs.ravel()[best], ys.ravel()[best]], axis=1)
    points[top[:, 0, 0] <= 0] = np.nan
    return points


def pointing_hits(maps: np.ndarray, boxes: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """bool ``(N,)``: the pointing game, the peak of each map (:func:`peak_points`) inside its box widened by
    ``tolerance`` pixels on each side."""
    p, b = peak_points(maps), np.asarray(boxes, np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        inside_x = (p[:, 0] >= b[:, 0] - tolerance) & (p[:, 0] <= b[:, 0] + b[:, 2] + tolerance)
        inside_y = (p[:, 1] >= b[:, 1] - tolerance) & (p[:, 1] <= b[:, 1] + b[:, 3] + tolerance)
    return inside_x & inside_y


def box_iou(maps: np.ndarray, boxes: np.ndarray, fraction: float) -> np.ndarray:
    """float ``(N,)``: IoU of the region where each map is at least ``fraction`` of its maximum (empty for a map
    without a positive value) with the box's pixels (:func:`box_masks`)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"box_iou: fraction={fraction!r}, expected a number in (0, 1]")
    m = np.asarray(maps, np.float64)
    top = m.max(axis=(1, 2), keepdims=True)
    region = (m >= fraction * top) & (top > 0)
    box = box_masks(boxes, m.shape[-1])
    union = (region | box).sum(axis=(1, 2))
    return np.where(union > 0, (region & box).sum(axis=(1, 2)) / np.maximum(union, 1), 0.0)


def random_maps(generator: np.random.Generator, n: int, grid: int, size: int) -> np.ndarray:
    """The random-map floor: uniform noise on a ``grid x grid`` map, upsampled to ``size`` as Grad-CAM's maps are
    (MONAI's bilinear upsampler) and scaled to [0, 1]: a map of the same form that knows nothing.
    Returns ``(n, size, size)``."""
    from monai.visualize.visualizer import default_upsampler

    noise = torch.from_numpy(generator.random((n, 1, grid, grid), dtype=np.float32))
    return normalise_maps(default_upsampler((size, size))(noise))


def prior_maps(boxes: np.ndarray, findings: np.ndarray, groups: np.ndarray, size: int) -> np.ndarray:
    """The image-free prior control: for each box, the mean box mask (:func:`box_masks`) of the same finding over the
    boxes of other groups (patients), scaled to [0, 1]; zeros where no other group has that finding.
    ``(N, size, size)``."""
    masks = box_masks(boxes, size).astype(np.float64)
    findings, groups = np.asarray(findings), np.asarray(groups)
    out = np.zeros_like(masks)
    for f in np.unique(findings):
        rows = np.flatnonzero(findings == f)
        total = masks[rows].sum(axis=0)
        for g in np.unique(groups[rows]):
            own = rows[groups[rows] == g]
            out[own] = total - masks[own].sum(axis=0)
    return normalise_maps(out)


def bootstrap_mean(values: np.ndarray, generator: np.random.Generator, n_bootstrap: int) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high", "n"}``: the mean of ``values`` ``(N,)`` with a 95 % percentile bootstrap CI
    over its entries (NaN for no entries)."""
    from eden_lib.evaluation.statistics import percentile_ci

    v = np.asarray(values, np.float64)
    if not len(v):
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    draws = v[generator.integers(0, len(v), size=(n_bootstrap, len(v)))].mean(axis=1)
    low, high = percentile_ci(draws)
    return {"mean": float(v.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(v))}


def paired_difference(a: np.ndarray, b: np.ndarray, generator: np.random.Generator,
                      n_bootstrap: int) -> dict[str, float]:
    """Mean of ``a - b`` over paired entries (the same boxes) with the 95 % bootstrap CI and two-sided bootstrap p
    (:func:`~eden_lib.evaluation.statistics.bootstrap_difference`)."""
    from eden_lib.evaluation.statistics import bootstrap_difference

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    draws = d[generator.integers(0, len(d), size=(n_bootstrap, len(d)))].mean(axis=1)
    return bootstrap_difference(float(d.mean()), draws)
