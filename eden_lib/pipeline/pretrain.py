"""Stage ``pretrain@<method>``: pretrain one method in each spatial dimension it supports.

Every method gets the same budget in encoder passes (``pretrain.image_passes_2d`` / ``volume_passes_3d``), spread
over ``pretrain.epochs`` epochs with a checkpoint after each; a rerun after a kill resumes from the last one.
Writes the exported weights to ``data/models/<method>/`` (``encoder.pt`` and ``unet.pt`` for 2D, ``unet3d.pt`` for
3D; Ark also ``teacher.pt``), ``reports/metrics/pretrain/<method>.json`` and ``reports/plots/pretrain/<method>.csv``.
Ark (data ``cxr_sites``) trains on ``data/prepared/sites`` in site turns (:func:`site_schedule`). A
``pretrain.init.<method>`` entry starts the method from a checkpoint file (continual pretraining, :func:`load_init`).

Also a command line, for ``torchrun`` and for runs outside DVC::

    python -m eden_lib.pipeline.pretrain --method models_genesis [--profile smoke] [--dims 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.config import load_params

if TYPE_CHECKING:
    from eden_lib.methods import Method


def checkpoint_dir(method: str, dims: int) -> Path:
    return paths.data_dir() / "checkpoints" / method / f"{dims}d"


def build_context(cfg: dict, dims: int, n_labels: int, site_label_counts: tuple[int, ...] = (),
                  method: str | None = None):
    """The :class:`~eden_lib.methods.base.BuildContext` of the study's networks, or of ``method``'s.

    ``method``: a key of ``methods``; a non-empty ``backbone_2d`` in its block replaces ``pretrain.backbone_2d`` by
    ``{"name": ...}`` (Ark: ``swin_b``), a non-empty ``backbone_3d`` replaces the UNet3D (Alice: ``swin_unetr``).
    Pretraining passes it, and transfer passes the method an export names (its ``info``), so the exported weights and
    the network they load into agree.
    """
    from eden_lib.methods import BuildContext

    p = cfg["pretrain"]
    block = cfg.get("methods", {}).get(method, {}) if method else {}
    own_2d, own_3d = block.get("backbone_2d"), block.get("backbone_3d")
    return BuildContext(
        spatial_dims=dims,
        backbone_2d={"name": own_2d} if own_2d else dict(p["backbone_2d"]),
        unet2d_decoder=tuple(p["unet2d_decoder"]),
        unet3d_width=p["unet3d_width"],
        n_labels=n_labels,
        image_size=cfg["data"]["image_size"],
        site_label_counts=site_label_counts,
        backbone_3d={"name": own_3d} if own_3d else None,
    )


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (a ResNet-50 checkpoint is ~100 MB)."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def init_entry(cfg: dict, method: str, dims: int) -> dict | None:
    """The ``pretrain.init.<method>`` entry that applies in ``dims`` D (its ``dims``; without, any), else ``None``."""
    entry = cfg["pretrain"].get("init", {}).get(method)
    return entry if entry is not None and dims in entry.get("dims", (2, 3)) else None


def init_file(cfg: dict, method: str, dims: int) -> Path | None:
    """The file continual pretraining of ``method`` starts from in ``dims`` D (``pretrain.init``), else ``None``."""
    from eden_lib.methods.external import weight_file

    entry = init_entry(cfg, method, dims)
    return None if entry is None else weight_file(entry["path"], f"pretrain.init.{method}.path")


def fingerprint(cfg: dict, method: str, dims: int) -> str:
    """Identifies everything that shapes a pretraining run: its parameters and the bytes of the prepared data it
    trains on, the visual words of self-discovery included (so a regenerated data set never resumes a checkpoint of
    the old one), and the bytes of the weight files it starts from (``pretrain.init.<method>``; ``external``'s
    ``methods.external.path_<dims>d``), so a changed file restarts pretraining. Other methods' ``pretrain.init``
    entries are left out. A checkpoint is resumed only under the same fingerprint."""
    from eden_lib.data.prepared import digest
    from eden_lib.methods import method_class, validate_method_config
    from eden_lib.pipeline.self_discovery import KIND

    keys = {k: cfg[k] for k in ("seed", "data", "pretrain")}
    keys["pretrain"] = {k: v for k, v in cfg["pretrain"].items() if k != "init"}
    keys["method"] = cfg["methods"][method]
    keys["dims"] = dims
    keys["data_digest"] = digest("cxr" if dims == 2 else "ct")
    if "cxr_sites" in method_class(method).data.values():
        keys["sites_digest"] = digest("sites")
    if "ct_view_pairs" in method_class(method).data.values():
        keys["anatomy_digest"] = digest("anatomy", paths.data_dir() / "anatomy")
    if KIND in method_class(method).data.values():
        keys["words_digest"] = digest(KIND, paths.data_dir() / KIND / f"{dims}d")
    init = init_file(cfg, method, dims)
    if init is not None:
        keys["init"] = {**init_entry(cfg, method, dims), "digest": file_digest(init)}
    method_cfg = validate_method_config(method, cfg["methods"][method])
    if hasattr(method_cfg, "weight_file"):  # external: the file it exports
        keys["weights_digest"] = file_digest(method_cfg.weight_file(method, dims))
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def load_init(method: Method, path: Path, source: str, dims: int) -> dict:
    """Continual pretraining: load ``path`` into ``method``'s exported network before training starts.

    The file goes into ``method.exports()["encoder"]`` (2D) or ``["unet3d"]`` (3D) strictly
    (:func:`~eden_lib.checkpoints.load_pretrained`). Momentum and EMA copies (MoCo's key encoder, the teachers of
    DINO, Adam-v2 and Ark) are deep copies made when the method is built, so before the load they equal the exported
    network exactly; every module of the same type whose state equals the exported network's at that moment gets the
    loaded weights too. For Adam-v2 and Ark, which export the teacher, the student is that copy. At step 0 the online
    network and its copies are then the file's weights, as if the method had been built from it.

    Args:
        method: a built :class:`~eden_lib.methods.base.Method`.
        path: the checkpoint; ``source``: its layout (``auto``: detected).
        dims: 2 or 3.

    Returns:
        :func:`load_pretrained`'s report plus ``"synchronised"``: the names of the copies that took the weights.

    Raises:
        CheckpointError: the file does not fit the network (keys named), or the method exports no such network.
    """
    import torch

    from eden_lib.checkpoints import CheckpointError, load_pretrained
    from eden_lib.methods.external import EXPORT

    exports = method.exports()
    export = EXPORT[dims]
    if export not in exports:
        raise CheckpointError(f"pretrain.init.{method.name}: {method.name} exports {sorted(exports)} in {dims}D, no "
                              f"{export!r} to load {path} into")
    target = exports[export]
    before = target.state_dict()

    def same(module: torch.nn.Module) -> bool:
        state = module.state_dict()
        return state.keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in state.items())

    copies = [(n, m) for n, m in method.named_modules() if m is not target and type(m) is type(target) and same(m)]
    try:
        info = load_pretrained(path, target, source)
    except CheckpointError as exc:
        raise CheckpointError(f"pretrain.init.{method.name}.path: {exc}") from exc
    loaded = target.state_dict()
    for _, module in copies:
        module.load_state_dict(loaded, strict=True)
    return {**info, "synchronised": [n for n, _ in copies]}


def trained_sites(name: str, method_cfg) -> list[str]:
    """The prepared sites a ``cxr_sites`` method trains on, in training order: its config's ``sites`` (``ark``:
    a list, empty for all; ``supervised_site``: its one ``site``), else every site of ``data/prepared/sites``."""
    from eden_lib.data import prepared
    from eden_lib.methods import MethodConfigError

    available = prepared.load_sites().site_names
    chosen = list(getattr(method_cfg, "sites", ()) or available)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        key = "site" if hasattr(method_cfg, "site") else "sites"
        raise MethodConfigError(f"methods.{name}.{key}: unknown sites {unknown}; the prepared sites are {available} "
                                "(data.sites)")
    return chosen


def site_schedule(steps: int, names: list[str], split: str = "train") -> list[int]:
    """Steps of each site's turn (``cxr_sites``): an epoch's ``steps`` split over the sites ``names`` of the prepared
    sites data in proportion to their ``split`` rows (:func:`~eden_lib.data.batches.site_steps`), each a multiple of
    the DDP world size."""
    from eden_lib.data import batches, prepared
    from eden_lib.engine import distributed_context

    sites = prepared.load_sites()
    sizes = [len(sites.indices(name, split)) for name in names]
    return batches.site_steps(sizes, steps, distributed_context()[1])


def anatomy_pairs(mode: str):
    """The anatomy stage's training volumes ``(S, X, Y, Z)`` (memory-mapped, [0, 1]) and its ``mode`` view pairs
    (``matched``, ``oracle`` or ``random``: ``pairs_<mode>.csv``)."""
    import pandas as pd

    folder = paths.data_dir() / "anatomy"
    files = [folder / "volumes.npy", folder / f"pairs_{mode}.csv"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"view pairs {missing} are missing; run the 'anatomy' stage first (dvc repro anatomy)")
    pairs = pd.read_csv(files[1])
    if pairs.empty:
        raise ValueError(f"{files[1]} holds no view pairs (mode {mode!r}); see reports/metrics/anatomy/matching.json")
    return np.load(files[0], mmap_mode="r"), pairs


def _batches(cfg: dict, method, dims: int, steps: int, split: str = "train", batch_size: int | None = None):
    """The batch factory of ``method``'s data in ``dims`` D: ``steps`` batches an epoch from ``split`` (CXR kinds:
    ``train`` | ``val``; SynthCT's subvolumes and the visual words exist for training scans only; ``cxr_sites``:
    :func:`site_schedule` splits the steps over the sites)."""
    from eden_lib.data import batches, prepared

    kind = method.data[dims]
    bs = batch_size or method.cfg.batch_size
    if kind == "cxr_sites":
        sites = prepared.load_sites()
        names = trained_sites(method.name, method.cfg)
        rows = [sites.indices(name, split) for name in names]
        return batches.site_batches(sites.images, sites.labels, rows, site_schedule(steps, names, split), bs)
    if kind == "cxr_images":
        cxr = prepared.load_cxr()
        rows = cxr.split_indices(split)
        return batches.cxr_batches(cxr.images, cxr.labels, rows, min(bs, len(rows)), steps, cfg["data"]["image_size"])
    if kind == "cxr_renders":
        cxr = prepared.load_cxr()
        rows = cxr.split_indices(split)
        return batches.render_batches(cxr.images, cxr.labels, rows, min(bs, len(rows)), steps)
    if kind == "visual_words":
        from eden_lib.pipeline.self_discovery import load_visual_words

        crops, labels, _ = load_visual_words(dims)
        return batches.class_batches(crops, labels, min(bs, len(crops)), steps)
    if kind == "ct_view_pairs":  # Alice: crops of two scans centred on one anatomy, mined by the anatomy stage
        from eden_lib.anatomy.views import view_pair_batches

        volumes, pairs = anatomy_pairs(method.cfg.views)
        return view_pair_batches(volumes, pairs, tuple(method.cfg.crop), min(bs, len(pairs)), steps)
    ct = prepared.load_ct()
    if kind == "ct_subvolumes":
        return batches.volume_batches(ct.subvolumes, None, np.arange(len(ct.subvolumes)), min(bs, len(ct.subvolumes)),
                                      steps)
    if kind == "ct_candidates":
        rows = ct.candidate_indices("train")
        labels = ct.candidate_meta["label"].to_numpy()
        return batches.volume_batches(ct.candidates, labels, rows, min(bs, len(rows)), steps)
    raise ValueError(f"method {method.name} asks for unknown data {kind!r}")


def monitor_batches(cfg: dict, method, dims: int) -> list[dict]:
    """The fixed batches the monitored loss is scored on every epoch (:func:`eden_lib.engine.monitor_loss`):
    ``pretrain.monitor_samples`` samples drawn once with the study seed (a smaller pool is sampled again), from the
    CXR validation split in 2D (training images when ``data.cxr.val_fraction`` is 0), from the sites' own validation
    rows for ``cxr_sites`` (one batch per site), and from the training data in 3D and for visual words (the only data
    those exist for). Empty when ``monitor_samples`` is 0."""
    import torch

    n = cfg["pretrain"]["monitor_samples"]
    if not n:
        return []
    bs = min(method.cfg.batch_size, n)
    split = "val" if dims == 2 and cfg["data"]["cxr"]["val_fraction"] > 0 else "train"
    steps = math.ceil(n / bs)
    if method.data.get(dims) == "cxr_sites":  # about n / sites from each site's own validation rows, one batch each
        split, steps = "val", len(method.ctx.site_label_counts)
        bs = min(bs, math.ceil(n / steps))
    factory = _batches(cfg, method, dims, steps, split, bs)
    return list(factory(0, torch.Generator().manual_seed(cfg["seed"])))


def pretrain_dims(cfg: dict, name: str, dims: int, stop_after_epochs: int | None = None,
                  run_name: str | None = None) -> dict:
    """Pretrain (or, for untrained methods, initialise) ``name`` in ``dims`` D and export its weights.

    With a ``pretrain.init.<name>`` entry for ``dims`` the run starts from that file (:func:`load_init`).
    ``run_name`` (default ``name``) names the checkpoint, log and model folders, so an analysis can pretrain a
    variant of a method (e.g. Ark on fewer sites) beside the study's own run.
    """
    run_name = run_name or name
    from eden_lib.checkpoints import save_weights
    from eden_lib.data.prepared import load_sites
    from eden_lib.engine import TrainConfig, distributed_context, fit
    from eden_lib.methods import method_class, validate_method_config
    from eden_lib.seed import seed_everything

    rank, world = distributed_context()
    n_labels = len(cfg["data"]["cxr"]["labels"]) if dims == 2 else 1
    method_cfg = validate_method_config(name, cfg["methods"][name])
    sites = method_class(name).data.get(dims) == "cxr_sites"
    site_label_counts = ()
    if sites:
        prepared_sites = load_sites()
        counts = dict(zip(prepared_sites.site_names, map(len, prepared_sites.site_labels)))
        site_label_counts = tuple(counts[s] for s in trained_sites(name, method_cfg))
    seed_everything(cfg["seed"])
    method = method_class(name)(method_cfg, build_context(cfg, dims, n_labels, site_label_counts, method=name))
    init = init_file(cfg, name, dims)
    init_info = None
    if init is not None:  # continual pretraining; a resumed run then restores its checkpoint over these weights
        loaded = load_init(method, init, init_entry(cfg, name, dims).get("source", "auto"), dims)
        init_info = {"path": str(init), **{k: loaded[k] for k in ("source", "keys", "synchronised")}}
    history: list[dict] = []
    t0 = time.perf_counter()
    p = cfg["pretrain"]
    budget = p["image_passes_2d"] if dims == 2 else p["volume_passes_3d"]
    epochs = p["epochs"]
    if method.trains:
        per_step = method.cfg.batch_size * method.views
        steps = max(1, math.ceil(budget / per_step / epochs))
        if hasattr(method, "set_total_steps"):  # per-step schedules and checks; under DDP a rank takes steps // world
            method.set_total_steps(max(1, steps // world) * epochs)
        factory = _batches(cfg, method, dims, steps)
        if sites:  # the cyclic schedule: each site's turn (rounded to the world size), this rank's share of it
            per_site = site_schedule(steps, trained_sites(name, method.cfg))
            if hasattr(method, "set_schedule"):
                method.set_schedule([s // world for s in per_site], epochs)
            steps = sum(per_site)
        optimizer = method.configure_optimizer()
        history = fit(
            method,
            factory,
            optimizer,
            TrainConfig(
                epochs=epochs,
                checkpoint_dir=checkpoint_dir(run_name, dims),
                seed=cfg["seed"],
                fingerprint=fingerprint(cfg, name, dims),
                device=p["device"],
                amp=p["amp"],
                log_file=paths.logs_dir() / f"pretrain_{run_name.replace('/', '_')}_{dims}d.log",
                stop_after_epochs=stop_after_epochs,
                monitor=monitor_batches(cfg, method, dims),
                extra={"name": f"{name} {dims}D"},
            ),
            scheduler=method.configure_scheduler(optimizer, epochs),
            steps_per_epoch=steps,
        )
        if len(history) < epochs:
            return {"dims": dims, "complete": False, "history": history}
    out = paths.models_dir(run_name)
    if rank == 0:  # one writer under torchrun
        for export, module in method.exports().items():
            save_weights(module.cpu(), out / f"{export}.pt", method=name, spatial_dims=dims, export=export)
    return {
        "dims": dims,
        "complete": True,
        "history": history,
        "passes": budget if method.trains else 0,
        "seconds": time.perf_counter() - t0,
        "init": init_info,
    }


def loss_terms(history: list[dict]) -> dict[str, dict[str, float]]:
    """The parts of a composite loss (``loss_<term>`` epoch means, e.g. CAiD's ``loss_dis`` and ``loss_res``).

    ``{"dis": {"first": ..., "final": ...}, ...}``; empty for a single-term loss.
    """
    keys = [k for k in (history[0] if history else {}) if k.startswith("loss_")]
    return {k.removeprefix("loss_"): {"first": history[0][k], "final": history[-1][k]} for k in keys}


def run_pretrain(cfg: dict, name: str, stop_after_epochs: int | None = None) -> pd.DataFrame:
    """Pretrain ``name`` in each of its dimensions; write metrics and the loss-curve table. Returns the curve."""
    from eden_lib.methods import validate_method_config
    from eden_lib.reporting.io import write_json

    dims_list = validate_method_config(name, cfg["methods"][name]).dims
    out = paths.models_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_dir(name, dims_list[0]).parent.mkdir(parents=True, exist_ok=True)  # a DVC output, even if unused
    results = [pretrain_dims(cfg, name, d, stop_after_epochs) for d in dims_list]
    if not all(r["complete"] for r in results):
        raise SystemExit(f"pretraining of {name} stopped early on request; rerun to resume")
    from eden_lib.engine import distributed_context

    if distributed_context()[0] != 0:
        return pd.DataFrame()
    curve = pd.DataFrame(
        [{"dims": f"{r['dims']}d", **row} for r in results for row in r["history"]],
        columns=["dims", "epoch", "loss", "monitor_loss", "lr", "seconds"],
    )
    metrics = {
        "method": name,
        "profile": cfg["profile"],
        **{
            f"{r['dims']}d": {
                "budget_passes": r["passes"],
                "epochs": len(r["history"]),
                "first_loss": r["history"][0]["loss"] if r["history"] else None,
                "final_loss": r["history"][-1]["loss"] if r["history"] else None,
                "first_monitor_loss": r["history"][0].get("monitor_loss") if r["history"] else None,
                "final_monitor_loss": r["history"][-1].get("monitor_loss") if r["history"] else None,
                "terms": loss_terms(r["history"]),
                "init": r["init"],  # continual pretraining: the file, its layout, the copies synchronised
            }
            for r in results
        },
    }
    write_json(metrics, paths.metrics_file("pretrain", name))
    plot = paths.reports_dir() / "plots" / "pretrain" / f"{name}.csv"
    plot.parent.mkdir(parents=True, exist_ok=True)
    curve[["dims", "epoch", "loss", "monitor_loss", "lr"]].to_csv(plot, index=False)
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--stop-after-epochs", type=int, default=None, help="stop early (tests, time boxes)")
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if os.environ.get("EDEN_DDP_BACKEND") == "nccl" else "gloo")
    cfg = load_params(profile=args.profile)
    try:
        run_pretrain(cfg, args.method, stop_after_epochs=args.stop_after_epochs)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
