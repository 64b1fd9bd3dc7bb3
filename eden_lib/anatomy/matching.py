"""Point matching across scans and Alice's pair mining (``reference/dira_caid_transfer_alice_cadpe.md`` §4.3).

Three ways to find the partner point of a query point (both integer voxel indices ``(x, y, z)``):
``matched`` (argmax of the mean fine + coarse cosine similarity of the anatomical embedding, accepted above a
threshold, as Alice does with SAM), ``oracle`` (an affine map fitted on the shared synthetic landmarks) and
``random`` (any foreground voxel: the ablation control). Scan ``i`` is always paired with scan ``i - 1`` (cyclic),
Alice's "previous iteration's volume", so the two scans differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from eden_lib.anatomy.embedding import AnatomyEmbedding

MODES = ("matched", "oracle", "random")
PAIR_COLUMNS = ["scan_q", "xq", "yq", "zq", "scan_k", "xk", "yk", "zk", "score"]
Embeddings = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class MiningConfig:
    """Pair mining settings (params ``anatomy``).

    Args:
        pairs_per_scan: query points per scan.
        threshold: a match is accepted when its score exceeds this (Alice: 0.7).
        max_tries: query points drawn per pair before the best-scoring try is kept anyway.
        foreground: [0, 1] intensity above which a voxel is foreground (0.3 = -400 HU).
        margin: ``(x, y, z)`` voxels a query point keeps from the volume borders.
    """

    pairs_per_scan: int = 64
    threshold: float = 0.7
    max_tries: int = 100
    foreground: float = 0.3
    margin: tuple[int, int, int] = (8, 8, 4)


def embed_volume(model: AnatomyEmbedding, volume: np.ndarray) -> Embeddings:
    """``(fine, coarse)`` embeddings ``(D, X/2, Y/2, Z/2)`` of one volume ``(X, Y, Z)`` in [0, 1] (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        fine, coarse = model(torch.from_numpy(np.asarray(volume, dtype=np.float32))[None, None])
    return fine[0], coarse[0]


def match_points(emb_q: Embeddings, emb_k: Embeddings, points_q: np.ndarray, foreground_k: np.ndarray,
                 chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Best key voxel for every query point.

    Args:
        emb_q, emb_k: ``(fine, coarse)`` of the query and key volume, each ``(D, gx, gy, gz)`` (stride 2).
        points_q: ``(N, 3)`` int voxel indices ``(x, y, z)`` in the query volume.
        foreground_k: ``(X, Y, Z)`` bool, the key voxels a match may land on.
        chunk: query points scored at once (memory ``chunk * gx * gy * gz`` floats).

    Returns:
        ``points_k`` ``(N, 3)`` int64 full-resolution voxel indices (``2 x`` the embedding cell) and ``scores``
        ``(N,)`` float: the mean of the fine and coarse cosine similarity at the argmax over the key foreground.
    """
    fq, cq = emb_q
    fk, ck = emb_k
    grid = np.asarray(fk.shape[1:])
    allowed = torch.from_numpy(np.ascontiguousarray(np.asarray(foreground_k, bool)[::2, ::2, ::2]).ravel())
    if allowed.numel() != int(grid.prod()):
        raise ValueError(f"foreground_k of shape {np.shape(foreground_k)} does not fit the key embedding grid "
                         f"{tuple(grid)} (expected a volume of about twice its size)")
    if not bool(allowed.any()):
        raise ValueError("match_points: the key volume has no foreground voxel on the embedding grid")
    cells = np.clip(np.asarray(points_q, dtype=np.int64).reshape(-1, 3) // 2, 0, np.asarray(fq.shape[1:]) - 1)
    keys_f, keys_c = fk.flatten(1), ck.flatten(1)  # (D, V)
    best, where = [], []
    for s in range(0, len(cells), chunk):
        c = torch.from_numpy(cells[s:s + chunk])
        qf = fq[:, c[:, 0], c[:, 1], c[:, 2]].T  # (n, D)
        qc = cq[:, c[:, 0], c[:, 1], c[:, 2]].T
        score = 0.5 * (qf @ keys_f + qc @ keys_c)  # (n, V)
        value, index = score.masked_fill(~allowed, -torch.inf).max(dim=1)
        best.append(value.numpy()), where.append(index.numpy())
    flat = np.concatenate(where) if where else np.zeros(0, np.int64)
    points_k = 2 * np.stack(np.unravel_index(flat, tuple(grid)), axis=1).astype(np.int64)
    return points_k, (np.concatenate(best) if best else np.zeros(0, np.float32)).astype(float)


def _affine(landmarks_q: pd.DataFrame, landmarks_k: pd.DataFrame) -> np.ndarray:
    """Least-squares ``(4, 3)`` affine ``[x y z 1] @ A`` from query to key voxel coordinates on shared landmarks."""
    both = landmarks_q.merge(landmarks_k, on="landmark", suffixes=("_q", "_k"))
    if len(both) < 4:
        raise ValueError(f"oracle affine: the scans share {len(both)} landmarks ({list(both['landmark'])}); "
                         f"expected >= 4")
    src = np.c_[both[["x_q", "y_q", "z_q"]].to_numpy(float), np.ones(len(both))]
    if np.linalg.matrix_rank(src) < 4:
        raise ValueError(f"oracle affine: the {len(both)} shared landmarks are coplanar; expected 4 spanning 3D")
    return np.linalg.lstsq(src, both[["x_k", "y_k", "z_k"]].to_numpy(float), rcond=None)[0]


def oracle_map(landmarks_q: pd.DataFrame, landmarks_k: pd.DataFrame, points_q: np.ndarray) -> np.ndarray:
    """Query points ``(N, 3)`` -> continuous key voxel coordinates ``(N, 3)`` by the landmark affine."""
    p = np.asarray(points_q, dtype=float).reshape(-1, 3)
    return np.c_[p, np.ones(len(p))] @ _affine(landmarks_q, landmarks_k)


def oracle_points(landmarks_q: pd.DataFrame, landmarks_k: pd.DataFrame, points_q: np.ndarray,
                  shape: Sequence[int] | None = None) -> np.ndarray:
    """Key points ``(N, 3)`` int64 of query points by the affine fitted on the shared landmarks (``landmark, x, y,
    z`` voxel tables, >= 4 shared, else ValueError), rounded and clipped to ``shape`` ``(X, Y, Z)`` when given."""
    out = np.rint(oracle_map(landmarks_q, landmarks_k, points_q)).astype(np.int64)
    return out if shape is None else np.clip(out, 0, np.asarray(shape) - 1)


def query_candidates(volume: np.ndarray, cfg: MiningConfig) -> np.ndarray:
    """``(M, 3)`` int64 foreground voxels (value > ``cfg.foreground``) at least ``cfg.margin`` from every border."""
    inner = np.zeros(volume.shape, bool)
    (mx, my, mz), (nx, ny, nz) = cfg.margin, volume.shape
    inner[mx:nx - mx, my:ny - my, mz:nz - mz] = True
    return np.argwhere(inner & (np.asarray(volume) > cfg.foreground)).astype(np.int64)


def mine_pairs(volumes: np.ndarray, cfg: MiningConfig, rng: np.random.Generator, mode: str,
               model: AnatomyEmbedding | None = None,
               landmarks: Sequence[pd.DataFrame | None] | None = None) -> pd.DataFrame:
    """Positive pairs across scans: ``cfg.pairs_per_scan`` query points in each scan ``i`` with partners in scan
    ``i - 1`` (cyclic).

    Args:
        volumes: ``(S, X, Y, Z)`` in [0, 1], ``S >= 2``.
        mode: ``matched`` (needs ``model``), ``oracle`` (needs ``landmarks``: per scan index a ``landmark, x, y, z``
            voxel table) or ``random``.

    Returns:
        ``PAIR_COLUMNS`` rows (scan indices into ``volumes``, integer voxels; ``score`` NaN unless matched). For
        ``matched``, ``attrs`` holds ``tries`` (query points drawn), ``accepted`` (pairs above the threshold),
        ``unaccepted`` (pairs where no try passed: the best try is kept), ``acceptance_rate`` (accepted / pairs)
        and ``try_acceptance_rate`` (accepted / tries: how selective the threshold is).
    """
    if mode not in MODES:
        raise ValueError(f"mine_pairs: mode={mode!r}: expected one of {MODES}")
    if len(volumes) < 2:
        raise ValueError(f"mine_pairs: {len(volumes)} volume(s); expected >= 2 (pairs come from different scans)")
    if mode == "matched" and model is None:
        raise ValueError("mine_pairs: mode 'matched' needs the embedding model")
    if mode == "oracle" and (landmarks is None or any(lm is None for lm in landmarks)):
        raise ValueError("mine_pairs: mode 'oracle' needs a landmark table for every scan (synthetic data only)")
    cands = [query_candidates(v, cfg) for v in volumes]
    empty = [i for i, c in enumerate(cands) if not len(c)]
    if empty:
        raise ValueError(f"mine_pairs: scans {empty} have no foreground voxel > {cfg.foreground} inside margin "
                         f"{tuple(cfg.margin)}")
    n, parts = cfg.pairs_per_scan, []
    counts = {"tries": 0, "accepted": 0, "unaccepted": 0}
    previous = embed_volume(model, volumes[-1]) if mode == "matched" else None
    for i in range(len(volumes)):
        j = (i - 1) % len(volumes)
        score = np.full(n, np.nan)
        if mode == "matched":
            current = embed_volume(model, volumes[i])
            pq, pk, score, accepted, tries = _matched(current, previous, cands[i], volumes[j] > cfg.foreground, cfg,
                                                      rng)
            previous = current
            counts["tries"] += tries
            counts["accepted"] += int(accepted.sum())
            counts["unaccepted"] += int((~accepted).sum())
        else:
            pq = cands[i][rng.integers(len(cands[i]), size=n)]
            if mode == "oracle":
                pk = oracle_points(landmarks[i], landmarks[j], pq, volumes.shape[1:])
            else:
                pk = cands[j][rng.integers(len(cands[j]), size=n)]
        parts.append(pd.DataFrame({"scan_q": i, "xq": pq[:, 0], "yq": pq[:, 1], "zq": pq[:, 2], "scan_k": j,
                                   "xk": pk[:, 0], "yk": pk[:, 1], "zk": pk[:, 2], "score": score}))
    pairs = pd.concat(parts, ignore_index=True)[PAIR_COLUMNS]
    if mode == "matched":
        pairs.attrs.update(counts, acceptance_rate=counts["accepted"] / len(pairs),
                           try_acceptance_rate=counts["accepted"] / counts["tries"])
    return pairs


def _matched(emb_q: Embeddings, emb_k: Embeddings, cand_q: np.ndarray, foreground_k: np.ndarray, cfg: MiningConfig,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Alice's retry loop for ``cfg.pairs_per_scan`` pairs at once: every pair without an accepted match redraws its
    query point, up to ``cfg.max_tries`` rounds; a pair that never passes keeps its best try.

    Returns:
        ``points_q, points_k`` ``(n, 3)``, ``scores`` ``(n,)``, ``accepted`` ``(n,)`` bool, query points drawn.
    """
    n = cfg.pairs_per_scan
    pq, pk = np.zeros((n, 3), np.int64), np.zeros((n, 3), np.int64)
    score, accepted = np.full(n, -np.inf), np.zeros(n, bool)
    tries = 0
    for _ in range(cfg.max_tries):
        todo = np.flatnonzero(~accepted)
        if not len(todo):
            break
        q = cand_q[rng.integers(len(cand_q), size=len(todo))]
        k, s = match_points(emb_q, emb_k, q, foreground_k)
        tries += len(todo)
        better = s > score[todo]
        rows = todo[better]
        pq[rows], pk[rows], score[rows] = q[better], k[better], s[better]
        accepted[todo] = s > cfg.threshold
    return pq, pk, score, accepted, tries


def pair_errors_mm(pairs: pd.DataFrame, landmarks: Sequence[pd.DataFrame], spacing: Sequence[float]) -> np.ndarray:
    """``(P,)`` mm between each pair's key point and its query point mapped by the landmark affine (how far the key
    crop is centred off the query's anatomy); ``spacing`` ``(x, y, z)`` mm."""
    out = np.zeros(len(pairs))
    sp = np.asarray(spacing, float)
    for (q, k), rows in pairs.groupby(["scan_q", "scan_k"]):
        mapped = oracle_map(landmarks[q], landmarks[k], rows[["xq", "yq", "zq"]].to_numpy(float))
        diff = (mapped - rows[["xk", "yk", "zk"]].to_numpy(float)) * sp
        out[pairs.index.get_indexer(rows.index)] = np.linalg.norm(diff, axis=1)
    return out


def landmark_match_errors_mm(model: AnatomyEmbedding, volumes: np.ndarray, landmarks: Sequence[pd.DataFrame],
                             spacing: Sequence[float]) -> pd.DataFrame:
    """Match every landmark of scan ``i`` (those inside both volumes) in scan ``i - 1`` over the whole key volume (no
    foreground limit: the carina lies in air) and measure the distance to that scan's own landmark.

    Returns:
        Rows ``scan_q, scan_k, landmark, error_mm``.
    """
    shape, sp = np.asarray(volumes.shape[1:]), np.asarray(spacing, float)
    everywhere = np.ones(tuple(shape), bool)
    rows, previous = [], embed_volume(model, volumes[-1])
    for i in range(len(volumes)):
        j = (i - 1) % len(volumes)
        current = embed_volume(model, volumes[i])
        both = landmarks[i].merge(landmarks[j], on="landmark", suffixes=("_q", "_k"))
        q = np.rint(both[["x_q", "y_q", "z_q"]].to_numpy(float)).astype(np.int64)
        truth = both[["x_k", "y_k", "z_k"]].to_numpy(float)
        inside = np.all((q >= 0) & (q < shape), 1) & np.all((truth >= 0) & (truth <= shape - 1), 1)
        if inside.any():
            k, _ = match_points(current, previous, q[inside], everywhere)
            err = np.linalg.norm((k - truth[inside]) * sp, axis=1)
            rows.append(pd.DataFrame({"scan_q": i, "scan_k": j, "landmark": both["landmark"][inside].to_numpy(),
                                      "error_mm": err}))
        previous = current
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["scan_q", "scan_k", "landmark",
                                                                                    "error_mm"])
