"""SynthCXR: procedural, seeded 2D chest radiographs with findings, masks, landmarks and sites (STUDY.md §6).

Each subject has its own anatomy (:mod:`eden_lib.data.synth_cxr_anatomy`), shaped by sex and age; each image adds
a pose (rotation, scale, shift), a depth of inspiration, findings and the acquisition of its site (exposure curve,
blur, noise, polarity). Findings sit where they sit on real films: effusion blunts the costophrenic angle with a
meniscus, pneumothorax retracts the lung edge from the chest wall and leaves no markings beyond the pleural line,
cardiomegaly is a cardiothoracic ratio (CTR) above 0.5, consolidation and atelectasis are zonal opacities mostly in
the lower zones (atelectasis with volume loss), a nodule is a small round opacity, a mass a larger lobulated one.

``sex_effect`` is the one knob of every sex difference: body size, bone density, breast shadows over the lower
zones, a higher CTR in women (hence more cardiomegaly), more pneumothorax in men and the sex mix of each site.
At 0 sex is a bare label: images and findings are distributed identically for both sexes.

Rendering is vectorised over a chunk of images: every structure is evaluated on the ``(B, H, W)`` coordinate
grids at once; blur is a per-image Gaussian in the Fourier domain.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
from scipy.ndimage import zoom
from scipy.stats import norm

from eden_lib.data.synth_cxr_anatomy import (
    COSTOPHRENIC_DROP,
    LANDMARKS,
    LEFT,
    MASKS,
    N_VESSEL_BINS,
    RIGHT,
    Anatomy,
    col,
    landmarks,
    lung_edges,
    ramp,
    render_anatomy,
)
from eden_lib.seed import rng

__all__ = [
    "FINDINGS",
    "LANDMARKS",
    "MASKS",
    "SITES",
    "Site",
    "SynthCXR",
    "SynthCXRConfig",
    "generate_synth_cxr",
]

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation", "Nodule", "Mass")
"""Modelled findings, spelled as the NIH ChestX-ray14 labels; ``labels[:, k]`` is ``FINDINGS[k]``."""

CTR_THRESHOLD = 0.5  # cardiomegaly: cardiothoracic ratio above this
CTR_MEAN, CTR_SD = 0.445, 0.045
CHUNK = 16  # images rendered at once; fixed so that a seed gives the same images whatever N is


@dataclass(frozen=True)
class Site:
    """One acquisition site: population, finding prevalence and acquisition.

    ``female`` is the female fraction at ``sex_effect = 1`` (0.5 at 0); ``prevalence`` maps each finding to its
    base prevalence per image; ``gamma``/``window`` shape the exposure curve; ``noise`` is the Gaussian noise
    s.d. and ``blur`` the blur s.d. in pixels at 256 px; ``rotation`` (degrees) and ``shift`` add to the pose.
    """

    female: float
    age_mean: float
    age_sd: float
    ap_fraction: float
    prevalence: dict[str, float]
    gamma: float
    window: tuple[float, float]
    noise: float
    blur: float
    rotation: float
    shift: float
    invert: bool = False


def _prev(*values: float) -> dict[str, float]:
    return dict(zip(FINDINGS, values, strict=True))


SITES: dict[str, Site] = {
    # a general hospital, NIH-like: mostly PA, slightly male
    "hospital_a": Site(
        female=0.42, age_mean=50, age_sd=16, ap_fraction=0.3,
        prevalence=_prev(0.10, 0.07, 0.10, 0.06, 0.06, 0.08, 0.06),
        gamma=1.0, window=(0.03, 0.97), noise=0.012, blur=0.8, rotation=1.5, shift=0.02,
    ),
    # an intensive-care unit: AP films, older, more effusion and atelectasis, noisier and blurrier
    "icu_b": Site(
        female=0.45, age_mean=63, age_sd=14, ap_fraction=0.85,
        prevalence=_prev(0.18, 0.12, 0.20, 0.08, 0.10, 0.05, 0.05),
        gamma=1.25, window=(0.08, 0.92), noise=0.022, blur=1.3, rotation=3.0, shift=0.04,
    ),
    # an outpatient clinic: female-skewed, younger, fewer findings, soft contrast
    "clinic_c": Site(
        female=0.72, age_mean=41, age_sd=13, ap_fraction=0.1,
        prevalence=_prev(0.06, 0.05, 0.06, 0.04, 0.05, 0.07, 0.04),
        gamma=0.8, window=(0.0, 1.0), noise=0.010, blur=0.7, rotation=1.0, shift=0.015,
    ),
    # a screening programme: male-skewed, nodules and masses enriched, stored with inverted polarity
    "screening_d": Site(
        female=0.25, age_mean=58, age_sd=10, ap_fraction=0.05,
        prevalence=_prev(0.07, 0.06, 0.06, 0.05, 0.05, 0.14, 0.09),
        gamma=1.1, window=(0.05, 0.95), noise=0.015, blur=1.0, rotation=1.0, shift=0.02, invert=True,
    ),
}
"""Sites with different populations, prevalence and acquisition (the Ark setting of STUDY.md §6)."""


def _check_int(key: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"SynthCXRConfig.{key}={value!r}: expected an int in [{lo}, {hi}]")


def _check_float(key: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not lo <= value <= hi:
        raise ValueError(f"SynthCXRConfig.{key}={value!r}: expected a number in [{lo}, {hi}]")


@dataclass
class SynthCXRConfig:
    """What to generate.

    Args:
        n_patients: number of subjects.
        images_per_patient: follow-up images per subject; they share the anatomy, not the pose or acute findings.
        size: image side in pixels.
        sex_effect: scale of every sex difference (0: none; 1: the default study; up to 3).
        prevalence: multiplies every site's finding prevalence.
        sites: names of the ``SITES`` patients are drawn from, uniformly.
        label_noise: probability that a finding label is flipped (text-mined labels are noisy).
    """

    n_patients: int
    images_per_patient: int = 1
    size: int = 256
    sex_effect: float = 1.0
    prevalence: float = 1.0
    sites: tuple[str, ...] = field(default_factory=lambda: tuple(SITES))
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        _check_int("n_patients", self.n_patients, 1, 10**7)
        _check_int("images_per_patient", self.images_per_patient, 1, 999)
        _check_int("size", self.size, 32, 2048)
        _check_float("sex_effect", self.sex_effect, 0.0, 3.0)
        _check_float("prevalence", self.prevalence, 1e-6, 5.0)
        _check_float("label_noise", self.label_noise, 0.0, 0.5)
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"SynthCXRConfig.sites={self.sites!r}: expected a non-empty tuple of distinct site names")
        unknown = [s for s in self.sites if s not in SITES]
        if unknown:
            raise ValueError(f"SynthCXRConfig.sites: unknown site(s) {unknown}; expected names from {list(SITES)}")


@dataclass
class SynthCXR:
    """A generated set of ``N`` images (``H = W = size``).

    Attributes:
        images: uint8 ``(N, H, W)``, display convention of each site (inverted at some).
        masks: uint8 ``(N, H, W)`` bitfield, bit ``i`` = ``MASKS[i]``.
        landmarks: float32 ``(N, L, 2)`` pixel ``(x, y)`` of ``LANDMARKS``.
        labels: uint8 ``(N, K)`` in ``FINDINGS`` order.
        meta: one row per image: ``image_index, patient_id, follow_up, sex, age, site, view, ctr``.
    """

    images: np.ndarray
    masks: np.ndarray
    landmarks: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Lesions:
    """Geometry of the findings of ``B`` images, float32 ``(B,)`` each; a zero size or density means absent."""

    eff_r: np.ndarray  # effusion height above the costophrenic angle
    eff_l: np.ndarray
    ptx_r: np.ndarray  # pneumothorax: gap between chest wall and visceral pleura
    ptx_l: np.ndarray
    cons_side: np.ndarray
    cons_u: np.ndarray
    cons_v: np.ndarray
    cons_r: np.ndarray
    cons_d: np.ndarray
    atel_side: np.ndarray
    atel_u: np.ndarray
    atel_v: np.ndarray
    atel_len: np.ndarray
    atel_h: np.ndarray
    atel_tilt: np.ndarray
    atel_d: np.ndarray
    nod_u: np.ndarray
    nod_v: np.ndarray
    nod_r: np.ndarray
    nod_d: np.ndarray
    mass_u: np.ndarray
    mass_v: np.ndarray
    mass_r: np.ndarray
    mass_d: np.ndarray

    def take(self, idx: np.ndarray | slice) -> "Lesions":
        return Lesions(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class Acquisition:
    """Pose and exposure of ``B`` images, float32 ``(B,)`` each (``invert`` bool)."""

    angle: np.ndarray  # radians
    scale: np.ndarray
    shift_x: np.ndarray  # normalised image units ([-1, 1] spans the image)
    shift_y: np.ndarray
    gamma: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    noise: np.ndarray
    blur: np.ndarray  # pixels at 256 px
    invert: np.ndarray

    def take(self, idx: np.ndarray | slice) -> "Acquisition":
        return Acquisition(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class SynthParams:
    """Everything random about a data set except the per-pixel noise and textures (drawn per chunk)."""

    anatomy: Anatomy
    lesions: Lesions
    acquisition: Acquisition
    labels: np.ndarray  # uint8 (N, K)
    meta: pd.DataFrame


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def sample_params(cfg: SynthCXRConfig, seed: int) -> SynthParams:
    """Draw subjects, anatomy, findings and acquisition of every image (vectorised over images)."""
    n_p, k = cfg.n_patients, cfg.images_per_patient
    n = n_p * k
    se = float(cfg.sex_effect)
    g = rng(seed, "patients")
    sites = [SITES[s] for s in cfg.sites]
    site_p = g.integers(0, len(sites), n_p)
    p_female = np.clip(0.5 + se * (np.array([s.female for s in sites]) - 0.5), 0.02, 0.98)[site_p]
    female_p = g.random(n_p) < p_female
    age_p = np.clip(np.round(g.normal([sites[i].age_mean for i in site_p], [sites[i].age_sd for i in site_p])), 18, 95)
    sexsign_p = np.where(female_p, -1.0, 1.0)  # +1 male

    # patient anatomy
    w = 0.72 * (1 + 0.03 * se * sexsign_p) * g.normal(1, 0.04, n_p)
    top = -0.78 + g.normal(0, 0.025, n_p)
    dia = 0.42 + g.normal(0, 0.03, n_p)
    t1 = top - 0.03 + g.normal(0, 0.01, n_p)
    prev_card = np.array([s.prevalence["Cardiomegaly"] for s in sites])[site_p] * cfg.prevalence
    ctr_shift = CTR_THRESHOLD - CTR_MEAN - CTR_SD * norm.ppf(1 - np.clip(prev_card, 1e-3, 0.9))
    ctr = CTR_MEAN + ctr_shift - 0.02 * se * sexsign_p + 0.0015 * (age_p - 50) + g.normal(0, CTR_SD, n_p)
    patient = dict(
        w_r=w,
        w_l=w * g.normal(1, 0.015, n_p),
        top_r=top,
        top_l=top + g.normal(0, 0.015, n_p),
        dia_r=dia,
        dia_l=dia + g.uniform(0.03, 0.08, n_p),
        wob1_r=g.uniform(-0.04, 0.04, n_p),
        wob2_r=g.uniform(-0.02, 0.02, n_p),
        wob1_l=g.uniform(-0.04, 0.04, n_p),
        wob2_l=g.uniform(-0.02, 0.02, n_p),
        med=0.12 + g.normal(0, 0.008, n_p),
        ctr=np.clip(ctr, 0.32, 0.68),
        heart_q=0.21 + g.normal(0, 0.015, n_p),
        heart_tilt=0.5 + g.normal(0, 0.08, n_p),
        t1=t1,
        dv=(dia + 0.02 - t1) / 9 * g.normal(1, 0.03, n_p),
        rib_a=0.35 + g.normal(0, 0.03, n_p),
        rib_b=0.9 + g.normal(0, 0.06, n_p),
        clav_v=t1 + 0.3 + g.normal(0, 0.02, n_p),
        clav_rise=0.22 + g.normal(0, 0.02, n_p),
        knob_v=-0.42 + g.normal(0, 0.02, n_p),
        bone=np.clip((1 + 0.06 * se * sexsign_p) * (1 - 0.005 * (age_p - 45)), 0.6, 1.3),
        breast=female_p * se * g.uniform(0.4, 1.0, n_p),
        bubble=(g.random(n_p) < 0.8) * g.uniform(0.5, 1.3, n_p),
    )
    patient["carina_v"] = patient["knob_v"] + 0.12 + g.normal(0, 0.015, n_p)

    # images: patient-major order; follow-ups share the anatomy
    pid = np.repeat(np.arange(n_p), k)
    site_i = site_p[pid]
    gi = rng(seed, "images")

    def per_image(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in sites])[site_i]

    view_ap = gi.random(n) < per_image("ap_fraction")
    inspiration = gi.normal(0, 0.035, n) - 0.04 * view_ap
    params = {key: val[pid] for key, val in patient.items()}
    params["dia_r"] = params["dia_r"] - inspiration
    params["dia_l"] = params["dia_l"] - inspiration
    params["clav_v"] = params["clav_v"] - 0.05 * view_ap

    labels, lesions, elevation = _sample_findings(cfg, seed, sites, site_p, pid, age_p, sexsign_p, params)
    params["dia_r"] = params["dia_r"] - elevation[:, 0]
    params["dia_l"] = params["dia_l"] - elevation[:, 1]
    anatomy = Anatomy(**{key: _f32(val) for key, val in params.items()})
    lesions = _place_lesions(anatomy, lesions)

    window = per_image("window")
    acq = Acquisition(
        angle=_f32(np.deg2rad(np.clip(gi.uniform(-8, 8, n) + gi.normal(0, per_image("rotation")), -10, 10))),
        scale=_f32(np.clip(gi.uniform(0.87, 1.13, n) * gi.normal(1, 0.02, n), 0.85, 1.15)),
        shift_x=_f32(gi.uniform(-0.05, 0.05, n) + gi.normal(0, per_image("shift"))),
        shift_y=_f32(gi.uniform(-0.05, 0.05, n) + gi.normal(0, per_image("shift"))),
        gamma=_f32(per_image("gamma") * np.exp(gi.normal(0, 0.08, n))),
        lo=_f32(window[:, 0] + gi.normal(0, 0.015, n)),
        hi=_f32(window[:, 1] + gi.normal(0, 0.015, n)),
        noise=_f32(per_image("noise") * gi.uniform(0.8, 1.25, n)),
        blur=_f32(per_image("blur") * gi.uniform(0.8, 1.25, n)),
        invert=per_image("invert"),
    )
    follow = np.tile(np.arange(k), n_p)
    meta = pd.DataFrame(
        {
            "image_index": [f"{p + 1:08d}_{f:03d}.png" for p, f in zip(pid, follow)],
            "patient_id": pid + 1,
            "follow_up": follow,
            "sex": np.where(female_p[pid], "F", "M"),
            "age": age_p[pid].astype(int),
            "site": [cfg.sites[i] for i in site_i],
            "view": np.where(view_ap, "AP", "PA"),
            "ctr": anatomy.ctr.astype(float),
        }
    )
    return SynthParams(anatomy, lesions, acq, labels, meta)


def _sample_findings(cfg, seed, sites, site_p, pid, age_p, sexsign_p, params):
    """Labels ``(N, K)`` uint8, unplaced lesion parameters and hemidiaphragm elevation ``(N, 2)`` (right, left).

    Cardiomegaly follows the CTR; nodule and mass are chronic (per patient, same place on follow-ups); the
    others are acute (per image). Prevalence rises with age; pneumothorax is commoner in men when sex_effect > 0.
    """
    n, n_p, se = len(pid), len(site_p), float(cfg.sex_effect)
    g = rng(seed, "findings")
    prev = np.array([[s.prevalence[f] for f in FINDINGS] for s in sites])[site_p] * cfg.prevalence
    prev = prev * np.exp(0.012 * (age_p - 50))[:, None]
    prev[:, FINDINGS.index("Pneumothorax")] *= 1 + 0.35 * se * sexsign_p
    prev = np.clip(prev, 0.0, 0.9)
    chronic = g.random((n_p, 2)) < prev[:, [FINDINGS.index("Nodule"), FINDINGS.index("Mass")]]
    present = g.random((n, len(FINDINGS))) < prev[pid]
    present[:, FINDINGS.index("Nodule")] = chronic[pid, 0]
    present[:, FINDINGS.index("Mass")] = chronic[pid, 1]
    present[:, FINDINGS.index("Cardiomegaly")] = params["ctr"] > CTR_THRESHOLD
    on = {f: present[:, i] for i, f in enumerate(FINDINGS)}

    def side(p_right: float, size: int = n) -> np.ndarray:
        return np.where(g.random(size) < p_right, RIGHT, LEFT)

    eff_side = g.choice(np.array([1, 2, 3]), n, p=[0.4, 0.3, 0.3])  # right, left, both
    eff_h = 0.015 + 0.15 * g.beta(1.2, 3.5, n)
    ptx_side = side(0.5)
    ptx_g = 0.02 + 0.18 * g.beta(1.3, 3.0, n)
    atel_side = side(0.45)
    elev = on["Atelectasis"] * g.uniform(0.0, 0.05, n)
    les = dict(
        eff_r=on["Effusion"] * (eff_side != 2) * eff_h * g.uniform(0.6, 1.0, n),
        eff_l=on["Effusion"] * (eff_side != 1) * eff_h * g.uniform(0.6, 1.0, n),
        ptx_r=on["Pneumothorax"] * (ptx_side < 0) * ptx_g,
        ptx_l=on["Pneumothorax"] * (ptx_side > 0) * ptx_g,
        cons_side=side(0.55), cons_t=g.beta(4.0, 2.0, n), cons_q=g.uniform(0.25, 0.8, n),
        cons_r=0.05 + 0.12 * g.beta(2.0, 3.0, n), cons_d=on["Consolidation"] * g.uniform(0.18, 0.4, n),
        atel_side=atel_side, atel_t=g.uniform(0.62, 0.9, n), atel_q=g.uniform(0.35, 0.65, n),
        atel_len=g.uniform(0.08, 0.2, n), atel_h=0.015 + 0.03 * g.beta(2.0, 3.0, n),
        atel_tilt=g.normal(0, 0.15, n), atel_d=on["Atelectasis"] * g.uniform(0.25, 0.45, n),
        nod_side=side(0.5, n_p)[pid], nod_t=g.uniform(0.1, 0.85, n_p)[pid], nod_q=g.uniform(0.2, 0.85, n_p)[pid],
        nod_r=(0.035 + 0.035 * g.beta(2.0, 2.0, n_p))[pid], nod_d=on["Nodule"] * g.uniform(0.25, 0.45, n_p)[pid],
        mass_side=side(0.5, n_p)[pid], mass_t=g.uniform(0.15, 0.8, n_p)[pid], mass_q=g.uniform(0.25, 0.75, n_p)[pid],
        mass_r=(0.07 + 0.07 * g.beta(2.0, 2.0, n_p))[pid], mass_d=on["Mass"] * g.uniform(0.22, 0.4, n_p)[pid],
    )
    elevation = np.stack([elev * (atel_side < 0), elev * (atel_side > 0)], axis=1)
    labels = present.copy()
    if cfg.label_noise > 0:
        labels ^= g.random(labels.shape) < cfg.label_noise
    return labels.astype(np.uint8), les, elevation


def _lung_point(a: Anatomy, side: np.ndarray, t: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(u, v)`` at relative height ``t`` and relative distance ``q`` from mediastinum to chest wall."""
    out = []
    for s in (RIGHT, LEFT):
        top, dia = (a.top_l, a.dia_l) if s > 0 else (a.top_r, a.dia_r)
        v = top + t * (dia + COSTOPHRENIC_DROP - top)
        lat = lung_edges(a, s, np.zeros_like(v), v)["lat"]
        out.append((s * (a.med + q * (lat - a.med)), v))
    right = side < 0
    return np.where(right, out[0][0], out[1][0]), np.where(right, out[0][1], out[1][1])


def _place_lesions(a: Anatomy, p: dict[str, np.ndarray]) -> Lesions:
    """Turn relative lesion positions into canonical coordinates of each image's own lung fields."""
    placed = {key: val for key, val in p.items() if not key.endswith(("_t", "_q"))}
    for name in ("cons", "atel", "nod", "mass"):
        placed[f"{name}_u"], placed[f"{name}_v"] = _lung_point(a, p[f"{name}_side"], p[f"{name}_t"], p[f"{name}_q"])
    for name in ("nod", "mass"):
        del placed[f"{name}_side"]
    return Lesions(**{key: _f32(val) for key, val in placed.items()})


def pose_grid(acq: Acquisition, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical coordinates ``u, v`` of every pixel centre: float32 ``(B, size, size)`` each."""
    n = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    c = lambda p: p[:, None, None]  # noqa: E731
    dx, dy = n[None, None, :] - c(acq.shift_x), n[None, :, None] - c(acq.shift_y)
    cos, sin, s = c(np.cos(acq.angle)), c(np.sin(acq.angle)), c(acq.scale)
    return (cos * dx + sin * dy) / s, (cos * dy - sin * dx) / s


def to_pixels(points: np.ndarray, acq: Acquisition, size: int) -> np.ndarray:
    """Canonical ``(B, L, 2)`` points to pixel ``(x, y)`` through each image's pose."""
    u, v = points[..., 0], points[..., 1]
    cos, sin, s = np.cos(acq.angle)[:, None], np.sin(acq.angle)[:, None], acq.scale[:, None]
    nx = s * (cos * u - sin * v) + acq.shift_x[:, None]
    ny = s * (sin * u + cos * v) + acq.shift_y[:, None]
    return ((np.stack([nx, ny], axis=-1) + 1.0) * (size / 2) - 0.5).astype(np.float32)


def chunk_fields(seed: int, chunk: int, b: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random fields of one chunk: vessel tables ``(b, 2, 2, N_VESSEL_BINS)``, a low-frequency texture
    ``(b, size, size)`` (about unit s.d.) and white noise ``(b, size, size)``."""
    g = rng(seed, "render", chunk)
    bins = np.linspace(-np.pi, np.pi, N_VESSEL_BINS, endpoint=False, dtype=np.float32)
    tables = []
    for count, width in ((7, 0.09), (22, 0.035)):  # central (thick) and peripheral (thin) vessels
        ang = g.uniform(-np.pi, np.pi, (b, 2, count, 1)).astype(np.float32)
        amp = g.uniform(0.4, 1.0, (b, 2, count, 1)).astype(np.float32)
        dist = np.angle(np.exp(1j * (bins - ang))).astype(np.float32)
        tables.append((amp * np.exp(-0.5 * (dist / width) ** 2)).sum(axis=2))
    vessels = np.stack(tables, axis=1)
    coarse = g.standard_normal((b, 10, 10)).astype(np.float32)
    tex = zoom(coarse, (1, size / 10, size / 10), order=1, grid_mode=True, mode="nearest")
    noise = g.standard_normal((b, size, size), dtype=np.float32)
    return vessels, tex, noise


def chest_attenuation(
    a: Anatomy, les: Lesions, u: np.ndarray, v: np.ndarray, tex: np.ndarray, vessels: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation with findings ``(B, ...)`` float32 and the mask bitfield ``(B, ...)`` uint8.

    Elementwise in the pixels: ``u, v, tex`` may be ``(B, H, W)`` grids or single pixels ``(B, 1, 1)``.
    """
    out = render_anatomy(a, u, v, vessels, eps)
    att, mark = out["att"], out["markings"]

    def each(present: np.ndarray):
        idx = np.flatnonzero(present)
        return idx, (lambda p: col(p[idx], u[idx]))

    for s, name in ((RIGHT, "r"), (LEFT, "l")):
        e, lung = out[f"edges_{name}"], out[f"lung_{name}"]
        # effusion: dependent fluid with a meniscus rising toward the chest wall, blunting the angle
        idx, c = each(getattr(les, f"eff_{name}") > 0)
        if idx.size:
            h, med, w = c(getattr(les, f"eff_{name}")), c(a.med), c(a.w_l if s > 0 else a.w_r)
            x, vv = e["x"][idx], v[idx]
            rel = np.clip((x - med) / (w - med), 0.0, 1.0)
            level = c(a.dia_l if s > 0 else a.dia_r) + COSTOPHRENIC_DROP - h - 0.7 * h * rel**2 - 0.02 * rel
            hemi = ramp(e["lat"][idx] + 0.01 - x, eps) * ramp(x - med, eps)
            fluid = hemi * np.clip((vv - level) / (0.5 * h + 0.015), 0.0, 1.0) * ramp(level + 1.6 * h + 0.05 - vv, eps)
            att[idx] += 0.3 * fluid
            mark[idx] *= 1.0 - 0.8 * fluid
        # pneumothorax: no lung (and no markings) between chest wall and a thin visceral pleural line
        idx, c = each(getattr(les, f"ptx_{name}") > 0)
        if idx.size:
            gap = c(getattr(les, f"ptx_{name}"))
            dist = np.minimum(e["lat"][idx] - e["x"][idx], v[idx] - e["dome"][idx])
            air = lung[idx] * ramp(gap - dist, eps)
            line = lung[idx] * np.exp(-(((dist - gap) / 0.005) ** 2))
            att[idx] += -0.18 * air + 0.1 * line + 0.25 * gap * (lung[idx] - air)
            mark[idx] *= 1.0 - air

    def lung_of(idx: np.ndarray, side: np.ndarray) -> np.ndarray:
        return np.where(col(side[idx], u[idx]) < 0, out["lung_r"][idx], out["lung_l"][idx])

    # consolidation: a patchy airspace opacity confined to one lung
    idx, c = each(les.cons_d > 0)
    if idx.size:
        r = c(les.cons_r)
        rho = np.sqrt((u[idx] - c(les.cons_u)) ** 2 + (v[idx] - c(les.cons_v)) ** 2)
        patch = np.clip((r * (1.0 + 0.35 * tex[idx]) - rho) / (0.5 * r), 0.0, 1.0)
        att[idx] += c(les.cons_d) * patch * lung_of(idx, les.cons_side)
    # atelectasis: a plate-like band (with the hemidiaphragm raised by volume loss at sampling)
    idx, c = each(les.atel_d > 0)
    if idx.size:
        s = c(les.atel_side)
        along = s * (u[idx] - c(les.atel_u))
        across = v[idx] - c(les.atel_v) - c(les.atel_tilt) * along
        band = np.exp(-((across / c(les.atel_h)) ** 2)) * ramp(c(les.atel_len) - np.abs(along), 0.04)
        att[idx] += c(les.atel_d) * band * lung_of(idx, les.atel_side)
    # nodule (round, sharp) and mass (larger, lobulated)
    for name, lobes in (("nod", 0.0), ("mass", 0.12)):
        idx, c = each(getattr(les, f"{name}_d") > 0)
        if idx.size:
            r = c(getattr(les, f"{name}_r"))
            rho = np.sqrt((u[idx] - c(getattr(les, f"{name}_u"))) ** 2 + (v[idx] - c(getattr(les, f"{name}_v"))) ** 2)
            disc = np.clip((r * (1.0 + lobes * tex[idx]) - rho) / (0.35 * r) + 0.5, 0.0, 1.0)
            att[idx] += c(getattr(les, f"{name}_d")) * disc
    return att + mark, out["masks"]


def expose(att: np.ndarray, acq: Acquisition, noise: np.ndarray) -> np.ndarray:
    """Film/detector response: per-image Gaussian blur, exposure curve, noise, polarity; ``(B, H, W)`` -> uint8."""
    b, h, w = att.shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    sigma = (acq.blur * (h / 256.0))[:, None, None]
    otf = np.exp(-2.0 * np.pi**2 * sigma**2 * (fx**2 + fy**2))
    blurred = np.fft.irfft2(np.fft.rfft2(att) * otf, s=(h, w)).astype(np.float32)
    k = 1.1
    d = np.clip((1.0 - np.exp(-k * blurred)) / (1.0 - np.exp(-k * 1.6)), 0.0, 1.0)
    c = lambda p: p[:, None, None]  # noqa: E731
    d = c(acq.lo) + (c(acq.hi) - c(acq.lo)) * d ** c(acq.gamma) + c(acq.noise) * noise
    d = np.where(c(acq.invert), 1.0 - d, d)
    return np.round(np.clip(d, 0.0, 1.0) * 255.0).astype(np.uint8)


def render(params: SynthParams, seed: int, size: int, idx: slice, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks (uint8 ``(B, size, size)``) of the images ``idx`` forming chunk number ``chunk``."""
    a, les, acq = params.anatomy.take(idx), params.lesions.take(idx), params.acquisition.take(idx)
    b = len(acq.angle)
    vessels, tex, noise = chunk_fields(seed, chunk, b, size)
    u, v = pose_grid(acq, size)
    att, masks = chest_attenuation(a, les, u, v, tex, vessels, eps=2.0 / size)
    return expose(att, acq, noise), masks


def generate_synth_cxr(cfg: SynthCXRConfig, seed: int, workers: int | None = None) -> SynthCXR:
    """Generate ``cfg.n_patients * cfg.images_per_patient`` chest radiographs; same seed, same arrays.

    Rendered ``CHUNK`` images at a time (each chunk with its own random stream), so temporary memory stays
    bounded whatever N is and the result does not depend on ``workers``, the number of threads rendering
    chunks (default: up to 2; NumPy releases the GIL inside the array operations).
    """
    if not isinstance(cfg, SynthCXRConfig):
        raise TypeError(f"generate_synth_cxr: cfg must be a SynthCXRConfig, got {type(cfg).__name__}")
    params = sample_params(cfg, seed)
    n, size = len(params.meta), cfg.size
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)

    def run(chunk: int) -> None:
        sl = slice(chunk * CHUNK, min((chunk + 1) * CHUNK, n))
        images[sl], masks[sl] = render(params, seed, size, sl, chunk)

    n_chunks = -(-n // CHUNK)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and n_chunks > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(n_chunks)))
    else:
        for chunk in range(n_chunks):
            run(chunk)
    points = to_pixels(landmarks(params.anatomy), params.acquisition, size)
    return SynthCXR(images, masks, points, params.labels, params.meta)
