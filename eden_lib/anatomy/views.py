"""Batches of mined view pairs for the engine: ``factory(epoch, generator)`` yields the epoch's batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from eden_lib.data.batches import _permuted_batches
from eden_lib.data.luna16 import gather_cubes
from eden_lib.engine import BatchFactory


def _crops(volumes: np.ndarray, scans: np.ndarray, centres: np.ndarray, crop: tuple[int, int, int]) -> torch.Tensor:
    """``(B, 1, cx, cy, cz)`` float32 crops of ``volumes[scans[b]]`` covering ``[c - crop // 2, c + crop // 2)``,
    zero outside the volume."""
    cubes = [gather_cubes(volumes[s], c[None], crop, 0)[0] for s, c in zip(scans, centres)]
    return torch.from_numpy(np.stack(cubes).astype(np.float32)).unsqueeze(1)


def view_pair_batches(volumes: np.ndarray, pairs: pd.DataFrame, crop: Sequence[int], batch_size: int,
                      steps: int) -> BatchFactory:
    """Query / key crops of mined pairs (``matching.mine_pairs`` rows; ``volumes`` ``(S, X, Y, Z)`` in [0, 1], any
    float dtype, e.g. a float16 memory map).

    Each epoch draws ``steps`` batches of pair rows from repeated permutations (the torch generator), like
    ``eden_lib.data.batches.volume_batches``; a batch is ``{"query": (B, 1, cx, cy, cz), "key": (B, 1, cx, cy,
    cz)}`` float32, crops centred on ``(xq, yq, zq)`` of ``scan_q`` and ``(xk, yk, zk)`` of ``scan_k``, zero-padded
    past the borders.
    """
    size = tuple(int(c) for c in crop)
    if len(size) != 3 or any(c < 2 or c % 2 for c in size):
        raise ValueError(f"view crop {tuple(crop)}: expected three even sizes >= 2, (x, y, z)")
    scan_q, scan_k = pairs["scan_q"].to_numpy(np.int64), pairs["scan_k"].to_numpy(np.int64)
    centre_q = pairs[["xq", "yq", "zq"]].to_numpy(np.int64)
    centre_k = pairs[["xk", "yk", "zk"]].to_numpy(np.int64)

    def factory(epoch: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for rows in _permuted_batches(len(pairs), batch_size, steps, generator):
            yield {"query": _crops(volumes, scan_q[rows], centre_q[rows], size),
                   "key": _crops(volumes, scan_k[rows], centre_k[rows], size)}

    return factory
