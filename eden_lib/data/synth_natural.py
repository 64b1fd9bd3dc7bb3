"""SynthNatural: a procedural natural-image source domain, the study's stand-in for ImageNet in BTL's domain-transfer
claim (Hosseinzadeh Taher et al., MICCAI-DART 2021; dira_caid_transfer_alice_cadpe.md §3.1).

Every image is one filled shape of a class of :data:`SHAPES` (the label) at a random position, scale and rotation
over a textured background (:data:`TEXTURES`: stripes, checkers or smooth noise at a random frequency and angle),
each in its own random colour. The shape is dark on a bright background and bright on a dark one (by luminance), so
it stays visible in colour and in grey. Nothing in it is medical: the point is a domain gap to the radiographs.

The images are RGB, as ImageNet's are: the source models then have three-channel stems and are saved in the
torchvision / MoCo release layouts; :func:`~eden_lib.checkpoints.load_pretrained` sums their stem filters into the
study's one grey channel (:func:`~eden_lib.checkpoints.rgb_to_gray`), which on a radiograph gives exactly what BTL's
fine-tuning gives with the grey image replicated to three channels.

Generation is vectorised over images (one Python loop over the few shape classes and textures), in fixed chunks,
from one ``torch.Generator``: the same ``(n, size, seed, stream)`` gives the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: the shape classes, in label order
SHAPES: tuple[str, ...] = ("disc", "ring", "ellipse", "square", "triangle", "star", "cross", "crescent")
#: the background textures
TEXTURES: tuple[str, ...] = ("stripes", "checkers", "noise")
#: shape radius as a fraction of the half image side; the texture's amplitude as a fraction of the difference of the
#: two background colours; the luminance weights of the contrast rule
SCALE_RANGE = (0.4, 0.7)
TEXTURE_CONTRAST = 0.5
LUMA = (0.299, 0.587, 0.114)
#: images generated per chunk (memory bound; part of what fixes the random stream)
CHUNK = 256


@dataclass(frozen=True)
class NaturalImages:
    """A SynthNatural set.

    Attributes:
        images: ``(N, 3, R, R)`` uint8 RGB.
        labels: ``(N,)`` int64 index into :data:`SHAPES`.
        masks: ``(N, R, R)`` bool, the shape's pixels.
        textures: ``(N,)`` int64 index into :data:`TEXTURES`.
        poses: ``(N, 4)`` float32 shape centre ``(cx, cy)`` in [-1, 1] image coordinates (x right, y down), radius
            as a fraction of the half side, rotation in radians: :func:`local_coordinates` of these and the grid
            give back ``masks`` through :func:`shape_mask`.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    textures: np.ndarray
    poses: np.ndarray

    def one_hot(self) -> np.ndarray:
        """The labels as ``(N, len(SHAPES))`` float32 0 / 1 (the multi-label targets of the supervised method)."""
        return np.eye(len(SHAPES), dtype=np.float32)[self.labels]


def _polygon(r: torch.Tensor, phi: torch.Tensor, n: int) -> torch.Tensor:
    """Inside the regular ``n``-gon inscribed in the unit circle (a vertex on the +u axis)."""
    sector = 2 * math.pi / n
    return r * torch.cos(torch.remainder(phi, sector) - sector / 2) <= math.cos(math.pi / n)


def shape_mask(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pixels of shape ``shape`` (an index of :data:`SHAPES`) at local coordinates ``u, v`` (any equal shapes; the
    shape's outer radius is 1): a bool tensor of that shape."""
    r, phi = torch.hypot(u, v), torch.atan2(v, u)
    name = SHAPES[shape]
    if name == "disc":
        return r <= 1
    if name == "ring":
        return (r <= 1) & (r >= 0.55)
    if name == "ellipse":
        return u**2 + (v / 0.45) ** 2 <= 1
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.75
    if name == "triangle":
        return _polygon(r, phi, 3)
    if name == "star":
        return r <= 0.42 + 0.58 * ((1 + torch.cos(5 * phi)) / 2) ** 3
    if name == "cross":
        return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    if name == "crescent":
        return (r <= 1) & ((u - 0.5) ** 2 + v**2 > 0.8**2)
    raise ValueError(f"unknown shape index {shape}; allowed 0..{len(SHAPES) - 1} ({', '.join(SHAPES)})")


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _rotated(x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``x cos a + y sin a`` per image: grids ``(R, R)``, angles ``(B,)`` -> ``(B, R, R)``."""
    return x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]


def texture(kind: int, x: torch.Tensor, y: torch.Tensor, b: int, g: torch.Generator) -> torch.Tensor:
    """``b`` backgrounds of texture ``kind`` (an index of :data:`TEXTURES`) in [0, 1], ``(b, R, R)``, on the grid
    ``x, y`` ``(R, R)`` in [-1, 1]."""
    angle = _uniform(b, 0, math.pi, g)
    name = TEXTURES[kind]
    if name == "stripes":
        freq, phase = _uniform(b, 2, 7, g), _uniform(b, 0, 2 * math.pi, g)
        return 0.5 + 0.5 * torch.sin(math.pi * freq[:, None, None] * _rotated(x, y, angle) + phase[:, None, None])
    if name == "checkers":
        cells = _uniform(b, 1.5, 4, g)[:, None, None]
        a, c = _rotated(x, y, angle), _rotated(y, -x, angle)
        return torch.remainder(torch.floor(a * cells) + torch.floor(c * cells), 2)
    if name == "noise":
        coarse = torch.randn(b, 1, 6, 6, generator=g)
        fine = F.interpolate(coarse, size=x.shape, mode="bicubic", align_corners=True)[:, 0]
        low = fine.amin(dim=(1, 2), keepdim=True)
        return (fine - low) / (fine.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-6)
    raise ValueError(f"unknown texture index {kind}; allowed 0..{len(TEXTURES) - 1} ({', '.join(TEXTURES)})")


def grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(x, y)``, each ``(R, R)`` in [-1, 1] (x along columns, y along rows)."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def local_coordinates(poses: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shape frame ``(u, v)``, each ``(B, R, R)``, of poses ``(B, 4)`` (``cx, cy, scale, angle``)."""
    x, y = grid(size)
    cx, cy, scale, angle = (poses[:, i, None, None] for i in range(4))
    dx, dy = (x - cx) / scale, (y - cy) / scale
    return dx * torch.cos(angle) + dy * torch.sin(angle), dy * torch.cos(angle) - dx * torch.sin(angle)


def _chunk(labels: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Images ``(B, 3, R, R)`` in [0, 1], masks ``(B, R, R)``, texture indices ``(B,)`` and poses ``(B, 4)`` for
    ``labels`` ``(B,)``."""
    b = len(labels)
    x, y = grid(size)
    textures = torch.randint(len(TEXTURES), (b,), generator=g)
    t = torch.empty(b, size, size)
    for kind in range(len(TEXTURES)):
        rows = torch.nonzero(textures == kind).flatten()
        t[rows] = texture(kind, x, y, len(rows), g)
    scale = _uniform(b, *SCALE_RANGE, g)
    centre = (1 - scale)[:, None] * (2 * torch.rand(b, 2, generator=g) - 1)
    poses = torch.cat([centre, scale[:, None], _uniform(b, 0, 2 * math.pi, g)[:, None]], dim=1)
    u, v = local_coordinates(poses, size)
    masks = torch.zeros(b, size, size, dtype=torch.bool)
    for shape in range(len(SHAPES)):
        rows = torch.nonzero(labels == shape).flatten()
        masks[rows] = shape_mask(shape, u[rows], v[rows])
    colours = torch.rand(b, 3, 3, generator=g)  # background 1, background 2, shape; (B, which, RGB)
    luma = torch.tensor(LUMA)
    bright = ((colours[:, 0] + colours[:, 1]) / 2 @ luma) > 0.5
    shape_colour = torch.where(bright[:, None], 0.45 * colours[:, 2], 0.55 + 0.45 * colours[:, 2])
    step = TEXTURE_CONTRAST * (colours[:, 1] - colours[:, 0])
    background = colours[:, 0, :, None, None] + step[:, :, None, None] * t[:, None]
    images = torch.where(masks[:, None], shape_colour[:, :, None, None], background)
    return images, masks, textures, poses


def render_natural(n: int, size: int, seed: int, stream: int = 0) -> NaturalImages:
    """``n`` SynthNatural images of ``size`` x ``size`` pixels, classes balanced (counts differ by at most one).

    Args:
        n: images (>= 1); size: side in pixels (>= 16).
        seed: the study seed; stream: an independent set under the same seed (e.g. 0 training, 1 held out).

    Returns:
        :class:`NaturalImages`; the same arguments give the same arrays.
    """
    if n < 1 or size < 16:
        raise ValueError(f"render_natural: n = {n} and size = {size}; expected n >= 1 and size >= 16")
    state = np.random.SeedSequence([seed, stream]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    labels = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]
    parts = [_chunk(labels[i : i + CHUNK], size, g) for i in range(0, n, CHUNK)]
    images = torch.cat([p[0] for p in parts])
    return NaturalImages(
        images=(images * 255).round().to(torch.uint8).numpy(),
        labels=labels.numpy().astype(np.int64),
        masks=torch.cat([p[1] for p in parts]).numpy(),
        textures=torch.cat([p[2] for p in parts]).numpy().astype(np.int64),
        poses=torch.cat([p[3] for p in parts]).numpy(),
    )
