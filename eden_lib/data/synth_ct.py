"""SynthCT: seeded synthetic 3D chest CT in Hounsfield units (STUDY.md §6, §6.1).

Each scan holds a body (skin fat, muscle), left and right lungs with textured parenchyma (about -850 HU, denser
posteriorly), mediastinum with heart and aorta, spine, ribs and sternum, airways (trachea, main and lobar
bronchi), a recursively branching pulmonary artery and vein tree (contrast-enhanced when ``ctpa=True``), soft
tissue below the hemidiaphragms with a left gastric bubble, and 3-15 mm nodules (solid or sub-solid ellipsoids
with soft edges). Partial volume comes from soft-edged occupancies; then blur and noise.

Anatomy lives in patient coordinates (mm, LPS: +x patient left, +y posterior, +z superior) centred on the volume,
so the same anatomy lands correctly in world space whatever the origin and direction matrix. Arrays follow
SimpleITK order ``(z, y, x)``; ``shape``, ``spacing``, ``origin`` follow MetaImage order ``(x, y, z)``.

Candidates mimic LUNA16 ``candidates_V2.csv``: every nodule (class 1) plus negatives (class 0), most of them hard
(vessel bifurcations and vessel cross-sections, which look like nodules in a cube), the rest random lung and
tissue points, so candidate classification is far from trivial (STUDY.md §6.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from eden_lib.seed import rng as make_rng

LIDC_UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
LEFT_LUNG, RIGHT_LUNG = 3, 4  # seg-lungs-LUNA16 label values
MIN_FOV_MM = (250.0, 250.0, 200.0)
CANDIDATE_KINDS = ("nodule", "bifurcation", "vessel", "lung", "tissue")
#: Named anatomical landmarks of every scan (``SynthCTScan.landmarks``); ``_r`` / ``_l`` are patient right / left.
LANDMARKS = ("carina", "bif_pa", "heart_c", "aortic_arch", "dome_r", "dome_l", "apex_r", "apex_l", "gastric_bubble",
             "main_bronchus_r", "main_bronchus_l", "vertebra_carina")

# HU of each tissue; (non-contrast, CTPA) where contrast changes it.
HU = {
    "air": -1000.0, "fat": -100.0, "muscle": 45.0, "soft": 30.0, "liver": 60.0, "bone": 280.0,
    "cortex": 650.0, "cartilage": 120.0, "disc": 80.0, "csf": 10.0, "fov": -2000.0,
}
BLOOD = {"artery": (40.0, 360.0), "vein": (40.0, 190.0), "aorta": (40.0, 260.0), "heart": (40.0, 280.0)}


@dataclass(frozen=True)
class SynthCTConfig:
    """What to generate.

    Args:
        n_scans: number of scans.
        shape: grid ``(x, y, z)`` in voxels.
        spacing: voxel size ``(x, y, z)`` in mm; the field of view ``shape * spacing`` must hold a thorax
            (at least 250 x 250 x 200 mm).
        nodules_per_scan: inclusive ``(min, max)`` count of nodules per scan.
        nodule_diameter_mm: ``(min, max)`` nodule diameter (LUNA16 keeps nodules >= 3 mm).
        negatives_per_scan: class-0 candidates per scan.
        hard_negative_fraction: share of the negatives on vessels (half bifurcations, half cross-sections).
        ctpa: contrast-enhanced (CT pulmonary angiography) variant: bright arteries, heart and aorta.
        direction: row-major 3x3 direction (MetaImage ``TransformMatrix``), orthonormal; e.g. ``(-1, 0, 0, 0, -1,
            0, 0, 0, 1)`` for the flipped scans found in LUNA16.
        noise_hu: ``(min, max)`` of the per-scan Gaussian noise standard deviation.
    """

    n_scans: int = 8
    shape: tuple[int, int, int] = (96, 96, 64)
    spacing: tuple[float, float, float] = (3.5, 3.5, 5.0)
    nodules_per_scan: tuple[int, int] = (1, 3)
    nodule_diameter_mm: tuple[float, float] = (3.0, 15.0)
    negatives_per_scan: int = 40
    hard_negative_fraction: float = 0.75
    ctpa: bool = False
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    noise_hu: tuple[float, float] = (10.0, 25.0)

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"SynthCTConfig.{key}={getattr(self, key)!r}: expected {expected}")

        if not isinstance(self.n_scans, int) or self.n_scans < 1:
            raise bad("n_scans", "an integer >= 1")
        if len(self.shape) != 3 or any(not isinstance(s, int) or s < 8 for s in self.shape):
            raise bad("shape", "three integers >= 8, (x, y, z)")
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise bad("spacing", "three positive floats in mm, (x, y, z)")
        fov = np.multiply(self.shape, self.spacing)
        if np.any(fov < MIN_FOV_MM):
            raise bad("shape", f"a field of view shape*spacing >= {MIN_FOV_MM} mm to hold a thorax, got {tuple(fov)}")
        lo, hi = self.nodules_per_scan
        if not (0 <= lo <= hi):
            raise bad("nodules_per_scan", "an inclusive range (min, max) with 0 <= min <= max")
        dlo, dhi = self.nodule_diameter_mm
        if not (0 < dlo <= dhi <= 40):
            raise bad("nodule_diameter_mm", "a range (min, max) with 0 < min <= max <= 40 mm")
        if self.negatives_per_scan < 0:
            raise bad("negatives_per_scan", "an integer >= 0")
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise bad("hard_negative_fraction", "a fraction in [0, 1]")
        d = np.asarray(self.direction, dtype=float)
        if d.size != 9 or not np.allclose(d.reshape(3, 3) @ d.reshape(3, 3).T, np.eye(3), atol=1e-6):
            raise bad("direction", "9 numbers forming an orthonormal 3x3 matrix (row-major)")
        if not 0 <= self.noise_hu[0] <= self.noise_hu[1]:
            raise bad("noise_hu", "a range (min, max) with 0 <= min <= max")


@dataclass
class SynthCTScan:
    """One synthetic scan.

    Attributes:
        seriesuid: LIDC-like SeriesInstanceUID.
        hu: ``(z, y, x)`` int16 HU.
        origin: ``(3,)`` world position of voxel (0, 0, 0) in mm, ``(x, y, z)``.
        spacing: ``(3,)`` voxel size in mm, ``(x, y, z)``.
        direction: ``(3, 3)`` direction matrix (columns: world direction of the x, y, z voxel axes).
        lung_mask: ``(z, y, x)`` uint8, 3 left lung, 4 right lung, 0 elsewhere.
        nodule_mask: ``(z, y, x)`` uint8 instance mask, ``k`` for row ``k - 1`` of ``nodules``.
        nodules: ``coordX, coordY, coordZ`` (world mm), ``diameter_mm``.
        candidates: ``coordX, coordY, coordZ``, ``class`` (1 nodule, 0 not), ``kind`` (one of CANDIDATE_KINDS).
        vessels: pulmonary tree segments, ``x0..z1`` (world mm), ``radius_mm``, ``kind`` (artery/vein), ``depth``.
        landmarks: one row per name of ``LANDMARKS``: ``landmark``, ``coordX, coordY, coordZ`` (world mm), taken
            from the generator's own anatomy parameters (no extra random draws).
    """

    seriesuid: str
    hu: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    lung_mask: np.ndarray
    nodule_mask: np.ndarray
    nodules: pd.DataFrame
    candidates: pd.DataFrame
    vessels: pd.DataFrame = field(repr=False)
    landmarks: pd.DataFrame = field(repr=False)


class _Frame:
    """Voxel <-> patient <-> world maps of one scan. Patient coordinates are centred on the volume, yawed."""

    def __init__(self, shape_xyz: tuple[int, int, int], spacing, origin, direction, yaw: float, shift) -> None:
        c, s = np.cos(yaw), np.sin(yaw)
        self.rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        self.shape_xyz = np.asarray(shape_xyz)
        self.spacing = np.asarray(spacing, dtype=float)
        self.vox_to_world = np.asarray(direction) @ np.diag(self.spacing)  # world = origin + A @ ijk
        self.origin = np.asarray(origin, dtype=float)
        self.centre = (self.shape_xyz - 1) / 2.0
        self.shift = np.asarray(shift, dtype=float)
        self.vox_to_patient = self.rot.T @ self.vox_to_world  # p = M @ (ijk - centre) - shift
        self.patient_to_vox = np.linalg.inv(self.vox_to_patient)

    def grids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates of every voxel: three ``(z, y, x)`` float32 arrays (px, py, pz)."""
        nx, ny, nz = self.shape_xyz
        axes = [
            (np.arange(nx) - self.centre[0]).reshape(1, 1, nx),
            (np.arange(ny) - self.centre[1]).reshape(1, ny, 1),
            (np.arange(nz) - self.centre[2]).reshape(nz, 1, 1),
        ]
        m = self.vox_to_patient
        return tuple(  # type: ignore[return-value]
            (m[a, 0] * axes[0] + m[a, 1] * axes[1] + m[a, 2] * axes[2] - self.shift[a]).astype(np.float32)
            for a in range(3)
        )

    def to_voxel(self, p: np.ndarray) -> np.ndarray:
        """Patient mm ``(N, 3)`` -> continuous voxel index ``(N, 3)`` in ``(x, y, z)`` order."""
        return (np.atleast_2d(p) + self.shift) @ self.patient_to_vox.T + self.centre

    def to_world(self, p: np.ndarray) -> np.ndarray:
        """Patient mm ``(N, 3)`` -> world mm ``(N, 3)``."""
        return self.origin + (self.vox_to_world @ self.to_voxel(p).T).T


def _occupancy(inside_mm: np.ndarray, width: float) -> np.ndarray:
    """Soft partial-volume occupancy in [0, 1] from a signed distance (mm, > 0 inside)."""
    return np.clip(0.5 + inside_mm / width, 0.0, 1.0).astype(np.float32)


def _paint(hu: np.ndarray, occ: np.ndarray, value: float | np.ndarray) -> None:
    """Composite a tissue over ``hu`` in place: ``hu <- hu + occ * (value - hu)``."""
    hu += occ * (value - hu)


def _labels_at(frame: _Frame, labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Label of the voxel nearest each patient point ``(N, 3)``; 0 outside the grid."""
    ijk = np.rint(frame.to_voxel(p)).astype(int)
    inside = np.all((ijk >= 0) & (ijk < frame.shape_xyz), axis=1)
    out = np.zeros(len(ijk), dtype=labels.dtype)
    i = ijk[inside]
    out[inside] = labels[i[:, 2], i[:, 1], i[:, 0]]
    return out


def _bbox(frame: _Frame, points: np.ndarray, margin_mm: float) -> tuple[slice, slice, slice] | None:
    """``(z, y, x)`` slices of the voxels within ``margin_mm`` of the box around patient ``points``; None if empty."""
    v = frame.to_voxel(points)
    pad = margin_mm / frame.spacing + 1  # a ball of radius r spans r / spacing voxels along each axis
    lo = np.maximum(np.floor(v.min(0) - pad).astype(int), 0)
    hi = np.minimum(np.ceil(v.max(0) + pad).astype(int) + 1, frame.shape_xyz)
    if np.any(hi <= lo):
        return None
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _tubes(frame: _Frame, p0: np.ndarray, p1: np.ndarray, radius: np.ndarray, width: float,
           chunk: int = 64) -> np.ndarray:
    """Union occupancy ``(z, y, x)`` of tubes (capsules) ``p0[k] -> p1[k]`` (``(K, 3)`` patient mm), ``radius[k]``.

    Vectorised: segments are sorted by bounding-box size and rendered ``chunk`` at a time on a common box shape,
    then max-scattered into the volume.
    """
    nx, ny, nz = frame.shape_xyz
    out = np.zeros(nx * ny * nz, dtype=np.float32)
    v0, v1 = frame.to_voxel(p0), frame.to_voxel(p1)
    pad = (np.asarray(radius)[:, None] + 0.5 * width) / frame.spacing  # occupancy is 0 beyond r + width / 2
    lo = np.clip(np.floor(np.minimum(v0, v1) - pad).astype(int), 0, None)
    hi = np.minimum(np.ceil(np.maximum(v0, v1) + pad).astype(int) + 1, frame.shape_xyz)
    ext = hi - lo
    order = [k for k in np.argsort(ext.prod(1), kind="stable") if np.all(ext[k] > 0)]
    for start in range(0, len(order), chunk):
        idx = np.asarray(order[start:start + chunk])
        box = ext[idx].max(0)
        offs = np.stack(np.meshgrid(*(np.arange(b) for b in box), indexing="ij"), -1).reshape(-1, 3)
        ijk = lo[idx, None, :] + offs[None]  # (n, V, 3) voxel (x, y, z)
        keep = np.all(ijk < hi[idx, None, :], axis=-1)
        pts = ((ijk - frame.centre) @ frame.vox_to_patient.T - frame.shift).astype(np.float32)
        a, d = p0[idx, None, :].astype(np.float32), (p1 - p0)[idx, None, :].astype(np.float32)
        t = np.clip(((pts - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-9), 0.0, 1.0)
        dist = np.linalg.norm(pts - a - t[..., None] * d, axis=-1)
        occ = _occupancy(np.asarray(radius)[idx, None] - dist, width)
        flat = (ijk[..., 2] * ny + ijk[..., 1]) * nx + ijk[..., 0]
        np.maximum.at(out, flat[keep], occ[keep])
    return out.reshape(nz, ny, nx)


def _ellipsoid(grids, centre, semi_axes) -> np.ndarray:
    """Normalised ellipsoid radius (< 1 inside), axis-aligned in patient space, ``(z, y, x)``."""
    px, py, pz = grids
    return np.sqrt(((px - centre[0]) / semi_axes[0]) ** 2 + ((py - centre[1]) / semi_axes[1]) ** 2
                   + ((pz - centre[2]) / semi_axes[2]) ** 2)


def _vessel_tree(g: np.random.Generator, frame: _Frame, lung: np.ndarray, roots: np.ndarray, directions: np.ndarray,
                 radius: np.ndarray, length: np.ndarray, max_depth: int = 8, min_radius: float = 0.6,
                 tries: int = 4) -> dict[str, np.ndarray]:
    """Recursive bifurcating trees inside the lungs, grown one generation at a time for all branches at once.

    Children turn 20-45 degrees either way in a random plane, pulled slightly away from their root so the tree
    spreads out, with radius x0.72-0.86 and length x0.70-0.90 (close to Murray's law). A branch whose tip leaves
    the lung is shortened by half, and each child is aimed at the first of ``tries`` random planes whose half-length
    tip is in the lung; a branch with both tips outside is dropped.

    Args:
        roots, directions: ``(T, 3)`` patient mm start points and start directions of ``T`` trees.
        radius, length: ``(T,)`` first-branch radius and length (mm).

    Returns:
        ``p0, p1 (K, 3)``, ``radius (K,)``, ``depth (K,)``, ``tree (K,)`` per segment and ``bif (B, 3)``,
        ``bif_radius (B,)``, ``bif_tree (B,)`` per bifurcation.
    """
    p = np.asarray(roots, float)
    u = np.asarray(directions, float) / np.linalg.norm(directions, axis=1, keepdims=True)
    r, ell, tree = np.asarray(radius, float), np.asarray(length, float), np.arange(len(p))
    out: dict[str, list] = {k: [] for k in ("p0", "p1", "radius", "depth", "tree", "bif", "bif_radius", "bif_tree")}
    for depth in range(max_depth + 1):
        tips = np.stack([p + ell[:, None] * u, p + 0.5 * ell[:, None] * u], axis=1)  # (n, 2, 3)
        inside = (_labels_at(frame, lung, tips.reshape(-1, 3)) > 0).reshape(-1, 2)
        alive = inside.any(1)
        q = np.where(inside[:, :1], tips[:, 0], tips[:, 1])
        for key, val in (("p0", p), ("p1", q), ("radius", r), ("tree", tree)):
            out[key].append(val[alive])
        out["depth"].append(np.full(alive.sum(), depth))
        grow = alive & (depth < max_depth) & (r * 0.8 >= min_radius)
        if not grow.any():
            break
        q, u, r, ell, tree = q[grow], u[grow], r[grow], ell[grow], tree[grow]
        out["bif"].append(q), out["bif_radius"].append(r), out["bif_tree"].append(tree)
        m = len(q)
        away = q - np.asarray(roots, float)[tree]
        away /= np.linalg.norm(away, axis=1, keepdims=True).clip(min=1e-9)
        v = np.cross(u[:, None, None, :], g.normal(size=(m, 2, tries, 3)))
        v /= np.linalg.norm(v, axis=-1, keepdims=True).clip(min=1e-9)
        ang = np.deg2rad(g.uniform(20, 45, size=(m, 2, tries)))[..., None]
        sgn = np.array([1.0, -1.0])[None, :, None, None]
        child = np.cos(ang) * u[:, None, None] + sgn * np.sin(ang) * v + 0.3 * away[:, None, None]
        child /= np.linalg.norm(child, axis=-1, keepdims=True)
        r_c, ell_c = r[:, None] * g.uniform(0.72, 0.86, (m, 2)), ell[:, None] * g.uniform(0.70, 0.90, (m, 2))
        probe = q[:, None, None] + 0.5 * ell_c[..., None, None] * child
        ok = (_labels_at(frame, lung, probe.reshape(-1, 3)) > 0).reshape(m, 2, tries)
        child = np.take_along_axis(child, ok.argmax(-1)[..., None, None], axis=2)[:, :, 0]
        p, u = np.repeat(q, 2, axis=0), child.reshape(-1, 3)
        r, ell, tree = r_c.ravel(), ell_c.ravel(), np.repeat(tree, 2)
    return {k: np.concatenate(v) if v else np.zeros((0, 3) if k == "bif" else 0) for k, v in out.items()}


def _uid(g: np.random.Generator) -> str:
    digits = g.integers(0, 10, size=30)
    digits[0] = g.integers(1, 10)
    return LIDC_UID_PREFIX + "".join(map(str, digits))


def synth_ct_scan(cfg: SynthCTConfig, seed: int, index: int) -> SynthCTScan:
    """Generate scan ``index`` of the set ``(cfg, seed)``; scans are independent (own random stream each).

    The random draws do not depend on ``cfg.ctpa``: the CTPA variant of a scan has the same anatomy.
    """
    g = make_rng(seed, "synth_ct", index)
    uid = _uid(g)
    shape = tuple(cfg.shape)
    spacing = np.asarray(cfg.spacing, float)
    direction = np.asarray(cfg.direction, float).reshape(3, 3)
    fov = np.multiply(shape, spacing)
    origin = np.array([-fov[0] / 2 + g.uniform(-20, 20), -fov[1] / 2 + g.uniform(-20, 20), g.uniform(-420, -250)])
    frame = _Frame(shape, spacing, origin, direction, yaw=np.deg2rad(g.uniform(-5, 5)),
                   shift=(g.uniform(-8, 8), g.uniform(-8, 8), g.uniform(-10, 10)))
    grids = frame.grids()
    px, py, pz = grids
    w = float(spacing.min())  # partial-volume width, mm
    ctpa = int(cfg.ctpa)

    # ---- patient parameters (mm) ----
    a_body, b_body = g.uniform(135, 155), g.uniform(95, 112)
    fat = g.uniform(6, 22)
    a_c, b_c, y0 = a_body - fat - 14, b_body - fat - 14, g.uniform(0, 8)
    z_dome_r = g.uniform(-105, -80)
    z_dome_l = z_dome_r - g.uniform(10, 25)
    z_apex = z_dome_r + g.uniform(175, 210)
    z_carina = z_dome_r + (z_apex - z_dome_r) * g.uniform(0.5, 0.6)
    med = g.uniform(18, 26)
    y_spine = y0 + b_c - 22
    r_vert = g.uniform(14, 18)
    heart_c = np.array([g.uniform(15, 30), y0 - b_c + g.uniform(45, 55), z_dome_l + g.uniform(35, 50)])
    heart_ax = np.array([g.uniform(50, 62), g.uniform(40, 48), g.uniform(45, 55)])

    # ---- body, fat, muscle, cavity ----
    neck = np.clip(1.0 - (pz - (z_apex + 15)) / 60.0, 0.45, 1.0)  # body narrows above the apices
    rho_body = np.sqrt((px / (a_body * neck)) ** 2 + ((py - y0) / (b_body * np.sqrt(neck))) ** 2)
    hu = np.full(px.shape, HU["air"], dtype=np.float32)
    _paint(hu, _occupancy((1 - rho_body) * b_body, w), HU["fat"])
    _paint(hu, _occupancy((1 - rho_body) * b_body - fat, w), HU["muscle"])
    rho_cav = np.sqrt((px / (a_c * neck)) ** 2 + ((py - y0) / (b_c * np.sqrt(neck))) ** 2)
    _paint(hu, _occupancy((1 - rho_cav) * b_c, w), HU["soft"])

    # ---- hemidiaphragms (right higher), abdomen below, gastric bubble on the left ----
    z_top = np.where(px < 0, z_dome_r, z_dome_l)
    dome = z_top - 40 * ((np.abs(px) - 55) / 70) ** 2 - 35 * ((py - y0) / b_c) ** 2
    below = _occupancy(dome - pz, w) * _occupancy((1 - rho_cav) * b_c, w)
    _paint(hu, below, np.where(px < 0, HU["liver"], HU["soft"]).astype(np.float32))
    bubble = _ellipsoid(grids, (55, y0 - 15, z_dome_l - 28), (30, 25, 14))
    _paint(hu, _occupancy((1 - bubble) * 14, w) * below, HU["air"])

    # ---- lungs (geometry) ----
    x_l = (a_c + med) / 2
    height = np.maximum(pz - z_dome_r, 0) / (z_apex - z_dome_r)  # lungs taper in their upper third
    apex_l = np.sqrt(((np.abs(px) - x_l) / (1.25 * (a_c - med) / 2)) ** 2 + ((py - y0) / (1.2 * b_c)) ** 2
                     + height ** 4)
    heart = _ellipsoid(grids, heart_c, heart_ax)
    spine_zone = np.sqrt(px ** 2 + (py - y_spine) ** 2) - (r_vert + 10)
    inside_mm = np.minimum.reduce([
        (1 - rho_cav) * b_c - 4, (1 - apex_l) * 60, pz - dome, np.abs(px) - med, (heart - 1) * 40 - 3, spine_zone,
        np.where(py > y_spine, np.abs(px) - 30, np.inf),
    ])
    lung_occ = _occupancy(inside_mm, w)
    lung_geom = lung_occ >= 0.5
    lung = np.where(lung_geom, np.where(px > 0, LEFT_LUNG, RIGHT_LUNG), 0).astype(np.uint8)
    parenchyma = (g.uniform(-880, -830) + 45 * np.clip((py - y0 + b_c) / (2 * b_c), 0, 1)
                  + ndimage.gaussian_filter(g.normal(0, 1, size=px.shape).astype(np.float32), 1.2) * 45)
    _paint(hu, lung_occ, parenchyma)

    # ---- heart, aorta, pulmonary trunk ----
    _paint(hu, _occupancy((1 - heart) * heart_ax.min(), w), HU["muscle"])
    _paint(hu, _occupancy((0.78 - heart) * heart_ax.min(), w), BLOOD["heart"][ctpa])
    z_arch = z_carina + g.uniform(15, 25)
    aorta_pts = np.array([[-8, heart_c[1] + 10, heart_c[2] + 20], [-8, heart_c[1] + 10, z_arch],
                          [22, y_spine - 22, z_arch], [22, y_spine - 22, z_dome_l - 60]])
    aorta = _tubes(frame, aorta_pts[:-1], aorta_pts[1:], np.array([14.0, 12.0, 11.0]), w)
    hilum_z = z_carina - g.uniform(15, 25)
    bif_pa = np.array([10, heart_c[1] + 25, z_carina - 10])
    pa_pts = (np.array([[18, heart_c[1] + 10, heart_c[2] + 30]] * 3), np.array([bif_pa, [-42, y0 + 2, hilum_z],
                                                                                    [42, y0 + 2, hilum_z]]))
    trunk = _tubes(frame, pa_pts[0][:1], pa_pts[1][:1], np.array([13.0]), w)
    trunk = np.maximum(trunk, _tubes(frame, np.stack([bif_pa] * 2), pa_pts[1][1:], np.array([10.0, 10.0]), w))

    # ---- pulmonary arteries and veins ----
    roots, directions, kinds = [], [], []  # upper, middle/lingula, lower lobe arteries; upper, lower veins
    for side in (-1.0, 1.0):
        a_root, v_root = (side * 42, y0 + 2, hilum_z), (side * 35, heart_c[1] + 35, hilum_z - 25)
        roots += [a_root] * 3 + [v_root] * 2
        directions += [(side * 0.6, 0.1, 1.0), (side * 1.0, -0.6, -0.2), (side * 0.6, 0.6, -1.0),
                       (side * 1.0, 0.0, 0.6), (side * 0.9, 0.4, -0.7)]
        kinds += ["artery"] * 3 + ["vein"] * 2
    tree = _vessel_tree(g, frame, lung, np.array(roots), np.array(directions),
                        radius=g.uniform(4.0, 6.0, len(roots)), length=g.uniform(22, 30, len(roots)))
    tree["kind"], tree["bif_kind"] = np.array(kinds)[tree["tree"]], np.array(kinds)[tree["bif_tree"]]
    vessel_occ = {k: _tubes(frame, tree["p0"][tree["kind"] == k], tree["p1"][tree["kind"] == k],
                            tree["radius"][tree["kind"] == k], w) for k in ("artery", "vein")}
    in_cavity = _occupancy((1 - rho_cav) * b_c, w) * (1 - below)
    for kind, occ in (("aorta", aorta), ("artery", np.maximum(trunk, vessel_occ["artery"])),
                      ("vein", vessel_occ["vein"])):
        _paint(hu, occ * in_cavity, BLOOD[kind][ctpa])

    # ---- airways: trachea, main and lobar bronchi (wall, then lumen) ----
    y_t, r_t = y_spine - r_vert - g.uniform(18, 24), g.uniform(8, 10)
    carina = np.array([0.0, y_t, z_carina])
    main_r = carina + [-45, -5, -25 - g.uniform(0, 10)]
    main_l = carina + [48, -5, -35 - g.uniform(0, 10)]
    a0 = np.array([[0, y_t, z_apex + 200], carina, carina, main_r, main_r, main_l, main_l])
    a1 = np.array([carina, main_r, main_l, main_r + [-25, 0, 30], main_r + [-20, 8, -30],
                   main_l + [20, 0, 30], main_l + [20, 8, -30]])
    ar = np.array([r_t, 0.7 * r_t, 0.65 * r_t, 0.45 * r_t, 0.45 * r_t, 0.42 * r_t, 0.42 * r_t])
    _paint(hu, _tubes(frame, a0, a1, ar + 2.0, w), HU["soft"])
    airway = _tubes(frame, a0, a1, ar, w)
    _paint(hu, airway, HU["air"])
    lung[airway >= 0.5] = 0

    # ---- nodules ----
    nodule_mask = np.zeros(px.shape, dtype=np.uint8)
    n_nod = int(g.integers(cfg.nodules_per_scan[0], cfg.nodules_per_scan[1] + 1))
    depth_mm = ndimage.distance_transform_edt(lung > 0, sampling=tuple(spacing[::-1]))
    lung_idx = np.flatnonzero(lung.ravel())
    nod_p, nod_d = [], []
    for _ in range(n_nod):
        diam = g.uniform(*cfg.nodule_diameter_mm)
        ok = lung_idx[depth_mm.ravel()[lung_idx] >= 0.5 * diam]
        flat = g.choice(ok if len(ok) else lung_idx)
        zyx = np.array(np.unravel_index(flat, px.shape), float) + g.uniform(-0.5, 0.5, 3)
        c = (frame.vox_to_patient @ (zyx[::-1] - frame.centre)) - frame.shift
        if nod_p and np.min(np.linalg.norm(np.array(nod_p) - c, axis=1) - 0.5 * (np.array(nod_d) + diam)) < 3:
            continue  # overlaps a previous nodule: drop it
        axes = 0.5 * diam * g.uniform(0.8, 1.2, size=3)
        rot = np.linalg.qr(g.normal(size=(3, 3)))[0]
        solid = g.uniform() < 0.8
        value = g.uniform(-60, 60) if solid else g.uniform(-550, -300)
        box = _bbox(frame, c[None], axes.max() + w)
        if box is None:
            continue
        rel = np.stack([gr[box] - ci for gr, ci in zip(grids, c)], axis=-1) @ rot  # nodule-frame coordinates
        rho = np.sqrt(((rel / axes) ** 2).sum(-1))
        occ = _occupancy((1 - rho) * axes.mean(), w)
        texture = g.normal(0, 15, size=occ.shape).astype(np.float32)
        _paint(hu[box], occ, value + texture)
        label = len(nod_p) + 1
        nodule_mask[box][occ >= 0.5] = label
        centre_vox = np.rint(frame.to_voxel(c[None])[0]).astype(int)
        nodule_mask[centre_vox[2], centre_vox[1], centre_vox[0]] = label  # sub-voxel nodules keep one voxel
        nod_p.append(c), nod_d.append(diam)
    nod_p_arr, nod_d_arr = np.array(nod_p).reshape(-1, 3), np.array(nod_d)

    # ---- bones: spine (vertebral bodies, discs, posterior elements), ribs, sternum ----
    bones = np.zeros(px.shape, dtype=np.float32)
    bone_hu = np.full(px.shape, HU["bone"], dtype=np.float32)
    r_spine = np.sqrt(px ** 2 + (py - y_spine) ** 2)
    period, phase = g.uniform(24, 28), g.uniform(0, 28)
    disc = (np.mod(pz - phase, period) < 5).astype(np.float32)
    vert = _occupancy(r_vert - r_spine, w)
    bones = np.maximum(bones, vert)
    bone_hu += (1 - disc) * _occupancy(r_spine - (r_vert - 3), w) * (HU["cortex"] - HU["bone"])
    bone_hu = np.where(disc > 0, HU["disc"], bone_hu)
    canal = np.sqrt(px ** 2 + (py - y_spine - r_vert - 10) ** 2)
    arch = _occupancy(np.minimum(11 - np.abs(canal - 9), 35 - canal), w) * _occupancy(
        (py - y_spine - r_vert + 4) - 0, w) * (1 - disc)
    spinous = _occupancy(np.minimum(5 - np.abs(px), 20 - np.abs(py - y_spine - r_vert - 32)), w) * (1 - disc)
    bones = np.maximum.reduce([bones, arch, spinous])
    theta = np.abs(np.arctan2(px, py - y0))  # 0 posterior, pi anterior
    a_r, b_r = a_c + 6, b_c + 6
    rho_r = np.sqrt((px / a_r) ** 2 + ((py - y0) / b_r) ** 2)
    rib_dz, rib_top, drop = g.uniform(20, 24), z_apex - g.uniform(0, 10), g.uniform(35, 55)
    z_rib = rib_top - drop * theta / np.pi  # ribs descend towards the front
    k = np.rint((z_rib - pz) / rib_dz)
    dz = (z_rib - pz) - k * rib_dz
    rib_dist = np.sqrt(((rho_r - 1) * 0.5 * (a_r + b_r)) ** 2 + dz ** 2)
    rib_span = (k >= 0) & (k < 12) & (theta > 0.25) & (theta < 2.7)
    ribs = _occupancy(4.0 - rib_dist, w) * rib_span
    bone_hu = np.where((ribs > 0) & (theta > 2.3), HU["cartilage"], bone_hu)
    sternum_z = (pz > heart_c[2] - heart_ax[2]) & (pz < z_arch + 40)
    sternum = _occupancy(np.minimum(14 - np.abs(px), 5 - np.abs(py - (y0 - b_c - 4))), w) * sternum_z
    bones = np.maximum.reduce([bones, ribs, sternum])
    _paint(hu, bones, bone_hu)
    _paint(hu, _occupancy(7 - canal, w) * (1 - disc), HU["csf"])

    # ---- blur, noise, field of view ----
    hu = ndimage.gaussian_filter(hu, sigma=(0.8 / spacing[::-1]).tolist())
    hu += g.normal(0, g.uniform(*cfg.noise_hu), size=hu.shape).astype(np.float32)
    nx, ny, _ = shape
    ix = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    iy = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    outside_fov = (ix[None, :] ** 2 + iy[:, None] ** 2) > (0.5 * min(fov[0], fov[1])) ** 2
    hu[:, outside_fov] = HU["fov"]
    hu_i16 = np.clip(np.rint(hu), -3024, 3071).astype(np.int16)

    vessels = _vessel_frame(frame, tree)
    candidates = _candidates(cfg, g, frame, lung, rho_body < 1, tree, nod_p_arr, nod_d_arr)
    nodules = pd.DataFrame(frame.to_world(nod_p_arr) if len(nod_p_arr) else np.zeros((0, 3)),
                           columns=["coordX", "coordY", "coordZ"])
    nodules["diameter_mm"] = nod_d_arr
    landmark_p = np.array([
        carina, bif_pa, heart_c, (aorta_pts[1] + aorta_pts[2]) / 2, [-55, y0, z_dome_r], [55, y0, z_dome_l],
        [-x_l, y0, z_apex], [x_l, y0, z_apex], [55, y0 - 15, z_dome_l - 28], main_r, main_l, [0, y_spine, z_carina],
    ], dtype=float)
    landmarks = pd.DataFrame(frame.to_world(landmark_p), columns=["coordX", "coordY", "coordZ"])
    landmarks.insert(0, "landmark", list(LANDMARKS))
    return SynthCTScan(uid, hu_i16, origin, spacing, direction, lung, nodule_mask, nodules, candidates, vessels,
                       landmarks)


def _vessel_frame(frame: _Frame, tree: dict[str, np.ndarray]) -> pd.DataFrame:
    """Tree segments in world mm: ``x0, y0, z0, x1, y1, z1, radius_mm, kind, depth``."""
    df = pd.DataFrame(np.hstack([frame.to_world(tree["p0"]), frame.to_world(tree["p1"])]),
                      columns=["x0", "y0", "z0", "x1", "y1", "z1"])
    df["radius_mm"], df["kind"], df["depth"] = tree["radius"], tree["kind"], tree["depth"]
    return df


def _candidates(cfg: SynthCTConfig, g: np.random.Generator, frame: _Frame, lung: np.ndarray, body: np.ndarray,
                tree: dict[str, np.ndarray], nod_p: np.ndarray, nod_d: np.ndarray) -> pd.DataFrame:
    """Every nodule (class 1, centre jittered by 10 % of its diameter) plus class-0 candidates.

    Hard negatives sit on lung vessels wide enough to show at this resolution (radius >= 0.4 voxel): half at
    bifurcations, half at cross-sections along a branch; the remaining negatives are random lung points (2/3) and
    random body points outside the lungs (1/3). Negatives closer than radius + 5 mm to a nodule are dropped.
    """
    r_min = 0.4 * float(frame.spacing.min())
    radii, bif, bif_r = tree["radius"], tree["bif"], tree["bif_radius"]
    n_hard = int(round(cfg.negatives_per_scan * cfg.hard_negative_fraction))
    n_bif, n_ves = n_hard // 2, n_hard - n_hard // 2
    n_lung = (cfg.negatives_per_scan - n_hard) * 2 // 3
    n_tissue = cfg.negatives_per_scan - n_hard - n_lung

    bif = bif[(bif_r >= r_min) & (_labels_at(frame, lung, bif) > 0)]
    p_bif = bif[g.choice(len(bif), size=min(n_bif, len(bif)), replace=False)]
    wide = np.flatnonzero(radii >= r_min)
    pick = g.choice(wide, size=4 * n_ves)
    t = g.uniform(0.2, 0.8, size=(len(pick), 1))
    p_ves = tree["p0"][pick] + t * (tree["p1"][pick] - tree["p0"][pick])
    p_ves = p_ves[_labels_at(frame, lung, p_ves) > 0][:n_ves]

    def random_voxels(flat_idx: np.ndarray, n: int) -> np.ndarray:
        zyx = np.stack(np.unravel_index(g.choice(flat_idx, size=n), lung.shape), axis=1) + g.uniform(-.5, .5, (n, 3))
        return (frame.vox_to_patient @ (zyx[:, ::-1] - frame.centre).T).T - frame.shift

    p_lung = random_voxels(np.flatnonzero(lung.ravel()), n_lung)
    body_idx = np.flatnonzero((lung == 0).ravel() & body.ravel())
    p_tissue = random_voxels(body_idx, n_tissue)

    neg = [(p_bif, "bifurcation"), (p_ves, "vessel"), (p_lung, "lung"), (p_tissue, "tissue")]
    pts = np.concatenate([p for p, _ in neg])
    kinds = np.concatenate([[k] * len(p) for p, k in neg])
    if len(nod_p):
        gap = np.linalg.norm(pts[:, None] - nod_p[None], axis=-1) - (0.5 * nod_d[None] + 5)
        keep = gap.min(axis=1) > 0
        pts, kinds = pts[keep], kinds[keep]
    jitter = g.normal(0, 1, size=nod_p.shape) * 0.1 * nod_d[:, None]
    all_p = np.concatenate([nod_p + jitter, pts]).reshape(-1, 3)
    df = pd.DataFrame(frame.to_world(all_p) if len(all_p) else np.zeros((0, 3)), columns=["coordX", "coordY", "coordZ"])
    df["class"] = np.r_[np.ones(len(nod_p), int), np.zeros(len(pts), int)]
    df["kind"] = np.r_[np.array(["nodule"] * len(nod_p), dtype=object), kinds.astype(object)]
    return df


def generate_synth_ct(cfg: SynthCTConfig, seed: int) -> list[SynthCTScan]:
    """Generate ``cfg.n_scans`` scans, deterministic in ``seed`` (scan ``i`` = ``synth_ct_scan(cfg, seed, i)``)."""
    return [synth_ct_scan(cfg, seed, i) for i in range(cfg.n_scans)]
