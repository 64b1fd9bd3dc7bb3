"""Stage ``transfer@<method>``: every downstream task x protocol x label budget x seed for one method.

Frozen features are extracted once (``data/features/<method>.npz``: whole radiographs, landmark patches of test
patients, 3D nodule candidates); linear probes, the embedding stage and the bias stage read them. Fine-tuning runs
start from the exported pretrained weights. Methods share paired seeds: the same label subsets and seeds for all.
Budgets: label fractions and k-shot subsets (``tasks.<task>.shots``: k positives and k negatives per label for a
classification task, k images or cubes for a segmentation task). Every fine-tuning run is scored on a validation set
(CXR: the ``val`` split; CT: held-out training scans, ``transfer.validation``) at ``transfer.finetune.evaluations``
points, stops early after ``patience`` points without gain and keeps its best weights; its record holds the curve.
Independent fine-tuning runs go side by side in ``transfer.workers`` processes (:mod:`eden_lib.parallel`).
A method runs the 2D tasks when it exported ``encoder.pt`` (:func:`has_2d`) and the 3D tasks when it exported
``unet3d.pt`` (:func:`has_3d`). Writes ``reports/metrics/transfer/<method>.json`` (a summary plus one record per run:
``{task, protocol, budget, seed, metric, value, per_class}``, plus ``curve`` ``[{step, value}]`` for a fine-tuning
run; a task with several metrics, such as ``ct_nodule_segmentation``, writes one record per metric).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from eden_lib import paths
from eden_lib.checkpoints import load_weights, weights_info
from eden_lib.data import prepared
from eden_lib.data.batches import resize_2d
from eden_lib.data.patches import crop_around, part_centres, unpack_masks
from eden_lib.evaluation.finetune import FinetuneConfig, Validation, finetune, predict
from eden_lib.evaluation.linear_probe import fit_predict_linear_probe
from eden_lib.evaluation.metrics import auc_per_label, dice_per_class, mean_auc
from eden_lib.evaluation.segmentation import segmentation_metrics
from eden_lib.evaluation.subsets import class_shot_subset, group_holdout, label_fraction_subset, shot_subset
from eden_lib.methods import networks
from eden_lib.methods.base import BuildContext
from eden_lib.methods.supervised import masked_bce
from eden_lib.parallel import run_jobs
from eden_lib.pipeline.pretrain import build_context
from eden_lib.seed import rng, seed_everything


def _context(cfg: dict, method: str, dims: int) -> BuildContext:
    """The build context of the network ``method`` exported in ``dims`` D: that of the method the export's ``info``
    names (a variant run such as ``ark_sites/k2`` holds Ark's network), else of ``method``; so a method's own
    ``backbone_2d`` / ``backbone_3d`` (Ark's Swin-B, Alice's Swin-UNETR) is rebuilt here."""
    path = paths.models_dir(method) / ("encoder.pt" if dims == 2 else "unet3d.pt")
    owner = weights_info(path).get("method", method) if path.is_file() else method
    return build_context(cfg, dims, 0 if dims == 2 else 1, method=owner)


def _load_encoder_2d(cfg: dict, method: str) -> nn.Module:
    encoder = networks.encoder_2d(_context(cfg, method, 2))
    load_weights(encoder, paths.models_dir(method) / "encoder.pt")
    return encoder


def _load_unet3d(cfg: dict, method: str) -> nn.Module:
    unet = networks.unet_3d(_context(cfg, method, 3))
    load_weights(unet, paths.models_dir(method) / "unet3d.pt")
    return unet


def landmark_patients(cxr: prepared.PreparedCXR, n: int, seed: int) -> np.ndarray:
    """Test images whose landmark patches are embedded (one image per patient, seeded, sorted)."""
    test = cxr.split_indices("test")
    first = pd.Series(test).groupby(cxr.meta["patient_id"].to_numpy()[test]).first().to_numpy()
    n = min(n, len(first))
    return np.sort(rng(seed, "landmark_patients").choice(first, size=n, replace=False))


def has_3d(method: str) -> bool:
    """Whether ``method`` pretrained (or initialised) the 3D network; 2D-only methods skip the CT tasks."""
    return (paths.models_dir(method) / "unet3d.pt").is_file()


def has_2d(method: str) -> bool:
    """Whether ``method`` exported a 2D encoder; 3D-only methods (TransVW, Semantic Genesis) skip the CXR tasks."""
    return (paths.models_dir(method) / "encoder.pt").is_file()


def extract_features(cfg: dict, method: str, x: torch.Tensor, cxr: prepared.PreparedCXR,
                     ct: prepared.PreparedCT) -> dict:
    """Frozen features of one method (``x``: every radiograph at the training size); saved to
    ``data/features/<method>.npz`` and returned. Keys: ``cxr`` (and ``landmark*``) for a method with a 2D encoder,
    ``ct`` for one with a UNet3D."""
    out: dict[str, np.ndarray] = {}
    if has_2d(method):
        out.update(_features_2d(cfg, method, x, cxr))
    if has_3d(method):
        unet = _load_unet3d(cfg, method)
        cubes = torch.from_numpy(np.asarray(ct.candidates, dtype=np.float32)).unsqueeze(1)
        out["ct"] = predict(unet.pooled_features, unet, cubes, batch=64, device=cfg["pretrain"]["device"])
    if not out:
        raise FileNotFoundError(f"{paths.models_dir(method)} holds neither encoder.pt nor unet3d.pt; run "
                                f"'pretrain@{method}' first")
    path = paths.features_file(method)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def _features_2d(cfg: dict, method: str, x: torch.Tensor, cxr: prepared.PreparedCXR) -> dict[str, np.ndarray]:
    """Pooled 2D encoder features: whole radiographs ``cxr (N, D)`` and, where the data has landmarks, the landmark
    patches of test patients ``landmark (P*L, D)`` with ``landmark_row``, ``landmark_id``, and the four parts (2x2
    grid) of each patch ``landmark_parts (P*L, 4, D)``, each resized to the training size as the whole is."""
    size = cfg["data"]["image_size"]
    device = cfg["pretrain"]["device"]
    encoder = _load_encoder_2d(cfg, method)
    out: dict[str, np.ndarray] = {"cxr": predict(encoder, encoder, x, device=device)}
    emb = cfg["embedding"]
    if cxr.landmarks.shape[1]:
        rows = landmark_patients(cxr, emb["n_patients"], cfg["seed"])
        n_l = cxr.landmarks.shape[1]
        images = np.asarray(cxr.images[rows])
        patches = crop_around(images, cxr.landmarks[rows], emb["patch_size"], size)
        out["landmark"] = predict(encoder, encoder, patches, device=device)
        parts = crop_around(images, part_centres(cxr.landmarks[rows], emb["patch_size"]), emb["patch_size"] // 2, size)
        out["landmark_parts"] = predict(encoder, encoder, parts, device=device).reshape(len(patches), 4, -1)
        out["landmark_row"] = np.repeat(rows, n_l)
        out["landmark_id"] = np.tile(np.arange(n_l), len(rows))
    return out


def _finetune_cfg(cfg: dict, task: str) -> FinetuneConfig:
    """``transfer.finetune`` with the task's ``finetune_epochs``; a task block may override ``batch_size``, ``lr``
    and ``min_steps`` (``tasks.ct_nodule_segmentation`` and ``ct_nodule_classification`` do)."""
    f, t = cfg["transfer"]["finetune"], cfg["tasks"][task]
    return FinetuneConfig(t["finetune_epochs"], t.get("batch_size", f["batch_size"]), t.get("lr", f["lr"]),
                          f["weight_decay"], t.get("min_steps", f["min_steps"]), cfg["pretrain"]["device"],
                          f["evaluations"], f["patience"])


def validation_rows(cfg: dict, pool: np.ndarray) -> np.ndarray:
    """At most ``transfer.validation.size`` rows of a validation pool (seeded by ``seed``: the same for every method
    and fine-tuning seed)."""
    n = min(cfg["transfer"]["validation"]["size"], len(pool))
    return pool[shot_subset(len(pool), n, cfg["seed"])] if n else pool[:0]


def ct_splits(cfg: dict, meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) rows of a SynthCT table (candidates or nodule cubes): the validation rows come from
    ``transfer.validation.ct_scan_fraction`` of the training scans (``seriesuid``), held out of training; with a
    single training scan there is no validation set (fine-tuning then keeps its last weights)."""
    split = meta["split"].to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    scans = meta["seriesuid"].to_numpy()[train]
    if len(np.unique(scans)) < 2:
        return train, train[:0], test
    held = group_holdout(scans, cfg["transfer"]["validation"]["ct_scan_fraction"], cfg["seed"])
    return train[~held], validation_rows(cfg, train[held]), test


def _auc_score(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean AUC over the labels that have both classes (the validation score of a classification run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mean_auc(auc_per_label(y, pred))


def _dice_score(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean Dice over the structures at logit 0 (the validation score of a segmentation run)."""
    return float(dice_per_class(logits > 0, y > 0.5).mean())


def _run_finetunes(cfg: dict, jobs: list[Callable[[], Any]]) -> list[Any]:
    """The fine-tuning ``jobs`` (one record each) side by side in ``transfer.workers`` processes."""
    return run_jobs(jobs, cfg["transfer"]["workers"], cfg["pretrain"]["device"])


def _record(task, protocol, budget, seed, metric, per_class: dict[str, float]) -> dict:
    values = np.array(list(per_class.values()), dtype=float)
    value = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return {"task": task, "protocol": protocol, "budget": budget, "seed": seed, "metric": metric,
            "value": value, "per_class": per_class}


def classification_runs(
    cfg: dict,
    task: str,
    names: list[str],
    features: np.ndarray,
    inputs: torch.Tensor,
    y: np.ndarray,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    build_net: Callable[[], nn.Module],
) -> list[dict]:
    """Linear probes (per label fraction and k-shot budget x seed) and fine-tuning (per seed) of one multi-label
    classification task.

    Args:
        task: key of ``tasks``; names: the K label names.
        features: frozen features of every sample (N, D); inputs: the samples for fine-tuning (N, 1, *spatial).
        y: labels (N, K), NaN = unknown; split: (train, validation, test) indices (the probes ignore validation).
        build_net: a fresh network (pretrained encoder + new linear head) per fine-tuning seed.
    """
    t, spec = cfg["transfer"], cfg["tasks"][task]
    train, _, test = split
    records = []
    if "linear_probe" in spec["protocols"]:
        budgets = [(f"{frac:g}", lambda seed, frac=frac: label_fraction_subset(y[train], frac, seed,
                                                                                 t["min_positives"]))
                   for frac in t["label_fractions"]]
        budgets += [(f"{k}_shots", lambda seed, k=k: class_shot_subset(y[train], k, seed))
                    for k in spec.get("shots", [])]
        for budget, subset in budgets:
            for seed in t["seeds"]:
                sub = train[subset(seed)]
                scores = fit_predict_linear_probe(features[sub], y[sub], features[test], C=t["linear_probe"]["C"],
                                                  seed=seed, max_iter=t["linear_probe"]["max_iter"])
                records.append(_record(task, "linear_probe", budget, seed, "auc",
                                       dict(zip(names, auc_per_label(y[test], scores)))))
    if "finetune" in spec["protocols"]:
        records += _run_finetunes(cfg, [lambda seed=seed: finetune_classifier(cfg, task, names, inputs, y, split,
                                                                              build_net, seed)[0]
                                        for seed in t["seeds"]])
    return records


def finetune_classifier(
    cfg: dict,
    task: str,
    names: list[str],
    inputs: torch.Tensor,
    y: np.ndarray,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    build_net: Callable[[], nn.Module],
    seed: int,
    freeze_stages: int = 0,
) -> tuple[dict, nn.Module]:
    """One fine-tuning run of a classification task (the ``finetune`` protocol of :func:`classification_runs`, with
    its arguments): ``transfer.finetune_fraction`` of the training rows, validated on ``split[1]``, scored on
    ``split[2]``. ``freeze_stages``: encoder stages kept frozen (the separability stage's transfer ablation; 0 here).
    Returns the run's record (with its ``curve``) and the fine-tuned network."""
    t = cfg["transfer"]
    train, val, test = split
    frac = t["finetune_fraction"]
    validation = Validation(inputs[val], y[val], _auc_score) if len(val) else None
    sub = train[label_fraction_subset(y[train], frac, seed, t["min_positives"])]
    seed_everything(seed)
    net = build_net()
    ft = replace(_finetune_cfg(cfg, task), freeze_stages=freeze_stages)
    curve = finetune(net, masked_bce, inputs[sub], torch.from_numpy(y[sub]), ft, seed, validation)
    scores = predict(net, net, inputs[test], batch=64, device=cfg["pretrain"]["device"])
    record = _record(task, "finetune", f"{frac:g}", seed, "auc", dict(zip(names, auc_per_label(y[test], scores))))
    return {**record, "curve": curve}, net


def cxr_classification(
    cfg: dict, method: str, x: torch.Tensor, cxr: prepared.PreparedCXR, feats: dict
) -> list[dict]:
    def build() -> nn.Module:
        encoder = _load_encoder_2d(cfg, method)
        return nn.Sequential(encoder, nn.Linear(encoder.out_dim, len(cxr.info["labels"])))

    split = (cxr.split_indices("train"), validation_rows(cfg, cxr.split_indices("val")), cxr.split_indices("test"))
    return classification_runs(cfg, "cxr_classification", cxr.info["labels"], feats["cxr"], x, cxr.labels, split,
                               build)


def site_classification(cfg: dict, method: str, sites: prepared.PreparedSites) -> list[dict]:
    """Every site's own classification task (the Ark setting, adam_ark.md §3): the method's frozen encoder on the
    site's images as its loader read them, each site with its own label set, train and test rows of that site only.
    Records carry ``task = "site_<name>"`` and the protocols of ``tasks.cxr_site_classification``; fine-tuning puts
    a head of the site's labels on the pretrained encoder and validates on the site's ``val`` rows (if any)."""
    encoder = _load_encoder_2d(cfg, method)
    x = resize_2d(sites.images, cfg["data"]["image_size"])
    feats = predict(encoder, encoder, x, device=cfg["pretrain"]["device"])
    records = []
    for name, labels in zip(sites.site_names, sites.site_labels):

        def build(n_out: int = len(labels)) -> nn.Module:
            net = _load_encoder_2d(cfg, method)
            return nn.Sequential(net, nn.Linear(net.out_dim, n_out))

        split = (sites.indices(name, "train"), validation_rows(cfg, sites.indices(name, "val")),
                 sites.indices(name, "test"))
        y = np.asarray(sites.labels[:, : len(labels)])
        for r in classification_runs(cfg, "cxr_site_classification", labels, feats, x, y, split, build):
            records.append({**r, "task": f"site_{name}"})
    return records


def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from monai.losses import DiceLoss

    return F.binary_cross_entropy_with_logits(logits.float(), target) + DiceLoss(sigmoid=True)(logits.float(), target)


def cxr_segmentation(cfg: dict, method: str, x: torch.Tensor, cxr: prepared.PreparedCXR) -> list[dict]:
    """Few-shot anatomy segmentation as in Adam: fine-tune a U-Net on ``shots`` training images (every count of
    ``tasks.cxr_segmentation.shots`` x seed; for one seed the smaller sets are nested in the larger), Dice per
    structure on the test split. A method that pretrained a whole U-Net (e.g. Models Genesis) fine-tunes all of it;
    the others put a fresh decoder on their pretrained encoder."""
    task = cfg["tasks"]["cxr_segmentation"]
    if not cxr.info["masks"]:
        return []
    structures = task["structures"]
    bits = [cxr.info["masks"].index(s) for s in structures]
    train, test = cxr.split_indices("train"), cxr.split_indices("test")
    val = validation_rows(cfg, cxr.split_indices("val"))
    masks = unpack_masks(cxr.masks, bits, x.shape[-1])
    validation = Validation(x[val], masks[val].numpy(), _dice_score) if len(val) else None

    def run(shots: int, seed: int) -> dict:
        sub = train[shot_subset(len(train), shots, seed)]
        seed_everything(seed)
        net = _segmentation_unet_2d(cfg, method, len(bits))
        curve = finetune(net, _seg_loss, x[sub], masks[sub], _finetune_cfg(cfg, "cxr_segmentation"), seed,
                         validation)
        pred = predict(net, net, x[test], device=cfg["pretrain"]["device"]) > 0
        dice = dice_per_class(pred, masks[test].numpy() > 0.5)
        return {**_record("cxr_segmentation", "finetune", f"{shots}_shots", seed, "dice",
                          dict(zip(structures, dice))), "curve": curve}

    return _run_finetunes(cfg, [lambda k=k, seed=seed: run(k, seed) for k in task["shots"]
                                for seed in cfg["transfer"]["seeds"]])


def _segmentation_unet_2d(cfg: dict, method: str, n_out: int) -> nn.Module:
    """The 2D U-Net to fine-tune: the pretrained ``unet.pt`` with a new output layer where the method exported one,
    else a fresh decoder on the pretrained encoder (built under the caller's seed)."""
    ctx = _context(cfg, method, 2)
    if (paths.models_dir(method) / "unet.pt").is_file():
        net = networks.unet_2d(ctx, out_channels=1)
        load_weights(net, paths.models_dir(method) / "unet.pt")
        net.segmentation_head = nn.Sequential(nn.Conv2d(ctx.unet2d_decoder[-1], n_out, 3, padding=1))
        return net
    return networks.unet_2d(ctx, out_channels=n_out, encoder=_load_encoder_2d(cfg, method))


def ct_nodule_classification(cfg: dict, method: str, ct: prepared.PreparedCT, feats: dict) -> list[dict]:
    def build() -> nn.Module:
        return _PooledClassifier(_load_unet3d(cfg, method), networks.feature_dim_3d(_context(cfg, method, 3)))

    cubes = torch.from_numpy(np.asarray(ct.candidates, dtype=np.float32)).unsqueeze(1)
    y = ct.candidate_meta["label"].to_numpy(dtype=np.float32).reshape(-1, 1)
    return classification_runs(cfg, "ct_nodule_classification", ["nodule"], feats["ct"], cubes, y,
                               ct_splits(cfg, ct.candidate_meta), build)


class _PooledClassifier(nn.Module):
    """UNet3D encoder, global average pooling, one linear output (the encoder-only fine-tuning of the papers)."""

    def __init__(self, unet: nn.Module, dim: int) -> None:
        super().__init__()
        self.unet = unet
        self.fc = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.unet.pooled_features(x))


class _LogitOutput(nn.Module):
    """UNet3D ``out_tr`` without its sigmoid: the same ``final_conv`` (same state-dict keys), logits out, so the
    Dice + BCE loss takes logits."""

    def __init__(self, final_conv: nn.Conv3d) -> None:
        super().__init__()
        self.final_conv = final_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


def segmentation_unet3d(cfg: dict, method: str, protocol: str) -> nn.Module:
    """The UNet3D (or the method's Swin-UNETR, ``methods.alice.backbone_3d``) to fine-tune on nodule segmentation,
    returning logits ``(B, 1, X, Y, Z)``.

    ``finetune``: the whole pretrained encoder-decoder and its output layer (the papers' protocol, genesis_family.md
    §2.4). ``finetune_encoder``: only the pretrained encoder (``encoder_state_prefixes``: ``down_tr*``, Swin-UNETR's
    ``swinViT``); decoder and output layer keep the fresh initialisation of the current torch seed (the same for
    every method under the same seed).
    """
    from eden_lib.checkpoints import CheckpointError, load_checkpoint, load_state_dict_strict

    net = networks.unet_3d(_context(cfg, method, 3))
    path = paths.models_dir(method) / "unet3d.pt"
    if protocol == "finetune":
        load_weights(net, path)
    elif protocol == "finetune_encoder":
        encoder = {k for k in net.state_dict() if k.startswith(net.encoder_state_prefixes)}
        state = {k: v for k, v in load_checkpoint(path)["state_dict"].items() if k in encoder}
        if encoder - set(state):
            raise CheckpointError(f"{path} lacks encoder keys {sorted(encoder - set(state))[:5]} of the UNet3D")
        fresh = {k: v for k, v in net.state_dict().items() if k not in encoder}
        load_state_dict_strict(net, {**fresh, **state}, f"{path} (encoder)")
    else:
        raise ValueError(f"tasks.ct_nodule_segmentation.protocols has {protocol!r}; expected 'finetune' or "
                         "'finetune_encoder'")
    net.out_tr = _LogitOutput(net.out_tr.final_conv)
    return net


def ct_nodule_segmentation(cfg: dict, method: str, ct: prepared.PreparedCT) -> list[dict]:
    """Models Genesis "NCS" on SynthCT: fine-tune the UNet3D on the jittered nodule cubes, per protocol x budget x
    seed.

    Every method trains on the same cubes (all training crops, or ``tasks.ct_nodule_segmentation.shots`` of them)
    under the same seeds (paired), validated on the cubes of the held-out training scans (:func:`ct_splits`). Loss:
    Dice + BCE, as the CXR segmentation. One record per metric of
    :func:`~eden_lib.evaluation.segmentation.segmentation_metrics` (``dice``, ``iou``: foreground, per cube;
    ``keras_mean_iou``: the papers' "IoU"). No records when the data set has no nodule masks (real LUNA16).
    """
    task = cfg["tasks"]["ct_nodule_segmentation"]
    if not ct.info.get("nodule_masks") or not len(ct.nodule_indices("train")) or not len(ct.nodule_indices("test")):
        return []
    train, val, test = ct_splits(cfg, ct.nodule_meta)
    x = torch.from_numpy(np.asarray(ct.nodules, dtype=np.float32)).unsqueeze(1)  # (K, 1, X, Y, Z)
    y = torch.from_numpy(np.asarray(ct.nodule_masks, dtype=np.float32)).unsqueeze(1)
    validation = Validation(x[val], y[val].numpy(), _dice_score) if len(val) else None

    def run(protocol: str, shots: int | None, seed: int) -> list[dict]:
        rows = train if shots is None else train[shot_subset(len(train), shots, seed)]
        budget = f"{len(train)}_cubes" if shots is None else f"{shots}_shots"
        seed_everything(seed)
        net = segmentation_unet3d(cfg, method, protocol)
        curve = finetune(net, _seg_loss, x[rows], y[rows], _finetune_cfg(cfg, "ct_nodule_segmentation"), seed,
                         validation)
        logits = predict(net, net, x[test], batch=64, device=cfg["pretrain"]["device"])
        prob = torch.sigmoid(torch.from_numpy(logits)).numpy()[:, 0]
        return [{**_record("ct_nodule_segmentation", protocol, budget, seed, metric, {"nodule": value}),
                 "curve": curve} for metric, value in segmentation_metrics(prob, y[test, 0].numpy()).items()]

    jobs = [lambda p=p, k=k, seed=seed: run(p, k, seed) for p in task["protocols"]
            for k in [None, *task.get("shots", [])] for seed in cfg["transfer"]["seeds"]]
    return [r for records in _run_finetunes(cfg, jobs) for r in records]


def summarize(records: list[dict]) -> dict:
    """``{task: {protocol: {budget: {"mean", "std", "n"}}}}`` over seeds (keys without dots for DVC).

    The budget key is ``b_<budget>``; where a task x protocol x budget has several metrics, one key per metric,
    ``b_<budget>_<metric>``.
    """
    df = pd.DataFrame(records)
    out: dict = {}
    n_metrics = df.groupby(["task", "protocol", "budget"])["metric"].transform("nunique")
    for (task, protocol, budget, metric), g in df.groupby(["task", "protocol", "budget", "metric"], sort=True):
        key = "b_" + str(budget).replace(".", "p") + (f"_{metric}" if n_metrics[g.index[0]] > 1 else "")
        vals = g["value"].to_numpy(dtype=float)
        out.setdefault(task, {}).setdefault(protocol, {})[key] = {
            "mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else None,
            "std": float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else None,
            "n": int(np.isfinite(vals).sum()),
        }
    return out


def skipped_tasks(method: str, ct: prepared.PreparedCT) -> dict[str, str]:
    """Tasks ``method`` does not run, each with the reason (in the metrics file; the report shows them)."""
    out: dict[str, str] = {}
    if not has_2d(method):
        out.update(dict.fromkeys(("cxr_classification", "cxr_segmentation"), "3D-only method (no encoder.pt)"))
    if not has_3d(method):
        out.update(dict.fromkeys(("ct_nodule_classification", "ct_nodule_segmentation"),
                                 "2D-only method (no unet3d.pt)"))
    elif not ct.info.get("nodule_masks"):
        out["ct_nodule_segmentation"] = ("the CT data set has no nodule masks "
                                         "(real LUNA16: info.json nodule_masks false)")
    return out


def run_transfer(cfg: dict, method: str) -> pd.DataFrame:
    """Run every task of the stage for ``method``; returns the tidy records (one row per run).

    The metrics file also holds the seconds each part took (``seconds``), for the compute table and the projection
    of the default's wall time.
    """
    from eden_lib.reporting.io import write_json

    cxr, ct = prepared.load_cxr(), prepared.load_ct()
    x = resize_2d(cxr.images, cfg["data"]["image_size"])
    seconds: dict[str, float] = {}

    def timed(part: str, fn: Callable[..., object], *args: object) -> object:
        t0 = time.perf_counter()
        result = fn(*args)
        seconds[part] = round(time.perf_counter() - t0, 2)
        return result

    feats = timed("features", extract_features, cfg, method, x, cxr, ct)
    records: list[dict] = []
    extra: dict = {}
    if "cxr" in feats:
        records += timed("cxr_classification", cxr_classification, cfg, method, x, cxr, feats)
        records += timed("cxr_segmentation", cxr_segmentation, cfg, method, x, cxr)
        if "cxr_site_classification" in cfg["tasks"] and (paths.prepared_dir("sites") / "info.json").is_file():
            sites = prepared.load_sites()
            records += timed("cxr_site_classification", site_classification, cfg, method, sites)
            extra["sites"] = sites.info["sites"]
    if "ct" in feats:
        records += timed("ct_nodule_classification", ct_nodule_classification, cfg, method, ct, feats)
        records += timed("ct_nodule_segmentation", ct_nodule_segmentation, cfg, method, ct)
    write_json({"method": method, "profile": cfg["profile"], "summary": summarize(records), "seconds": seconds,
                "skipped": skipped_tasks(method, ct), **extra, "runs": records}, paths.metrics_file("transfer", method))
    return pd.DataFrame(records).drop(columns=["per_class", "curve"], errors="ignore")
