"""The Models Genesis 3D U-Net with the official PyTorch module names (and the TransVW/Semantic Genesis YNet3D).

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 2021 (``pytorch/unet3d.py`` of MrGiovanni/ModelsGenesis);
Haghighi et al., TransVW (TMI 2021) and Semantic Genesis (MICCAI 2020) add the ``clc_out`` head
(``pytorch/models/ynet3d.py``). Layout and state-dict keys follow ``reference/genesis_family.md`` §1.1, §1.2, §5:
with ``base_width=32`` the state dict has exactly the official 106 entries (19,073,665 parameters), so the released
``Genesis_Chest_CT.pt`` loads strictly once the ``module.`` prefix of DataParallel is stripped. Smaller widths keep
the same key names with every channel count scaled by ``base_width / 32``.

The Keras releases (§1.3) differ in two places, both available as options: the decoder upsamples with
parameter-free nearest-neighbour ``UpSampling3D`` (``upsample="nearest"``) and the TransVW / Semantic Genesis head
is a different block (:class:`KerasClassificationHead`, ``YNet3D(head="keras")``); see
:mod:`eden_lib.keras_h5` for reading their ``.h5`` weights.

Four resolution levels, three max-pools: the bottleneck ``out512`` is ``(B, 16*base_width, D/8, H/8, W/8)``, so
spatial sizes must be divisible by 8 (the official README says 16; the code needs 8). Unlike the official module,
intermediate tensors are not kept as attributes: ``encode`` returns the bottleneck instead of ``self.out512``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_MODES = ("batch_stats", "running_stats")
UPSAMPLE_MODES = ("transpose", "nearest")
HEADS = ("pytorch", "keras")
HEAD_ACTIVATIONS = ("softmax", "sigmoid", "none")


class ContBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d with the official ``ContBatchNorm3d`` behaviour as an explicit option.

    ``"batch_stats"`` (official): normalise with the statistics of the current batch even under ``model.eval()``,
    so a sample's output depends on the rest of its batch. Running statistics are updated in training mode only
    (the official module also updates them during evaluation passes, never reads them, and never increments
    ``num_batches_tracked``; with a fixed momentum of 0.1 the counter has no effect).
    ``"running_stats"``: standard BatchNorm (batch statistics in training, running statistics in eval).
    State-dict keys are those of ``nn.BatchNorm3d`` (weight, bias, running_mean, running_var, num_batches_tracked).
    """

    def __init__(self, num_features: int, bn_mode: str = "running_stats") -> None:
        super().__init__(num_features, eps=1e-5, momentum=0.1)
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode={bn_mode!r}: expected one of {BN_MODES}")
        self.bn_mode = bn_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_mode == "running_stats":
            return super().forward(x)
        self._check_input_dim(x)
        track = self.training and self.running_mean is not None
        return F.batch_norm(
            x, self.running_mean if track else None, self.running_var if track else None, self.weight, self.bias,
            True, self.momentum, self.eps,
        )


class LUConv(nn.Module):
    """Conv3d(3x3x3, padding 1, bias) -> ContBatchNorm3d -> ReLU (keys ``conv1``, ``bn1``)."""

    def __init__(self, in_channels: int, out_channels: int, bn_mode: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = ContBatchNorm3d(out_channels, bn_mode)
        self.relu1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.bn1(self.conv1(x)))


class DownTransition(nn.Module):
    """Encoder level ``depth``: LUConv(in -> w*2^depth), LUConv(-> 2w*2^depth), then MaxPool3d(2) except at depth 3.

    ``forward`` returns ``(pooled, skip)``; at depth 3 both are the un-pooled output.
    """

    def __init__(self, in_channels: int, depth: int, base_width: int, bn_mode: str) -> None:
        super().__init__()
        mid = base_width * 2**depth
        self.ops = nn.Sequential(LUConv(in_channels, mid, bn_mode), LUConv(mid, 2 * mid, bn_mode))
        self.maxpool = nn.MaxPool3d(2) if depth < 3 else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return self.maxpool(skip), skip


class UpTransition(nn.Module):
    """Decoder level ``depth``: upsample 2x, concat the skip, two LUConvs to ``w*2^(depth+1)`` channels.

    ``upsample="transpose"`` (official PyTorch): ConvTranspose3d(in -> in, 2, stride 2) ``up_conv``.
    ``"nearest"`` (Keras ``UpSampling3D``): every voxel repeated 2x2x2; no parameters, so no ``up_conv`` keys.
    Both keep ``in_channels``, so the first LUConv takes ``in_channels + skip_channels`` either way.
    ``(B, in, d, h, w)``, skip ``(B, skip, 2d, 2h, 2w)`` -> ``(B, w*2^(depth+1), 2d, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, depth: int, base_width: int, bn_mode: str,
                 upsample: str = "transpose") -> None:
        super().__init__()
        out = base_width * 2 ** (depth + 1)
        self.upsample = upsample
        if upsample == "transpose":
            self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = nn.Sequential(LUConv(in_channels + skip_channels, out, bn_mode), LUConv(out, out, bn_mode))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up_conv(x) if self.upsample == "transpose" else F.interpolate(x, scale_factor=2, mode="nearest")
        return self.ops(torch.cat([up, skip], dim=1))


class OutputTransition(nn.Module):
    """1x1x1 ``final_conv`` followed by a sigmoid (the sigmoid is part of the official model)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.final_conv(x))


class UNet3D(nn.Module):
    """Models Genesis UNet3D (official key names): ``(B, in, D, H, W)`` -> sigmoid ``(B, out, D, H, W)``.

    Args:
        in_channels: input channels (official 1).
        out_channels: output channels of ``out_tr.final_conv`` (official 1).
        base_width: channels of the first conv (official 32; the synthetic study uses 8 or 16).
        bn_mode: ``"running_stats"`` (default) or ``"batch_stats"`` (official ContBatchNorm3d). The default suits
            downstream use: evaluation is then a per-sample function, independent of batch size and composition
            (few-shot and linear-probe protocols evaluate in batches of arbitrary make-up), and deterministic across
            runs that batch differently. ``"batch_stats"`` reproduces the official training and evaluation exactly;
            the official checkpoints still carry running statistics, so they load under either mode.
        upsample: ``"transpose"`` (default, official PyTorch): each decoder level starts with the ``up_conv``
            ConvTranspose3d (106 keys, 19,073,665 parameters at width 32). ``"nearest"``: the Keras layout's
            parameter-free ``UpSampling3D`` (§1.3): no ``up_conv`` keys (100 keys, 16,320,257 parameters at width 32),
            the only variant the Keras ``.h5`` weights fit. The decoder convs keep their input channels, because
            Keras upsamples the deeper tensor itself before the concatenation, exactly as ``up_conv`` (in -> in)
            does: depth_7's 512 channels + depth_5's 256 skip = 768 into depth_8_conv (-> 256, ``up_tr256.ops.0``);
            256 + depth_3's 128 = 384 into depth_10_conv (-> 128); 128 + depth_1's 64 = 192 into depth_12_conv
            (-> 64), the 768 / 384 / 192 inputs of the official ``up_tr*.ops.0``.
    """

    spatial_dims = 3
    encoder_state_prefixes: tuple[str, ...] = ("down_tr64.", "down_tr128.", "down_tr256.", "down_tr512.")

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, base_width: int = 32, bn_mode: str = "running_stats",
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("base_width", base_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet3D: {name}={value!r}, expected a positive integer")
        if bn_mode not in BN_MODES:
            raise ValueError(f"UNet3D: bn_mode={bn_mode!r}, expected one of {BN_MODES}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"UNet3D: upsample={upsample!r}, expected one of {UPSAMPLE_MODES}")
        w = base_width
        self.in_channels, self.base_width, self.bn_mode, self.upsample = in_channels, base_width, bn_mode, upsample
        self.down_tr64 = DownTransition(in_channels, 0, w, bn_mode)
        self.down_tr128 = DownTransition(2 * w, 1, w, bn_mode)
        self.down_tr256 = DownTransition(4 * w, 2, w, bn_mode)
        self.down_tr512 = DownTransition(8 * w, 3, w, bn_mode)
        self.up_tr256 = UpTransition(16 * w, 8 * w, 2, w, bn_mode, upsample)
        self.up_tr128 = UpTransition(8 * w, 4 * w, 1, w, bn_mode, upsample)
        self.up_tr64 = UpTransition(4 * w, 2 * w, 0, w, bn_mode, upsample)
        self.out_tr = OutputTransition(2 * w, out_channels)

    @property
    def feature_channels(self) -> int:
        """Channels of the bottleneck ``out512``: ``16 * base_width`` (512 for the official width)."""
        return 16 * self.base_width

    @property
    def anchor_channels(self) -> int:
        """Channels of the first decoder stage ``up_tr256``: ``8 * base_width``."""
        return 8 * self.base_width

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D: expected input (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        if any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"UNet3D: spatial sizes must be divisible by 8 (three 2x poolings), got {tuple(x.shape[2:])}")

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check_input(x)
        skips = []
        for down in (self.down_tr64, self.down_tr128, self.down_tr256):
            x, skip = down(x)
            skips.append(skip)
        return self.down_tr512(x)[0], skips

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features ``out512``: ``(B, in, D, H, W)`` -> ``(B, 16*base_width, D/8, H/8, W/8)``."""
        return self._encode(x)[0]

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled bottleneck ``(B, 16*base_width)``: the official classification-transfer input."""
        return self.encode(x).mean(dim=(2, 3, 4))

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bottleneck ``out512`` ``(B, 16w, D/8, H/8, W/8)``, the first decoder stage ``up_tr256``
        ``(B, 8w, D/4, H/4, W/4)`` and the output ``(B, out, D, H, W)`` in (0, 1), in one pass (Alice's features)."""
        out512, (skip64, skip128, skip256) = self._encode(x)
        anchor = self.up_tr256(out512, skip256)
        return out512, anchor, self.out_tr(self.up_tr64(self.up_tr128(anchor, skip128), skip64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, out, D, H, W)`` in (0, 1)."""
        out512, (skip64, skip128, skip256) = self._encode(x)
        return self._decode(out512, skip64, skip128, skip256)

    def _decode(self, out512: torch.Tensor, skip64: torch.Tensor, skip128: torch.Tensor,
                skip256: torch.Tensor) -> torch.Tensor:
        up = self.up_tr64(self.up_tr128(self.up_tr256(out512, skip256), skip128), skip64)
        return self.out_tr(up)


def _check_head_args(head: str, n_classes: int, activation: str) -> None:
    if activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"{head}: activation={activation!r}, expected one of {HEAD_ACTIVATIONS}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"{head}: n_classes={n_classes!r}, expected a positive integer")


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return logits.softmax(dim=1)
    return logits.sigmoid() if activation == "sigmoid" else logits


class ClassificationHead(nn.Module):
    """TransVW / Semantic Genesis PyTorch head ``clc_out`` on the bottleneck (§1.2).

    ``conv1`` Conv3d(C -> 2C, 3x3x3, padding 1) -> ``bn1`` ContBatchNorm3d -> ReLU -> global average pool ->
    ``fc1`` Linear(2C -> n_classes) -> softmax (official ``lst_act='soft'``), sigmoid, or none (logits).
    ``(B, C, d, h, w)`` -> ``(B, n_classes)``. At C = 512 and 44 classes: 9 keys, 14,203,948 parameters.
    """

    ACTIVATIONS = HEAD_ACTIVATIONS

    def __init__(self, in_channels: int, n_classes: int, bn_mode: str = "running_stats",
                 activation: str = "softmax") -> None:
        super().__init__()
        _check_head_args("ClassificationHead", n_classes, activation)
        self.conv1 = nn.Conv3d(in_channels, 2 * in_channels, kernel_size=3, padding=1)
        self.bn1 = ContBatchNorm3d(2 * in_channels, bn_mode)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(2 * in_channels, n_classes)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(self.fc1(self.relu1(self.bn1(self.conv1(x))).mean(dim=(2, 3, 4))), self.activation)


class KerasClassificationHead(nn.Module):
    """TransVW / Semantic Genesis Keras head on the bottleneck (``keras/models/ynet3d.py``, §1.3).

    ``conv1`` Conv3d(C -> C, 3x3x3, padding 1) -> ``bn1`` ContBatchNorm3d -> ReLU (the ``depth_14`` conv block)
    -> global average pool -> ``cls_fc`` Linear(C -> 2C) -> ReLU -> ``cls_output`` Linear(2C -> n_classes).
    ``(B, C, d, h, w)`` -> ``(B, n_classes)``, logits by default (the Keras softmax of ``cls_output`` is left to
    the loss; ``activation="softmax"`` reproduces it). At C = 512 (base width 32) the widths are Keras's 512 and
    1024; smaller widths scale both. At C = 512 and 44 classes: 11 keys, 7,649,836 parameters, against the PyTorch
    :class:`ClassificationHead`'s 14,203,948 (which convolves to 1024 channels and has no hidden dense layer).
    """

    def __init__(self, in_channels: int, n_classes: int, bn_mode: str = "running_stats",
                 activation: str = "none") -> None:
        super().__init__()
        _check_head_args("KerasClassificationHead", n_classes, activation)
        self.conv1 = nn.Conv3d(in_channels, in_channels, kernel_size=3, padding=1)
        self.bn1 = ContBatchNorm3d(in_channels, bn_mode)
        self.relu1 = nn.ReLU(inplace=True)
        self.cls_fc = nn.Linear(in_channels, 2 * in_channels)
        self.cls_output = nn.Linear(2 * in_channels, n_classes)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.relu1(self.bn1(self.conv1(x))).mean(dim=(2, 3, 4))
        return _activate(self.cls_output(torch.relu(self.cls_fc(pooled))), self.activation)


class YNet3D(UNet3D):
    """UNet3D plus a classification head ``clc_out`` on ``out512``: ``forward -> (reconstruction, class_out)``.

    ``head="pytorch"`` (default, official PyTorch TransVW): :class:`ClassificationHead`; with ``base_width=32`` and
    44 classes, 115 state-dict keys and 33,277,613 parameters. ``head="keras"``: :class:`KerasClassificationHead`;
    with ``upsample="nearest"`` this is the Keras TransVW / Semantic Genesis model that their ``.h5`` files fit
    (111 keys, 23,970,093 parameters at width 32 and 44 classes). ``head_activation`` applies to either head; its
    default, softmax, is the output activation of both official models.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, base_width: int = 32, n_classes: int = 44,
        bn_mode: str = "running_stats", head_activation: str = "softmax", upsample: str = "transpose",
        head: str = "pytorch",
    ) -> None:
        super().__init__(in_channels, out_channels, base_width, bn_mode, upsample)
        if head not in HEADS:
            raise ValueError(f"YNet3D: head={head!r}, expected one of {HEADS}")
        head_class = ClassificationHead if head == "pytorch" else KerasClassificationHead
        self.head_kind = head
        self.clc_out = head_class(16 * base_width, n_classes, bn_mode, head_activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        out512, (skip64, skip128, skip256) = self._encode(x)
        return self._decode(out512, skip64, skip128, skip256), self.clc_out(out512)
