"""Pulmonary embolism detection baseline scored by the CAD-PE FROC (STUDY.md §7; González et al., "Computer Aided
Detection for Pulmonary Embolism Challenge (CAD-PE)", arXiv:2003.13440; ``reference/dira_caid_transfer_alice_cadpe.md``
§5.3-5.4).

3D segmentation -> connected components -> scored markers:

1. A UNet3D returning logits (initialised by the caller: a method's exported weights or random) is fine-tuned on
   patches of the training scans, a share ``positive_fraction`` of them centred on a random embolus voxel (jittered
   by up to a quarter patch), the rest anywhere; loss MONAI ``DiceCELoss`` (sigmoid, Dice over the whole batch, so
   patches without embolus do not divide by zero), trained through ``evaluation.finetune`` (the engine of every
   fine-tuning of the study); the batch-norm statistics are then recomputed with the final weights.
2. Each test scan is predicted with MONAI ``sliding_window_inference`` (Gaussian-weighted windows of
   ``window``), then a sigmoid.
3. Every 26-connected component of ``probability > threshold`` becomes one marker at its maximum-probability voxel
   with that probability as confidence (the challenge asks for markers inside the embolus: the maximum of a
   component is where the network is most sure).
4. ``evaluation.froc`` scores the markers per embolus with the challenge's hit rule: sensitivity at 1, 2, 4 false
   positives per scan and the curve.

Volumes are ``(X, Y, Z)`` in the file's voxel order (``data.cad_pe``), so markers are the challenge's ``Scan X Y Z``.
Deterministic on CPU for a seed (patch sampling from ``seed.rng``, batch order and initialisation by the caller's
``seed_everything``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from eden_lib.data.cad_pe import CADPE
from eden_lib.data.luna16 import gather_cubes
from eden_lib.engine import flush_denormal, select_device
from eden_lib.evaluation.finetune import FinetuneConfig, finetune
from eden_lib.evaluation.froc import MARKER_COLUMNS, froc
from eden_lib.seed import rng

CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connected components
BN_PATCHES, BN_BATCH = 128, 32  # batch-norm statistics recomputed after training over these patches


@dataclass(frozen=True)
class DetectionConfig:
    """Training and detection settings (``froc`` block of params.yaml).

    Args:
        patch: training patch ``(x, y, z)`` voxels, multiples of 8 (three UNet3D poolings).
        steps, batch_size, lr, weight_decay: AdamW fine-tuning (``steps * batch_size`` patches in all).
        positive_fraction: share of patches centred on an embolus (where the training set has one).
        window: sliding-window size ``(x, y, z)`` at prediction, multiples of 8; overlap: of the windows.
        threshold: probability above which voxels form candidate components.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    patch: tuple[int, int, int] = (16, 16, 16)
    steps: int = 60
    batch_size: int = 4
    lr: float = 0.003
    weight_decay: float = 0.0001
    positive_fraction: float = 0.75
    window: tuple[int, int, int] = (64, 64, 40)
    overlap: float = 0.25
    threshold: float = 0.2
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("patch", "window"):
            value = getattr(self, key)
            if len(value) != 3 or any(not isinstance(v, int) or v < 8 or v % 8 for v in value):
                raise ValueError(f"DetectionConfig.{key}={value!r}: expected three positive multiples of 8 (x, y, z)")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ValueError(f"DetectionConfig.positive_fraction={self.positive_fraction}: expected a fraction in "
                             f"[0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"DetectionConfig.threshold={self.threshold}: expected a probability in (0, 1)")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"DetectionConfig.overlap={self.overlap}: expected a fraction in [0, 1)")


def sample_patches(data: CADPE, n: int, patch: tuple[int, int, int], positive_fraction: float,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training patches with positive oversampling, reading one scan at a time.

    Scans are drawn uniformly; a positive patch is centred on a random embolus voxel of a scan with emboli, moved by
    up to a quarter patch per axis; the others are centred anywhere. Voxels outside a scan take its minimum.

    Returns:
        ``image (n, 1, *patch)`` float32 (the loader's HU window, [0, 1]) and ``target (n, 1, *patch)`` float32
        (1 inside any embolus).
    """
    g = rng(seed, "pe_patches")
    references = data.reference_standards()
    with_pe = np.flatnonzero([references[scan].any() for scan in data.meta["patient_id"]])
    n_pos = round(n * positive_fraction) if len(with_pe) else 0
    scan = np.concatenate([g.choice(with_pe, n_pos), g.integers(len(data), size=n - n_pos)]).astype(int)
    positive = np.arange(n) < n_pos
    size = np.asarray(patch)
    image = np.empty((n, 1, *patch), np.float32)
    target = np.empty((n, 1, *patch), np.float32)
    for i in np.unique(scan):
        rows = np.flatnonzero(scan == i)
        item = data[int(i)]
        volume, emboli = item["image"][0].numpy(), item["emboli"].numpy()
        centres = g.integers(0, volume.shape, size=(len(rows), 3))
        pos = rows[positive[rows]]
        if len(pos):
            voxels = np.argwhere(emboli > 0)
            centres[positive[rows]] = (voxels[g.integers(len(voxels), size=len(pos))]
                                       + g.integers(-(size // 4), size // 4 + 1, size=(len(pos), 3)))
        image[rows, 0] = gather_cubes(volume, centres, patch, volume.min())  # axis-order agnostic
        target[rows, 0] = gather_cubes(emboli > 0, centres, patch, False)
    return torch.from_numpy(image), torch.from_numpy(target)


def _loss() -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, batch=True)


def train_detector(net: nn.Module, data: CADPE, cfg: DetectionConfig, seed: int) -> nn.Module:
    """Fine-tune ``net`` (logits ``(B, 1, X, Y, Z)``) for ``cfg.steps`` steps on patches of ``data``; in place.

    Then the batch-norm statistics are recomputed with the final weights over (up to ``BN_PATCHES`` of) the same
    patches (``torch.optim.swa_utils.update_bn``): after a few dozen steps the running averages still mix in the
    statistics of early weights, and predictions in evaluation mode swung between nothing and thousands of
    components from one step to the next (measured on SynthCTPA); recomputed statistics made them stable.
    """
    from torch.optim.swa_utils import update_bn

    x, y = sample_patches(data, cfg.steps * cfg.batch_size, cfg.patch, cfg.positive_fraction, seed)
    loss = _loss()
    finetune(net, lambda logits, target: loss(logits.float(), target), x, y,
             FinetuneConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            device=cfg.device), seed)
    device = next(net.parameters()).device
    with torch.no_grad(), flush_denormal():
        update_bn([x[i:i + BN_BATCH] for i in range(0, min(len(x), BN_PATCHES), BN_BATCH)], net, device)
    return net


@torch.no_grad()
def predict_probability(net: nn.Module, image: torch.Tensor, cfg: DetectionConfig) -> np.ndarray:
    """Sliding-window sigmoid probability ``(X, Y, Z)`` float32 of one scan ``image (1, X, Y, Z)``."""
    from monai.inferers import sliding_window_inference

    device = select_device(cfg.device)
    net.to(device).eval()
    with flush_denormal():
        logits = sliding_window_inference(image[None].to(device), roi_size=cfg.window, sw_batch_size=2,
                                          predictor=net, overlap=cfg.overlap, mode="gaussian",
                                          padding_mode="replicate")
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def components_to_markers(probability: np.ndarray, threshold: float, scan: str) -> pd.DataFrame:
    """One marker per 26-connected component of ``probability > threshold`` (``(X, Y, Z)``): at the component's
    maximum (the first such voxel in C order on ties), confidence = that maximum. Returns ``MARKER_COLUMNS`` rows in
    component order (``scipy.ndimage.label``)."""
    labels, n = ndimage.label(probability > threshold, structure=CONNECTIVITY)
    index = np.arange(1, n + 1)
    where = np.array(ndimage.maximum_position(probability, labels, index), dtype=float).reshape(-1, 3)
    peak = np.asarray(ndimage.maximum(probability, labels, index), dtype=float).reshape(-1)
    return pd.DataFrame({"scan": [scan] * n, "x": where[:, 0], "y": where[:, 1], "z": where[:, 2],
                         "confidence": peak}, columns=list(MARKER_COLUMNS))


def detect(net: nn.Module, data: CADPE, cfg: DetectionConfig) -> pd.DataFrame:
    """Markers (``MARKER_COLUMNS``, voxel ``x, y, z``) of every scan of ``data``, one scan in memory at a time."""
    frames = [components_to_markers(predict_probability(net, data[i]["image"], cfg), cfg.threshold,
                                    data.meta["patient_id"].iloc[i]) for i in range(len(data))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MARKER_COLUMNS))


def score(markers: pd.DataFrame, data: CADPE, fp_rates: tuple[float, ...] = (1.0, 2.0, 4.0),
          tolerance_mm: float = 0.0) -> tuple[pd.DataFrame, pd.Series]:
    """The FROC of ``markers`` against the reference standards of ``data``: ``(curve, sensitivity at fp_rates)``
    (``evaluation.froc``; every scan of ``data`` counts in the FP rate, PE-free ones included)."""
    spacings = data.spacings() if tolerance_mm > 0 else None
    return froc(markers, data.reference_standards(), spacings, tolerance_mm, fp_per_scan=fp_rates)
