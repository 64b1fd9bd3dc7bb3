"""Normal chest anatomy of SynthCXR: geometry, attenuation, masks and landmarks of a PA chest radiograph.

Everything is drawn in a canonical patient frame: ``u`` points to the image right (the patient's left on a PA
film), ``v`` points down, and one unit is half the image width at pose scale 1. The pose (rotation, scale, shift)
maps pixels to this frame, so every function here takes canonical coordinate arrays ``u, v`` of any shape
``(B, ...)`` together with an :class:`Anatomy` of ``B`` images, and is elementwise: the vectorised renderer calls
it on ``(B, H, W)`` grids, the per-pixel reference of ``benchmarks/bench_synth_cxr.py`` on ``(1, 1, 1)`` ones.

Geometry (canonical units; typical values): lung apices near ``v = -0.78``, hemidiaphragm domes near
``v = 0.42`` (the right one higher), costophrenic angles ``COSTOPHRENIC_DROP`` below the dome, inner thoracic
half-widths ``w_r, w_l`` near 0.72. The cardiothoracic ratio (CTR) is exact by construction: the heart is an
axis-aligned ellipse of width ``ctr * (w_r + w_l)``, the widest inner thoracic width (Danzer's ratio).
Posterior ribs ``k = 1..12`` leave the spine at ``t1 + (k - 1) * dv``, the level of vertebra ``T_k``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

RIGHT, LEFT = -1.0, 1.0
"""Side signs in the canonical frame: the patient's right lies on the image left (``u < 0``) on a PA film."""

MASKS = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")
"""Mask bit ``i`` of the uint8 bitfield is structure ``MASKS[i]`` (patient's left/right); structures may overlap."""

LANDMARKS = (
    "right_clavicle_head",
    "left_clavicle_head",
    "right_rib5_post",
    "left_rib5_post",
    "right_rib6_post",
    "left_rib6_post",
    "spinous_process_t4",
    "carina",
    "azygos_arch",
    "aortic_knob",
    "pulmonary_artery",
    "right_hemidiaphragm_apex",
    "left_hemidiaphragm_apex",
    "right_costophrenic_angle",
    "left_costophrenic_angle",
    "end_thoracic_spine",
)
"""Named anatomical points (as in the Adam / Eden landmark analyses), each placed on the structure drawn there."""

COSTOPHRENIC_DROP = 0.13  # costophrenic angle below the dome apex
RIB_POINT = 0.55  # rib landmarks sit at this fraction of the thoracic half-width from the midline
CLAVICLE_HEAD = 0.07  # medial (sternal) end of the clavicles from the midline
N_VESSEL_BINS = 256  # angular resolution of the vessel tables

# attenuation of each tissue, in units of a full-thickness chest of soft tissue
SOFT, AIR_LUNG, ABDOMEN, AIRWAY = 1.0, 0.62, 0.15, 0.16
RIB, ANTERIOR_RIB, SPINE, CLAVICLE, BREAST, VESSEL, HILUM = 0.15, 0.06, 0.11, 0.24, 0.45, 0.22, 0.10
BREAST_TEXTURE = 0.5  # heterogeneous (fibroglandular) density of breast shadows, relative to their mean


@dataclass
class Anatomy:
    """Per-image anatomical parameters, each a float32 array of shape ``(B,)`` in canonical units."""

    w_r: np.ndarray  # inner thoracic half-width on the patient's right (at the costophrenic level)
    w_l: np.ndarray
    top_r: np.ndarray  # lung apex level
    top_l: np.ndarray
    dia_r: np.ndarray  # hemidiaphragm dome apex level (right higher: smaller v)
    dia_l: np.ndarray
    wob1_r: np.ndarray  # patient-specific bulges of the lateral lung border (relative amplitude)
    wob2_r: np.ndarray
    wob1_l: np.ndarray
    wob2_l: np.ndarray
    med: np.ndarray  # half-width of the upper mediastinum
    ctr: np.ndarray  # cardiothoracic ratio
    heart_q: np.ndarray  # short semi-axis of the heart ellipse
    heart_tilt: np.ndarray  # angle of its long axis below the horizontal (radians; apex to the image right)
    t1: np.ndarray  # level of the first thoracic vertebra / posterior rib 1
    dv: np.ndarray  # vertebral (and posterior rib) spacing
    rib_a: np.ndarray  # posterior rib centre line: v = level - rib_a * x + rib_b * x**2
    rib_b: np.ndarray
    clav_v: np.ndarray  # clavicle head level
    clav_rise: np.ndarray  # how much higher the lateral end is
    knob_v: np.ndarray  # aortic knob level
    carina_v: np.ndarray
    bone: np.ndarray  # bone density factor (sex, age)
    breast: np.ndarray  # breast shadow strength (0 without)
    bubble: np.ndarray  # gastric bubble size (0 without)

    def take(self, idx: np.ndarray | slice) -> "Anatomy":
        """The parameters of the images ``idx``."""
        return Anatomy(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def col(p: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Reshape per-image values ``(B,)`` to broadcast against an array ``(B, ...)``."""
    return p.reshape(p.shape + (1,) * (like.ndim - 1))


def ramp(d: np.ndarray, eps: float) -> np.ndarray:
    """Soft inside indicator of a signed margin ``d`` (positive inside), linear over ``eps``."""
    return np.clip(0.5 + d / eps, 0.0, 1.0)


def side_param(a: Anatomy, name: str, side: float, like: np.ndarray) -> np.ndarray:
    """``a.<name>_l`` for the left side (``side > 0``), ``a.<name>_r`` for the right, broadcast to ``like``."""
    return col(getattr(a, f"{name}_{'l' if side > 0 else 'r'}"), like)


def heart_geometry(a: Anatomy) -> tuple[np.ndarray, ...]:
    """Heart ellipse ``(centre u, centre v, long semi-axis p, short semi-axis q, tilt)``, each ``(B,)``.

    The long axis is chosen so that the horizontal extent ``2 * sqrt(p² cos² + q² sin²)`` of the tilted ellipse is
    exactly ``ctr * (w_r + w_l)``; 30 % of that width lies right of the midline, 70 % left (image right).
    """
    width = a.ctr * (a.w_r + a.w_l)
    q, tilt = a.heart_q, a.heart_tilt
    p = np.sqrt(np.maximum((0.5 * width) ** 2 - (q * np.sin(tilt)) ** 2, 1e-4)) / np.cos(tilt)
    return 0.2 * width, 0.5 * (a.dia_r + a.dia_l) - 0.14, p, q, tilt


def lung_edges(a: Anatomy, side: float, u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Borders of one lung field at each point ``(u, v)``; arrays broadcast to ``u``.

    Returns ``x`` (distance from the midline toward that side), ``t`` (relative height, 0 at the apex, 1 at the
    costophrenic angle), ``lat`` (lateral border), ``dome`` (apical border), ``dia`` (diaphragm border) and
    ``margin``, the smallest distance to the borders (positive inside, before cutting out the mediastinum).
    """
    w, top, dia = (side_param(a, n, side, u) for n in ("w", "top", "dia"))
    wob1, wob2 = side_param(a, "wob1", side, u), side_param(a, "wob2", side, u)
    med = col(a.med, u)
    x = side * u
    cp = dia + COSTOPHRENIC_DROP
    t = np.clip((v - top) / (cp - top), 0.0, 1.0)
    bulge = 1.0 + wob1 * np.sin(np.pi * t) + wob2 * np.sin(2 * np.pi * t)
    lat = w * (0.42 + 0.58 * (1.0 - (1.0 - t) ** 2 * np.sqrt(1.0 - t))) * bulge
    dome = top + 4.0 * (x - (0.5 * med + 0.21 * w)) ** 2
    dia_border = dia + (COSTOPHRENIC_DROP / 0.3025) * ((x - 0.45 * w) / w) ** 2
    margin = np.minimum(np.minimum(lat - x, x - med), np.minimum(dia_border - v, v - dome))
    return {"x": x, "t": t, "lat": lat, "dome": dome, "dia": dia_border, "margin": margin}


def _ellipse_margin(u, v, cu, cv, au, bv, tilt=None):
    """Approximate signed distance inside an ellipse (positive inside), its ``au`` axis tilted by ``tilt``."""
    du, dv = u - cu, v - cv
    if tilt is not None:
        cos, sin = np.cos(tilt), np.sin(tilt)
        du, dv = du * cos + dv * sin, dv * cos - du * sin
    return (1.0 - np.sqrt((du / au) ** 2 + (dv / bv) ** 2)) * np.minimum(au, bv)


def _circle_margin(u, v, cu, cv, r):
    return r - np.sqrt((u - cu) ** 2 + (v - cv) ** 2)


def mediastinal_bulges(a: Anatomy) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Centres ``(u, v)`` and radius of the aortic knob, pulmonary artery segment and azygos arch, ``(B,)``."""
    return {
        "aortic_knob": (a.med + 0.005, a.knob_v, 0.065),
        "pulmonary_artery": (a.med + 0.01, a.knob_v + 0.18, 0.055),
        "azygos_arch": (-(a.med - 0.005), a.carina_v - 0.04, 0.03),
    }


def clavicle_centre(a: Anatomy, x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Clavicle centre line level at lateral distance ``x`` (an S-shaped bone rising laterally)."""
    w = col(0.5 * (a.w_r + a.w_l), like)
    span = 0.85 * w - CLAVICLE_HEAD
    s = (x - CLAVICLE_HEAD) / span
    return col(a.clav_v, like) - col(a.clav_rise, like) * s + 0.025 * np.sin(2 * np.pi * s)


def rib_centre(a: Anatomy, k: int, x: np.ndarray | float, like: np.ndarray | None = None) -> np.ndarray:
    """Level of the centre line of posterior rib ``k`` (1-based) at lateral distance ``x``."""
    c = (lambda p: col(p, like)) if like is not None else (lambda p: p)
    return c(a.t1) + (k - 1) * c(a.dv) - c(a.rib_a) * x + c(a.rib_b) * x**2


def render_anatomy(
    a: Anatomy, u: np.ndarray, v: np.ndarray, vessels: np.ndarray, tex: np.ndarray, eps: float
) -> dict[str, np.ndarray]:
    """Attenuation of the normal chest and the fields findings are drawn against.

    Args:
        a: parameters of ``B`` images.
        u, v: canonical coordinates ``(B, ...)`` (float32).
        vessels: ``(B, 2, 2, N_VESSEL_BINS)`` angular vessel profiles: (central, peripheral) x (right, left).
        tex: low-frequency texture like ``u`` (about unit s.d.): the heterogeneous density of breast shadows.
        eps: edge softness in canonical units (about one pixel).

    Returns:
        ``att`` (attenuation without lung markings), ``markings`` (vessel attenuation inside the lungs),
        ``lung_r``/``lung_l`` (soft lung fields in [0, 1]), ``edges_r``/``edges_l`` (:func:`lung_edges`) and
        ``masks`` (uint8 bitfield in ``MASKS`` order); all of shape ``(B, ...)``.
    """
    c = lambda p: col(p, u)  # noqa: E731
    ax = np.abs(u)
    heart_m = _ellipse_margin(u, v, *(c(p) for p in heart_geometry(a)))
    bulges = {k: (c(cu), c(cv), r) for k, (cu, cv, r) in mediastinal_bulges(a).items()}
    bulge_m = {k: _circle_margin(u, v, *b) for k, b in bulges.items()}

    out: dict[str, np.ndarray] = {}
    lungs = {}
    for side, name in ((RIGHT, "r"), (LEFT, "l")):
        e = lung_edges(a, side, u, v)
        m = np.minimum(e["margin"], -heart_m)
        for bulge in (("azygos_arch",) if side < 0 else ("aortic_knob", "pulmonary_artery")):
            m = np.minimum(m, -bulge_m[bulge])
        e["margin"] = m
        lungs[name] = ramp(m, eps)
        out[f"edges_{name}"] = e
    lung = lungs["r"] + lungs["l"]

    # soft tissue: torso widening into the shoulders, neck, abdomen below the diaphragm
    w_max = c(np.maximum(a.w_r, a.w_l))
    torso_w = w_max + 0.16 + 0.25 * np.clip((-0.35 - v) / 0.45, 0.0, 1.0)
    shoulder_top = -1.02 + 0.3 * (ax / torso_w) ** 2
    torso = ramp(np.minimum(torso_w - ax, v - shoulder_top), eps) + ramp(0.2 - ax, eps)
    body = np.clip(torso, 0.0, 1.0) * (0.2 + 0.8 * np.sqrt(np.clip(1.0 - (u / torso_w) ** 2, 0.0, 1.0)))
    dia_lvl = np.where(u < 0, out["edges_r"]["dia"], out["edges_l"]["dia"])
    depth = np.clip(np.maximum(out["edges_r"]["margin"], out["edges_l"]["margin"]) / 0.12, 0.0, 1.0)
    att = SOFT * body - AIR_LUNG * lung * (0.55 + 0.45 * np.sqrt(depth))
    att += ABDOMEN * body * np.clip((v - dia_lvl) / 0.08, 0.0, 1.0)
    att += 0.06 * ramp(heart_m, eps)

    # airway: trachea down to the carina, then the main bronchi (the right one steeper)
    car = c(a.carina_v)
    att -= AIRWAY * ramp(0.028 - ax, eps) * ramp(car - v, eps)
    for side, angle in ((RIGHT, 0.45), (LEFT, 0.8)):
        along = (side * u) * np.sin(angle) + (v - car) * np.cos(angle)
        across = np.abs((side * u) * np.cos(angle) - (v - car) * np.sin(angle))
        att -= 0.8 * AIRWAY * ramp(0.02 - across, eps) * ramp(np.minimum(along, 0.16 - along), eps)
    att += 0.1 * ramp(bulge_m["azygos_arch"], eps)  # the azygos vein, denser than the mediastinal fat around it

    # hila and lung markings: vessels radiating from each hilum, thick centrally and thin peripherally
    hx, hy = 0.17 + 0.5 * (c(a.med) - 0.1), c(a.carina_v) + 0.14
    dx, dy = ax - hx, v - hy
    r = np.sqrt(dx**2 + dy**2)
    phi = np.arctan2(dy, dx)
    bins = ((phi + np.pi) * (N_VESSEL_BINS / (2 * np.pi))).astype(np.int64) % N_VESSEL_BINS
    bins = (bins + N_VESSEL_BINS * (u > 0)).reshape(u.shape[0], -1)
    tables = vessels.reshape(u.shape[0], 2, 2 * N_VESSEL_BINS)
    central = np.take_along_axis(tables[:, 0], bins, axis=1).reshape(u.shape)
    peripheral = np.take_along_axis(tables[:, 1], bins, axis=1).reshape(u.shape)
    near = np.clip(1.0 - r / 0.3, 0.0, 1.0)
    markings = VESSEL * lung * np.exp(-r / 0.45) * (near * central + (1.0 - near) * peripheral)
    att += HILUM * lung * np.exp(-(r / 0.09) ** 2)

    # breast shadows over the lower lateral zones; their patchy density hides lower-zone opacities in women
    br = 0.3 * c(0.5 * (a.w_r + a.w_l)) / 0.72
    for side in (RIGHT, LEFT):
        w = side_param(a, "w", side, u)
        rho = np.sqrt((u - side * 0.62 * w) ** 2 + (v - c(a.dia_r) + 0.02) ** 2) / br
        shadow = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0)) * ramp(1.0 - rho, 4 * eps / br)
        att += BREAST * c(a.breast) * shadow * np.maximum(1.0 + BREAST_TEXTURE * tex, 0.0)

    # gastric bubble under the left hemidiaphragm, with a flat air-fluid level
    bu, bv = 0.5 * c(a.w_l), c(a.dia_l) + 0.1
    bubble = _ellipse_margin(u, v, bu, bv, 0.09 * c(a.bubble) + 1e-3, 0.05 * c(a.bubble) + 1e-3)
    att -= 0.35 * ramp(np.minimum(bubble, bv + 0.015 - v), eps) * (c(a.bubble) > 0)

    # spine: vertebral bodies, pedicles and spinous processes, one every dv from T1 down
    bone = c(a.bone)
    dv, t1 = c(a.dv), c(a.t1)
    q = (v - t1) / dv
    frac = q - np.round(q)
    att += SPINE * bone * ramp(0.06 - ax, eps) * ramp(0.36 * dv - np.abs(frac * dv), 3 * eps) * ramp(q + 0.4, eps)
    ped = ((ax - 0.045) / 0.014) ** 2 + ((frac + 0.12) * dv / 0.03) ** 2
    att += 0.5 * SPINE * bone * ramp(1.0 - np.sqrt(ped), 0.3) * ramp(q + 0.4, eps)
    qs = q - 0.45
    fs = (qs - np.round(qs)) * dv
    att += 0.6 * SPINE * bone * ramp(1.0 - np.sqrt((u / 0.017) ** 2 + (fs / 0.026) ** 2), 0.3) * ramp(qs + 0.4, eps)

    # posterior ribs 1-12 of both sides at once: nearest rib centre line by rounding the rib coordinate
    lat = np.where(u < 0, out["edges_r"]["lat"], out["edges_l"]["lat"])
    qr = (v - t1 + c(a.rib_a) * ax - c(a.rib_b) * ax**2) / dv
    k = np.round(qr)
    d = np.abs(qr - k) * dv
    half = 0.021 * (1.0 + 0.4 * ax)
    in_rib = ramp(half - d, eps) * ramp(np.minimum(ax - 0.05, lat + 0.06 - ax), 2 * eps) * (k >= 0) * (k <= 11)
    att += RIB * bone * in_rib * (0.55 + 0.45 * np.clip(d / half, 0.0, 1.0) ** 2)
    # anterior ribs: fainter bands running down and medially from where each posterior rib meets the chest wall
    w_side = np.where(u < 0, c(a.w_r), c(a.w_l))
    lateral_end = -c(a.rib_a) * w_side + c(a.rib_b) * w_side**2
    qa = (v - t1 - lateral_end - 0.4 * (w_side - ax)) / dv
    ka = np.round(qa)
    da = np.abs(qa - ka) * dv
    span = ramp(np.minimum(ax - 0.3, lat + 0.04 - ax), 3 * eps) * (ka >= 0) * (ka <= 6)
    att += ANTERIOR_RIB * bone * ramp(0.016 - da, eps) * span

    # clavicles
    xe = 0.85 * c(0.5 * (a.w_r + a.w_l))
    clav_c = clavicle_centre(a, ax, u)
    clav_half = 0.025 + 0.01 * np.clip(1.0 - (ax - CLAVICLE_HEAD) / 0.1, 0.0, 1.0)
    clav = ramp(np.minimum(clav_half - np.abs(v - clav_c), np.minimum(ax - CLAVICLE_HEAD, xe - ax)), eps)
    att += CLAVICLE * bone * clav * (0.6 + 0.4 * np.clip(np.abs(v - clav_c) / clav_half, 0.0, 1.0) ** 2)

    masks = (
        (lungs["l"] > 0.5) * np.uint8(1)
        | (lungs["r"] > 0.5) * np.uint8(2)
        | (heart_m > 0) * np.uint8(4)
        | ((clav > 0.5) & (u > 0)) * np.uint8(8)
        | ((clav > 0.5) & (u < 0)) * np.uint8(16)
    ).astype(np.uint8)
    out.update(att=att, markings=markings, lung_r=lungs["r"], lung_l=lungs["l"], masks=masks)
    return out


def landmarks(a: Anatomy) -> np.ndarray:
    """Canonical ``(u, v)`` of every landmark in ``LANDMARKS`` order: float32 ``(B, L, 2)``."""
    xh = CLAVICLE_HEAD + 0.025
    clav_v = clavicle_centre(a, np.full_like(a.w_r, xh), a.w_r)
    bul = mediastinal_bulges(a)
    zero = np.zeros_like(a.w_r)
    pts = {
        "right_clavicle_head": (-xh + zero, clav_v),
        "left_clavicle_head": (xh + zero, clav_v),
        "spinous_process_t4": (zero, a.t1 + 3.45 * a.dv),
        "carina": (zero, a.carina_v),
        "right_hemidiaphragm_apex": (-0.45 * a.w_r, a.dia_r),
        "left_hemidiaphragm_apex": (0.45 * a.w_l, a.dia_l),
        "right_costophrenic_angle": (-a.w_r, a.dia_r + COSTOPHRENIC_DROP),
        "left_costophrenic_angle": (a.w_l, a.dia_l + COSTOPHRENIC_DROP),
        "end_thoracic_spine": (zero, a.t1 + 11.3 * a.dv),
    }
    for name in ("aortic_knob", "pulmonary_artery", "azygos_arch"):
        pts[name] = (bul[name][0], bul[name][1])
    for k in (5, 6):
        for side, w, name in ((RIGHT, a.w_r, "right"), (LEFT, a.w_l, "left")):
            x = RIB_POINT * w
            pts[f"{name}_rib{k}_post"] = (side * x, rib_centre(a, k, x))
    return np.stack([np.stack(pts[n], axis=-1) for n in LANDMARKS], axis=1).astype(np.float32)
