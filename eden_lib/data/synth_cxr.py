"""SynthCXR: procedural, seeded 2D chest radiographs with findings, masks, landmarks and sites (STUDY.md §6).

Each subject has its own anatomy (:mod:`eden_lib.data.synth_cxr_anatomy`), shaped by sex and age; each image adds
a pose (rotation, scale, shift), a depth of inspiration, findings and the acquisition of its site (exposure curve,
blur, noise, polarity). Findings (:mod:`eden_lib.data.synth_cxr_findings`) sit where they sit on real films.

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
    LANDMARKS,
    MASKS,
    N_VESSEL_BINS,
    Anatomy,
    landmarks,
    render_anatomy,
)
from eden_lib.data.synth_cxr_findings import (
    CTR_THRESHOLD,
    FINDINGS,
    Lesions,
    Support,
    draw_findings,
    place_lesions,
    sample_findings,
    support_boxes,
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
        sex_effect: scale of every sex difference (0: none; the study uses 2; up to 3).
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
        boxes: one row per region of a finding truly present (before label noise; effusion: one per hemithorax):
            ``image_index, finding, x, y, w, h``, the pixel bounding box of its drawn support
            (:func:`~eden_lib.data.synth_cxr_findings.support_boxes`), ordered by image and ``FINDINGS``.
    """

    images: np.ndarray
    masks: np.ndarray
    landmarks: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame
    boxes: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)


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
        breast=female_p * se * g.uniform(0.5, 1.2, n_p),
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

    labels, lesions, elevation = sample_findings(cfg, seed, sites, site_p, pid, age_p, sexsign_p, params)
    params["dia_r"] = params["dia_r"] - elevation[:, 0]
    params["dia_l"] = params["dia_l"] - elevation[:, 1]
    anatomy = Anatomy(**{key: _f32(val) for key, val in params.items()})
    lesions = place_lesions(anatomy, lesions)

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
    a: Anatomy, les: Lesions, u: np.ndarray, v: np.ndarray, tex: np.ndarray, vessels: np.ndarray, eps: float,
    support: Support | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation with findings ``(B, ...)`` float32 and the mask bitfield ``(B, ...)`` uint8.

    Elementwise in the pixels: ``u, v, tex`` may be ``(B, H, W)`` grids or single pixels ``(B, 1, 1)``. ``support``:
    filled with where each finding is drawn (:func:`~eden_lib.data.synth_cxr_findings.draw_findings`).
    """
    out = render_anatomy(a, u, v, vessels, tex, eps)
    att, mark = out["att"], out["markings"]
    draw_findings(att, mark, out, a, les, u, v, tex, eps, support)
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


def render(params: SynthParams, seed: int, size: int, idx: slice, chunk: int,
           boxes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks (uint8 ``(B, size, size)``) of the images ``idx`` forming chunk number ``chunk``.

    ``boxes``: a list the chunk's finding boxes are appended to, ``(image, finding, x, y, w, h)`` with ``image`` the
    row in the whole set (:func:`~eden_lib.data.synth_cxr_findings.support_boxes`).
    """
    a, les, acq = params.anatomy.take(idx), params.lesions.take(idx), params.acquisition.take(idx)
    b = len(acq.angle)
    vessels, tex, noise = chunk_fields(seed, chunk, b, size)
    u, v = pose_grid(acq, size)
    support: Support | None = {} if boxes is not None else None
    att, masks = chest_attenuation(a, les, u, v, tex, vessels, eps=2.0 / size, support=support)
    if boxes is not None:
        boxes.extend((idx.start + i, *box) for i, *box in support_boxes(support))
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
    n_chunks = -(-n // CHUNK)
    boxes: list[list] = [[] for _ in range(n_chunks)]

    def run(chunk: int) -> None:
        sl = slice(chunk * CHUNK, min((chunk + 1) * CHUNK, n))
        images[sl], masks[sl] = render(params, seed, size, sl, chunk, boxes[chunk])

    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and n_chunks > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(n_chunks)))
    else:
        for chunk in range(n_chunks):
            run(chunk)
    points = to_pixels(landmarks(params.anatomy), params.acquisition, size)
    table = pd.DataFrame([b for part in boxes for b in part], columns=["image", "finding", "x", "y", "w", "h"])
    table.insert(0, "image_index", params.meta["image_index"].to_numpy()[table.pop("image").to_numpy(np.int64)])
    return SynthCXR(images, masks, points, params.labels, params.meta, table)
