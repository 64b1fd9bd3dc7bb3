"""SynthCXR findings: which images have which finding, where each lesion sits, and how it is drawn.

Findings sit where they sit on real films: effusion blunts the costophrenic angle with a meniscus, pneumothorax
retracts the lung edge from the chest wall and leaves no markings beyond the pleural line, cardiomegaly is a
cardiothoracic ratio (CTR) above 0.5, consolidation and atelectasis are zonal opacities mostly in the lower zones
(atelectasis with volume loss), a nodule is a small round opacity, a mass a larger lobulated one. Lesion sizes and
densities are calibrated at the 64-pixel training resolution (``benchmarks/bench_synth_cxr_fidelity.py``): no
finding is trivial for a supervised network (AUC < 0.95) and none is invisible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from eden_lib.data.synth_cxr_anatomy import COSTOPHRENIC_DROP, LEFT, MASKS, RIGHT, Anatomy, col, lung_edges, ramp
from eden_lib.seed import rng

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation", "Nodule", "Mass")
"""Modelled findings, spelled as the NIH ChestX-ray14 labels; ``labels[:, k]`` is ``FINDINGS[k]``."""

CTR_THRESHOLD = 0.5  # cardiomegaly: cardiothoracic ratio above this
CTR_READER_SD = 0.02  # the CTR a reader measures on one film: the true ratio plus this much noise
SUPPORT_LEVEL = 0.5  # a pixel belongs to a finding's drawn support where its profile (fluid, air, patch ...) is >= this

#: where a finding's support is recorded: (finding, side); effusion has one region per hemithorax
Support = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]


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
    cardio: np.ndarray  # 1 where the film shows cardiomegaly (the reader's CTR above CTR_THRESHOLD), else 0

    def take(self, idx: np.ndarray | slice) -> "Lesions":
        return Lesions(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def sample_findings(
    cfg: Any, seed: int, sites: list[Any], site_p: np.ndarray, pid: np.ndarray, age_p: np.ndarray,
    sexsign_p: np.ndarray, params: dict[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Labels ``(N, K)`` uint8, unplaced lesion parameters and hemidiaphragm elevation ``(N, 2)`` (right, left).

    Cardiomegaly follows the CTR as one reading of the film measures it (true CTR + ``CTR_READER_SD`` noise, drawn per
    image, so near the threshold follow-ups disagree as readers do); nodule and mass are chronic (per patient, same place on follow-ups); the
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
    present[:, FINDINGS.index("Cardiomegaly")] = params["ctr"] + g.normal(0, CTR_READER_SD, n) > CTR_THRESHOLD
    on = {f: present[:, i] for i, f in enumerate(FINDINGS)}

    def side(p_right: float, size: int = n) -> np.ndarray:
        return np.where(g.random(size) < p_right, RIGHT, LEFT)

    eff_side = g.choice(np.array([1, 2, 3]), n, p=[0.4, 0.3, 0.3])  # right, left, both
    eff_h = 0.02 + 0.10 * g.beta(1.2, 3.5, n)
    ptx_side = side(0.5)
    ptx_g = 0.015 + 0.14 * g.beta(1.3, 3.0, n)
    atel_side = side(0.45)
    elev = on["Atelectasis"] * g.uniform(0.01, 0.06, n)
    les = dict(
        eff_r=on["Effusion"] * (eff_side != 2) * eff_h * g.uniform(0.6, 1.0, n),
        eff_l=on["Effusion"] * (eff_side != 1) * eff_h * g.uniform(0.6, 1.0, n),
        ptx_r=on["Pneumothorax"] * (ptx_side < 0) * ptx_g,
        ptx_l=on["Pneumothorax"] * (ptx_side > 0) * ptx_g,
        cons_side=side(0.55), cons_t=g.beta(4.0, 2.0, n), cons_q=g.uniform(0.25, 0.8, n),
        cons_r=0.05 + 0.12 * g.beta(2.0, 3.0, n), cons_d=on["Consolidation"] * g.uniform(0.25, 0.5, n),
        atel_side=atel_side, atel_t=g.uniform(0.62, 0.9, n), atel_q=g.uniform(0.35, 0.65, n),
        atel_len=g.uniform(0.1, 0.24, n), atel_h=0.025 + 0.035 * g.beta(2.0, 3.0, n),
        atel_tilt=g.normal(0, 0.15, n), atel_d=on["Atelectasis"] * g.uniform(0.35, 0.55, n),
        nod_side=side(0.5, n_p)[pid], nod_t=g.uniform(0.1, 0.85, n_p)[pid], nod_q=g.uniform(0.2, 0.85, n_p)[pid],
        nod_r=(0.05 + 0.035 * g.beta(2.0, 2.0, n_p))[pid], nod_d=on["Nodule"] * g.uniform(0.4, 0.6, n_p)[pid],
        mass_side=side(0.5, n_p)[pid], mass_t=g.uniform(0.15, 0.8, n_p)[pid], mass_q=g.uniform(0.25, 0.75, n_p)[pid],
        mass_r=(0.08 + 0.07 * g.beta(2.0, 2.0, n_p))[pid], mass_d=on["Mass"] * g.uniform(0.28, 0.45, n_p)[pid],
        cardio=on["Cardiomegaly"].astype(np.float32),
    )
    elevation = np.stack([elev * (atel_side < 0), elev * (atel_side > 0)], axis=1)
    labels = present.copy()
    if cfg.label_noise > 0:
        labels ^= g.random(labels.shape) < cfg.label_noise
    return labels.astype(np.uint8), les, elevation


def lung_point(a: Anatomy, side: np.ndarray, t: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(u, v)`` at relative height ``t`` and relative distance ``q`` from mediastinum to chest wall."""
    out = []
    for s in (RIGHT, LEFT):
        top, dia = (a.top_l, a.dia_l) if s > 0 else (a.top_r, a.dia_r)
        v = top + t * (dia + COSTOPHRENIC_DROP - top)
        lat = lung_edges(a, s, np.zeros_like(v), v)["lat"]
        out.append((s * (a.med + q * (lat - a.med)), v))
    right = side < 0
    return np.where(right, out[0][0], out[1][0]), np.where(right, out[0][1], out[1][1])


def place_lesions(a: Anatomy, p: dict[str, np.ndarray]) -> Lesions:
    """Turn relative lesion positions into canonical coordinates of each image's own lung fields."""
    placed = {key: val for key, val in p.items() if not key.endswith(("_t", "_q"))}
    for name in ("cons", "atel", "nod", "mass"):
        placed[f"{name}_u"], placed[f"{name}_v"] = lung_point(a, p[f"{name}_side"], p[f"{name}_t"], p[f"{name}_q"])
    for name in ("nod", "mass"):
        del placed[f"{name}_side"]
    return Lesions(**{key: np.asarray(val, dtype=np.float32) for key, val in placed.items()})



def draw_findings(
    att: np.ndarray, mark: np.ndarray, out: dict, a: Anatomy, les: Lesions, u: np.ndarray, v: np.ndarray,
    tex: np.ndarray, eps: float, support: Support | None = None,
) -> None:
    """Add the lesions of ``les`` to the attenuation ``att`` and damp the lung markings ``mark`` (in place).

    ``out`` is :func:`render_anatomy`'s result (lung fields and edges); ``u, v, tex`` as in ``chest_attenuation``.
    With ``support`` (a dict, filled in place), every finding present records where it is drawn:
    ``support[(finding, side)] = (idx, inside)``, ``idx`` the images that have it and ``inside`` bool
    ``(len(idx), ...)`` where its profile reaches :data:`SUPPORT_LEVEL` (effusion: the fluid; pneumothorax: the air
    gap; consolidation, atelectasis, nodule, mass: the opacity; cardiomegaly: the heart). ``side`` is ``"r"`` or
    ``"l"`` for effusion and ``""`` otherwise. Recording draws no random number and changes no pixel.
    """
    def each(present: np.ndarray):
        idx = np.flatnonzero(present)
        return idx, (lambda p: col(p[idx], u[idx]))

    def record(finding: str, side: str, idx: np.ndarray, profile: Callable[[], np.ndarray]) -> None:
        if support is not None:
            support[(finding, side)] = (idx, profile() >= SUPPORT_LEVEL)

    idx, _ = each(les.cardio > 0)
    if idx.size:
        record("Cardiomegaly", "", idx, lambda: (out["masks"][idx] >> MASKS.index("heart")) & 1)

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
            att[idx] += 0.26 * fluid
            mark[idx] *= 1.0 - 0.8 * fluid
            record("Effusion", name, idx, lambda: fluid)
        # pneumothorax: no lung (and no markings) between chest wall and a thin visceral pleural line
        idx, c = each(getattr(les, f"ptx_{name}") > 0)
        if idx.size:
            gap = c(getattr(les, f"ptx_{name}"))
            dist = np.minimum(e["lat"][idx] - e["x"][idx], v[idx] - e["dome"][idx])
            air = lung[idx] * ramp(gap - dist, eps)
            line = lung[idx] * np.exp(-(((dist - gap) / 0.005) ** 2))
            att[idx] += -0.15 * air + 0.08 * line + 0.25 * gap * (lung[idx] - air)
            mark[idx] *= 1.0 - air
            record("Pneumothorax", "", idx, lambda: air)

    def lung_of(idx: np.ndarray, side: np.ndarray) -> np.ndarray:
        return np.where(col(side[idx], u[idx]) < 0, out["lung_r"][idx], out["lung_l"][idx])

    # consolidation: a patchy airspace opacity confined to one lung
    idx, c = each(les.cons_d > 0)
    if idx.size:
        r = c(les.cons_r)
        rho = np.sqrt((u[idx] - c(les.cons_u)) ** 2 + (v[idx] - c(les.cons_v)) ** 2)
        patch = np.clip((r * (1.0 + 0.35 * tex[idx]) - rho) / (0.5 * r), 0.0, 1.0)
        att[idx] += c(les.cons_d) * patch * lung_of(idx, les.cons_side)
        record("Consolidation", "", idx, lambda: patch * lung_of(idx, les.cons_side))
    # atelectasis: a plate-like band (with the hemidiaphragm raised by volume loss at sampling)
    idx, c = each(les.atel_d > 0)
    if idx.size:
        s = c(les.atel_side)
        along = s * (u[idx] - c(les.atel_u))
        across = v[idx] - c(les.atel_v) - c(les.atel_tilt) * along
        band = np.exp(-((across / c(les.atel_h)) ** 2)) * ramp(c(les.atel_len) - np.abs(along), 0.04)
        att[idx] += c(les.atel_d) * band * lung_of(idx, les.atel_side)
        record("Atelectasis", "", idx, lambda: band * lung_of(idx, les.atel_side))
    # nodule (round, sharp) and mass (larger, lobulated)
    for name, lobes, finding in (("nod", 0.0, "Nodule"), ("mass", 0.12, "Mass")):
        idx, c = each(getattr(les, f"{name}_d") > 0)
        if idx.size:
            r = c(getattr(les, f"{name}_r"))
            rho = np.sqrt((u[idx] - c(getattr(les, f"{name}_u"))) ** 2 + (v[idx] - c(getattr(les, f"{name}_v"))) ** 2)
            disc = np.clip((r * (1.0 + lobes * tex[idx]) - rho) / (0.35 * r) + 0.5, 0.0, 1.0)
            att[idx] += c(getattr(les, f"{name}_d")) * disc
            record(finding, "", idx, lambda: disc)


def support_boxes(support: Support) -> list[tuple[int, str, float, float, float, float]]:
    """Pixel bounding boxes of the recorded supports (:func:`draw_findings` on ``(B, H, W)`` grids).

    Returns ``(image, finding, x, y, w, h)`` per finding region with at least one pixel in the image, sorted by image,
    ``FINDINGS`` order and side (right first): ``image`` indexes the ``B`` images, ``(x, y)`` is the top-left corner and
    ``w, h`` the size in pixels (pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``), the NIH ``BBox_List_2017.csv``
    convention.
    """
    rows = []
    for (finding, side), (idx, inside) in support.items():
        cols, lines = inside.any(axis=1), inside.any(axis=2)  # (k, W), (k, H)
        for i, c, r in zip(idx, cols, lines):
            if not c.any():
                continue
            x0, x1 = np.flatnonzero(c)[[0, -1]]
            y0, y1 = np.flatnonzero(r)[[0, -1]]
            rows.append((int(i), FINDINGS.index(finding), side == "l", finding, float(x0), float(y0),
                         float(x1 - x0 + 1), float(y1 - y0 + 1)))
    return [(i, *box) for i, _, _, *box in sorted(rows)]
