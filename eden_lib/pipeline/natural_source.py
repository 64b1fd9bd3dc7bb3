"""Stage ``natural_source``: the natural-image source models of BTL's domain-transfer claim (Hosseinzadeh Taher et
al., MICCAI-DART 2021; dira_caid_transfer_alice_cadpe.md §3.1-3.2), stand-ins for the ImageNet supervised and
MoCo-v2 ResNets the benchmark transfers.

Both are pretrained on SynthNatural (:mod:`eden_lib.data.synth_natural`, ``claims.domain_transfer.source``) with
the study's own method implementations and engine: ``supervised`` on the shape classes (its multi-label head and
loss on one-hot targets, random resized crops at ``data.image_size``) and ``moco_v2`` on the images (its views drawn
from the whole renders), each in its ``methods.<name>`` block, on the study's 2D encoder with a three-channel stem
(RGB, as ImageNet models have), for ``source.image_passes`` encoder image-passes over ``pretrain.epochs`` epochs.

They are saved in the release layouts the transfer benchmark reads (§3.2, §3.5): ``supervised`` as a torchvision
ResNet state dict with its classifier (``conv1.weight``, ``bn1.*``, ``layer1..4.*``, ``fc.weight``, ``fc.bias``),
``moco_v2`` as a FAIR MoCo release (``{"epoch", "arch", "state_dict": {"module.encoder_q.<torchvision name>",
"module.encoder_q.fc.{0,2}.*"}}``: the query encoder with its MLP projection head; no key encoder, no queue). The
``domain_transfer`` stage loads them through :func:`~eden_lib.checkpoints.load_pretrained`, which detects the layout
and sums the RGB stem into the study's grey one. Writes ``data/natural/`` (the two files),
``reports/metrics/natural_source/source.json`` (loss, the layout read back, a linear probe's shape accuracy on
held-out images, and that of a random RGB encoder: the floor) and ``reports/figures/natural_source/samples.png``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from eden_lib import paths
from eden_lib.data.synth_natural import SHAPES, TEXTURES, NaturalImages, render_natural

#: the source methods, and the file each is saved to under ``data/natural/`` (its release layout)
FILES = {"supervised": "supervised_torchvision.pth", "moco_v2": "moco_v2_release.pth.tar"}
#: the layout :func:`~eden_lib.checkpoints.detect_source` must find in each file
LAYOUTS = {"supervised": "torchvision", "moco_v2": "moco"}
#: source training images whose features train the shape probe (the probe is scored on the held-out set)
PROBE_TRAIN = 1000


def natural_dir() -> Path:
    return paths.data_dir() / "natural"


def release_file(method: str) -> Path:
    """The saved source model of ``method`` (a key of :data:`FILES`)."""
    if method not in FILES:
        raise ValueError(f"no natural source model {method!r}; the natural_source stage saves {sorted(FILES)}")
    return natural_dir() / FILES[method]


def source_sets(cfg: dict) -> tuple[NaturalImages, NaturalImages]:
    """The training and the held-out SynthNatural sets of ``claims.domain_transfer.source`` (streams 0 and 1)."""
    c = cfg["claims"]["domain_transfer"]["source"]
    return (render_natural(c["n_images"], c["render_size"], cfg["seed"], 0),
            render_natural(c["n_test"], c["render_size"], cfg["seed"], 1))


def source_method(cfg: dict, name: str):
    """The study's method ``name`` (its ``methods.<name>`` block) on a three-channel 2D encoder, one output per shape
    class."""
    from eden_lib.methods import method_class, validate_method_config
    from eden_lib.pipeline.pretrain import build_context

    ctx = replace(build_context(cfg, 2, len(SHAPES), method=name), in_channels=3)
    return method_class(name)(validate_method_config(name, cfg["methods"][name]), ctx)


def pretrain_source(cfg: dict, name: str, data: NaturalImages):
    """Pretrain ``name`` on ``data`` with the engine: ``source.image_passes`` encoder passes over ``pretrain.epochs``
    epochs, as :func:`~eden_lib.pipeline.pretrain.pretrain_dims` spreads ``pretrain.image_passes_2d``. Methods that
    read whole renders (``cxr_renders``) get the whole images, the others random resized crops at
    ``data.image_size``. Returns the trained method (on CPU) and the engine's history."""
    from eden_lib.data.batches import colour_batches
    from eden_lib.engine import TrainConfig, fit
    from eden_lib.seed import seed_everything

    p = cfg["pretrain"]
    passes, epochs = cfg["claims"]["domain_transfer"]["source"]["image_passes"], p["epochs"]
    seed_everything(cfg["seed"])
    method = source_method(cfg, name)
    steps = max(1, math.ceil(passes / (method.cfg.batch_size * method.views) / epochs))
    if hasattr(method, "set_total_steps"):
        method.set_total_steps(steps * epochs)
    crop = None if method.data[2] == "cxr_renders" else cfg["data"]["image_size"]
    factory = colour_batches(data.images, data.one_hot(), min(method.cfg.batch_size, len(data.labels)), steps, crop)
    optimizer = method.configure_optimizer()
    history = fit(method, factory, optimizer,
                  TrainConfig(epochs=epochs, seed=cfg["seed"], device=p["device"], amp=p["amp"],
                              log_file=paths.logs_dir() / f"natural_source_{name}.log",
                              extra={"name": f"{name} on SynthNatural"}),
                  scheduler=method.configure_scheduler(optimizer, epochs), steps_per_epoch=steps)
    return method.cpu(), history


def _cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def torchvision_state(encoder: nn.Module, fc: nn.Linear) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (BTL's ImageNet and in-domain supervised files): the encoder's keys, which are
    torchvision's names (``conv1.weight``, ``bn1.*``, ``layer1..4.*``), and the classifier as ``fc.weight`` /
    ``fc.bias``."""
    return {**_cpu(encoder), **{f"fc.{k}": v for k, v in _cpu(fc).items()}}


def moco_release(encoder: nn.Module, projector: nn.Module, epoch: int, arch: str) -> dict:
    """A FAIR MoCo(-v2) release: ``{"epoch", "arch", "state_dict"}`` with the query encoder under
    ``module.encoder_q.<torchvision name>`` and its MLP projection head (Linear-ReLU-Linear) under
    ``module.encoder_q.fc.{0,2}.*``; as in the released files, no key encoder and no queue."""
    state = {f"module.encoder_q.{k}": v for k, v in _cpu(encoder).items()}
    state.update({f"module.encoder_q.fc.{k}": v for k, v in _cpu(projector).items()})
    return {"epoch": epoch, "arch": arch, "state_dict": state}


def release(cfg: dict, name: str, method) -> dict:
    """The release-layout checkpoint of a trained source ``method`` (:data:`FILES`)."""
    if name == "supervised":
        return torchvision_state(method.encoder, method.head)
    if name == "moco_v2":
        branch = method.discriminative
        return moco_release(branch.encoder, branch.projector, cfg["pretrain"]["epochs"],
                            cfg["pretrain"]["backbone_2d"]["name"])
    raise ValueError(f"no release layout for {name!r}; known: {sorted(FILES)}")


def resize_colour(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``(N, C, R, R)`` -> float32 ``(N, C, size, size)`` in [0, 1], area-averaged."""
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0), size=(size, size),
                         mode="area")


def probe_accuracy(encoder: nn.Module, train: NaturalImages, test: NaturalImages, size: int, device: str) -> float:
    """Shape accuracy of a linear probe on the frozen RGB encoder: trained on the first :data:`PROBE_TRAIN` source
    images, scored (arg-max over the shape classes) on the held-out set. Chance is ``1 / len(SHAPES)``."""
    from eden_lib.evaluation.finetune import predict
    from eden_lib.evaluation.linear_probe import fit_predict_linear_probe

    n = min(PROBE_TRAIN, len(train.labels))
    fx = predict(encoder, encoder, resize_colour(train.images[:n], size), device=device)
    tx = predict(encoder, encoder, resize_colour(test.images, size), device=device)
    scores = fit_predict_linear_probe(fx, train.one_hot()[:n], tx)
    return float(np.mean(np.argmax(np.nan_to_num(scores, nan=-1.0), axis=1) == test.labels))


def run_natural_source(cfg: dict) -> dict:
    """Generate SynthNatural, pretrain both source models, save them in their release layouts and read them back;
    returns the metrics it writes."""
    from eden_lib.checkpoints import detect_source, load_checkpoint, load_pretrained, save_atomic
    from eden_lib.methods import networks
    from eden_lib.pipeline.pretrain import build_context
    from eden_lib.reporting.figures import save
    from eden_lib.reporting.io import write_json
    from eden_lib.seed import seed_everything

    t0 = time.perf_counter()
    train, test = source_sets(cfg)
    seconds = {"generate": round(time.perf_counter() - t0, 1)}
    models = {}
    for name in FILES:
        t0 = time.perf_counter()
        method, history = pretrain_source(cfg, name, train)
        path = save_atomic(release(cfg, name, method), release_file(name))
        layout = detect_source(load_checkpoint(path))
        if layout != LAYOUTS[name]:
            raise RuntimeError(f"{path} reads as the {layout!r} layout, not {LAYOUTS[name]!r}")
        loaded = load_pretrained(path, networks.encoder_2d(build_context(cfg, 2, 0, method=name)))
        encoder = method.encoder if name == "supervised" else method.discriminative.encoder
        models[name] = {
            "file": str(path.relative_to(paths.repo_root())), "layout": layout, "keys_loaded": loaded["keys"],
            "converted": loaded["converted"], "dropped": len(loaded["dropped"]),
            "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"], "epochs": len(history),
            "probe_accuracy": probe_accuracy(encoder, train, test, cfg["data"]["image_size"],
                                             cfg["pretrain"]["device"]),
        }
        seconds[name] = round(time.perf_counter() - t0, 1)
    seed_everything(cfg["seed"])
    random_rgb = networks.encoder_2d(replace(build_context(cfg, 2, 0), in_channels=3))
    floor = probe_accuracy(random_rgb, train, test, cfg["data"]["image_size"], cfg["pretrain"]["device"])
    metrics = {"profile": cfg["profile"], "shapes": list(SHAPES), "textures": list(TEXTURES),
               "n_images": len(train.labels), "n_test": len(test.labels), "chance": 1 / len(SHAPES),
               "probe_accuracy_random_encoder": floor, "models": models, "seconds": seconds}
    write_json(metrics, paths.metrics_file("natural_source", "source"))
    save(samples_figure(test), paths.figures_dir("natural_source") / "samples.png")
    return metrics


def samples_figure(data: NaturalImages, per_class: int = 2) -> Figure:
    """``per_class`` images of every shape class (columns), titled with the class and texture."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(per_class, len(SHAPES), figsize=(1.4 * len(SHAPES), 1.5 * per_class),
                             layout="constrained", squeeze=False)
    for k, name in enumerate(SHAPES):
        rows = np.flatnonzero(data.labels == k)[:per_class]
        for i, ax in enumerate(axes[:, k]):
            ax.axis("off")
            if i < len(rows):
                ax.imshow(data.images[rows[i]].transpose(1, 2, 0))
                ax.set_title(f"{name}\n{TEXTURES[data.textures[rows[i]]]}", fontsize=7)
    fig.suptitle("SynthNatural: the natural-image source domain (label = shape)", fontsize=9)
    return fig
