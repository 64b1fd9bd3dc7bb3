"""Scratch study roots for the ablation benchmarks: this repository's prepared data (read-only), their own outputs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def scratch_root(shared: Sequence[str] = ("prepared",)) -> Path:
    """A new study root with this repository's ``params.yaml`` and ``data/<name>`` of ``shared`` linked in."""
    root = Path(tempfile.mkdtemp(prefix="eden_ablate_"))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "data").mkdir()
    for name in shared:
        (root / "data" / name).symlink_to(REPO / "data" / name)
    return root


@contextmanager
def variant(overrides: dict, shared: Sequence[str] = ("prepared",)) -> Iterator[dict]:
    """The params of one ablation (``overrides``: dotted keys) in a :func:`scratch_root` set as ``EDEN_ROOT``;
    the root is removed and ``EDEN_ROOT`` restored afterwards."""
    from eden_lib.config import load_params

    root, before = scratch_root(shared), os.environ.get("EDEN_ROOT")
    os.environ["EDEN_ROOT"] = str(root)
    try:
        yield load_params(overrides=overrides)
    finally:
        if before is None:
            os.environ.pop("EDEN_ROOT", None)
        else:
            os.environ["EDEN_ROOT"] = before
        shutil.rmtree(root, ignore_errors=True)
