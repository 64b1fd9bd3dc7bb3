"""Stage ``prepare``: write (or index) the data in its native layout, read it back through the real loaders,
split it at patient level and write the tensor cache later stages memory-map.

With ``data.source: synthetic`` SynthCXR is written as ChestX-ray14 (PNG + ``Data_Entry_2017_v2020.csv`` + the
official split lists + ``BBox_List_2017.csv``) and SynthCT as LUNA16 (``subset*/<uid>.mhd/.raw``, ``annotations.csv``,
``candidates_V2.csv``) under ``data/raw/synthetic/``; with ``real`` the same loaders read ``data.roots``. The Ark
sites (``data.sites``) follow the CXR cache: :func:`eden_lib.data.synth_sites.prepare_sites`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from eden_lib import paths
from eden_lib.data import prepared
from eden_lib.data.splits import carve_validation
from eden_lib.data.synth_sites import prepare_sites


def chestxray14_root(cfg: dict) -> Path:
    """Where the radiographs lie in their ChestX-ray14 layout: ``data.roots.chestxray14`` (real) or the synthetic copy
    ``prepare`` writes under ``data/raw/synthetic/chestxray14``."""
    data = cfg["data"]
    if data["source"] == "real":
        root = data["roots"]["chestxray14"]
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(f"data.roots.chestxray14 = {root!r} is not a folder (data.source is 'real')")
        return Path(root)
    return paths.raw_dir("synthetic") / "chestxray14"


def _cxr_root(cfg: dict) -> Path:
    data = cfg["data"]
    if data["source"] == "real":
        return chestxray14_root(cfg)
    from eden_lib.data.chestxray14 import write_chestxray14
    from eden_lib.data.synth_cxr import SynthCXRConfig, generate_synth_cxr

    c = data["cxr"]
    synth = generate_synth_cxr(
        SynthCXRConfig(
            n_patients=c["n_patients"],
            images_per_patient=c["images_per_patient"],
            size=c["render_size"],
            sex_effect=c["sex_effect"],
        ),
        seed=cfg["seed"],
    )
    root = chestxray14_root(cfg)
    write_chestxray14(root, synth, test_fraction=c["test_fraction"], seed=cfg["seed"])
    return root


def luna16_root(cfg: dict) -> Path:
    """Where the CT data set lies in its LUNA16 layout: ``data.roots.luna16`` (real) or the synthetic copy ``prepare``
    writes under ``data/raw/synthetic/luna16``."""
    data = cfg["data"]
    if data["source"] == "real":
        root = data["roots"]["luna16"]
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(f"data.roots.luna16 = {root!r} is not a folder (data.source is 'real')")
        return Path(root)
    return paths.raw_dir("synthetic") / "luna16"


def n_train_subsets(cfg: dict) -> int:
    """CT scans are split by LUNA16 subset (the papers' convention): subsets below this number train, the rest test."""
    return int(round(10 * (1 - cfg["data"]["ct"]["test_fraction"])))


def _ct_root(cfg: dict) -> Path:
    if cfg["data"]["source"] == "real":
        return luna16_root(cfg)
    from eden_lib.data.luna16 import write_luna16
    from eden_lib.data.synth_ct import SynthCTConfig, generate_synth_ct

    c = cfg["data"]["ct"]
    scans = generate_synth_ct(
        SynthCTConfig(n_scans=c["n_scans"], shape=tuple(c["shape"]), negatives_per_scan=c["negatives_per_scan"]),
        seed=cfg["seed"],
    )
    root = luna16_root(cfg)
    write_luna16(root, scans)
    return root


def _read_cxr_splits(root: Path, labels: list[str], size: int) -> dict:
    """Both official splits of a ChestX-ray14 root, read through the loader, with a ``split`` column."""
    from eden_lib.data.chestxray14 import load_chestxray14_arrays

    parts = [load_chestxray14_arrays(root, labels=labels, size=size, split=s) for s in ("train_val", "test")]
    for part, split in zip(parts, ("train_val", "test")):
        part["meta"] = part["meta"].assign(split=split)
    joined = {"meta": pd.concat([p["meta"] for p in parts], ignore_index=True),
              "landmark_names": parts[0]["landmark_names"]}
    for key in ("images", "labels", "masks", "landmarks"):
        joined[key] = None if parts[0][key] is None else np.concatenate([p[key] for p in parts])
    return joined


def prepare_cxr(cfg: dict, root: Path) -> pd.DataFrame:
    """Radiographs at the render size, labels, masks and landmarks (synthetic only), patient-level splits."""
    from eden_lib.data.synth_cxr import MASKS

    c = cfg["data"]["cxr"]
    size = c["render_size"]
    arrays = _read_cxr_splits(root, list(c["labels"]), size)
    meta = arrays["meta"]
    meta["split"] = carve_validation(meta, c["val_fraction"], cfg["seed"])
    if "site" not in meta:
        meta["site"] = "unknown"
    n = len(meta)
    masks, landmarks = arrays["masks"], arrays["landmarks"]
    info = {
        "source": cfg["data"]["source"],
        "labels": list(c["labels"]),
        "masks": list(MASKS) if masks is not None else [],
        "landmarks": list(arrays["landmark_names"] or []) if landmarks is not None else [],
        "render_size": size,
    }
    prepared.write_cxr(
        paths.prepared_dir("cxr"),
        images=arrays["images"],
        masks=masks if masks is not None else np.zeros((n, size, size), np.uint8),
        landmarks=landmarks if landmarks is not None else np.zeros((n, 0, 2), np.float32),
        labels=arrays["labels"],
        meta=meta[["image_index", "patient_id", "sex", "age", "site", "split"]],
        info=info,
    )
    return meta


NODULE_COLUMNS = ["seriesuid", "subset", "split", "coordX", "coordY", "coordZ", "diameter_mm", "nodule",
                  "shift_x", "shift_y", "shift_z"]


def _nodule_geometry(c: dict) -> tuple[np.ndarray, np.ndarray]:
    """``data.ct.nodule_patch`` and ``data.ct.nodule_jitter`` as (x, y, z) int arrays, checked."""
    patch, jitter = np.asarray(c["nodule_patch"]), np.asarray(c["nodule_jitter"])
    if patch.shape != (3,) or not np.issubdtype(patch.dtype, np.integer) or (patch < 8).any() or (patch % 8).any():
        raise ValueError(f"params.yaml data.ct.nodule_patch = {c['nodule_patch']!r}: expected [x, y, z] voxels, each "
                         "a positive multiple of 8 (UNet3D pools three times)")
    if jitter.shape != (3,) or not np.issubdtype(jitter.dtype, np.integer) or (jitter < 0).any() or (
            2 * jitter >= patch).any():
        raise ValueError(f"params.yaml data.ct.nodule_jitter = {c['nodule_jitter']!r}: expected [x, y, z] voxels, each "
                         f">= 0 and below half of data.ct.nodule_patch {list(patch)} (the nodule must stay inside)")
    crops = c["nodule_crops_per_train"]
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        raise ValueError(f"params.yaml data.ct.nodule_crops_per_train = {crops!r}: expected a positive integer")
    return patch.astype(np.int64), jitter.astype(np.int64)


def _crop_xyz(cubes_zyx: np.ndarray, rows: np.ndarray, start: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """``(K, *patch)`` windows of ``cubes_zyx`` ``(N, Z, Y, X)``, transposed to (x, y, z): window ``k`` of cube
    ``rows[k]`` starts at ``start[k]`` ``(x, y, z)``."""
    xyz = np.transpose(cubes_zyx, (0, 3, 2, 1))
    windows = [xyz[r, sx:sx + patch[0], sy:sy + patch[1], sz:sz + patch[2]] for r, (sx, sy, sz) in zip(rows, start)]
    return np.stack(windows) if windows else np.zeros((0, *patch), cubes_zyx.dtype)


def nodule_crops(cfg: dict, index, n_train: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Jittered cubes and binary masks around every annotated nodule: the Models Genesis "NCS" data on SynthCT.

    A network could learn "the blob at the centre", so each crop's centre is moved off the nodule by a seeded
    uniform integer shift of at most ``data.ct.nodule_jitter`` voxels per axis. Training nodules (subset below
    ``n_train``) give ``data.ct.nodule_crops_per_train`` crops each, test nodules one. A data set without nodule
    masks (real LUNA16) gives zero rows.

    Returns:
        ``images (K, X, Y, Z)`` float16 in [0, 1], ``masks (K, X, Y, Z)`` uint8 {0, 1} (``data.ct.nodule_patch``),
        ``meta`` (K rows, :data:`NODULE_COLUMNS`; ``nodule``: the annotation's row, ``shift_*``: voxels the nodule
        centre lies off the cube centre ``patch // 2``).
    """
    from eden_lib.data.luna16 import NODULE_MASK_DIR, extract_nodule_patches
    from eden_lib.seed import rng

    c = cfg["data"]["ct"]
    patch, jitter = _nodule_geometry(c)
    empty = (np.zeros((0, *patch), np.float16), np.zeros((0, *patch), np.uint8), pd.DataFrame(columns=NODULE_COLUMNS))
    if not (index.root / NODULE_MASK_DIR).is_dir():
        return empty
    found = extract_nodule_patches(index, size=tuple(patch + 2 * jitter)[::-1])  # (z, y, x) cubes, centred
    split = np.where(found["subset"] < n_train, "train", "test")
    rows = np.repeat(np.arange(len(split)), np.where(split == "train", c["nodule_crops_per_train"], 1))
    shift = rng(cfg["seed"], "nodule_jitter").integers(-jitter, jitter + 1, size=(len(rows), 3))  # (x, y, z)
    meta = pd.DataFrame({"seriesuid": found["seriesuid"][rows], "subset": found["subset"][rows], "split": split[rows]})
    meta[["coordX", "coordY", "coordZ"]] = found["world"][rows]
    meta["diameter_mm"] = found["diameter_mm"][rows]
    meta["nodule"] = rows
    meta[["shift_x", "shift_y", "shift_z"]] = shift
    start = jitter - shift
    return _crop_xyz(found["images"], rows, start, patch), _crop_xyz(found["masks"], rows, start, patch), meta


def prepare_ct(cfg: dict, root: Path) -> pd.DataFrame:
    """Candidate cubes of every scan, Models Genesis sub-volumes of the training scans and the nodule-segmentation
    crops (:func:`nodule_crops`), all in (x, y, z) order (the layout of :mod:`eden_lib.data.prepared`).

    Scans are split by LUNA16 subset (:func:`n_train_subsets`).
    """
    from eden_lib.data.luna16 import NODULE_MASK_DIR, LUNA16Index, extract_candidate_cubes, read_scan
    from eden_lib.data.subvolumes import hu_to_unit, sample_subvolumes
    from eden_lib.seed import rng

    c = cfg["data"]["ct"]
    index = LUNA16Index(root)
    n_train = n_train_subsets(cfg)
    cubes = extract_candidate_cubes(index, size=c["cube_size"])
    meta = pd.DataFrame({"seriesuid": cubes["seriesuid"], "label": cubes["labels"], "subset": cubes["subset"]})
    meta[["coordX", "coordY", "coordZ"]] = cubes["world"]
    meta["split"] = np.where(meta["subset"] < n_train, "train", "test")
    if set(meta["split"]) != {"train", "test"}:
        raise ValueError(f"CT candidates of {root} fall into splits {sorted(set(meta['split']))}; "
                         f"need scans in subsets below and from {n_train} (data.ct.test_fraction)")
    generator = rng(cfg["seed"], "subvolumes")
    subvolumes = []
    for uid, path in index.scans.items():
        if index.subset_of[uid] >= n_train:
            continue
        volume01 = hu_to_unit(np.transpose(read_scan(path).hu, (2, 1, 0)))  # (z, y, x) -> (x, y, z) as the paper
        subvolumes.append(sample_subvolumes(
            volume01, n_cubes=c["subvolumes_per_scan"], rng=generator, crop=tuple(c["subvolume"]),
            border_xy=c["subvolume_border"][0], border_z=c["subvolume_border"][1],
            max_tissue_fraction=c["subvolume_max_tissue"],
        ))
    n_sub = sum(len(s) for s in subvolumes)
    if n_sub == 0:
        raise RuntimeError(f"no Models Genesis sub-volume of {root} passed the acceptance test "
                           f"(data.ct.subvolume_max_tissue = {c['subvolume_max_tissue']})")
    nodules, nodule_masks, nodule_meta = nodule_crops(cfg, index, n_train)
    info = {"source": cfg["data"]["source"], "cube_size": c["cube_size"], "subvolume": list(c["subvolume"]),
            "n_subvolumes": n_sub, "axes": "xyz", "nodule_masks": (index.root / NODULE_MASK_DIR).is_dir(),
            "nodule_patch": list(c["nodule_patch"]), "n_nodule_crops": len(nodule_meta)}
    candidates = np.transpose(cubes["cubes"], (0, 3, 2, 1))  # (z, y, x) -> (x, y, z), as the sub-volumes
    prepared.write_ct(paths.prepared_dir("ct"), np.concatenate(subvolumes), candidates, meta, nodules, nodule_masks,
                      nodule_meta, info)
    return meta


def prepare_study(cfg: dict) -> pd.DataFrame:
    """Run the stage; returns a one-row-per-dataset summary (counts per split, positives, seconds)."""
    t0 = time.perf_counter()
    synthetic = paths.raw_dir("synthetic")
    if synthetic.exists():
        shutil.rmtree(synthetic)
    synthetic.mkdir(parents=True)
    if cfg["data"]["source"] == "real":
        (synthetic / "README.md").write_text("data.source is 'real': no synthetic data was generated.\n")
    cxr_meta = prepare_cxr(cfg, _cxr_root(cfg))
    t1 = time.perf_counter()
    sites = prepare_sites(cfg)
    t2 = time.perf_counter()
    ct_meta = prepare_ct(cfg, _ct_root(cfg))
    t3 = time.perf_counter()
    rows = []
    for name, meta, seconds in (("cxr", cxr_meta, t1 - t0), ("ct_candidates", ct_meta, t3 - t2)):
        counts = meta["split"].value_counts()
        rows.append(
            {
                "dataset": name,
                **{f"n_{s}": int(counts.get(s, 0)) for s in ("train", "val", "test")},
                "patients": int(meta["patient_id"].nunique()) if "patient_id" in meta else int(meta["seriesuid"].nunique()),
                "seconds": round(seconds, 1),
            }
        )
    return pd.concat([pd.DataFrame(rows), sites], ignore_index=True)
