"""The one training loop every method runs through.

It owns what methods should not: the device (CUDA if present, else CPU), bf16 autocast on GPU, per-epoch seeded
randomness, progress (a log file, never the executed notebook), per-epoch metrics (the training loss and, on fixed held-out batches, a monitored loss that is
comparable across epochs), atomic checkpoints after every epoch, resume from the last one, a clear stop on a non-finite loss, and DistributedDataParallel when launched by
``torchrun``. A method is an ``nn.Module`` whose ``forward(batch, generator)`` returns ``{"loss": ..., **scalars}``
and may define ``after_step()`` (momentum / EMA updates), ``after_epoch(epoch) -> {scalars}`` (added to the epoch's
metrics, e.g. a validation score) with ``stop_requested`` (True ends training after the epoch: early stopping),
``auxiliary_optimizers()`` (optimisers it steps itself,
e.g. a GAN discriminator's; checkpointed with the main one), ``ddp_find_unused_parameters`` (True when some of
its parameters take no part in the loss, e.g. a decoder kept only for export) and ``ddp_ignored_modules`` (names of
submodules DDP must leave alone because the method synchronises them itself, e.g. a discriminator it steps with
:func:`eden_lib.distributed.average_gradients`).

Resume is exact on CPU: each epoch draws its randomness from a generator seeded by (seed, epoch), so a run killed
after epoch k and resumed gives the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eden_lib.checkpoints import load_checkpoint, save_atomic

BatchFactory = Callable[[int, torch.Generator], Iterable[dict[str, torch.Tensor]]]
Batch = dict[str, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. ``cuda`` without a GPU is an error."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device is 'cuda' but no CUDA device is available")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(preference)


def distributed_context() -> tuple[int, int]:
    """(rank, world size); (0, 1) unless ``torch.distributed`` is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator all of one epoch's randomness comes from."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass
class TrainConfig:
    """What the loop needs besides the model and data.

    Attributes:
        epochs: total epochs.
        checkpoint_dir: where ``last.pt`` lives (``None``: no checkpoints, no resume).
        seed: seeds the per-epoch generators.
        fingerprint: identifies the configuration; a checkpoint with another fingerprint is not resumed.
        device: ``auto`` | ``cpu`` | ``cuda``.
        amp: bf16 autocast on CUDA (ignored on CPU).
        log_file: progress lines go here (``None``: stderr when it is a terminal, else nowhere).
        stop_after_epochs: stop (as if killed) after this many epochs of this call; for tests and time-boxing.
        verbose: print one line of metrics per epoch.
        monitor: fixed held-out batches; after every epoch the model's loss on them (eval mode, no gradients, the
            same randomness every epoch) is recorded as ``monitor_loss`` (and ``monitor_<term>`` per loss term).
    """

    epochs: int
    checkpoint_dir: Path | None = None
    seed: int = 0
    fingerprint: str = ""
    device: str = "auto"
    amp: bool = True
    log_file: Path | None = None
    stop_after_epochs: int | None = None
    verbose: bool = True
    monitor: list[Batch] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _progress(total: int, cfg: TrainConfig, desc: str) -> Any:
    from tqdm import tqdm  # plain text: it goes to a log file, never into a notebook

    if cfg.log_file is not None:
        Path(cfg.log_file).parent.mkdir(parents=True, exist_ok=True)
        stream = open(cfg.log_file, "a")  # noqa: SIM115 - closed with the bar in fit()
        bar = tqdm(total=total, desc=desc, file=stream, mininterval=5.0, ascii=True)
        bar.log_stream = stream
        return bar
    return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty())


def _auxiliary_optimizers(model: nn.Module) -> dict[str, torch.optim.Optimizer]:
    return model.auxiliary_optimizers() if hasattr(model, "auxiliary_optimizers") else {}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@contextmanager
def flush_denormal() -> Iterator[None]:
    """Flush denormal floats to zero while inside (CPU): small activations and Adam moments drifting into the
    denormal range slowed fine-tuning up to 5x after a few dozen steps (measured on the nodule segmentation)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fit(
    model: nn.Module,
    batches: BatchFactory,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    steps_per_epoch: int | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``cfg.epochs`` epochs, resuming from ``cfg.checkpoint_dir/last.pt`` when it matches.
    Denormals are flushed to zero meanwhile (:func:`flush_denormal`); the rest is :func:`_fit`.

    Args:
        model: a method module; ``model(batch, generator)`` returns ``{"loss": scalar tensor, ...}``.
        batches: ``batches(epoch, generator)`` yields the epoch's batches (dicts of tensors).
        optimizer: over ``model``'s parameters.
        cfg: the loop's settings.
        scheduler: stepped once per epoch.
        steps_per_epoch: batches ``batches`` yields per epoch; under DDP each rank takes every world-th batch and
            the remainder that would leave ranks with unequal step counts is dropped.

    Returns:
        One dict per epoch: ``epoch``, ``loss`` and every other scalar the method returned (epoch means), the
        ``monitor_*`` losses when ``cfg.monitor`` is set, ``lr``, ``seconds``.

    Raises:
        NonFiniteLossError: a loss was NaN or infinite (names the epoch, step and value).
    """
    with flush_denormal():
        return _fit(model, batches, optimizer, cfg, scheduler, steps_per_epoch)


@torch.no_grad()
def monitor_loss(model: nn.Module, batches: list[Batch], device: torch.device, seed: int) -> dict[str, float]:
    """Mean losses of ``model`` over fixed ``batches`` in eval mode: ``{"monitor_loss": ..., "monitor_<term>": ...}``.

    The training loss of an epoch mixes weights of the whole epoch and, for queue or EMA methods, negatives and
    targets that drift with them (MoCo's first ``queue_size / batch_size`` steps even see random keys); this one
    scores one set of weights on the same samples and augmentations every epoch. Methods keep their running state
    unchanged in eval mode (no enqueue, no centre update). Batch norm uses its running statistics.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed * 1_000_003 - 1)
    sums: dict[str, float] = {}
    for batch in batches:
        out = model(_to(batch, device), generator)
        for key, value in out.items():
            if key == "loss" or key.startswith("loss_"):
                sums[f"monitor_{key}"] = sums.get(f"monitor_{key}", 0.0) + float(value)
    model.train(was_training)
    return {k: v / len(batches) for k, v in sums.items()}


def _fit(
    model: nn.Module,
    batches: BatchFactory,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    steps_per_epoch: int | None,
) -> list[dict[str, float]]:
    device = select_device(cfg.device)
    rank, world = distributed_context()
    model.to(device)
    history: list[dict[str, float]] = []
    start = 0
    last = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir else None
    if last is not None and last.is_file():
        state = load_checkpoint(last)
        if state.get("fingerprint") == cfg.fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for name, aux in _auxiliary_optimizers(model).items():
                aux.load_state_dict(state["auxiliary_optimizers"][name])
            if scheduler is not None and state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
            history = json.loads(state["history"])
            start = int(state["epoch"]) + 1
            print(f"resumed from {last} after epoch {start - 1}")
        else:
            print(f"ignoring {last}: it was written for another configuration")
    runner: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        from eden_lib.distributed import ignored_names

        ignored = ignored_names(model, getattr(model, "ddp_ignored_modules", ()))
        if ignored:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        runner = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(model, "ddp_find_unused_parameters", False),
        )
    autocast = device.type == "cuda" and cfg.amp
    if world > 1 and not steps_per_epoch:
        raise ValueError("distributed training needs steps_per_epoch (equal step counts on every rank)")
    per_rank = (steps_per_epoch or 0) // world
    usable = per_rank * world if world > 1 else None  # every rank takes the same number of steps
    bar = _progress((cfg.epochs - start) * per_rank, cfg, desc=str(cfg.extra.get("name", "train")))
    done = 0
    try:
        for epoch in range(start, cfg.epochs):
            if cfg.stop_after_epochs is not None and done >= cfg.stop_after_epochs:
                break
            model.train()
            generator = epoch_generator(cfg.seed, epoch)
            sums: dict[str, float] = {}
            n = 0
            t0 = time.perf_counter()
            for step, batch in enumerate(batches(epoch, generator)):
                if usable is not None and step >= usable:
                    break
                if step % world != rank:
                    continue
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    out = runner(_to(batch, device), generator)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).item():
                    raise NonFiniteLossError(
                        f"non-finite loss {loss.item()} at epoch {epoch} step {step}; "
                        f"last epoch means: {history[-1] if history else 'none'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if hasattr(model, "after_step"):
                    model.after_step()
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                n += 1
                bar.update(1)
            if n == 0:
                raise RuntimeError(f"epoch {epoch} produced no batches; check the data and batch size")
            row = {"epoch": epoch, **{k: v / n for k, v in sums.items()}}
            if cfg.monitor:
                row.update(monitor_loss(model, cfg.monitor, device, cfg.seed))
            if hasattr(model, "after_epoch"):
                row.update(model.after_epoch(epoch))
            row["lr"] = float(optimizer.param_groups[0]["lr"])
            row["seconds"] = time.perf_counter() - t0
            if not all(math.isfinite(v) for v in row.values()):
                raise NonFiniteLossError(f"non-finite epoch metrics at epoch {epoch}: {row}")
            history.append(row)
            if scheduler is not None:
                scheduler.step()
            if last is not None and rank == 0:
                save_atomic(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "auxiliary_optimizers": {k: o.state_dict() for k, o in _auxiliary_optimizers(model).items()},
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "epoch": epoch,
                        "history": json.dumps(history),
                        "fingerprint": cfg.fingerprint,
                    },
                    last,
                )
            if cfg.verbose and rank == 0:
                scalars = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
                print(f"epoch {epoch + 1}/{cfg.epochs}: {scalars}")
            done += 1
            if getattr(model, "stop_requested", False):
                break
    finally:
        bar.close()
        if hasattr(bar, "log_stream"):
            bar.log_stream.close()
    return history
