"""Per-embolus FROC with the CAD-PE hit rule (``reference/dira_caid_transfer_alice_cadpe.md`` §5.3-5.4).

Markers are detection points with a confidence, one table for all scans: ``scan, x, y, z, confidence`` with
``x, y, z`` **voxel** coordinates in the reference volume's ``(X, Y, Z)`` axis order (the challenge's ``Scan X Y Z
Confidence`` lines; ``data.cad_pe`` keeps volumes in that order). The reference of a scan is its labelled volume
(0 background, one integer per embolus).

Hit rule (the challenge's): a marker is placed at the nearest voxel (halves round up) and hits the embolus whose label
is there; with ``tolerance_mm > 0`` a marker on background (or outside the volume) hits instead the embolus with the
nearest voxel centre within ``tolerance_mm`` (Euclidean, in mm through the scan's spacing; equal distances go to the
lower label); ``tolerance_mm = 0`` is the official rule. Per embolus only its highest-confidence marker counts
(``role`` ``"hit"``; among equal confidences the first in input order); its other markers are ``"duplicate"`` and
are neither true nor false positives at any threshold; every marker hitting no embolus is a ``"fp"``.

Sweep: the thresholds are the distinct confidences of hits and false positives, in descending order, after a first
point at ``+inf`` (nothing detected). At threshold ``t`` the markers with ``confidence >= t`` are kept (tied scores
enter together): ``tp(t)`` = emboli whose best marker is kept, ``fp(t)`` = false-positive markers kept;
sensitivity = ``tp / E`` with ``E`` every embolus of every reference scan, ``fp_per_scan = fp / N`` with ``N`` every
reference scan (scans without emboli or without markers included), ``ppv = tp / (tp + fp)``.

Sensitivity at ``k`` FP/scan (``sensitivity_at``): rule ``"step"`` (default; the recipe of §5.4, the fact sheet gives
no challenge-specific interpolation) takes the highest sensitivity among the curve points with ``fp_per_scan <= k``
(AANet uses ``< k``; the challenge's headline operating points are "at 1 / 2 FP/scan"); rule ``"linear"``
interpolates linearly in ``fp_per_scan`` between the upper envelope of the points (the best sensitivity at each
distinct FP rate). Beyond the last point both hold the last sensitivity. The core is numpy/pandas only (no plots).

The tolerance differs from the cvn port (``CorentinBrtx/cvn-pulmonary-embolism``), which converts epsilon to voxels
with the mean voxel size; here each axis uses its own spacing. AANet's dilate-and-relabel tolerance (which can merge
emboli) is not reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eden_lib.data.luna16 import gather_cubes

MARKER_COLUMNS = ("scan", "x", "y", "z", "confidence")
RULES = ("step", "linear")
DEFAULT_FP_RATES = (1.0, 2.0, 4.0)


def read_markers(path: Path | str) -> pd.DataFrame:
    """Read a CAD-PE submission (``Scan X Y Z Confidence`` per line, whitespace or comma separated, optional header
    line starting with ``Scan``) into ``MARKER_COLUMNS``; scan IDs stay strings (``"001"`` keeps its zeros)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"marker file {path} does not exist")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if not fields or (not rows and fields[0].lower() == "scan"):
            continue
        if len(fields) != 5:
            raise ValueError(f"{path}: line {line_no} has {len(fields)} fields {fields}, expected 'Scan X Y Z "
                             f"Confidence'")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}: line {line_no} has {fields[1:]}, expected numbers for X Y Z "
                             f"Confidence") from None
        rows.append([fields[0], *values])
    return pd.DataFrame(rows, columns=list(MARKER_COLUMNS)).astype({"scan": str})


def _check_markers(markers: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in MARKER_COLUMNS if c not in markers.columns]
    if missing:
        raise ValueError(f"markers: missing column(s) {missing}; expected {list(MARKER_COLUMNS)}")
    out = markers[list(MARKER_COLUMNS)].reset_index(drop=True).astype({"scan": str})
    values = out[["x", "y", "z", "confidence"]].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy()).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"markers: row {k} (scan {out['scan'].iloc[k]}) has {markers.iloc[k].to_dict()}, expected "
                         f"finite x, y, z, confidence")
    out[["x", "y", "z", "confidence"]] = values
    return out


def _check_reference(scan: str, volume) -> np.ndarray:
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"reference of scan {scan}: expected an (X, Y, Z) volume, got shape {v.shape}")
    if v.dtype.kind not in "iub" and not (v.dtype.kind == "f" and np.array_equal(v, np.round(v))):
        raise ValueError(f"reference of scan {scan}: expected integer labels, got {v.dtype} with fractions")
    if v.size and v.min() < 0:
        raise ValueError(f"reference of scan {scan}: negative label {v.min()}; expected 0 and one label per embolus")
    return v


def _labels_at(volume: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Label under each integer voxel ``(M, 3)``; 0 outside the volume."""
    inside = ((voxels >= 0) & (voxels < np.array(volume.shape))).all(axis=1)
    out = np.zeros(len(voxels), np.int64)
    v = voxels[inside]
    out[inside] = volume[v[:, 0], v[:, 1], v[:, 2]]
    return out


def _nearest_within(volume: np.ndarray, voxels: np.ndarray, spacing: np.ndarray, tolerance_mm: float,
                    budget: int = 1 << 22) -> np.ndarray:
    """Label of the nearest embolus voxel within ``tolerance_mm`` of each voxel ``(M, 3)`` (0 when none), from the
    cubes of radius ``tolerance / spacing`` gathered around all markers at once (in chunks of ``budget`` voxels)."""
    radius = np.floor(tolerance_mm / spacing + 1e-9).astype(np.int64)
    size = tuple(int(s) for s in 2 * radius + 1)
    axes = [(np.arange(s) - s // 2) * sp for s, sp in zip(size, spacing)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    ball = d2 <= tolerance_mm ** 2 * (1 + 1e-9)
    out = np.zeros(len(voxels), np.int64)
    step = max(1, budget // int(np.prod(size)))
    for start in range(0, len(voxels), step):
        cubes = gather_cubes(volume, voxels[start:start + step], size, 0).astype(np.int64)
        near = (cubes > 0) & ball
        dist = np.where(near, d2, np.inf).reshape(len(cubes), -1)
        dmin = dist.min(axis=1)
        nearest = near.reshape(len(cubes), -1) & (dist == dmin[:, None])
        label = np.where(nearest, cubes.reshape(len(cubes), -1), np.iinfo(np.int64).max).min(axis=1)
        out[start:start + step] = np.where(np.isfinite(dmin), label, 0)
    return out


@dataclass
class FROCMatch:
    """Markers matched to emboli.

    Attributes:
        markers: the input markers (``MARKER_COLUMNS``, input order) plus ``embolus`` (label hit, 0 none) and
            ``role`` (``"hit"``, ``"duplicate"`` or ``"fp"``).
        emboli: one row per embolus of every reference scan: ``scan, embolus, n_voxels, confidence`` (of its
            counting marker; NaN when missed) and ``marker`` (that marker's row in ``markers``; -1 when missed).
        n_scans: the number of reference scans.
    """

    markers: pd.DataFrame
    emboli: pd.DataFrame
    n_scans: int


def match_markers(markers: pd.DataFrame, references: Mapping[str, np.ndarray],
                  spacings: Mapping[str, Sequence[float]] | None = None, tolerance_mm: float = 0.0) -> FROCMatch:
    """Apply the hit rule scan by scan (each reference is read once, so a lazy mapping keeps one in memory).

    Args:
        markers: ``MARKER_COLUMNS`` (voxel ``x, y, z`` in the reference's axis order).
        references: ``{scan: labelled volume (X, Y, Z)}``, every evaluated scan (with or without emboli).
        spacings: ``{scan: (3,) mm along X, Y, Z}``; needed when ``tolerance_mm > 0``.
        tolerance_mm: 0 for the official rule.
    """
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm={tolerance_mm}: expected >= 0")
    if not len(references):
        raise ValueError("match_markers: no reference scans")
    m = _check_markers(markers)
    keys = {str(k): k for k in references}
    unknown = sorted(set(m["scan"]) - set(keys))
    if unknown:
        raise ValueError(f"markers: scan {unknown[0]!r} ({len(unknown)} unknown in all) has no reference; reference "
                         f"scans are e.g. {sorted(keys)[:3]} (scan IDs are compared as strings: keep leading zeros)")
    if tolerance_mm > 0:
        lacking = sorted(set(keys) - {str(k) for k in (spacings or {})})
        if lacking:
            raise ValueError(f"tolerance_mm={tolerance_mm} needs the spacing of every scan; none for {lacking[0]!r}")
        spacing_of = {str(k): np.asarray(v, dtype=float) for k, v in spacings.items()}
    voxels = np.floor(m[["x", "y", "z"]].to_numpy() + 0.5).astype(np.int64)
    embolus = np.zeros(len(m), np.int64)
    scans = m["scan"].to_numpy()
    tables = []
    for scan, key in keys.items():
        volume = _check_reference(scan, references[key])
        labels, counts = np.unique(volume[volume > 0], return_counts=True)
        tables.append(pd.DataFrame({"scan": scan, "embolus": labels.astype(np.int64), "n_voxels": counts}))
        rows = np.flatnonzero(scans == scan)
        if not len(rows):
            continue
        hit = _labels_at(volume, voxels[rows])
        if tolerance_mm > 0 and (hit == 0).any():
            if spacing_of[scan].shape != (3,) or (spacing_of[scan] <= 0).any():
                raise ValueError(f"spacing of scan {scan}: {spacing_of[scan].tolist()}, expected 3 positive numbers")
            miss = hit == 0
            hit[miss] = _nearest_within(volume, voxels[rows][miss], spacing_of[scan], tolerance_mm)
        embolus[rows] = hit
    m["embolus"] = embolus
    m["role"] = np.where(embolus > 0, "duplicate", "fp")
    best = (m[embolus > 0].sort_values("confidence", ascending=False, kind="stable")
            .drop_duplicates(["scan", "embolus"]))
    m.loc[best.index, "role"] = "hit"
    emboli = pd.concat(tables, ignore_index=True)
    found = pd.DataFrame({"scan": best["scan"], "embolus": best["embolus"], "confidence": best["confidence"],
                          "marker": best.index.to_numpy(np.int64)})
    emboli = emboli.merge(found, on=["scan", "embolus"], how="left")
    emboli["marker"] = emboli["marker"].fillna(-1).astype(np.int64)
    return FROCMatch(markers=m, emboli=emboli, n_scans=len(keys))


def froc_curve(match: FROCMatch) -> pd.DataFrame:
    """The FROC points: ``threshold, tp, fp, sensitivity, fp_per_scan, ppv``, thresholds descending from ``+inf``
    (sensitivity NaN when there are no emboli, ppv NaN with nothing kept)."""
    hits = np.sort(match.emboli["confidence"].dropna().to_numpy(float))
    fps = np.sort(match.markers.loc[match.markers["role"] == "fp", "confidence"].to_numpy(float))
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([hits, fps]))[::-1]])
    tp = len(hits) - np.searchsorted(hits, thresholds, side="left")
    fp = len(fps) - np.searchsorted(fps, thresholds, side="left")
    n_emboli = len(match.emboli)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = tp / n_emboli if n_emboli else np.full(len(tp), np.nan)
        ppv = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
    return pd.DataFrame({"threshold": thresholds, "tp": tp, "fp": fp, "sensitivity": sensitivity,
                         "fp_per_scan": fp / match.n_scans, "ppv": ppv})


def sensitivity_at(curve: pd.DataFrame, fp_per_scan: Sequence[float] = DEFAULT_FP_RATES,
                   rule: str = "step") -> pd.Series:
    """Sensitivity at each FP/scan rate (index), by ``rule`` ``"step"`` or ``"linear"`` (module docstring); the
    mean of the result is the usual "FROC score"."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}, expected one of {list(RULES)}")
    rates = np.asarray(fp_per_scan, dtype=float)
    if (rates < 0).any():
        raise ValueError(f"fp_per_scan={list(fp_per_scan)}: expected rates >= 0")
    x = curve["fp_per_scan"].to_numpy(float)
    y = curve["sensitivity"].to_numpy(float)
    if rule == "step":
        values = y[np.searchsorted(x, rates * (1 + 1e-12), side="right") - 1]
    else:
        distinct, last = np.unique(x[::-1], return_index=True)  # last point of each FP rate = its best sensitivity
        values = np.interp(rates, distinct, y[::-1][last])
    return pd.Series(values, index=pd.Index(rates, name="fp_per_scan"), name="sensitivity")


def froc(markers: pd.DataFrame, references: Mapping[str, np.ndarray],
         spacings: Mapping[str, Sequence[float]] | None = None, tolerance_mm: float = 0.0,
         fp_per_scan: Sequence[float] = DEFAULT_FP_RATES, rule: str = "step") -> tuple[pd.DataFrame, pd.Series]:
    """``match_markers`` then ``froc_curve`` and ``sensitivity_at``: returns ``(curve, sensitivities)``."""
    curve = froc_curve(match_markers(markers, references, spacings, tolerance_mm))
    return curve, sensitivity_at(curve, fp_per_scan, rule)
