"""The prepared tensor cache: what ``prepare`` writes and every later stage memory-maps.

``data/prepared/cxr/``: ``images.npy`` uint8 (N, R, R) at the render size, ``masks.npy`` uint8 (N, R, R) bitfield
(bit i = ``info["masks"][i]``), ``landmarks.npy`` float32 (N, L, 2) as (x, y) pixels, ``labels.npy`` float32 (N, K)
(NaN = unknown), ``meta.csv`` (image_index, patient_id, sex, age, site, split) and ``info.json``.

``data/prepared/ct/``: every cube is stored in (x, y, z) order, the Models Genesis convention (the LUNA16 loader
reads (z, y, x); ``prepare`` transposes), so the 3D networks see the same axes in pretraining and at transfer.
``subvolumes.npy`` float16 (M, X, Y, Z) in [0, 1] from training scans (Models Genesis); ``candidates.npy`` float16
(C, S, S, S) in [0, 1] and ``candidates.csv`` (seriesuid, label, subset, coordX/Y/Z, split); ``nodules.npy`` float16
(K, X, Y, Z) in [0, 1] with ``nodule_masks.npy`` uint8 (K, X, Y, Z) in {0, 1}: jittered crops around the annotated
nodules (Models Genesis "NCS", 3D segmentation), and ``nodules.csv`` (seriesuid, subset, split, coordX/Y/Z,
diameter_mm, nodule, shift_x/y/z: annotation row, voxels the nodule centre lies off the cube centre); zero rows
with ``info["nodule_masks"] = false`` where the data set has no nodule masks (real LUNA16); and ``info.json``.

``data/prepared/sites/``: the Ark setting, several chest X-ray sites each with its own label set, read back through
each site's loader. ``images.npy`` uint8 (N, R, R) at the render size, display convention (bright bone);
``labels.npy`` float32 (N, K_max): row i holds its own site's labels in that site's order, NaN where unknown and
NaN-padded past the site's K; ``meta.csv`` (image_index, patient_id, sex, site, split) with ``site`` the site's
name; ``info.json`` with ``sites``: one ``{"name", "dataset", "labels": [...]}`` per site, in training order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eden_lib import paths


@dataclass
class PreparedCXR:
    images: np.ndarray
    masks: np.ndarray
    landmarks: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame
    info: dict

    def split_indices(self, split: str) -> np.ndarray:
        idx = np.flatnonzero(self.meta["split"].to_numpy() == split)
        if idx.size == 0:
            raise ValueError(f"prepared CXR data has no '{split}' images; splits: {sorted(set(self.meta['split']))}")
        return idx


@dataclass
class PreparedCT:
    subvolumes: np.ndarray
    candidates: np.ndarray
    candidate_meta: pd.DataFrame
    nodules: np.ndarray
    nodule_masks: np.ndarray
    nodule_meta: pd.DataFrame
    info: dict

    def candidate_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.candidate_meta["split"].to_numpy() == split)

    def nodule_indices(self, split: str) -> np.ndarray:
        """Rows of ``nodules`` in ``split`` (``train`` or ``test``); empty when the data set has no nodule masks."""
        return np.flatnonzero(self.nodule_meta["split"].to_numpy() == split)


@dataclass
class PreparedSites:
    images: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame
    info: dict

    @property
    def site_names(self) -> list[str]:
        return [s["name"] for s in self.info["sites"]]

    @property
    def site_labels(self) -> list[list[str]]:
        """Each site's label names, in the order of its columns of ``labels``."""
        return [list(s["labels"]) for s in self.info["sites"]]

    def site_index(self) -> np.ndarray:
        """int64 (N,): each row's position in ``info["sites"]``."""
        order = {name: i for i, name in enumerate(self.site_names)}
        unknown = sorted(set(self.meta["site"]) - set(order))
        if unknown:
            raise ValueError(f"prepared sites: meta.csv names sites {unknown} that info.json does not list")
        return self.meta["site"].map(order).to_numpy(np.int64)

    def indices(self, site: str, split: str) -> np.ndarray:
        """Rows of ``site`` in ``split`` (``train``, ``val`` or ``test``)."""
        m = self.meta
        return np.flatnonzero((m["site"].to_numpy() == site) & (m["split"].to_numpy() == split))


def _save_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_cxr(out: Path, images, masks, landmarks, labels, meta: pd.DataFrame, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
    np.save(out / "masks.npy", np.ascontiguousarray(masks, dtype=np.uint8))
    np.save(out / "landmarks.npy", np.asarray(landmarks, dtype=np.float32))
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.float32))
    meta.to_csv(out / "meta.csv", index=False)
    _save_json(info, out / "info.json")


def write_ct(out: Path, subvolumes, candidates, candidate_meta: pd.DataFrame, nodules, nodule_masks,
             nodule_meta: pd.DataFrame, info: dict) -> None:
    """Write the CT cache (layout in the module docstring); every cube array already in (x, y, z) order."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "subvolumes.npy", np.asarray(subvolumes, dtype=np.float16))
    np.save(out / "candidates.npy", np.asarray(candidates, dtype=np.float16))
    candidate_meta.to_csv(out / "candidates.csv", index=False)
    np.save(out / "nodules.npy", np.asarray(nodules, dtype=np.float16))
    np.save(out / "nodule_masks.npy", np.asarray(nodule_masks, dtype=np.uint8))
    nodule_meta.to_csv(out / "nodules.csv", index=False)
    _save_json(info, out / "info.json")


def write_sites(out: Path, images, labels, meta: pd.DataFrame, info: dict) -> None:
    """Write the sites cache (layout in the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.float32))
    meta.to_csv(out / "meta.csv", index=False)
    _save_json(info, out / "info.json")


def _need(folder: Path, names: list[str]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"prepared data in {folder} lacks {missing}; run the 'prepare' stage first")


def load_cxr(folder: Path | None = None) -> PreparedCXR:
    folder = folder or paths.prepared_dir("cxr")
    names = ["images.npy", "masks.npy", "landmarks.npy", "labels.npy", "meta.csv", "info.json"]
    _need(folder, names)
    return PreparedCXR(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        masks=np.load(folder / "masks.npy", mmap_mode="r"),
        landmarks=np.load(folder / "landmarks.npy"),
        labels=np.load(folder / "labels.npy"),
        meta=pd.read_csv(folder / "meta.csv"),
        info=json.loads((folder / "info.json").read_text()),
    )


def load_ct(folder: Path | None = None) -> PreparedCT:
    folder = folder or paths.prepared_dir("ct")
    _need(folder, ["subvolumes.npy", "candidates.npy", "candidates.csv", "nodules.npy", "nodule_masks.npy",
                   "nodules.csv", "info.json"])
    return PreparedCT(
        subvolumes=np.load(folder / "subvolumes.npy", mmap_mode="r"),
        candidates=np.load(folder / "candidates.npy", mmap_mode="r"),
        candidate_meta=pd.read_csv(folder / "candidates.csv"),
        nodules=np.load(folder / "nodules.npy", mmap_mode="r"),
        nodule_masks=np.load(folder / "nodule_masks.npy", mmap_mode="r"),
        nodule_meta=pd.read_csv(folder / "nodules.csv"),
        info=json.loads((folder / "info.json").read_text()),
    )


def load_sites(folder: Path | None = None) -> PreparedSites:
    folder = folder or paths.prepared_dir("sites")
    _need(folder, ["images.npy", "labels.npy", "meta.csv", "info.json"])
    return PreparedSites(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.load(folder / "labels.npy"),
        meta=pd.read_csv(folder / "meta.csv"),
        info=json.loads((folder / "info.json").read_text()),
    )


def digest(kind: str, folder: Path | None = None) -> str:
    """SHA-1 over the names and bytes of every file of ``data/prepared/<kind>`` (``kind``: ``cxr``, ``ct`` or ``sites``).

    Pretraining folds it into its checkpoint fingerprint, so a checkpoint of a run on other data (a changed
    generator, seed or real dataset) is never resumed.
    """
    folder = folder or paths.prepared_dir(kind)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no prepared {kind} data in {folder}; run the 'prepare' stage first")
    h = hashlib.sha1()
    for path in files:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
