"""Checkpoints: atomic writes, safe reads, strict state-dict loading.

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``, so a kill
mid-write leaves the previous checkpoint intact. Every read uses ``torch.load(weights_only=True)``: an untrusted
pickle is never executed. Keras ``.h5`` files are read as data with h5py (:mod:`eden_lib.keras_h5`).

Ark (``source="ark"``) loads what maps exactly: an Ark network of this study's backbones (ResNet, ConvNeXt, Swin), as
this repository's Ark run writes it (``teacher.pt``, the engine's ``last.pt``) or as a file in the release's layout
(bare backbone keys beside ``projector.*`` and ``omni_heads.*``). The released Ark / Ark+ weights are timm Swin
Transformers (Swin-B, Swin-L; adam_ark.md 3.9): they load strictly into :class:`~eden_lib.models.swin.SwinEncoder`
(``swin_b`` / ``swin_l``) or an Ark network built on it, through an explicit map of timm's names
(:func:`timm_swin_name`: ``mlp.fc1`` / ``mlp.fc2`` -> ``mlp.linear1`` / ``mlp.linear2``, the ``attn_mask`` buffers
dropped), timm >= 0.9's layout moved back to 0.5.4's (patch merging closing a stage, :func:`from_timm_v09`), and
every ``relative_position_index`` buffer checked against the model's or, where the file has none (timm >= 0.9.6),
filled from it (:func:`check_position_indices`). A plain timm Swin file without Ark's heads (e.g. ImageNet Swin-B)
loads the same way with ``source="ark"``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from eden_lib.keras_h5 import KERAS_BN_EPS, KerasH5Error, is_keras_h5, load_keras_h5, set_bn_eps


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


def weights_info(path: str | Path) -> dict:
    """The ``info`` of a :func:`save_weights` file (``{}`` if it has none), its tensors memory-mapped, not read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    info = obj.get("info", {}) if isinstance(obj, dict) else {}
    return dict(info) if isinstance(info, Mapping) else {}


def load_weights(module: nn.Module, path: str | Path) -> dict:
    """Strictly load weights written by :func:`save_weights`; returns their ``info``."""
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path} has no 'state_dict' entry; keys: {sorted(ckpt)}")
    load_state_dict_strict(module, ckpt["state_dict"], str(path))
    return dict(ckpt.get("info", {}))


#: a key map: (checkpoint key, the target model's key set) -> our key, or ``None`` to drop the key explicitly.
#: A key it leaves unchanged that the model lacks is reported as unexpected by the strict load.
KeyMap = Callable[[str, frozenset[str]], str | None]

#: MoCo-style wrapper entries that are never part of an encoder: the momentum (key) network and the queue
_MOCO_KEY_NETWORK = "module.encoder_k."
_MOCO_QUEUE = frozenset({"module.queue", "module.queue_ptr"})
_MOCO_PROJECTOR = "module.encoder_q.fc."

#: the ResNet, ConvNeXt and Swin stem convolutions under our names (bare encoder, U-Net or Ark network): the only
#: weights converted from RGB to grey
RGB_INPUT_CONVS = frozenset(
    {"conv1.weight", "encoder.conv1.weight", "downsample_layers.0.0.weight", "encoder.downsample_layers.0.0.weight",
     "patch_embed.proj.weight", "encoder.patch_embed.proj.weight"}
)

#: Adam-v2 entries that hold weights, in the order one is read: the EMA teacher wherever the file has one (the
#: release's loaders look for ``teacher``; stage 2's ``model`` holds it too), else the student
ADAM_V2_ENTRIES = ("teacher", "model", "student")
#: the backbone's prefixes in those entries: stage-2 networks and the stage-1 ConvNeXt teacher; stage-1 students and
#: the stage-1 ResNet teacher (DDP-wrapped for SyncBN); the teacher inside ``model``
_ADAM_V2_BACKBONE = ("backbone.", "module.backbone.", "module.teacher.backbone.")
#: the rest of an Adam-v2 entry: the DINO (localizability) head under each wrapper prefix, and inside ``model`` the
#: student and the compose / decompose heads
_ADAM_V2_DROPPED = (
    *(f"{wrapper}head.{part}." for wrapper in ("", "module.", "module.teacher.") for part in ("mlp", "last_layer")),
    "module.student.",
    "module.compose_head.",
    "module.decompose_head.",
)


#: Ark (Ma et al., MICCAI 2023) entries that hold weights, in the order one is read: the EMA ``teacher`` (the
#: released weights are the teacher), ``state_dict`` (the release's student; this study's ``save_weights`` files),
#: ``model`` (this study's engine checkpoint, whose ``teacher.*`` is read); else the dict itself (a bare state dict)
ARK_ENTRIES = ("teacher", "state_dict", "model")
#: an Ark network's parts besides the backbone, kept for a network that has them (:class:`~eden_lib.methods.ark.ArkNetwork`)
_ARK_PARTS = ("projector.", "omni_heads.")
#: never part of an Ark network: timm's unused classifier, and the student and step counter of an engine checkpoint
_ARK_DROPPED = ("head.", "head_dist.", "student.", "steps_done")
#: keys that only a Swin Transformer backbone has (timm's or :class:`~eden_lib.models.swin.SwinEncoder`)
_SWIN = ("patch_embed.proj.weight", "layers.0.blocks.0.attn.relative_position_bias_table")

#: the entry holding a layout's weights where that is not ``state_dict``: PyContrast files keep them under ``model``
WEIGHTS_ENTRY = {"pycontrast": "model"}
#: PyContrast's backbone prefix (DDP wrapper, then the network's ``encoder``); ``module.encoder_ema.`` is not under it
_PYCONTRAST_BACKBONE = "module.encoder."
#: the rest of a PyContrast network: the projection head, PIRL's jigsaw branch, a momentum (EMA) copy of the network
_PYCONTRAST_DROPPED = ("module.head.", "module.head_jig.", "module.jigsaw", "module.encoder_ema.", "ema")
#: SwAV-family heads: the MLP projection head and the prototypes (one matrix, or one per head for DeepCluster-v2)
_SWAV_HEADS = ("module.projection_head.", "module.prototypes.")


def _identity(key: str, target: frozenset[str]) -> str | None:
    return key


def _strip_module(key: str, target: frozenset[str]) -> str | None:
    return key.removeprefix("module.")


def _torchvision(key: str, target: frozenset[str]) -> str | None:
    """torchvision ResNet names are ours; the classifier ``fc.*`` (or an MLP ``fc.0`` / ``fc.2``) is dropped."""
    return None if key.startswith("fc.") else key


def _moco_extra(key: str) -> bool:
    return key.startswith((_MOCO_KEY_NETWORK, _MOCO_PROJECTOR)) or key in _MOCO_QUEUE


def _moco(key: str, target: frozenset[str]) -> str | None:
    """``module.encoder_q.<torchvision name>`` -> the name; projector, key network and queue dropped."""
    return None if _moco_extra(key) else key.removeprefix("module.encoder_q.")


def _adam_v1(key: str, target: frozenset[str]) -> str | None:
    """Adam-v1 (Taher et al., MICCAI-DART 2023): ``checkpoint.pth`` holds the DDP MoCo-v2 wrapper (:func:`_moco`),
    ``best_checkpoint.pth`` / ``last_checkpoint.pth`` the bare query encoder (:func:`_torchvision`, which drops its
    MLP projector ``fc.0`` / ``fc.2``)."""
    return _moco(key, target) if key.startswith("module.") else _torchvision(key, target)


def _adam_v2(key: str, target: frozenset[str]) -> str | None:
    """Adam-v2 (Taher et al., CVPR 2024): a prefix of :data:`_ADAM_V2_BACKBONE` stripped, leaving torchvision ResNet
    or Facebook ConvNeXt names; the keys of :data:`_ADAM_V2_DROPPED` dropped (the DINO head ``head.mlp.*``,
    ``head.last_layer.weight_g`` / ``weight_v``; ``module.student.*``, ``module.compose_head.*``,
    ``module.decompose_head.*``).

    A ConvNeXt's final LayerNorm ``norm.*`` is kept: Adam-v2's own fine-tuning code renames it ``head.norm`` and then
    drops every ``head*`` key, leaving that LayerNorm at its initial values; here it is loaded like every other
    pretrained weight.
    """
    if key.startswith(_ADAM_V2_DROPPED):
        return None
    prefix = next((p for p in _ADAM_V2_BACKBONE if key.startswith(p)), None)
    return key if prefix is None else key.removeprefix(prefix)


def _pycontrast(key: str, target: frozenset[str]) -> str | None:
    """PyContrast: ``module.encoder.<torchvision name>`` -> the name as :func:`_torchvision` maps it (an encoder
    ``fc.*`` dropped); the keys of :data:`_PYCONTRAST_DROPPED` dropped. Only the exact prefix ``module.encoder.`` is
    stripped, so an EMA copy ``module.encoder_ema.*`` never stands in for the backbone."""
    if key.startswith(_PYCONTRAST_DROPPED):
        return None
    return _torchvision(key.removeprefix(_PYCONTRAST_BACKBONE), target)


def _swav(key: str, target: frozenset[str]) -> str | None:
    """SwAV family: ``module.<torchvision name>`` -> the name as :func:`_torchvision` maps it; the projection head
    and prototypes (:data:`_SWAV_HEADS`) dropped."""
    return None if key.startswith(_SWAV_HEADS) else _torchvision(key.removeprefix("module."), target)


#: a Swin patch merging's key, after any prefix ending in "." (``module.``, ``encoder.``): group 1 is its stage
_SWIN_DOWNSAMPLE = re.compile(r"(?:^|(?<=\.))layers\.(\d+)\.downsample\.")

T = TypeVar("T")


def timm_swin_name(key: str) -> str | None:
    """A timm Swin key (prefixes kept) under :class:`~eden_lib.models.swin.SwinEncoder`'s names: ``mlp.fc1`` /
    ``mlp.fc2`` -> ``mlp.linear1`` / ``mlp.linear2`` (MONAI's); ``None`` for the resolution-dependent ``attn_mask``
    buffers (rebuilt in every forward pass). Keys of other networks pass unchanged (no ResNet or ConvNeXt key holds
    ``.mlp.fc`` or ``attn_mask``)."""
    if key.rsplit(".", 1)[-1] == "attn_mask":
        return None
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


def from_timm_v09(weights: Mapping[str, T]) -> dict[str, T]:
    """Weights in timm >= 0.9's Swin layout, whose patch merging opens the *next* stage (``layers.{i+1}.downsample``,
    none in stage 0), under timm 0.5.4's (``layers.{i}.downsample``, closing stage i); other layouts unchanged.

    The layout is read from the whole key set: timm >= 0.9 when some ``layers.{i}.downsample.*`` key exists and none
    of stage 0 (timm 0.5.4 always has stage 0's). The merging itself (neighbour order, norm, reduction) is the same in
    both versions, so the weights move unchanged.
    """
    stages = {int(m.group(1)) for k in weights if (m := _SWIN_DOWNSAMPLE.search(k))}
    if not stages or 0 in stages:
        return dict(weights)
    return {_SWIN_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v
            for k, v in weights.items()}


def _ark_key(key: str) -> str:
    return key.removeprefix("module.").removeprefix("teacher.")


def _ark(key: str, target: frozenset[str]) -> str | None:
    """Ark: ``module.`` (DataParallel) and ``teacher.`` (this study's engine checkpoint) stripped; timm's ``head.*`` /
    ``head_dist.*`` and an engine checkpoint's ``student.*`` / ``steps_done`` dropped; a timm Swin's names mapped by
    :func:`timm_swin_name` (its ``attn_mask`` buffers dropped). Into a network with a projector
    (:class:`~eden_lib.methods.ark.ArkNetwork`) the backbone goes under ``encoder.`` and ``projector.*`` /
    ``omni_heads.*`` are kept; into a bare encoder those are dropped and the backbone keys are its own."""
    key = timm_swin_name(_ark_key(key))
    if key is None or key.startswith(_ARK_DROPPED):
        return None
    network = any(k.startswith(_ARK_PARTS) for k in target)
    if key.startswith(_ARK_PARTS):
        return key if network else None
    key = key.removeprefix("encoder.")
    return f"encoder.{key}" if network else key


def _smp_unet(key: str, target: frozenset[str]) -> str | None:
    """smp U-Net names are those of :class:`~eden_lib.models.unet2d.ResNetUNet`; into a bare encoder only
    ``encoder.*`` is kept (``decoder.*`` and ``segmentation_head.*`` dropped)."""
    if any(k.startswith("encoder.") for k in target):
        return key
    return None if key.startswith(("decoder.", "segmentation_head.")) else key.removeprefix("encoder.")


def _strip_transvw(key: str) -> str:
    return key.removeprefix("module.").removeprefix("classficationNet.")


def _has_head(keys: Iterable[str]) -> bool:
    return any(k.startswith("clc_out.") for k in keys)


def _drop_absent_head(key: str, target: frozenset[str]) -> str | None:
    """``clc_out.*`` is dropped when the target has no ``clc_out`` head (a UNet3D), kept for a YNet3D."""
    return None if key.startswith("clc_out.") and not _has_head(target) else key


def _transvw(key: str, target: frozenset[str]) -> str | None:
    """TransVW / Semantic Genesis ``.pt``: ``module.`` and then ``classficationNet.`` (sic, the official wrapper's
    name) stripped where present; the ``clc_out`` head as :func:`_drop_absent_head` decides."""
    return _drop_absent_head(_strip_transvw(key), target)


def _dira_moco_wrapper(key: str, target: frozenset[str]) -> str | None:
    """DiRA's ``checkpoint.pth``: the query U-Net ``module.encoder_q.backbone.*`` as :func:`_smp_unet` maps it;
    the projector, the key U-Net and the queue are dropped."""
    return None if _moco_extra(key) else _smp_unet(key.removeprefix("module.encoder_q.backbone."), target)


#: checkpoint layout -> key map into our module names. Extended method by method.
KEY_MAPS: dict[str, KeyMap] = {
    "eden": _identity,
    # Models Genesis / TransVW / Semantic Genesis PyTorch releases: {"state_dict": {"module.down_tr64...": ...}}
    # (saved from nn.DataParallel); the names below "module." are those of eden_lib.models.unet3d.UNet3D.
    "models_genesis": _strip_module,
    # a plain torchvision ResNet state dict (ImageNet weights, BTL's converted files, DiRA's mode-`di` resnet50.pth)
    "torchvision": _torchvision,
    # MoCo v1/v2 releases and their kin: {"state_dict": {"module.encoder_q.conv1.weight", ...}}
    "moco": _moco,
    # PyContrast's InsDis / PIRL / InfoMin files: {"model": {"module.encoder.conv1.weight", "module.head.*", ...}}
    # (PIRL adds its jigsaw head); the backbone under "module.encoder." read with the torchvision names
    "pycontrast": _pycontrast,
    # FAIR's SwAV / DeepCluster-v2 / SeLa-v2 files: {"module.conv1.weight", ..., "module.projection_head.*",
    # "module.prototypes.*"} (bare or under "state_dict"); "module." stripped, heads dropped, torchvision names
    "swav": _swav,
    # Adam-v1 checkpoint.pth (the "moco" layout) or best_/last_checkpoint.pth (the "torchvision" layout, fc.0 / fc.2
    # projector): auto-detection reads them as those two, this name serves source="adam_v1"
    "adam_v1": _adam_v1,
    # Adam-v2 checkpoint.pth: {"teacher", "student", ["model"], "optimizer", "epoch", "localizability_loss",
    # "fp16_scaler"}; the weights of the entry ADAM_V2_ENTRIES chooses, into a ResNetEncoder or a ConvNeXtEncoder
    "adam_v2": _adam_v2,
    # DiRA / CAiD best_checkpoint.pth and unet.pth: a raw smp 0.1.3 Unet('resnet50') state dict
    "dira_unet": _smp_unet,
    # DiRA's full checkpoint.pth: {"epoch", "arch", "state_dict": the DDP MoCo wrapper, "optimizer", "best_loss"}
    "dira_moco_wrapper": _dira_moco_wrapper,
    # DiRA's D_checkpoint.pth: {"state_dict": {"module.model.{0,2,5,8,11}.*"}} -> PatchDiscriminator
    "dira_discriminator": _strip_module,
    # TransVW_chest_ct.pt / semantic_genesis_chest_ct.pt: {"state_dict": the 115 YNet3D keys}, possibly prefixed
    # "module." and / or "classficationNet."; into a YNet3D strictly, into a UNet3D without the clc_out head
    "transvw": _transvw,
    # Ark: a teacher with projector.* and omni_heads.* (bare, or under teacher / state_dict / model), into an
    # ArkNetwork or its bare encoder; the released timm Swin files into a SwinEncoder (module docstring)
    "ark": _ark,
    # a Keras .h5 (eden_lib.keras_h5 names its weights ours): into a UNet3D / YNet3D built with upsample="nearest"
    # (and head="keras" for TransVW / SG files); the clc_out head as for "transvw"
    "keras_h5": _drop_absent_head,
}

#: (source, test on the names of the weights :func:`_plain_weights` reads for it) in the order tried: the more
#: specific layouts first
_DETECTORS: tuple[tuple[str, Callable[[list[str]], bool]], ...] = (
    (
        "models_genesis",
        lambda ks: all(k.startswith("module.") for k in ks) and any(k.startswith("module.down_tr64.") for k in ks),
    ),
    ("transvw", lambda ks: any(_strip_transvw(k).startswith("clc_out.") for k in ks)),
    ("dira_discriminator", lambda ks: all(k.startswith("module.model.") for k in ks)),
    ("dira_moco_wrapper", lambda ks: any(k.startswith("module.encoder_q.backbone.") for k in ks)),
    ("moco", lambda ks: "module.encoder_q.conv1.weight" in ks),
    ("pycontrast", lambda ks: "module.encoder.conv1.weight" in ks),
    (
        "swav",
        lambda ks: all(k.startswith("module.") for k in ks)
        and "module.conv1.weight" in ks
        and any(k.startswith(_SWAV_HEADS) for k in ks),
    ),
    ("dira_unet", lambda ks: "encoder.conv1.weight" in ks and any(k.startswith("decoder.blocks.") for k in ks)),
    ("torchvision", lambda ks: "conv1.weight" in ks and "layer1.0.conv1.weight" in ks),
)


def _adam_v2_entry(ckpt: Mapping[str, Any]) -> str | None:
    """The first entry of :data:`ADAM_V2_ENTRIES` that is a dict with some backbone-prefixed key, else ``None``."""
    for entry in ADAM_V2_ENTRIES:
        weights = ckpt.get(entry)
        if isinstance(weights, Mapping) and any(str(k).startswith(_ADAM_V2_BACKBONE) for k in weights):
            return entry
    return None


def _ark_entry(ckpt: Mapping[str, Any]) -> str | None:
    """The first entry of :data:`ARK_ENTRIES` that is a dict, else ``None`` (the weights are the dict itself)."""
    return next((e for e in ARK_ENTRIES if isinstance(ckpt.get(e), Mapping)), None)


def _is_ark(ckpt: Mapping[str, Any]) -> bool:
    """Whether the weights :func:`_ark_entry` chooses hold ``omni_heads.*`` (``module.`` / ``teacher.`` stripped)."""
    entry = _ark_entry(ckpt)
    weights = ckpt if entry is None else ckpt[entry]
    return any(_ark_key(str(k)).startswith("omni_heads.") for k in weights)


def _plain_weights(ckpt: Mapping[str, Any], source: str = "") -> tuple[str | None, Any]:
    """The entry and weights of a layout whose entry is fixed: the entry :data:`WEIGHTS_ENTRY` names for ``source``
    where the file has it (``pycontrast``: ``model``), else ``state_dict`` if present, else the dict itself (both
    reported as entry ``None``)."""
    entry = WEIGHTS_ENTRY.get(source)
    if entry is not None and entry in ckpt:
        return entry, ckpt[entry]
    return None, ckpt.get("state_dict", ckpt)


def _weight_names(weights: Any) -> list[str]:
    """The string keys of ``weights`` (none if it is not a mapping)."""
    return [k for k in weights if isinstance(k, str)] if isinstance(weights, Mapping) else []


def detect_source(ckpt: Mapping[str, Any]) -> str:
    """The layout of a checkpoint read by :func:`load_checkpoint` (a key of :data:`KEY_MAPS`).

    ``eden``: top-level ``info`` and ``state_dict``. ``adam_v2``: a ``teacher``, ``model`` or ``student`` entry
    holding ``backbone.``, ``module.backbone.`` or ``module.teacher.backbone.`` weights. ``ark``: ``omni_heads.*``
    weights in the entry :func:`_ark_entry` chooses. Otherwise the weights (:func:`_plain_weights`: ``model`` for
    ``pycontrast`` where present, else ``state_dict`` if present, else the dict itself) decide: ``models_genesis``:
    all ``module.``, some ``module.down_tr64.``; ``transvw``: some ``clc_out.`` once ``module.`` /
    ``classficationNet.`` are stripped; ``dira_discriminator``: all ``module.model.``; ``dira_moco_wrapper``: some
    ``module.encoder_q.backbone.``; ``moco``: ``module.encoder_q.conv1.weight``; ``pycontrast``:
    ``module.encoder.conv1.weight`` (InsDis, PIRL, InfoMin); ``swav``: all ``module.``, ``module.conv1.weight`` and
    some ``module.projection_head.`` / ``module.prototypes.`` (SwAV, DeepCluster-v2, SeLa-v2); ``dira_unet``:
    ``encoder.conv1.weight`` and ``decoder.blocks.*``; ``torchvision``: ``conv1.weight`` and
    ``layer1.0.conv1.weight``. Adam-v1 files read as ``moco`` (``checkpoint.pth``) or ``torchvision``
    (``best_checkpoint.pth``): the same layouts.

    ``models_genesis`` is tried first, so a YNet3D saved from ``nn.DataParallel`` (every key ``module.``) reads as
    ``models_genesis``: it loads strictly into a YNet3D, and into a UNet3D its ``clc_out`` keys are refused unless
    ``source="transvw"`` is passed. Keras ``.h5`` files are recognised by :func:`load_pretrained` before reading.
    """
    if "info" in ckpt and "state_dict" in ckpt:
        return "eden"
    if _adam_v2_entry(ckpt) is not None:
        return "adam_v2"
    if _is_ark(ckpt):
        return "ark"
    for source, matches in _DETECTORS:
        names = _weight_names(_plain_weights(ckpt, source)[1])
        if names and matches(names):
            return source
    keys = _weight_names(_plain_weights(ckpt)[1])
    raise CheckpointError(
        f"unrecognised checkpoint layout (top-level keys {sorted(ckpt)[:8]}, first weights {keys[:3]}); "
        f"pass source= one of {sorted(KEY_MAPS)}"
    )


def rgb_to_gray(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """In place: sum the RGB filters of the stem convolution where the model takes one channel; returns the keys.

    On a grey image the summed filter gives exactly what the RGB filter gives on that image replicated to three
    channels (how RGB-pretrained weights are fine-tuned on radiographs). Only :data:`RGB_INPUT_CONVS` are touched.
    """
    converted = []
    for key in sorted(RGB_INPUT_CONVS & set(state) & set(own)):
        weight, target = state[key], own[key]
        if weight.ndim == 4 and weight.shape[1] == 3 and target.shape[1] == 1 and weight.shape[2:] == target.shape[2:]:
            state[key] = weight.sum(dim=1, keepdim=True)
            converted.append(key)
    return converted


def fill_batch_counters(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """In place: zero ``num_batches_tracked`` buffers when the checkpoint has none at all; returns the keys.

    Files saved before PyTorch 0.4.1 (e.g. torchvision's ``resnet50-19c8e357.pth``) predate the counter, and
    PyTorch's own strict load fills it with 0 the same way. A checkpoint that has some counters and lacks others is
    left alone (and refused by the strict load).
    """
    if any(k.endswith(".num_batches_tracked") for k in state):
        return []
    filled = sorted(k for k in own if k.endswith(".num_batches_tracked"))
    for key in filled:
        state[key] = torch.zeros_like(own[key])
    return filled


def check_position_indices(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """In place: a Swin model's ``relative_position_index`` buffers (fixed by the window size) checked or filled;
    returns the filled keys.

    Where the file has the buffer it must equal the model's: another window size or index convention would give every
    relative-position bias another meaning. Where it has none (timm >= 0.9.6 does not save it), the model's is used.

    Raises:
        CheckpointError: a buffer that differs, named.
    """
    filled = []
    for key in sorted(k for k in own if k.endswith("relative_position_index")):
        if key not in state:
            state[key] = own[key].clone()
            filled.append(key)
        elif tuple(state[key].shape) != tuple(own[key].shape) or not torch.equal(state[key].long(), own[key].long()):
            raise CheckpointError(f"{source}: {key} (shape {tuple(state[key].shape)}) differs from the model's "
                                  f"(shape {tuple(own[key].shape)}): the file was built for another window size or "
                                  f"index convention")
    return filled


def _read_keras_h5(path: Path, model: nn.Module, own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``.h5`` weights under our names; refused up front for a model with ``up_conv`` weights to fill."""
    up_convs = sorted(k for k in own if ".up_conv." in k)
    if up_convs:
        raise CheckpointError(
            f"{path} (keras_h5 layout) cannot fill {type(model).__name__}'s {len(up_convs)} up_conv weights "
            f"({up_convs[0]}, ...): the Keras decoder upsamples with parameter-free UpSampling3D, so a .h5 has no "
            f"up_conv weights; build the model with upsample='nearest'"
        )
    try:
        return load_keras_h5(path)
    except KerasH5Error as exc:
        raise CheckpointError(str(exc)) from exc


def _source_weights(ckpt: Mapping[str, Any], source: str, path: Path,
                    target: frozenset[str]) -> tuple[str | None, Mapping[str, Any]]:
    """The entry holding the weights (``None`` for ``state_dict`` or the dict itself) and those weights; for ``ark``
    a Swin backbone in timm >= 0.9's layout comes back in 0.5.4's (:func:`from_timm_v09`), and one aimed at a model
    without a Swin backbone (``target``: its keys) is refused, saying what to build."""
    if source == "ark":
        entry = _ark_entry(ckpt)
        weights = ckpt if entry is None else ckpt[entry]
        swin = sorted({_ark_key(str(k)) for k in weights} & set(_SWIN))
        if not swin:
            return entry, weights
        if not any(k.removeprefix("encoder.") in _SWIN for k in target):
            raise CheckpointError(
                f"{path} (ark layout) holds a Swin Transformer backbone ({swin[0]}, ...) and the model has none; "
                f"build its 2D encoder as the release's Swin (backbone swin_b for Ark's Swin-B, swin_l for Ark+'s "
                f"Swin-L: methods.ark.backbone_2d, eden_lib/models/swin.py)"
            )
        return entry, from_timm_v09(weights)
    if source != "adam_v2":
        return _plain_weights(ckpt, source)
    entry = _adam_v2_entry(ckpt)
    if entry is None:
        raise CheckpointError(
            f"{path} (adam_v2 layout) has no {' / '.join(ADAM_V2_ENTRIES)} entry with "
            f"{' / '.join(_ADAM_V2_BACKBONE)} weights; top-level keys: {sorted(ckpt)[:8]}"
        )
    return entry, ckpt[entry]


def load_pretrained(path: str | Path, model: nn.Module, source: str = "auto") -> dict:
    """Load a released or Eden checkpoint into ``model`` strictly, mapping its key layout.

    After the key map (:data:`KEY_MAPS`), RGB stem weights are summed to one channel for a one-channel model
    (:func:`rgb_to_gray`), absent pre-0.4.1 batch counters are zeroed (:func:`fill_batch_counters`) and a Swin's
    relative-position indices are checked or filled (:func:`check_position_indices`). A Keras ``.h5``
    (``source="keras_h5"``, or ``"auto"`` and :func:`~eden_lib.keras_h5.is_keras_h5`) is read with
    :func:`~eden_lib.keras_h5.load_keras_h5`, only into a model without ``up_conv`` weights
    (``upsample="nearest"``), and the model's batch norms then get Keras's eps 1e-3
    (:func:`~eden_lib.keras_h5.set_bn_eps`).

    Sources (:data:`KEY_MAPS`): ``eden`` (:func:`save_weights`); ``models_genesis``, ``transvw``, ``keras_h5``
    (Models Genesis / TransVW / Semantic Genesis, into a UNet3D / YNet3D); ``torchvision`` (a ResNet state dict,
    ``fc*`` dropped); ``moco`` (a MoCo wrapper's query encoder); ``adam_v1`` (Adam-v1's ``checkpoint.pth`` as
    ``moco`` or ``best_checkpoint.pth`` as ``torchvision``); ``pycontrast`` (InsDis, PIRL, InfoMin: the
    ``module.encoder.`` backbone of the ``model`` entry); ``swav`` (SwAV, DeepCluster-v2, SeLa-v2: the ``module.``
    backbone without projection head and prototypes); ``adam_v2`` (Adam-v2's ``checkpoint.pth``: the teacher
    backbone, :data:`ADAM_V2_ENTRIES`, into a ResNetEncoder or a ConvNeXtEncoder, the ConvNeXt's final ``norm``
    included, which Adam-v2's fine-tuning code leaves out); ``dira_unet``, ``dira_moco_wrapper``,
    ``dira_discriminator`` (DiRA / CAiD); ``ark`` (an Ark network of this study's backbones, :data:`ARK_ENTRIES`,
    into an :class:`~eden_lib.methods.ark.ArkNetwork` or its bare encoder; the released timm Swin files into a
    :class:`~eden_lib.models.swin.SwinEncoder`, see the module docstring).

    Args:
        path: the checkpoint file (read with ``weights_only=True``; never unpickles code).
        model: the module whose ``state_dict`` names the checkpoint must fill exactly.
        source: a key of :data:`KEY_MAPS`, or ``"auto"`` to detect it (:func:`detect_source`).

    Returns:
        ``{"source": ..., "keys": n loaded from the file, "converted": [rgb_to_gray keys], "filled": [counters and
        position indices taken from the model],
        "dropped": [the file's keys the key map left out, sorted; for keras_h5 under our names]}``, ``"bn_eps"``
        for ``keras_h5`` and ``"entry"`` (the entry read: teacher, model or student) for ``adam_v2``, ``ark`` (the
        entry of :data:`ARK_ENTRIES`, absent for a bare state dict) and ``pycontrast`` (``model``, where the file has
        it).

    Raises:
        CheckpointError: unknown layout, or missing / unexpected / mis-shaped keys (named).
    """
    path, own, entry = Path(path), model.state_dict(), None
    if source == "keras_h5" or (source == "auto" and is_keras_h5(path)):
        source, state = "keras_h5", _read_keras_h5(path, model, own)
    else:
        ckpt = load_checkpoint(path)
        if source == "auto":
            source = detect_source(ckpt)
        if source not in KEY_MAPS:
            raise CheckpointError(f"unknown checkpoint source {source!r}; known: {sorted(KEY_MAPS)}")
        entry, state = _source_weights(ckpt, source, path, frozenset(own))
    mapping, target = KEY_MAPS[source], frozenset(own)
    mapped, dropped = {}, []
    for key, value in state.items():
        new = mapping(key, target)
        if new is None:
            dropped.append(key)
        else:
            mapped[new] = value
    n_loaded = len(mapped)
    converted = rgb_to_gray(mapped, own)
    filled = fill_batch_counters(mapped, own) + check_position_indices(mapped, own, f"{path} ({source} layout)")
    try:
        load_state_dict_strict(model, mapped, f"{path} ({source} layout)")
    except CheckpointError as exc:
        if source == "models_genesis" and _has_head(mapped) and not _has_head(own):
            raise CheckpointError(f"{exc}; to load it without its clc_out head pass source='transvw'") from None
        raise
    info = {"source": source, "keys": n_loaded, "converted": converted, "filled": filled, "dropped": sorted(dropped)}
    if source == "keras_h5":
        set_bn_eps(model, KERAS_BN_EPS)
        info["bn_eps"] = KERAS_BN_EPS
    if entry is not None:
        info["entry"] = entry
    return info
