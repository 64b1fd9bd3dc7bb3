"""Checkpoints: atomic writes, safe reads, strict state-dict loading.

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``, so a kill
mid-write leaves the previous checkpoint intact. Every read uses ``torch.load(weights_only=True)``: an untrusted
pickle is never executed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error that names it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            more = " ..." if len(unexpected) > 10 else ""
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}{more}")
        if mismatched:
            parts.append(f"shape mismatches: {mismatched[:10]}")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def save_weights(module: nn.Module, path: str | Path, **info: Any) -> Path:
    """Save a module's weights with descriptive ``info`` (method, architecture) for :func:`load_weights`."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return save_atomic({"state_dict": state, "info": dict(info)}, path)


def load_weights(module: nn.Module, path: str | Path) -> dict:
    """Strictly load weights written by :func:`save_weights`; returns their ``info``."""
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path} has no 'state_dict' entry; keys: {sorted(ckpt)}")
    load_state_dict_strict(module, ckpt["state_dict"], str(path))
    return dict(ckpt.get("info", {}))


def _strip(prefix: str) -> Callable[[str], str | None]:
    return lambda key: key[len(prefix):] if key.startswith(prefix) else key


#: checkpoint layout -> key mapping into our module names (``None`` drops a key). Extended method by method.
KEY_MAPS: dict[str, Callable[[str], str | None]] = {
    "eden": lambda key: key,
    # Models Genesis / TransVW / Semantic Genesis PyTorch releases: {"state_dict": {"module.down_tr64...": ...}}
    # (saved from nn.DataParallel); the names below "module." are those of eden_lib.models.unet3d.UNet3D.
    "models_genesis": _strip("module."),
}


def detect_source(ckpt: Mapping[str, Any]) -> str:
    """The layout of a checkpoint read by :func:`load_checkpoint` (a key of :data:`KEY_MAPS`)."""
    if "info" in ckpt and "state_dict" in ckpt:
        return "eden"
    state = ckpt.get("state_dict", ckpt)
    keys = [k for k in state if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys) and any(k.startswith("module.down_tr64.") for k in keys):
        return "models_genesis"
    raise CheckpointError(
        f"unrecognised checkpoint layout (top-level keys {sorted(ckpt)[:8]}, first weights {keys[:3]}); "
        f"pass source= one of {sorted(KEY_MAPS)}"
    )


def load_pretrained(path: str | Path, model: nn.Module, source: str = "auto") -> dict:
    """Load a released or Eden checkpoint into ``model`` strictly, mapping its key layout.

    Args:
        path: the checkpoint file (read with ``weights_only=True``; never unpickles code).
        model: the module whose ``state_dict`` names the checkpoint must fill exactly.
        source: a key of :data:`KEY_MAPS`, or ``"auto"`` to detect it.

    Returns:
        ``{"source": ..., "keys": n}``.

    Raises:
        CheckpointError: unknown layout, or missing / unexpected / mis-shaped keys (named).
    """
    ckpt = load_checkpoint(path)
    if source == "auto":
        source = detect_source(ckpt)
    if source not in KEY_MAPS:
        raise CheckpointError(f"unknown checkpoint source {source!r}; known: {sorted(KEY_MAPS)}")
    state = ckpt.get("state_dict", ckpt)
    mapping = KEY_MAPS[source]
    mapped = {}
    for key, value in state.items():
        new = mapping(key)
        if new is not None:
            mapped[new] = value
    load_state_dict_strict(model, mapped, f"{path} ({source} layout)")
    return {"source": source, "keys": len(mapped)}
