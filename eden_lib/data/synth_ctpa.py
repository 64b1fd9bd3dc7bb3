"""SynthCTPA: seeded synthetic CT pulmonary angiograms with pulmonary emboli, written in the CAD-PE layout
(STUDY.md §6, §7; ``reference/dira_caid_transfer_alice_cadpe.md`` §5.1; ``reference/dataset_formats.md``, CAD-PE).

Each scan is a contrast-enhanced SynthCT scan (``synth_ct.synth_ct_scan`` with ``ctpa=True``: body, lungs, heart,
bones, airways and the recursive pulmonary artery and vein trees), rendered on a whole-thorax grid at the scan's
spacing and cropped to ``shape`` around the hila (a targeted reconstruction: the central and lobar arteries, where a
2.5 mm grid still resolves an embolus), whose arteries are re-filled with a per-scan contrast level (bolus timing)
and which receives a seeded number of emboli. An embolus is a filling defect: a capsule
along a pulmonary artery segment of at least ``min_vessel_radius_mm`` (elongated along the vessel), either
occlusive (it fills the lumen) or partial (thinner, off the axis, contrast flows past it), intersected with the
contrast-filled lumen. Intensities are composited, so the scan's blur and noise stay: an artery voxel of occupancy
``a`` moves by ``a * (contrast - 360)`` HU, an embolus voxel of occupancy ``e`` by ``e * (embolus_hu - contrast)``.
Partial-volume edges of the vessels take every value between lung and contrast, so emboli are not trivially told
apart from vessel walls (STUDY.md §6.1).

The reference standard is the CAD-PE one: an integer label map, one label (1..n) per embolus, 0 elsewhere, on the
image grid; a voxel is labelled where both the embolus and the lumen occupy at least half of it. Scans are written as
``<id>.nrrd`` (int16 HU) and ``<id>RefStd.nrrd`` with the challenge's IDs: training scans ``001``, ``002``, ...,
test scans ``021``, ``022``, ... (the challenge's evaluation block), so ``data.cad_pe.CADPE(root, "train")`` and
``CADPE(root, "test")`` read them back exactly as they read the real release.

Arrays follow SimpleITK order ``(z, y, x)`` like SynthCT; ``shape`` and ``spacing`` are ``(x, y, z)``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from eden_lib.data.synth_ct import BLOOD, MIN_FOV_MM, SynthCTConfig, _Frame, _tubes, synth_ct_scan
from eden_lib.seed import rng as make_rng

MAX_PER_SPLIT = 20  # the challenge blocks: 001-020 training, 021-040 evaluation
TEST_OFFSET = 20
EMBOLUS_KINDS = ("occlusive", "partial")
MIN_EMBOLUS_VOXELS = 3
PLACEMENT_TRIES = 50
SHOWN_HU = -300.0  # a voxel at least half filled by contrast shows above this; airway lumen (-1000) does not


@dataclass(frozen=True)
class SynthCTPAConfig:
    """What to generate.

    Args:
        n_train, n_test: scans with the challenge's training IDs (``001``...) and test IDs (``021``...), each <= 20.
        shape: written grid ``(x, y, z)`` in voxels, cropped around the hila from a whole-thorax render
            (``synth_ct.MIN_FOV_MM``) at ``spacing``, the voxel size ``(x, y, z)`` in mm.
        emboli_per_scan: inclusive ``(min, max)`` emboli in a scan with PE.
        pe_free_fraction: probability that a scan has no embolus (two of the 91 CAD-PE scans have none).
        embolus_hu: ``(min, max)`` HU of the clot (acute emboli: about 30-80 HU).
        contrast_hu: ``(min, max)`` HU of the opacified arteries, one level per scan.
        embolus_length_mm: ``(min, max)`` length along the vessel (without the rounded ends).
        occlusive_fraction: share of occlusive emboli (the rest are partial filling defects).
        min_vessel_radius_mm: emboli sit in artery segments at least this wide (visible at the spacing).
    """

    n_train: int = 12
    n_test: int = 6
    shape: tuple[int, int, int] = (64, 64, 40)
    spacing: tuple[float, float, float] = (2.5, 2.5, 3.0)
    emboli_per_scan: tuple[int, int] = (1, 4)
    pe_free_fraction: float = 0.15
    embolus_hu: tuple[float, float] = (30.0, 80.0)
    contrast_hu: tuple[float, float] = (250.0, 400.0)
    embolus_length_mm: tuple[float, float] = (10.0, 25.0)
    occlusive_fraction: float = 0.4
    min_vessel_radius_mm: float = 4.0

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"SynthCTPAConfig.{key}={getattr(self, key)!r}: expected {expected}")

        for key in ("n_train", "n_test"):
            v = getattr(self, key)
            if not isinstance(v, int) or not 1 <= v <= MAX_PER_SPLIT:
                raise bad(key, f"an integer in [1, {MAX_PER_SPLIT}] (the challenge's ID blocks)")
        lo, hi = self.emboli_per_scan
        if not 1 <= lo <= hi:
            raise bad("emboli_per_scan", "an inclusive range (min, max) with 1 <= min <= max (PE-free scans: "
                      "pe_free_fraction)")
        if not 0.0 <= self.pe_free_fraction < 1.0:
            raise bad("pe_free_fraction", "a probability in [0, 1)")
        for key in ("embolus_hu", "contrast_hu", "embolus_length_mm"):
            a, b = getattr(self, key)
            if not a <= b:
                raise bad(key, "a range (min, max) with min <= max")
        if not self.embolus_hu[1] < self.contrast_hu[0]:
            raise bad("embolus_hu", f"clot darker than the contrast (max below contrast_hu min {self.contrast_hu[0]})")
        if self.embolus_length_mm[0] <= 0:
            raise bad("embolus_length_mm", "positive lengths in mm")
        if not 0.0 <= self.occlusive_fraction <= 1.0:
            raise bad("occlusive_fraction", "a fraction in [0, 1]")
        if self.min_vessel_radius_mm <= 0:
            raise bad("min_vessel_radius_mm", "a positive radius in mm")
        if len(self.shape) != 3 or any(not isinstance(v, int) or v < 8 for v in self.shape):
            raise bad("shape", "three integers >= 8, (x, y, z)")
        if len(self.spacing) != 3 or any(v <= 0 for v in self.spacing):
            raise bad("spacing", "three positive voxel sizes in mm, (x, y, z)")

    def anatomy(self) -> SynthCTConfig:
        """The SynthCT configuration of the whole-thorax render (at least ``MIN_FOV_MM``, at least ``shape``; no
        LUNA16 candidates)."""
        render = np.maximum(self.shape, np.ceil(np.divide(MIN_FOV_MM, self.spacing))).astype(int)
        return SynthCTConfig(n_scans=1, shape=tuple(int(v) for v in render), spacing=tuple(self.spacing),
                             nodules_per_scan=(0, 2), negatives_per_scan=0, ctpa=True)

    def scan_ids(self) -> list[str]:
        """``001``... for the training scans, then ``021``... for the test scans."""
        return ([f"{i + 1:03d}" for i in range(self.n_train)]
                + [f"{TEST_OFFSET + i + 1:03d}" for i in range(self.n_test)])


@dataclass
class SynthCTPAScan:
    """One synthetic CTPA.

    Attributes:
        scan_id: CAD-PE style ID (``"001"``, ``"021"``).
        hu: ``(z, y, x)`` int16 HU.
        emboli: ``(z, y, x)`` int16 label map, one label per embolus (1..n), 0 elsewhere.
        lumen: ``(z, y, x)`` bool, voxels at least half filled by a pulmonary artery of the tree (contrast lumen).
        origin, spacing: ``(3,)`` mm, ``(x, y, z)``; direction: ``(3, 3)``.
        contrast_hu: this scan's arterial contrast level.
        table: one row per embolus: ``label, kind, segment_radius_mm, depth, embolus_hu, n_voxels``.
    """

    scan_id: str
    hu: np.ndarray
    emboli: np.ndarray
    lumen: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    contrast_hu: float
    table: pd.DataFrame = field(repr=False)


def _world_frame(shape_xyz, spacing, origin, direction) -> _Frame:
    """A SynthCT frame whose patient coordinates are the world coordinates (no yaw, shift cancelling the centre),
    so ``_tubes`` renders the world-mm vessel table of a scan."""
    a = np.asarray(direction, float) @ np.diag(np.asarray(spacing, float))
    centre = (np.asarray(shape_xyz) - 1) / 2.0
    return _Frame(tuple(shape_xyz), spacing, origin, direction, yaw=0.0, shift=-np.asarray(origin) - a @ centre)


def synth_ctpa_scan(cfg: SynthCTPAConfig, seed: int, index: int) -> SynthCTPAScan:
    """Scan ``index`` of the set ``(cfg, seed)`` (0-based over training then test IDs); independent of the others.

    The anatomy is SynthCT scan ``index`` of a seed derived from ``seed`` (not the LUNA16-layout scans of the same
    study seed, which pretraining sees); emboli come from their own random stream. Vessels and emboli are rendered
    on the cropped grid only; an embolus must lie inside it, clear of the border.
    """
    anatomy_seed = int(make_rng(seed, "ctpa_anatomy").integers(2**31))
    ct = synth_ct_scan(cfg.anatomy(), anatomy_seed, index)
    g = make_rng(seed, "ctpa_emboli", index)
    v = ct.vessels
    a = ct.direction @ np.diag(ct.spacing)  # world = origin + a @ voxel (x, y, z)
    full = np.array(ct.hu.shape[::-1])
    hila = v.loc[(v["kind"] == "artery") & (v["depth"] == 0), ["x0", "y0", "z0"]].to_numpy().mean(0)
    centre = np.linalg.solve(a, hila - ct.origin)
    start = np.clip(np.rint(centre - np.array(cfg.shape) / 2).astype(int), 0, full - cfg.shape)
    origin = ct.origin + a @ start
    crop = tuple(slice(s0, s0 + n) for s0, n in zip(start[::-1], cfg.shape[::-1]))
    frame = _world_frame(cfg.shape, ct.spacing, origin, ct.direction)
    w = float(np.min(ct.spacing))  # partial-volume width, mm (as SynthCT)
    ends = {k: (v.loc[v["kind"] == k, ["x0", "y0", "z0"]].to_numpy(), v.loc[v["kind"] == k, ["x1", "y1", "z1"]].to_numpy(),
                v.loc[v["kind"] == k, "radius_mm"].to_numpy()) for k in ("artery", "vein")}
    hu = ct.hu[crop].astype(np.float32)
    # arterial blood per voxel: the artery tubes less what SynthCT painted over them (veins; airways: below -300 HU)
    blood = _tubes(frame, *ends["artery"], w) * (1.0 - _tubes(frame, *ends["vein"], w)) * (hu >= SHOWN_HU)
    contrast = float(g.uniform(*cfg.contrast_hu))
    hu += blood * (contrast - BLOOD["artery"][1])
    border = np.ones(hu.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False

    arteries = v[(v["kind"] == "artery") & (v["radius_mm"] >= cfg.min_vessel_radius_mm)].reset_index(drop=True)
    if arteries.empty:
        raise ValueError(f"SynthCTPA scan {index}: no artery segment with radius >= min_vessel_radius_mm="
                         f"{cfg.min_vessel_radius_mm} (widest {v['radius_mm'].max():.1f} mm)")
    n = 0 if g.uniform() < cfg.pe_free_fraction else int(g.integers(cfg.emboli_per_scan[0],
                                                                     cfg.emboli_per_scan[1] + 1))
    emboli = np.zeros(hu.shape, np.int16)
    rows = []
    for label in range(1, n + 1):
        for _ in range(PLACEMENT_TRIES):
            seg = arteries.iloc[int(g.integers(len(arteries)))]
            occ, kind = _embolus(g, frame, seg, cfg, w)
            e = np.minimum(occ, blood)
            mask = e >= 0.5
            clear = not (mask & border).any() and not (ndimage.binary_dilation(mask) & (emboli > 0)).any()
            if mask.sum() >= MIN_EMBOLUS_VOXELS and clear:
                break
        else:
            raise RuntimeError(f"SynthCTPA scan {index}: could not place embolus {label} of {n} apart from the others "
                               f"in {PLACEMENT_TRIES} tries; lower emboli_per_scan or min_vessel_radius_mm")
        value = float(g.uniform(*cfg.embolus_hu))
        hu += e * (value - contrast)
        emboli[mask] = label
        rows.append({"label": label, "kind": kind, "segment_radius_mm": float(seg["radius_mm"]),
                     "depth": int(seg["depth"]), "embolus_hu": value, "n_voxels": int(mask.sum())})
    table = pd.DataFrame(rows, columns=["label", "kind", "segment_radius_mm", "depth", "embolus_hu", "n_voxels"])
    return SynthCTPAScan(cfg.scan_ids()[index], np.clip(np.rint(hu), -3024, 3071).astype(np.int16), emboli,
                         blood >= 0.5, origin, ct.spacing, ct.direction, contrast, table)


def _embolus(g: np.random.Generator, frame: _Frame, seg: pd.Series, cfg: SynthCTPAConfig,
             w: float) -> tuple[np.ndarray, str]:
    """Occupancy ``(z, y, x)`` of one embolus capsule on artery segment ``seg`` (world mm) and its kind.

    Occlusive: radius beyond the vessel's, on its axis. Partial: 45-75 % of the vessel radius, moved off the axis
    by up to the gap to the wall (central "polo mint" to mural defects). Centred at 20-80 % of the segment.
    """
    p0, p1 = seg[["x0", "y0", "z0"]].to_numpy(float), seg[["x1", "y1", "z1"]].to_numpy(float)
    d = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-9)
    r = float(seg["radius_mm"])
    centre = p0 + g.uniform(0.2, 0.8) * (p1 - p0)
    half = 0.5 * g.uniform(*cfg.embolus_length_mm)
    if g.uniform() < cfg.occlusive_fraction:
        kind, radius, offset = "occlusive", r + w, np.zeros(3)
    else:
        kind, radius = "partial", r * g.uniform(0.45, 0.75)
        u = np.cross(d, g.normal(size=3))
        offset = u / max(np.linalg.norm(u), 1e-9) * (r - radius) * g.uniform(0.0, 1.0)
    a, b = centre + offset - half * d, centre + offset + half * d
    return _tubes(frame, a[None], b[None], np.array([radius]), w), kind


def generate_synth_ctpa(cfg: SynthCTPAConfig, seed: int) -> list[SynthCTPAScan]:
    """Every scan of ``cfg`` (training then test), deterministic in ``seed``."""
    return [synth_ctpa_scan(cfg, seed, i) for i in range(cfg.n_train + cfg.n_test)]


def write_cad_pe(scans: list[SynthCTPAScan], root: Path | str) -> Path:
    """Write ``<id>.nrrd`` (int16 HU) and ``<id>RefStd.nrrd`` (int16 labels) per scan into ``root``, which is
    emptied first (a folder left from a larger set would add its scans to the loader's). Geometry (spacing, origin,
    direction) goes into the NRRD headers; the data is gzip-compressed."""
    import SimpleITK as sitk

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for scan in scans:
        for name, array in ((scan.scan_id, scan.hu), (f"{scan.scan_id}RefStd", scan.emboli)):
            image = sitk.GetImageFromArray(np.ascontiguousarray(array))
            image.SetSpacing(tuple(float(s) for s in scan.spacing))
            image.SetOrigin(tuple(float(o) for o in scan.origin))
            image.SetDirection(tuple(float(c) for c in np.asarray(scan.direction).ravel()))
            sitk.WriteImage(image, str(root / f"{name}.nrrd"), useCompression=True)
    return root
