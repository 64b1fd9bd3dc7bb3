"""Binary 3D segmentation metrics of the Models Genesis target tasks (NCS, LCS, BMS; genesis_family.md §2.4).

Three numbers, each named for what it is:

- ``dice``: foreground Dice at threshold 0.5, computed per cube and averaged over cubes (MONAI ``compute_dice``;
  a cube whose target and prediction are both empty scores 1). Per cube, so that every nodule counts once,
  whatever its size.
- ``iou``: foreground IoU (Jaccard) at threshold 0.5, per cube and averaged likewise (MONAI ``compute_iou``).
- ``keras_mean_iou``: what the papers report as "IoU": the Keras ``mean_iou`` of the official notebooks, i.e. TF's
  two-class (background + foreground) mean IoU of one confusion matrix pooled over every voxel of the evaluated set,
  averaged over the thresholds 0.5, 0.55, ..., 0.95. Background IoU is close to 1 for small objects, so this number
  is far above the foreground IoU (official NCS notebook: 77.14 % against a binary IoU of 59.22 %).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou

#: Keras ``mean_iou``: ``np.arange(0.5, 1.0, 0.05)`` in the official code
KERAS_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def _check(prob: np.ndarray, target: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    prob, target = np.asarray(prob, dtype=np.float64), np.asarray(target)
    if prob.shape != target.shape or prob.ndim < 2:
        raise ValueError(f"{name}: prob {prob.shape} and target {target.shape} must both be (N, *spatial)")
    bad = np.unique(target[(target != 0) & (target != 1)])
    if bad.size:
        raise ValueError(f"{name}: target must be binary (0/1); found {bad[:5].tolist()}")
    return prob, target.astype(bool)


def foreground_dice_iou(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """Foreground Dice and IoU of ``prob > threshold``, per cube, averaged over cubes.

    Args:
        prob: ``(N, *spatial)`` foreground probabilities (sigmoid outputs).
        target: ``(N, *spatial)`` binary ground truth.
        threshold: a voxel is foreground where ``prob > threshold``.

    Returns:
        ``(dice, iou)``, each the mean over the N cubes (an empty target and empty prediction score 1, an empty
        target with a non-empty prediction 0: MONAI with ``ignore_empty=False``).
    """
    prob, target = _check(prob, target, "foreground_dice_iou")
    pred = torch.from_numpy(prob > threshold).unsqueeze(1).float()  # (N, 1, *spatial): one foreground channel
    truth = torch.from_numpy(target).unsqueeze(1).float()
    dice = compute_dice(pred, truth, include_background=True, ignore_empty=False)
    iou = compute_iou(pred, truth, include_background=True, ignore_empty=False)
    return float(dice.mean()), float(iou.mean())


def keras_mean_iou(prob: np.ndarray, target: np.ndarray,
                   thresholds: tuple[float, ...] = KERAS_THRESHOLDS) -> float:
    """The Genesis papers' "IoU": background-inclusive 2-class mean IoU, pooled, averaged over thresholds.

    Per threshold ``t`` (TF ``tf.metrics.mean_iou(y_true, y_pred > t, num_classes=2)``): one confusion matrix over
    all voxels of all cubes; IoU_fg = TP / (TP + FP + FN), IoU_bg = TN / (TN + FN + FP); their mean over the classes
    with a non-zero denominator (TF leaves out a class that appears in neither labels nor predictions).

    Args:
        prob: ``(N, *spatial)`` probabilities; target: same shape, binary.
        thresholds: default 0.5, 0.55, ..., 0.95 (the official ``np.arange(0.5, 1.0, 0.05)``).

    Returns:
        The mean over thresholds, in [0, 1].
    """
    prob, target = _check(prob, target, "keras_mean_iou")
    scores = []
    for t in thresholds:
        pred = prob > t
        tp = np.count_nonzero(pred & target)
        fp = np.count_nonzero(pred & ~target)
        fn = np.count_nonzero(~pred & target)
        tn = pred.size - tp - fp - fn
        ious = [inter / union for inter, union in ((tp, tp + fp + fn), (tn, tn + fp + fn)) if union > 0]
        scores.append(np.mean(ious))
    return float(np.mean(scores))


def segmentation_metrics(prob: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``{"dice", "iou", "keras_mean_iou"}`` of one test set (see the module docstring)."""
    dice, iou = foreground_dice_iou(prob, target)
    return {"dice": dice, "iou": iou, "keras_mean_iou": keras_mean_iou(prob, target)}
