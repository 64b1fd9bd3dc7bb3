"""Stage ``embedding``: zero-shot landmark analysis over every active method (STUDY §7).

Patches centred on each named landmark of held-out patients are embedded by each method's frozen 2D encoder
(features written by ``transfer``). Reported per method: kNN landmark-identification accuracy, silhouette score,
cross-patient landmark matching (accuracy and mean error in render pixels), part-whole compositionality (matched
minus mismatched cosine on centred features, :mod:`eden_lib.analysis.compositionality`), and t-SNE / UMAP maps
coloured by landmark. Floors: the randomly initialised encoder (``scratch``) and raw pixels with PCA; ceiling:
``supervised``. Methods that pretrained only
3D (no 2D features in their features file, e.g. TransVW) are left out and named in the metrics file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.analysis.compositionality import compositionality, part_whole_cosines
from eden_lib.analysis.embeddings import embed_2d, knn_accuracy, landmark_matching_error, pca_floor, silhouette
from eden_lib.data import prepared
from eden_lib.data.patches import crop_around, part_centres
from eden_lib.pipeline.transfer import landmark_patients

RAW_PIXELS = "raw_pixels_pca"


def methods_2d(cfg: dict) -> tuple[list[str], list[str]]:
    """(active methods whose features file holds 2D features ``cxr``, the 3D-only ones left out)."""
    keep, left_out = [], []
    for method in cfg["active_methods"]:
        with np.load(paths.features_file(method)) as npz:
            (keep if "cxr" in npz else left_out).append(method)
    return keep, left_out


def landmark_features(cfg: dict, methods: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                               np.ndarray, np.ndarray]:
    """({method or floor: (P*L, D)}, {method or floor: parts (P*L, 4, D)}, landmark id (P*L,), patient row (P*L,))
    from the features files of ``methods`` (those with 2D features). The raw-pixel floor is one PCA fitted on the
    wholes' and the parts' pixels together."""
    feats: dict[str, np.ndarray] = {}
    parts: dict[str, np.ndarray] = {}
    ids = rows = None
    for method in methods:
        with np.load(paths.features_file(method)) as npz:
            if "landmark" not in npz or "landmark_parts" not in npz:
                raise ValueError(f"{paths.features_file(method)} has no landmark (part) features; rerun "
                                 f"'transfer@{method}' (or the data has no landmarks)")
            feats[method], parts[method] = npz["landmark"], npz["landmark_parts"]
            ids, rows = npz["landmark_id"], npz["landmark_row"]
    cxr = prepared.load_cxr()
    emb = cfg["embedding"]
    expected = landmark_patients(cxr, emb["n_patients"], cfg["seed"])
    if rows is None or not np.array_equal(np.unique(rows), expected):
        raise ValueError("landmark features were extracted for other patients; rerun the transfer stages")
    patients = rows.reshape(-1, cxr.landmarks.shape[1])[:, 0]  # features are patient-major, landmark-minor
    images, centres, size = np.asarray(cxr.images[patients]), cxr.landmarks[patients], cfg["data"]["image_size"]
    wholes = crop_around(images, centres, emb["patch_size"], size).flatten(1).numpy()
    quarters = crop_around(images, part_centres(centres, emb["patch_size"]), emb["patch_size"] // 2, size)
    pixels = np.concatenate([wholes, quarters.flatten(1).numpy()])
    dim = min(64, len(wholes) - 1, pixels.shape[1])
    scores = pca_floor(pixels, dim, cfg["seed"])
    feats = {RAW_PIXELS: scores[: len(wholes)], **feats}
    parts = {RAW_PIXELS: scores[len(wholes):].reshape(len(wholes), 4, dim), **parts}
    return feats, parts, ids, rows


def run_embedding(cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Returns (metrics per method, map coordinates, part-whole cosines); writes the metrics JSON."""
    from eden_lib.reporting.io import write_json

    methods, left_out = methods_2d(cfg)
    feats, parts, ids, rows = landmark_features(cfg, methods)
    cxr = prepared.load_cxr()
    names = np.array(cxr.info["landmarks"])
    coords_px = cxr.landmarks[rows.reshape(-1, len(names))[:, 0]]  # (P, L, 2) render pixels
    emb = cfg["embedding"]
    metrics, coords, cosines = [], [], []
    n_patients = len(np.unique(rows))
    for method, x in feats.items():
        per_patient = x.reshape(n_patients, -1, x.shape[1])
        matching = landmark_matching_error(per_patient, coords_px, landmark_names=list(names))
        comp = compositionality(x, parts[method], seed=cfg["seed"], n_bootstrap=emb["n_bootstrap"])
        metrics.append({
            "method": method,
            "knn_accuracy": knn_accuracy(x, ids, k=emb["knn_k"], seed=cfg["seed"]),
            "silhouette": silhouette(x, ids),
            "matching_accuracy": float(matching["accuracy"].mean()),
            "matching_error_px": float(matching["pixel_error"].mean()),
            **{f"compositionality_{k}": v for k, v in comp.items()},
        })
        matched, mismatched = part_whole_cosines(x, parts[method], seed=cfg["seed"])
        cosines.append(pd.DataFrame({"method": method, "matched": matched, "mismatched": mismatched}))
        for projection in emb["projections"]:
            xy = embed_2d(x, projection, seed=cfg["seed"])
            coords.append(pd.DataFrame({"method": method, "projection": projection, "x": xy[:, 0], "y": xy[:, 1],
                                        "landmark": names[ids]}))
    table = pd.DataFrame(metrics)
    write_json({"profile": cfg["profile"], "n_patients": n_patients, "n_landmarks": len(names),
                "left_out_3d_only": left_out,
                "methods": {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in metrics}},
               paths.metrics_file("embedding", "landmarks"))
    return table, pd.concat(coords, ignore_index=True), pd.concat(cosines, ignore_index=True)
