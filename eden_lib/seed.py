"""Seeding and determinism: the same seed gives the same numbers on CPU."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng(seed: int, *stream: int | str) -> np.random.Generator:
    """An independent NumPy generator for ``seed`` and a named stream (e.g. ``rng(0, "split")``)."""
    words = [seed] + [s if isinstance(s, int) else int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "little") for s in stream]
    return np.random.default_rng(np.random.SeedSequence(words))
