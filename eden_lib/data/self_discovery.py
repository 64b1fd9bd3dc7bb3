"""TransVW / Semantic Genesis self-discovery of visual words (Haghighi et al., IEEE TMI 2021; MICCAI 2020).

``reference/genesis_family.md`` §3.2 (official ``self_discovery/``): an auto-encoder trained with MSE on whole
down-sampled scans embeds each patient (global average pool of the bottleneck, 512-d officially); each of C classes
takes a reference patient and its nearest patients by **Euclidean** distance in that space (the reference is rank 0
and counts among the K = 200 training instances; 30 validation instances per class), and one random anchor in the
reference that passes the Models Genesis "mostly lung" test and lies at least 5 voxels from earlier anchors. The same
coordinates are cut from every member at every scale (:mod:`eden_lib.data.self_discovery_crops`); pseudo-label =
class index. One code path serves CT (``spatial_dims=3``, (x, y, z) volumes) and radiographs (``2``, (row, col)).

Choices where the official code has quirks:
- The "too close to an earlier anchor" flag is never reset officially, so one near draw fails every later try of
  that reference; here each try is judged on its own (``max_anchor_tries`` draws, the first that passes wins).
- ``reference_order="farthest"`` (default) takes references by farthest-point sampling in the embedding (seeded
  first pick): deterministic and spread out. ``"random"`` is the official unused-random-patient order. Either way a
  reference without a valid anchor is skipped, as officially.
- Every crop is kept (the official 50-class chunks drop their last sample); anchor ranges have no extra ``- 1``
  voxel at the top; borders default to 0 (official 100/100/30 suit 512-voxel LUNA16 scans, not the study's grids).
- Volumes must already be in [0, 1] (official crops are taken unnormalised); this is checked, uint8 is scaled.
- Auto-encoder: Adam(``ae_lr``) for a fixed ``ae_epochs`` through :func:`eden_lib.engine.fit` (the official
  ReduceLROnPlateau / early stopping are left out); it keeps the skip connections (SemanticGenesis issue #3: it could
  learn an identity; only its bottleneck is used). 3D: our :class:`UNet3D`; 2D: our ResNet U-Net
  (:mod:`eden_lib.models.unet2d`, no 2D code exists officially), embedding = the encoder's pooled features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eden_lib.data.self_discovery_crops import as_unit, box_extent, extract_visual_word_crops
from eden_lib.data.subvolumes import cube_tissue_scores, tissue_score_table
from eden_lib.seed import rng as make_rng

__all__ = ["SelfDiscoveryConfig", "VisualWords", "AutoEncoder", "resize_volumes", "train_autoencoder",
           "embed_patients", "nearest_patients", "discover_visual_words", "validation_words",
           "extract_visual_word_crops"]
OFFICIAL_SCALES = ((1.0, 1.0), (50 / 64, 80 / 64), (50 / 64, 80 / 64))
_SIZES = {2: ((64, 64), (128, 128)), 3: ((64, 64, 32), (128, 128, 64))}  # crop_size, ae_size defaults


@dataclass(frozen=True)
class SelfDiscoveryConfig:
    """Self-discovery settings (official values in brackets; sizes default per ``spatial_dims``).

    Args:
        spatial_dims: 3 for CT volumes (x, y, z), 2 for radiograph renders (row, col).
        n_classes: C visual words [44 used for training; the generator default is 200].
        instances_per_class: K training patients per class, the reference included [200].
        val_instances_per_class: validation patients per class (:func:`validation_words`) [30].
        crop_size: base crop in source voxels [64, 64, 32]; 2D default 64 x 64 render pixels.
        out_size: training size every crop is resized to (default ``crop_size``).
        scales: per level an in-plane zoom range ``(lo, hi)`` ([(1, 1), (50/64, 80/64), (50/64, 80/64)]).
        max_shift: in-plane shift bound of zoomed levels, as a fraction of the crop side [10/64].
        border: voxels per axis kept free around every box (default 0).
        tissue_threshold, max_tissue_fraction, len_depth: Models Genesis anchor test on the reference [0.425
            (-150 HU), 0.15, 3]; ``max_tissue_fraction=None`` switches it off (e.g. radiographs of mixed polarity).
        min_anchor_distance: least Euclidean voxel distance between anchors of different classes [5].
        max_anchor_tries: anchor draws per reference [200].
        reference_order: ``"farthest"`` (spread out) or ``"random"`` (official).
        ae_size: whole-scan size the auto-encoder sees [128, 128, 64]; multiples of 8 (3D) or 32 (2D).
        ae_width: UNet3D base width (3D; bottleneck 16 x width [32 -> 512-d]) or first ResNet stage width (2D).
        ae_backbone_2d: ResNet of the 2D auto-encoder.
        ae_epochs, ae_batch_size, ae_lr: auto-encoder training [Adam 1e-3, batch 8].
        device: ``auto`` | ``cpu`` | ``cuda`` for the auto-encoder.
        seed: seeds the auto-encoder, the reference order, anchors and crop boxes.
    """

    spatial_dims: int = 3
    n_classes: int = 44
    instances_per_class: int = 200
    val_instances_per_class: int = 30
    crop_size: tuple[int, ...] | None = None
    out_size: tuple[int, ...] | None = None
    scales: tuple[tuple[float, float], ...] = OFFICIAL_SCALES
    max_shift: float = 10 / 64
    border: tuple[int, ...] | None = None
    tissue_threshold: float = 0.425
    max_tissue_fraction: float | None = 0.15
    len_depth: int = 3
    min_anchor_distance: float = 5.0
    max_anchor_tries: int = 200
    reference_order: str = "farthest"
    ae_size: tuple[int, ...] | None = None
    ae_width: int = 32
    ae_backbone_2d: str = "resnet18"
    ae_epochs: int = 20
    ae_batch_size: int = 8
    ae_lr: float = 1e-3
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"SelfDiscoveryConfig.{key}={getattr(self, key)!r}: expected {expected}")

        def is_int(v: Any, least: int) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= least

        def sizes(key: str, default: Any, least: int) -> None:
            value = default if getattr(self, key) is None else getattr(self, key)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != d \
                    or not all(is_int(v, least) for v in value):
                raise bad(key, f"{d} integers >= {least} (one per spatial axis)")
            object.__setattr__(self, key, tuple(int(v) for v in value))

        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise bad("spatial_dims", "2 (radiographs) or 3 (CT)")
        d = self.spatial_dims
        sizes("crop_size", _SIZES[d][0], 1)
        sizes("out_size", self.crop_size, 1)
        sizes("border", (0,) * d, 0)
        sizes("ae_size", _SIZES[d][1], 1)
        for key, least in (("n_classes", 1), ("instances_per_class", 1), ("val_instances_per_class", 1),
                           ("len_depth", 2), ("max_anchor_tries", 1), ("ae_width", 1), ("ae_epochs", 1),
                           ("ae_batch_size", 1), ("seed", 0)):
            if not is_int(getattr(self, key), least):
                raise bad(key, f"an integer >= {least}")
        try:
            scales = tuple((float(lo), float(hi)) for lo, hi in self.scales)
        except (TypeError, ValueError):
            raise bad("scales", "a sequence of (lo, hi) zoom ranges") from None
        if not scales or not all(0 < lo <= hi for lo, hi in scales):
            raise bad("scales", "at least one (lo, hi) zoom range with 0 < lo <= hi")
        object.__setattr__(self, "scales", scales)
        if not 0.0 <= self.max_shift < 1.0:
            raise bad("max_shift", "a fraction of the crop side in [0, 1)")
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise bad("tissue_threshold", "a level in [0, 1]")
        if self.max_tissue_fraction is not None and not 0.0 <= self.max_tissue_fraction <= 1.0:
            raise bad("max_tissue_fraction", "a fraction in [0, 1], or None to skip the anchor tissue test")
        if not self.min_anchor_distance >= 0:
            raise bad("min_anchor_distance", "a distance >= 0 in voxels")
        if self.reference_order not in ("farthest", "random"):
            raise bad("reference_order", "'farthest' or 'random'")
        multiple = 8 if d == 3 else 32  # three 2x poolings (UNet3D) / stride 32 (ResNet U-Net)
        if any(s % multiple for s in self.ae_size):
            raise bad("ae_size", f"sizes divisible by {multiple} for the {d}D auto-encoder")
        from eden_lib.models.backbones import BACKBONES

        if self.ae_backbone_2d not in BACKBONES:
            raise bad("ae_backbone_2d", f"one of {sorted(BACKBONES)}")
        if not self.ae_lr > 0:
            raise bad("ae_lr", "a learning rate > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", "'auto', 'cpu' or 'cuda'")


@dataclass(frozen=True)
class VisualWords:
    """C discovered classes: ``references`` (C,), ``members`` (C, K) patient indices (rank 0 = the reference for
    training words), their Euclidean embedding ``distances`` (C, K) and ``anchors`` (C, d) base-crop corners."""

    references: np.ndarray
    members: np.ndarray
    distances: np.ndarray
    anchors: np.ndarray


# ---------------------------------------------------------------- auto-encoder embedding
def resize_volumes(volumes: Sequence[Any] | np.ndarray, cfg: SelfDiscoveryConfig) -> torch.Tensor:
    """N whole scans/renders (float [0, 1] or uint8, any shapes) -> ``(N, 1, *ae_size)`` float32, area-resized."""
    out = torch.empty(len(volumes), 1, *cfg.ae_size)
    for i in range(len(volumes)):  # one per patient: shapes may differ and memory maps stay lazy
        v = torch.from_numpy(as_unit(volumes[i], i, cfg.spatial_dims))[None, None]
        out[i] = F.interpolate(v, size=cfg.ae_size, mode="area")[0]
    return out


class AutoEncoder(nn.Module):
    """MSE auto-encoder for the engine: ``forward(batch, generator) -> {"loss"}``; ``embed(x)`` ``(B, 1, *S)`` ->
    ``(B, F)`` (F = 16 x width in 3D, the ResNet's pooled width in 2D); ``reconstruct(x)`` in (0, 1)."""

    def __init__(self, cfg: SelfDiscoveryConfig) -> None:
        super().__init__()
        self.spatial_dims = cfg.spatial_dims
        w = cfg.ae_width
        if cfg.spatial_dims == 3:
            from eden_lib.models.unet3d import UNet3D

            self.net: nn.Module = UNet3D(1, 1, base_width=w)
        else:
            from eden_lib.models.backbones import ResNetEncoder
            from eden_lib.models.unet2d import ResNetUNet

            encoder = ResNetEncoder(cfg.ae_backbone_2d, (w, 2 * w, 4 * w, 8 * w), in_channels=1)
            self.net = ResNetUNet(encoder, [max(1, w * 4 // 2**i) for i in range(5)], 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if self.spatial_dims == 3 else torch.sigmoid(self.net(x))  # UNet3D ends in a sigmoid

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.pooled_features(x) if self.spatial_dims == 3 else self.net.encoder(x)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = batch["image"]
        return {"loss": F.mse_loss(self.reconstruct(x).float(), x.float())}


def train_autoencoder(images: torch.Tensor, cfg: SelfDiscoveryConfig) -> tuple[AutoEncoder, list[dict[str, float]]]:
    """Train on ``images`` ``(N, 1, *ae_size)`` in [0, 1]; weights are seeded by ``cfg.seed`` (global RNG untouched)."""
    from eden_lib.data.batches import volume_batches
    from eden_lib.engine import TrainConfig, fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AutoEncoder(cfg)
    n = len(images)
    batch = min(cfg.ae_batch_size, n)
    batches = volume_batches(images[:, 0].numpy(), None, np.arange(n), batch, math.ceil(n / batch))
    train = TrainConfig(epochs=cfg.ae_epochs, seed=cfg.seed, device=cfg.device, verbose=False,
                        extra={"name": "self_discovery_autoencoder"})
    history = fit(model, batches, torch.optim.Adam(model.parameters(), lr=cfg.ae_lr), train)
    return model, history


def embed_patients(volumes: Sequence[Any] | np.ndarray, cfg: SelfDiscoveryConfig,
                   chunk: int = 16) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Per-patient embedding ``(N, F)`` float32: train the auto-encoder on the whole resized scans, then pool its
    bottleneck (eval mode) for every patient. Also returns the auto-encoder's per-epoch history (``loss``...)."""
    images = resize_volumes(volumes, cfg)
    model, history = train_autoencoder(images, cfg)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        feats = [model.embed(images[i:i + chunk].to(device)).float().cpu() for i in range(0, len(images), chunk)]
    return torch.cat(feats).numpy(), history


# ---------------------------------------------------------------- discovery
def _distances(pool: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.sqrt(((pool - query) ** 2).sum(axis=1))


def nearest_patients(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` pool rows nearest (Euclidean, ties by index) to each query: indices and distances ``(Q, k)``."""
    q, p = np.asarray(queries, dtype=np.float64), np.asarray(pool, dtype=np.float64)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"queries {q.shape} and pool {p.shape}: expected (Q, F) and (P, F) with the same F")
    if not 1 <= k <= len(p):
        raise ValueError(f"k={k} neighbours requested from a pool of {len(p)} patients: expected 1 <= k <= {len(p)}")
    dist = np.stack([_distances(p, row) for row in q]) if len(q) else np.zeros((0, len(p)))
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(dist, idx, axis=1)


def _reference_order(emb: np.ndarray, cfg: SelfDiscoveryConfig) -> Iterator[int]:
    """Every patient once: a seeded permutation, or farthest-point sampling from a seeded first pick."""
    g = make_rng(cfg.seed, "self_discovery", "references")
    if cfg.reference_order == "random":
        yield from (int(i) for i in g.permutation(len(emb)))
        return
    nearest = np.full(len(emb), np.inf)
    pick = int(g.integers(len(emb)))
    for _ in range(len(emb)):
        yield pick
        nearest = np.minimum(nearest, _distances(emb, emb[pick]))
        nearest[pick] = -1.0  # used: never again (unused patients have distance >= 0)
        pick = int(np.argmax(nearest))


def _tissue_fractions(volume01: np.ndarray, corners: np.ndarray, cfg: SelfDiscoveryConfig) -> np.ndarray:
    """Models Genesis tissue score of the base crop at each corner ``(M, d)``, as a fraction of its voxels.

    3D: the official look-ahead score (:mod:`eden_lib.data.subvolumes`); 2D: the image as one slice repeated
    ``len_depth`` times, where the score reduces to the fraction of pixels at or above the threshold.
    """
    crop, v, c = tuple(cfg.crop_size), volume01, np.asarray(corners)
    if cfg.spatial_dims == 2:
        v, c, crop = np.repeat(v[..., None], cfg.len_depth, axis=-1), np.c_[c, np.zeros(len(c), int)], crop + (1,)
    lo = c.min(axis=0)
    hi = c.max(axis=0) + np.asarray(crop) + np.array([0, 0, cfg.len_depth - 1])
    table = tissue_score_table(v[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], cfg.tissue_threshold, cfg.len_depth)
    return cube_tissue_scores(table, c - lo, crop, cfg.len_depth) / float(np.prod(crop))


def discover_visual_words(embeddings: np.ndarray, volumes: Sequence[Any] | np.ndarray,
                          cfg: SelfDiscoveryConfig) -> VisualWords:
    """C classes: a reference, its K nearest patients (Euclidean in ``embeddings`` ``(N, F)``) and one anchor.

    The anchor is drawn uniformly where every box of every scale level fits inside all K members (shapes may differ)
    with ``cfg.border`` to spare, passes the tissue test on the reference and keeps ``min_anchor_distance`` from
    earlier anchors. ``volumes`` (N scans/renders, float [0, 1] or uint8) are read for shapes and the test only.

    Raises:
        ValueError: bad shapes, K or C larger than N, or fewer than C references with a valid anchor.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    n, n_c, k, d = len(emb), cfg.n_classes, cfg.instances_per_class, cfg.spatial_dims
    if emb.ndim != 2 or n != len(volumes) or not np.isfinite(emb).all():
        raise ValueError(f"embeddings of shape {emb.shape} for {len(volumes)} volumes: expected finite (N, F) with "
                         "one row per volume")
    if k > n or n_c > n:
        raise ValueError(f"instances_per_class={k}, n_classes={n_c} with {n} patients: both must be <= {n} (each "
                         "class needs its own reference)")
    shapes = np.array([np.shape(volumes[i]) for i in range(n)])
    if shapes.ndim != 2 or shapes.shape[1] != d:
        raise ValueError(f"volume shapes {shapes.tolist()[:3]}...: expected {d} spatial axes for spatial_dims={d}")
    off_min, ext_max = box_extent(cfg)
    lookahead = cfg.len_depth - 1 if (cfg.max_tissue_fraction is not None and d == 3) else 0
    g = make_rng(cfg.seed, "self_discovery", "anchors")
    words: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    too_small = no_anchor = 0
    for ref in _reference_order(emb, cfg):
        if len(words) == n_c:
            break
        order = np.argsort(_distances(emb, emb[ref]), kind="stable")
        members = np.concatenate([[ref], order[order != ref][:k - 1]])
        lo = np.asarray(cfg.border) - off_min
        hi = shapes[members].min(axis=0) - np.asarray(cfg.border) - ext_max
        hi[-1] -= lookahead  # room for the look-ahead slices of the 3D test
        if np.any(hi < lo):
            too_small += 1
            continue
        cand = g.integers(lo, hi + 1, size=(cfg.max_anchor_tries, d))
        ok = np.ones(len(cand), dtype=bool)
        if cfg.max_tissue_fraction is not None:
            ok &= _tissue_fractions(as_unit(volumes[ref], ref, d), cand, cfg) <= cfg.max_tissue_fraction
        if words:
            taken = np.stack([w[3] for w in words])
            ok &= np.linalg.norm(cand[:, None] - taken[None], axis=-1).min(axis=1) >= cfg.min_anchor_distance
        if not ok.any():
            no_anchor += 1
            continue
        words.append((ref, members, _distances(emb[members], emb[ref]), cand[int(np.argmax(ok))]))
    if len(words) < n_c:
        raise ValueError(
            f"found {len(words)} of n_classes={n_c} visual words after trying all {n} patients as references: "
            f"{too_small} had members too small for crop_size={cfg.crop_size}, scales and border={cfg.border} "
            f"(needs {(ext_max - off_min + 2 * np.asarray(cfg.border)).tolist()} voxels per axis), {no_anchor} had no "
            f"anchor in {cfg.max_anchor_tries} tries passing max_tissue_fraction={cfg.max_tissue_fraction} and "
            f"min_anchor_distance={cfg.min_anchor_distance}"
        )
    refs, members, dists, anchors = (np.stack([w[i] for w in words]) for i in range(4))
    return VisualWords(refs.astype(np.int64), members.astype(np.int64), dists, anchors.astype(np.int64))


def validation_words(words: VisualWords, embeddings: np.ndarray, val_embeddings: np.ndarray,
                     cfg: SelfDiscoveryConfig) -> VisualWords:
    """The same classes and anchors with, as members, the ``val_instances_per_class`` validation patients nearest
    to each training reference (official: 30, cut at the exact scale only: ``levels=[0]``)."""
    ref_emb = np.asarray(embeddings)[words.references]
    idx, dist = nearest_patients(ref_emb, val_embeddings, cfg.val_instances_per_class)
    return dataclasses.replace(words, members=idx.astype(np.int64), distances=dist)
