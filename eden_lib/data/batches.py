"""Batch factories for the engine: ``factory(epoch, generator)`` yields the epoch's batches.

2D batches crop from the cached render (e.g. 256 x 256) and resample to the training size (e.g. 64 x 64) in one
batched ``grid_sample``, so fine anatomy keeps its detail. No horizontal flips: laterality is anatomy here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from eden_lib.engine import BatchFactory
from eden_lib.transforms.views import random_resized_crop


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, *spatial) -> float32 (B, 1, *spatial) in [0, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def resize_2d(images: np.ndarray, size: int, chunk: int = 512) -> torch.Tensor:
    """Whole images uint8 (N, R, R) -> float32 (N, 1, size, size) in [0, 1] (area-averaged)."""
    out = [
        F.interpolate(to_unit(images[i : i + chunk]), size=(size, size), mode="area")
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(out) if out else torch.empty(0, 1, size, size)


def _permuted_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[np.ndarray]:
    """``steps`` batches of indices drawn by repeated permutations of range(n) (drops no sample twice in a row)."""
    if n < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training samples")
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        idx, order = order[:batch_size], order[batch_size:]
        yield np.sort(idx.numpy())


def cxr_batches(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray, batch_size: int, steps: int, size: int
) -> BatchFactory:
    """Random resized crops of the training radiographs with their finding labels."""

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for idx in _permuted_batches(len(indices), batch_size, steps, generator):
            rows = indices[idx]
            yield {
                "image": random_resized_crop(to_unit(images[rows]), size, generator),
                "label": torch.from_numpy(np.asarray(labels[rows], dtype=np.float32)),
            }

    return factory


def render_batches(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray, batch_size: int, steps: int
) -> BatchFactory:
    """Whole training renders ``image`` (B, 1, R, R) in [0, 1] with labels: methods that draw their own views."""

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for idx in _permuted_batches(len(indices), batch_size, steps, generator):
            rows = indices[idx]
            yield {
                "image": to_unit(images[rows]),
                "label": torch.from_numpy(np.asarray(labels[rows], dtype=np.float32)),
            }

    return factory


def colour_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int, size: int | None = None
) -> BatchFactory:
    """Multi-channel images (N, C, R, R) uint8 with float labels (N, K) -> ``image`` (B, C, size, size) float32 in
    [0, 1], random resized crops as :func:`cxr_batches` (``size`` ``None``: the whole images, as
    :func:`render_batches`, for methods that draw their own views) and ``label`` (B, K) float32 (e.g. the RGB
    SynthNatural source, :mod:`eden_lib.data.synth_natural`)."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for rows in _permuted_batches(len(images), batch_size, steps, generator):
            x = torch.from_numpy(np.asarray(images[rows], dtype=np.float32) / 255.0)
            yield {
                "image": x if size is None else random_resized_crop(x, size, generator),
                "label": torch.from_numpy(np.asarray(labels[rows], dtype=np.float32)),
            }

    return factory


def site_steps(sizes: Sequence[int], steps: int, multiple: int = 1) -> list[int]:
    """Split an epoch's ``steps`` over sites in proportion to their sizes (Ark's turn is one pass over a data set),
    largest remainders first, each site with rows at least one step; every count is then rounded up to a multiple
    of ``multiple`` (the DDP world size, so each rank takes the same steps of every turn). A site without rows
    gets 0 steps."""
    if steps < 1 or multiple < 1:
        raise ValueError(f"site_steps: steps {steps} and multiple {multiple} must be >= 1")
    sizes = [int(n) for n in sizes]
    if sum(sizes) == 0:
        raise ValueError(f"site_steps: every site is empty (sizes {sizes})")
    share = [steps * n / sum(sizes) for n in sizes]
    counts = [math.floor(x) for x in share]
    for i in sorted(range(len(sizes)), key=lambda i: counts[i] - share[i])[: steps - sum(counts)]:
        counts[i] += 1
    counts = [max(c, 1) if n else 0 for c, n in zip(counts, sizes)]
    return [math.ceil(c / multiple) * multiple for c in counts]


def site_batches(
    images: np.ndarray, labels: np.ndarray, site_rows: Sequence[np.ndarray], steps_per_site: Sequence[int],
    batch_size: int,
) -> BatchFactory:
    """Ark's cyclic batches: each epoch ``steps_per_site[0]`` batches of site 0, then site 1's, ...; a batch holds one
    site: ``image`` (B, 1, R, R) whole renders in [0, 1], ``label`` (B, K_max) float32 (NaN = unknown or padding) and
    ``site`` (B,) int64. ``site_rows[d]``: the rows of site d; B is ``batch_size`` or the site's size if smaller."""
    if len(site_rows) != len(steps_per_site):
        raise ValueError(f"{len(site_rows)} sites but {len(steps_per_site)} step counts")

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for site, (rows, steps) in enumerate(zip(site_rows, steps_per_site)):
            if not steps:
                continue
            for idx in _permuted_batches(len(rows), min(batch_size, len(rows)), steps, generator):
                chosen = rows[idx]
                yield {
                    "image": to_unit(images[chosen]),
                    "label": torch.from_numpy(np.asarray(labels[chosen], dtype=np.float32)),
                    "site": torch.full((len(chosen),), site, dtype=torch.int64),
                }

    return factory


def _samples(array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Rows of an (M, *spatial) array in [0, 1] (any float dtype, e.g. a float16 memory map) -> (B, 1, *spatial)."""
    return torch.from_numpy(np.asarray(array[rows], dtype=np.float32)).unsqueeze(1)


def volume_batches(
    volumes: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int, steps: int
) -> BatchFactory:
    """Batches of 3D cubes (M, X, Y, Z) in [0, 1] -> ``image`` (B, 1, X, Y, Z) (and ``label`` (B, 1))."""

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for idx in _permuted_batches(len(indices), batch_size, steps, generator):
            rows = indices[idx]
            batch = {"image": _samples(volumes, rows)}
            if labels is not None:
                batch["label"] = torch.from_numpy(np.asarray(labels[rows], dtype=np.float32)).reshape(-1, 1)
            yield batch

    return factory


def class_batches(samples: np.ndarray, labels: np.ndarray, batch_size: int, steps: int) -> BatchFactory:
    """Batches of crops (M, *spatial) in [0, 1] with class indices (M,) -> ``image`` (B, 1, *spatial) float32 and
    ``label`` (B,) int64 (e.g. the visual words of self-discovery, 2D or 3D)."""
    if len(samples) != len(labels):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels")

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for rows in _permuted_batches(len(samples), batch_size, steps, generator):
            yield {"image": _samples(samples, rows), "label": torch.from_numpy(np.asarray(labels[rows], np.int64))}

    return factory
