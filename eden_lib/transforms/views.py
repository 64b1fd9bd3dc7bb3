"""Multi-view recipes for instance discrimination (MoCo-v2, Barlow Twins, SimSiam, DINO, CAiD, DiRA), batched.

Every operation takes a batch ``(B, C, H, W)`` in [0, 1] and a ``torch.Generator`` and draws its randomness per
sample, so one call augments a whole batch (no per-sample Python loop). A view is a random resized crop of the
full render (so fine anatomy keeps its detail at the training size), then photometric jitter, Gaussian blur and an
optional horizontal flip, as in MoCo-v2 (Chen et al., 2020) without the colour-only steps a radiograph lacks.

Horizontal flips are a choice, not a default of nature: in a chest radiograph the heart, the aortic knob and the
higher right hemidiaphragm make left and right distinguishable, so flipping teaches invariance to laterality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewConfig:
    """One view recipe.

    Attributes:
        size: output side in pixels.
        scale: range of the crop side as a fraction of the image side (torchvision's ``scale`` is an area
            fraction: area (0.2, 1.0) corresponds to side (0.45, 1.0)).
        jitter_p: probability of brightness/contrast jitter.
        brightness: brightness factor drawn from [1 - b, 1 + b].
        contrast: contrast factor drawn from [1 - c, 1 + c].
        blur_p: probability of a Gaussian blur.
        blur_sigma: sigma range in pixels of a 224-pixel view; scaled to ``size``.
        flip_p: probability of a horizontal flip.
    """

    size: int
    scale: tuple[float, float] = (0.45, 1.0)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"view scale {self.scale} must satisfy 0 < low <= high <= 1")
        for name in ("jitter_p", "blur_p", "flip_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"view {name} = {getattr(self, name)}; expected a probability in [0, 1]")


def crop_boxes(b: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Random square boxes ``(B, 3)``: side fraction ``s`` and centre ``(cx, cy)`` in [-1, 1] image coordinates."""
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)
    centre = (1 - s)[:, None] * (2 * torch.rand(b, 2, generator=generator) - 1)
    return torch.cat([s[:, None], centre], dim=1)


def crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, H, W)`` and boxes ``(B, 3)`` from :func:`crop_boxes` -> ``(B, C, size, size)``, bilinear."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = boxes[:, 0]
    theta[:, 1, 1] = boxes[:, 0]
    theta[:, :, 2] = boxes[:, 1:]
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    x: torch.Tensor, size: int, generator: torch.Generator, scale: tuple[float, float] = (0.6, 1.0)
) -> torch.Tensor:
    """``(B, C, R, R)`` -> ``(B, C, size, size)``: a random square crop of side ``scale`` x R per sample."""
    return crop(x, crop_boxes(x.shape[0], scale, generator).to(x.device), size)


def _per_sample(p: float, b: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(b, generator=generator) < p


def jitter(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness then contrast (about each image's mean), applied with probability ``jitter_p``; clamped."""
    b = x.shape[0]
    on = _per_sample(cfg.jitter_p, b, generator)
    bright = 1 + cfg.brightness * (2 * torch.rand(b, generator=generator) - 1)
    contrast = 1 + cfg.contrast * (2 * torch.rand(b, generator=generator) - 1)
    bright = torch.where(on, bright, torch.ones(b)).view(b, 1, 1, 1).to(x)
    contrast = torch.where(on, contrast, torch.ones(b)).view(b, 1, 1, 1).to(x)
    y = x * bright
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    return ((y - mean) * contrast + mean).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per sample; ``sigma <= 0`` leaves the sample as is."""
    b, c, h, w = x.shape
    radius = max(1, int(torch.ceil(3 * sigma.max()).item()))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x).clamp(min=1e-6)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    identity = (offsets == 0).to(x).expand_as(kernel)
    kernel = torch.where((sigma > 0).to(x.device)[:, None], kernel / kernel.sum(1, keepdim=True), identity)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, K)
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def blur(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    on = _per_sample(cfg.blur_p, b, generator)
    lo, hi = (s * cfg.size / 224 for s in cfg.blur_sigma)
    sigma = lo + (hi - lo) * torch.rand(b, generator=generator)
    return gaussian_blur(x, torch.where(on, sigma, torch.zeros(b)))


def hflip(x: torch.Tensor, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample left-right with probability ``p``; returns the batch and the ``(B,)`` flipped mask."""
    flipped = _per_sample(p, x.shape[0], generator).to(x.device)
    return torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x), flipped


def augment(crops: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """Photometric jitter, blur and flip of already cropped views ``(B, C, size, size)``."""
    return hflip(blur(jitter(crops, cfg, generator), cfg, generator), cfg.flip_p, generator)[0]


def make_view(
    images: torch.Tensor, cfg: ViewConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full renders ``(B, C, R, R)`` -> ``(view, clean_crop)``, both ``(B, C, size, size)``.

    ``clean_crop`` is the crop before any photometric change or flip: the restoration target of CAiD and DiRA.
    """
    clean = crop(images, crop_boxes(images.shape[0], cfg.scale, generator).to(images.device), cfg.size)
    return augment(clean, cfg, generator), clean
