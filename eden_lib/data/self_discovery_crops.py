"""Visual-word crops: the same coordinates cut from every member of a class, at every scale (TransVW self-discovery).

Haghighi et al., TransVW (IEEE TMI 2021) / Semantic Genesis (MICCAI 2020), ``pattern_generator_3D.py``
(``reference/genesis_family.md`` §3.2). A class ``c`` has an anchor (the corner of the base crop, ``crop_size``) and
K member patients. Scale level ``l`` with in-plane zoom range ``(lo, hi)`` cuts, from each member, a box whose side on
the first (in-plane) axis is a uniform integer in ``[round(lo * c0), round(hi * c0) - 1]`` (one draw per crop; the
second in-plane axis keeps the crop's aspect ratio; the third axis of a 3D crop is never zoomed), centred on the base
crop and shifted in-plane by a uniform integer in ``[-m, m - 1]``, ``m = round(max_shift * c)`` (no shift at the
exact level ``(1, 1)``). Official defaults ``((1, 1), (50/64, 80/64), (50/64, 80/64))`` and shift 10/64 give the exact
64x64x32 crop plus two in-plane zooms of sides 50..79 with offsets -10..9. Each box is resized to ``out_size`` by
separable linear interpolation, the same numbers as ``F.interpolate(box, out_size, mode="(bi|tri)linear",
align_corners=False)`` of the box alone, so exact-size boxes are copied bit for bit.

Deviations (deliberate): zoomed boxes are centred on the base crop (the official code grows them from its corner),
and the anchor range keeps every box of every level inside the volume (the official 100-voxel borders did that
implicitly). Spatial axes are (x, y, z) for CT and (row, col) for radiographs; 2D and 3D share every function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eden_lib.seed import rng as make_rng

if TYPE_CHECKING:
    from eden_lib.data.self_discovery import SelfDiscoveryConfig, VisualWords


def as_unit(volume: Any, index: int, spatial_dims: int) -> np.ndarray:
    """One scan or render as float32 in [0, 1]: uint8 is divided by 255, floats must already lie in [0, 1]."""
    v = np.asarray(volume)
    if v.ndim != spatial_dims:
        raise ValueError(f"volume {index} has shape {v.shape}: expected {spatial_dims} spatial axes, no channel axis")
    if v.dtype == np.uint8:
        return v.astype(np.float32) / np.float32(255.0)
    v = v.astype(np.float32, copy=False)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"volume {index} has values in [{lo}, {hi}]: expected [0, 1] (e.g. subvolumes.hu_to_unit) "
                         "or uint8")
    return v


def _size_range(lo: float, hi: float, side: int) -> tuple[int, int]:
    """Inclusive integer range of the zoomed side for zoom range ``(lo, hi)`` (``hi`` exclusive, as official)."""
    s_lo, s_hi = int(round(lo * side)), int(round(hi * side))
    return max(s_lo, 1), max(s_lo, s_hi - 1, 1)


def _shift_bound(cfg: SelfDiscoveryConfig, level: int) -> np.ndarray:
    """In-plane shift bound ``m`` (2,) of a level: shifts lie in [-m, m - 1]; 0 at the exact level (1, 1)."""
    if tuple(cfg.scales[level]) == (1.0, 1.0):
        return np.zeros(2, dtype=np.int64)
    return np.rint(cfg.max_shift * np.asarray(cfg.crop_size[:2])).astype(np.int64)


def box_extent(cfg: SelfDiscoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(offset_min, extent_max)``, each ``(d,)``: every box of every level lies in [anchor + offset_min,
    anchor + extent_max) on each axis (the base crop included)."""
    c = np.asarray(cfg.crop_size, dtype=np.int64)
    off, ext = np.zeros_like(c), c.copy()
    for level, (lo, hi) in enumerate(cfg.scales):
        smax0 = _size_range(lo, hi, int(c[0]))[1]
        smax = np.array([smax0, round(smax0 * c[1] / c[0])])
        m = _shift_bound(cfg, level)
        centre = (c[:2] - smax) // 2  # offset and offset + size are both extreme at the largest size
        off[:2] = np.minimum(off[:2], centre - m)
        ext[:2] = np.maximum(ext[:2], centre + smax + np.maximum(m - 1, 0))
    return off, ext


def visual_word_boxes(anchors: np.ndarray, n_members: int,
                      cfg: SelfDiscoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every crop's box, ``starts`` and ``sizes`` int64 ``(C, L, K, d)``, for C anchors ``(C, d)``, L levels, K members.

    Seeded by ``cfg.seed`` alone: the same anchors always give the same boxes.
    """
    a = np.asarray(anchors, dtype=np.int64)
    c = np.asarray(cfg.crop_size, dtype=np.int64)
    n_c, n_l, d = len(a), len(cfg.scales), cfg.spatial_dims
    g = make_rng(cfg.seed, "self_discovery", "boxes")
    sizes = np.broadcast_to(c, (n_c, n_l, n_members, d)).copy()
    offsets = np.zeros_like(sizes)
    for level, (lo, hi) in enumerate(cfg.scales):  # a few levels; each vectorised over all crops
        s_lo, s_hi = _size_range(lo, hi, int(c[0]))
        s0 = g.integers(s_lo, s_hi + 1, size=(n_c, n_members))
        m = _shift_bound(cfg, level)
        shift = g.integers(-m, np.maximum(m, 1), size=(n_c, n_members, 2))
        sizes[:, level, :, 0], sizes[:, level, :, 1] = s0, np.rint(s0 * c[1] / c[0])
        offsets[:, level, :, :2] = (c[:2] - sizes[:, level, :, :2]) // 2 + shift
    return a[:, None, None, :] + offsets, sizes


def _interp_matrix(offset: np.ndarray, size: np.ndarray, width: int, out: int) -> torch.Tensor:
    """Linear-resize weights ``(m, out, width)``: box ``[offset, offset + size)`` of a ``width`` window -> ``out``
    samples at ``(o + 0.5) * size / out - 0.5`` (clamped to the box), as ``F.interpolate(align_corners=False)``."""
    src = (np.arange(out)[None] + 0.5) * (size[:, None] / out) - 0.5
    src = np.clip(src, 0.0, (size - 1)[:, None].astype(np.float64))
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, (size - 1)[:, None])
    lam = (src - i0)[..., None]
    cols = np.arange(width)
    w = (1 - lam) * (cols == (offset[:, None] + i0)[..., None]) + lam * (cols == (offset[:, None] + i1)[..., None])
    return torch.from_numpy(w.astype(np.float32))


def resample_boxes(volume01: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                   out_size: Sequence[int]) -> torch.Tensor:
    """Boxes ``starts``/``sizes`` ``(m, d)`` of one volume ``(*S)`` in [0, 1], each resized: ``(m, *out_size)`` float32.

    One gather of a common window per box, then one batched contraction per axis (no loop over boxes).
    """
    shape = np.asarray(volume01.shape)
    d = len(shape)
    if len(starts) == 0:
        return torch.empty(0, *out_size)
    outside = np.any(starts < 0, axis=1) | np.any(starts + sizes > shape, axis=1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"box start {starts[i].tolist()} size {sizes[i].tolist()} leaves the volume of shape "
                         f"{tuple(shape)}: anchors must come from discover_visual_words with volumes of this size")
    width = sizes.max(axis=0)
    w_start = np.minimum(starts, shape - width)  # the window fits; the box sits inside it
    windows = np.lib.stride_tricks.sliding_window_view(volume01, tuple(width))[tuple(w_start.T)]
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    axes = "abc"[:d]
    for axis in range(d):  # e.g. axis 0 in 3D: "mabc,mza->mzbc"
        w = _interp_matrix(starts[:, axis] - w_start[:, axis], sizes[:, axis], int(width[axis]), int(out_size[axis]))
        x = torch.einsum(f"m{axes},mz{axes[axis]}->m{axes.replace(axes[axis], 'z')}", x, w)
    return x


def extract_visual_word_crops(
    volumes: Sequence[Any] | np.ndarray, words: VisualWords, cfg: SelfDiscoveryConfig,
    levels: Sequence[int] | None = None, dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Crops of every class, member and scale level, resized to the training size.

    Args:
        volumes: N scans ``(X, Y, Z)`` or renders ``(H, W)``, float in [0, 1] or uint8 (an ``(N, *S)`` array, a
            memory map or a list; shapes may differ); ``words.members`` index into it.
        words: from ``discover_visual_words`` (or ``validation_words`` with the validation volumes).
        cfg: the configuration the words were discovered with.
        levels: scale levels to cut (default all; the official validation set uses ``[0]``).
        dtype: output dtype (float16 halves the memory; official float64 was about 1 MiB per 64x64x32 cube).

    Returns:
        ``crops`` ``(M, 1, *out_size)``, ``labels`` int64 ``(M,)`` (class index: the pseudo-label) and ``meta``:
        ``patient``, ``label``, ``level``, ``rank`` (0 = the reference) ``(M,)`` and ``start``, ``size`` ``(M, d)``
        (the box in voxels). Order: class-major, then level, then member rank; M = C * len(levels) * K.
    """
    n_c, n_k = words.members.shape
    lv = np.arange(len(cfg.scales)) if levels is None else np.asarray(levels, dtype=np.int64).reshape(-1)
    if lv.size == 0 or lv.min() < 0 or lv.max() >= len(cfg.scales) or len(set(lv.tolist())) != lv.size:
        raise ValueError(f"levels={levels!r}: expected distinct indices into the {len(cfg.scales)} scales")
    if words.members.size and words.members.max() >= len(volumes):
        raise ValueError(f"words reference patient {int(words.members.max())} but only {len(volumes)} volumes "
                         "were given: pass the volumes the words were discovered on")
    starts, sizes = visual_word_boxes(words.anchors, n_k, cfg)
    grid = np.meshgrid(np.arange(n_c), lv, np.arange(n_k), indexing="ij")
    meta = {"patient": words.members[grid[0], grid[2]].ravel(), "label": grid[0].ravel(), "level": grid[1].ravel(),
            "rank": grid[2].ravel(), "start": starts[:, lv].reshape(-1, cfg.spatial_dims),
            "size": sizes[:, lv].reshape(-1, cfg.spatial_dims)}
    crops = np.empty((len(meta["label"]), 1, *cfg.out_size), dtype=dtype)
    order = np.argsort(meta["patient"], kind="stable")
    patients, first = np.unique(meta["patient"][order], return_index=True)
    for p, idx in zip(patients, np.split(order, first[1:])):  # one pass per patient, all its crops at once
        volume = as_unit(volumes[int(p)], int(p), cfg.spatial_dims)
        crops[idx, 0] = resample_boxes(volume, meta["start"][idx], meta["size"][idx], cfg.out_size).numpy()
    return crops, meta["label"].astype(np.int64), meta
