"""Keras 2 HDF5 weights of the Models Genesis / TransVW / Semantic Genesis U-Net as a PyTorch state dict.

The Keras releases (``Genesis_Chest_CT.h5``, ``TransVW_chest_ct.h5``, Semantic Genesis; ``keras/unet3d.py`` and
``keras/models/ynet3d.py``, ``reference/genesis_family.md`` §1.3) name their layers ``depth_{i}_conv`` /
``depth_{i}_bn`` / ``depth_{i}_relu``. Their weights go into :class:`~eden_lib.models.unet3d.UNet3D` or
:class:`~eden_lib.models.unet3d.YNet3D` built with ``upsample="nearest"`` (the Keras decoder's ``UpSampling3D`` has
no weights, so there is nothing for the PyTorch ``up_conv`` ConvTranspose3d) and, for a TransVW / Semantic Genesis
file, ``head="keras"``. Layers (:data:`LAYERS`):

- ``depth_{2l}_*`` / ``depth_{2l+1}_*`` -> ``ops.0`` / ``ops.1`` of the l-th of ``down_tr64, down_tr128, down_tr256,
  down_tr512, up_tr256, up_tr128, up_tr64`` (l = 0 ... 6), ``_conv`` -> ``conv1``, ``_bn`` -> ``bn1``;
- ``final_conv`` (TransVW / SG name; Models Genesis leaves it auto-named ``conv3d_<n>``, accepted when it is the
  only such layer) -> ``out_tr.final_conv``;
- the TransVW / SG head: ``depth_14_conv`` / ``depth_14_bn`` -> ``clc_out.conv1`` / ``clc_out.bn1``, ``cls_fc`` /
  ``cls_output`` -> ``clc_out.cls_fc`` / ``clc_out.cls_output``
  (:class:`~eden_lib.models.unet3d.KerasClassificationHead`).

Weights, as Keras 2 stores them (TensorFlow convention; cross-correlation like PyTorch, so kernels are permuted,
never flipped): Conv3D ``kernel`` ``(kd, kh, kw, in, out)`` -> ``weight`` ``(out, in, kd, kh, kw)`` (the models are
``channels_first``, so kd, kh, kw meet D, H, W in that order); Dense ``kernel`` ``(in, out)`` -> ``(out, in)``;
``bias`` unchanged; BatchNormalization ``gamma / beta / moving_mean / moving_variance`` -> ``weight / bias /
running_mean / running_var`` plus a ``num_batches_tracked`` of 0 (Keras keeps no counter).

Batch-norm epsilon: Keras's default, used by these models, is 1e-3; ours (PyTorch's) is 1e-5. The same tensors then
give different outputs wherever a variance is not large against 1e-3, so a model is faithful to the Keras one only
with eps 1e-3. :func:`~eden_lib.checkpoints.load_pretrained` therefore sets eps to :data:`KERAS_BN_EPS` on every
batch norm of the model it fills from a ``.h5`` (:func:`set_bn_eps`) and reports it. eps is not part of a state
dict: a model rebuilt from weights saved after such a load needs :func:`set_bn_eps` again. Keras's BN momentum
(0.99, i.e. PyTorch 0.01) only matters for further training and is left at PyTorch's 0.1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import h5py

KERAS_BN_EPS = 1e-3
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
H5_SUFFIXES = (".h5", ".hdf5")

#: Keras layer kind -> the short names of its weights (``depth_0_conv/kernel:0`` -> ``kernel``)
WEIGHTS = {"conv": ("kernel", "bias"), "dense": ("kernel", "bias"),
           "bn": ("gamma", "beta", "moving_mean", "moving_variance")}
_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_LEVELS = ("down_tr64", "down_tr128", "down_tr256", "down_tr512", "up_tr256", "up_tr128", "up_tr64")
#: a Models Genesis final convolution, named by Keras: ``conv3d_1`` (Keras 2.x) or ``conv3d`` (tf.keras)
_AUTO_CONV = re.compile(r"conv3d(_\d+)?")


class KerasH5Error(ValueError):
    """A file that is not a Keras 2 weights file of the Genesis-family U-Net (the message names what and where).

    :func:`~eden_lib.checkpoints.load_pretrained` re-raises it as a ``CheckpointError``.
    """


def _layer_table() -> dict[str, tuple[str, str]]:
    table = {}
    for i in range(15):
        module = f"{_LEVELS[i // 2]}.ops.{i % 2}" if i < 14 else "clc_out"
        table[f"depth_{i}_conv"] = ("conv", f"{module}.conv1")
        table[f"depth_{i}_bn"] = ("bn", f"{module}.bn1")
    table["final_conv"] = ("conv", "out_tr.final_conv")
    table["cls_fc"] = ("dense", "clc_out.cls_fc")
    table["cls_output"] = ("dense", "clc_out.cls_output")
    return table


#: Keras layer -> (kind, our module); :data:`HEAD_LAYERS` are all present (TransVW / SG) or all absent (MG)
LAYERS: dict[str, tuple[str, str]] = _layer_table()
HEAD_LAYERS = ("depth_14_conv", "depth_14_bn", "cls_fc", "cls_output")
BACKBONE_LAYERS = tuple(name for name in LAYERS if name not in HEAD_LAYERS)


def is_keras_h5(path: str | Path) -> bool:
    """True for a ``.h5`` / ``.hdf5`` name or a file that starts with the HDF5 signature."""
    path = Path(path)
    if path.suffix.lower() in H5_SUFFIXES:
        return True
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def _names(group: h5py.Group, attr: str) -> list[str] | None:
    """A list-of-names attribute, also in the chunked form Keras uses for long lists (``attr0``, ``attr1``, ...)."""
    if attr in group.attrs:
        values = list(group.attrs[attr])
    elif f"{attr}0" in group.attrs:
        values, chunk = [], 0
        while f"{attr}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{attr}{chunk}"])
            chunk += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The weights of a Keras 2 HDF5 file: ``{layer: {short weight name: array}}``, layers with weights only.

    Reads a full saved model (weights under the ``model_weights`` group) or a ``save_weights`` file (at the root).
    Layer order is the ``layer_names`` attribute; each layer's ``weight_names`` attribute (``depth_0_conv/kernel:0``)
    names its datasets, shortened to ``kernel``. Arrays keep Keras's dtype and axis order.

    Raises:
        KerasH5Error: not a file, not HDF5, no ``layer_names`` (not a Keras 2 weights file; Keras 3
            ``.weights.h5`` is not supported), or a listed weight that is missing or repeated (named).
    """
    import h5py  # here, not at the top: eden_lib.checkpoints imports this module and rarely reads a .h5

    path = Path(path)
    if not path.is_file():
        raise KerasH5Error(f"checkpoint not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise KerasH5Error(f"cannot read {path} as HDF5: {exc}") from exc
    with fh:
        root = fh["model_weights"] if "model_weights" in fh else fh
        names = _names(root, "layer_names")
        if names is None:
            raise KerasH5Error(f"{path}: no 'layer_names' attribute; not a Keras 2 HDF5 weights file")
        layers: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            if name not in root:
                raise KerasH5Error(f"{path}: layer {name!r} is listed in 'layer_names' but has no group")
            weights: dict[str, np.ndarray] = {}
            for weight_name in _names(root[name], "weight_names") or []:
                short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
                if short in weights:
                    raise KerasH5Error(f"{path}: layer {name!r} lists weight {short!r} twice")
                if weight_name not in root[name]:
                    raise KerasH5Error(f"{path}: layer {name!r} lists {weight_name!r} but has no such dataset")
                weights[short] = root[name][weight_name][()]
            if weights:
                layers[name] = weights
    return layers


def _canonical(name: str, layers: Mapping[str, object], source: str) -> str:
    """A layer's name in :data:`LAYERS`: itself, or ``final_conv`` for a lone auto-named Models Genesis conv."""
    if name in LAYERS:
        return name
    if _AUTO_CONV.fullmatch(name):
        candidates = sorted(n for n in layers if n == "final_conv" or _AUTO_CONV.fullmatch(n))
        if len(candidates) == 1:
            return "final_conv"
        raise KerasH5Error(f"{source}: Keras layer {name!r} is ambiguous: one final convolution expected, "
                           f"found {candidates}")
    raise KerasH5Error(
        f"{source}: unknown Keras layer {name!r} with weights {sorted(layers[name])}; expected depth_<0-14>_conv, "
        f"depth_<0-14>_bn, final_conv (or a single auto-named conv3d_<n>), cls_fc, cls_output"
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 copy (never a view of the caller's array)."""
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _convert(kind: str, module: str, weights: Mapping[str, np.ndarray], layer: str, source: str
             ) -> dict[str, torch.Tensor]:
    expected = WEIGHTS[kind]
    if sorted(weights) != sorted(expected):
        raise KerasH5Error(f"{source}: Keras layer {layer!r} has weights {sorted(weights)}, expected {list(expected)}")
    if kind == "bn":
        state = {f"{module}.{_BN_NAMES[k]}": _tensor(v) for k, v in weights.items()}
        state[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        return state
    kernel, ndim = _tensor(weights["kernel"]), 5 if kind == "conv" else 2
    if kernel.ndim != ndim:
        raise KerasH5Error(f"{source}: Keras layer {layer!r} kernel {tuple(kernel.shape)}, expected {ndim} axes")
    weight = kernel.permute(4, 3, 0, 1, 2) if kind == "conv" else kernel.T
    return {f"{module}.weight": weight.contiguous(), f"{module}.bias": _tensor(weights["bias"])}


def keras_to_state_dict(layers: Mapping[str, Mapping[str, np.ndarray]], source: str = "Keras weights"
                        ) -> dict[str, torch.Tensor]:
    """Keras layer weights (as :func:`read_keras_h5` returns them) -> a state dict with our key names.

    Every layer of :data:`BACKBONE_LAYERS` must be there, and the :data:`HEAD_LAYERS` all or none.

    Raises:
        KerasH5Error: an unknown layer or weight, a missing layer (both named with what was expected), or a
            kernel with the wrong number of axes.
    """
    canonical = {name: _canonical(name, layers, source) for name in layers}
    present = set(canonical.values())
    missing = [n for n in BACKBONE_LAYERS if n not in present]
    head = [n for n in HEAD_LAYERS if n in present]
    if head and len(head) < len(HEAD_LAYERS):
        missing += [n for n in HEAD_LAYERS if n not in present]
    if missing:
        targets = [LAYERS[n][1] for n in missing]
        raise KerasH5Error(f"{source}: missing Keras layers {missing} (for {targets})")
    state: dict[str, torch.Tensor] = {}
    for name, weights in layers.items():
        kind, module = LAYERS[canonical[name]]
        state.update(_convert(kind, module, weights, name, source))
    return state


def load_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """A Keras 2 ``.h5`` of the Genesis-family U-Net as a state dict with our names (:func:`keras_to_state_dict`)."""
    return keras_to_state_dict(read_keras_h5(path), str(path))


def set_bn_eps(model: nn.Module, eps: float = KERAS_BN_EPS) -> None:
    """Set ``eps`` on every batch norm of ``model``, in place (eps is not in a state dict)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
