"""A small self-supervised anatomical embedding (SAM-like) for matching points across CT scans.

``AnatomyEmbedding`` maps a volume ``(B, 1, X, Y, Z)`` to a fine and a coarse embedding, both ``(B, D, X/2, Y/2,
Z/2)`` (sizes rounded up) and L2-normalised over ``D``. The fine one sees about 7 voxels plus the upsampled coarse
context; the coarse one is computed at stride 4 with a stride-8 branch (receptive field about 59 voxels) and
upsampled. Embedding voxel ``i`` sits on input voxel ``2 i``.

Training follows SAM: two random overlapping crops of one volume, each with its own intensity scale, shift and
Gaussian noise; their offsets give the voxel correspondence; ``points`` corresponding voxel pairs of the overlap are
contrasted with InfoNCE (each query against all sampled keys), for the fine and the coarse embedding, summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.losses.info_nce import in_batch_info_nce


@dataclass(frozen=True)
class EmbeddingConfig:
    """Network and training settings (params ``anatomy``; crops ``(x, y, z)`` voxels, all even)."""

    embed_dim: int = 16
    width: int = 16
    crop: tuple[int, int, int] = (48, 48, 32)
    steps: int = 200
    batch_size: int = 2
    points: int = 256
    temperature: float = 0.1
    lr: float = 0.001


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 convolution (no dilation: dilated 3D convolutions are very slow on CPU), BatchNorm, LeakyReLU."""
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm3d(c_out), nn.LeakyReLU(0.1, inplace=True))


class AnatomyEmbedding(nn.Module):
    """Fully convolutional 3D embedding net: ``(B, 1, X, Y, Z)`` -> ``(fine, coarse)`` each ``(B, D, X/2, Y/2, Z/2)``.

    BatchNorm (not instance norm): whole volumes are embedded in eval mode with the crops' running statistics.
    """

    def __init__(self, width: int = 16, embed_dim: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_block(1, w, stride=2), _block(w, w))  # /2
        self.down4 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))  # /4
        self.down8 = nn.Sequential(_block(2 * w, 2 * w, stride=2), _block(2 * w, 2 * w), _block(2 * w, 2 * w))  # /8
        self.coarse_head = nn.Conv3d(2 * w, embed_dim, 1)
        self.fine_head = nn.Conv3d(3 * w, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.stem(x)
        f4 = self.down4(f2)
        f4 = f4 + F.interpolate(self.down8(f4), size=f4.shape[2:], mode="trilinear", align_corners=False)
        up = F.interpolate(f4, size=f2.shape[2:], mode="trilinear", align_corners=False)
        coarse = F.interpolate(self.coarse_head(f4), size=f2.shape[2:], mode="trilinear", align_corners=False)
        fine = self.fine_head(torch.cat([f2, up], dim=1))
        return F.normalize(fine, dim=1), F.normalize(coarse, dim=1)


def _even_offsets(n: int, c: int, g: torch.Generator) -> tuple[int, int]:
    """Two even crop starts along one axis (extent ``n``, crop ``c``) at most ``c / 2`` apart."""
    hi = (n - c) // 2  # offsets are 2 * [0, hi]
    a = int(torch.randint(0, hi + 1, (1,), generator=g))
    b = a + int(torch.randint(-(c // 4), c // 4 + 1, (1,), generator=g))
    return 2 * a, 2 * min(max(b, 0), hi)


def _augment(crop: np.ndarray, g: torch.Generator) -> torch.Tensor:
    """``(X, Y, Z)`` crop -> ``(1, X, Y, Z)`` float32 with a random intensity scale, shift and Gaussian noise."""
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32))
    scale = 0.85 + 0.3 * torch.rand(1, generator=g)
    shift = 0.2 * torch.rand(1, generator=g) - 0.1
    sigma = 0.03 * torch.rand(1, generator=g)
    return (x * scale + shift + sigma * torch.randn(x.shape, generator=g)).unsqueeze(0)


def crop_pair(volume: np.ndarray, crop: tuple[int, int, int], points: int,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two augmented overlapping crops of ``volume`` ``(X, Y, Z)`` and corresponding embedding-grid points.

    Returns:
        ``crop_a, crop_b`` ``(1, cx, cy, cz)`` float32; ``idx_a, idx_b`` ``(N,)`` int64 flat indices into the
        ``(cx/2, cy/2, cz/2)`` embedding grid of each crop, row ``n`` of both at the same volume voxel;
        ``N = min(points, overlap cells)``.
    """
    shape = volume.shape
    if any(n < c for n, c in zip(shape, crop)):
        raise ValueError(f"volume of shape {shape} (x, y, z) is smaller than the embedding crop {tuple(crop)}")
    oa, ob = zip(*(_even_offsets(n, c, g) for n, c in zip(shape, crop)))
    lo = [max(a, b) // 2 for a, b in zip(oa, ob)]  # overlap on the half-resolution volume grid
    hi = [(min(a, b) + c) // 2 for a, b, c in zip(oa, ob, crop)]
    ext = [h - lo_ for lo_, h in zip(lo, hi)]
    n_cells = int(np.prod(ext))
    pick = torch.randperm(n_cells, generator=g)[:points].numpy()
    cell = np.stack(np.unravel_index(pick, ext), axis=1) + np.asarray(lo)  # (N, 3) half-grid volume cells
    grid = [c // 2 for c in crop]

    def flat(offset) -> torch.Tensor:
        e = cell - np.asarray(offset) // 2
        return torch.from_numpy(np.ravel_multi_index(e.T, grid).astype(np.int64))

    def cut(o) -> np.ndarray:
        return volume[o[0]:o[0] + crop[0], o[1]:o[1] + crop[1], o[2]:o[2] + crop[2]]

    return _augment(cut(oa), g), _augment(cut(ob), g), flat(oa), flat(ob)


def embedding_loss(model: AnatomyEmbedding, pairs: list[tuple[torch.Tensor, ...]], temperature: float) -> torch.Tensor:
    """Mean over crop pairs of fine + coarse InfoNCE at the sampled corresponding points (``crop_pair`` outputs)."""
    a = torch.stack([p[0] for p in pairs])
    b = torch.stack([p[1] for p in pairs])
    fine, coarse = model(torch.cat([a, b]))  # (2B, D, ...)
    n = len(pairs)
    total = fine.new_zeros(())
    for emb in (fine, coarse):
        flat = emb.flatten(2)  # (2B, D, V)
        for i, (_, _, ia, ib) in enumerate(pairs):
            total = total + in_batch_info_nce(flat[i][:, ia].T, flat[n + i][:, ib].T, temperature)
    return total / n


def train_embedding(volumes: np.ndarray, cfg: EmbeddingConfig, seed: int) -> tuple[AnatomyEmbedding, list[float]]:
    """Train the embedding self-supervised on ``volumes`` ``(S, X, Y, Z)`` in [0, 1]; deterministic on CPU per seed.

    Returns:
        The model (eval mode) and the loss of every step.
    """
    if any(c % 2 for c in cfg.crop):
        raise ValueError(f"embedding crop {tuple(cfg.crop)}: expected even sizes (x, y, z)")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AnatomyEmbedding(cfg.width, cfg.embed_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    history = []
    for _ in range(cfg.steps):
        rows = torch.randint(0, len(volumes), (cfg.batch_size,), generator=g).tolist()
        pairs = [crop_pair(volumes[r], tuple(cfg.crop), cfg.points, g) for r in rows]
        loss = embedding_loss(model, pairs, cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return model.eval(), history
