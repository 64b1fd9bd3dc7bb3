"""LUNA16 on disk: writer (for SynthCT), reader, world <-> voxel maps, candidate and nodule cube extraction.

Layout (dataset_formats.md §8)::

    root/subset{k}/<seriesuid>.mhd + .raw        MetaImage, int16 little-endian HU (MET_SHORT), x fastest
    root/annotations.csv                         seriesuid,coordX,coordY,coordZ,diameter_mm   (world mm)
    root/candidates_V2.csv                       seriesuid,coordX,coordY,coordZ,class         (world mm)
    root/seg-lungs-LUNA16/<seriesuid>.mhd + .zraw   lung masks, 3 left lung, 4 right lung
    root/synth/nodule_masks/<seriesuid>.mhd + .zraw nodule instance masks (synthetic set only)
    root/landmarks.csv                           seriesuid,landmark,coordX,coordY,coordZ    (world mm, synthetic only)

World coordinates are LPS mm; ``ijk = R^-1 (xyz - origin) / spacing`` with ``R`` the ``TransformMatrix`` (a few
real scans have flipped axes, so every map goes through the direction matrix). Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eden_lib.data.subvolumes import HU_WINDOW, hu_to_unit

ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CANDIDATE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class"]
LANDMARK_COLUMNS = ["seriesuid", "landmark", "coordX", "coordY", "coordZ"]
LUNG_MASK_DIR = "seg-lungs-LUNA16"
NODULE_MASK_DIR = "synth/nodule_masks"


@dataclass
class CTScan:
    """One scan read from disk: ``hu`` ``(z, y, x)`` int16; ``origin``, ``spacing`` ``(3,)`` ``(x, y, z)`` mm;
    ``direction`` ``(3, 3)``."""

    hu: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray


def _write_image(array: np.ndarray, path: Path, origin, spacing, direction, compress: bool) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)


def write_luna16(root: str | Path, scans: Sequence, n_subsets: int = 10) -> "LUNA16Index":
    """Write scans (``SynthCTScan``-like: seriesuid, hu, origin, spacing, direction, lung_mask, nodule_mask,
    nodules, candidates) in the LUNA16 layout; scan ``i`` goes to ``subset{i % n_subsets}``. Scans carrying a
    ``landmarks`` table (SynthCT) also fill ``landmarks.csv``.

    Returns:
        The ``LUNA16Index`` of ``root``.
    """
    if n_subsets < 1:
        raise ValueError(f"n_subsets={n_subsets}: expected >= 1")
    root = Path(root)
    annotations, candidates, landmarks = [], [], []
    for i, scan in enumerate(scans):
        uid, geometry = scan.seriesuid, (scan.origin, scan.spacing, scan.direction)
        _write_image(np.asarray(scan.hu, dtype=np.int16), root / f"subset{i % n_subsets}" / f"{uid}.mhd", *geometry,
                     compress=False)
        _write_image(scan.lung_mask.astype(np.uint8), root / LUNG_MASK_DIR / f"{uid}.mhd", *geometry, compress=True)
        _write_image(scan.nodule_mask.astype(np.uint8), root / NODULE_MASK_DIR / f"{uid}.mhd", *geometry,
                     compress=True)
        annotations.append(scan.nodules.assign(seriesuid=uid)[ANNOTATION_COLUMNS])
        candidates.append(scan.candidates.assign(seriesuid=uid)[CANDIDATE_COLUMNS])
        if getattr(scan, "landmarks", None) is not None:
            landmarks.append(scan.landmarks.assign(seriesuid=uid)[LANDMARK_COLUMNS])
    if annotations:
        pd.concat(annotations).to_csv(root / "annotations.csv", index=False)
        pd.concat(candidates).to_csv(root / "candidates_V2.csv", index=False)
    if landmarks:
        pd.concat(landmarks).to_csv(root / "landmarks.csv", index=False)
    return LUNA16Index(root)


def read_scan(mhd_path: str | Path) -> CTScan:
    """Read a MetaImage scan with SimpleITK; ``hu`` keeps the stored dtype (int16 for LUNA16)."""
    import SimpleITK as sitk

    path = Path(mhd_path)
    if not path.is_file():
        raise FileNotFoundError(f"scan file {path} does not exist")
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, got NDims={image.GetDimension()}")
    return CTScan(hu=sitk.GetArrayFromImage(image), origin=np.array(image.GetOrigin()),
                  spacing=np.array(image.GetSpacing()), direction=np.array(image.GetDirection()).reshape(3, 3))


def world_to_voxel(xyz_mm: np.ndarray, origin, spacing, direction=None) -> np.ndarray:
    """World mm ``(N, 3)`` or ``(3,)`` ``(x, y, z)`` -> continuous voxel index ``(N, 3)`` or ``(3,)`` in ``(z, y, x)``.

    ``ijk = R^-1 (xyz - origin) / spacing``; ``direction`` is ``R`` as ``(3, 3)`` or 9 row-major numbers (identity if
    None).
    """
    xyz = np.asarray(xyz_mm, dtype=float)
    r = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    ijk = np.linalg.solve(r, (np.atleast_2d(xyz) - np.asarray(origin, float)).T).T / np.asarray(spacing, float)
    zyx = ijk[:, ::-1]
    return zyx[0] if xyz.ndim == 1 else zyx


def voxel_to_world(zyx: np.ndarray, origin, spacing, direction=None) -> np.ndarray:
    """Voxel index ``(N, 3)`` or ``(3,)`` in ``(z, y, x)`` -> world mm ``(x, y, z)``; inverse of ``world_to_voxel``."""
    v = np.asarray(zyx, dtype=float)
    r = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    xyz = np.asarray(origin, float) + (np.atleast_2d(v)[:, ::-1] * np.asarray(spacing, float)) @ r.T
    return xyz[0] if v.ndim == 1 else xyz


class LUNA16Index:
    """The scans and CSVs of a LUNA16 root.

    Args:
        root: dataset folder holding ``subset*/``.
        subsets: keep only these subset numbers (e.g. ``range(5)`` for the Models Genesis training folds).

    Attributes:
        scans: ``{seriesuid: mhd path}``, sorted by seriesuid.
        subset_of: ``{seriesuid: subset number}``.
    """

    def __init__(self, root: str | Path, subsets: Iterable[int] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"LUNA16 root {self.root} does not exist")
        dirs = sorted(p for p in self.root.glob("subset*") if p.is_dir() and p.name[6:].isdigit())
        if not dirs:
            raise FileNotFoundError(f"no subset<k>/ folders under LUNA16 root {self.root}")
        wanted = None if subsets is None else {int(s) for s in subsets}
        found = {}
        for d in dirs:
            k = int(d.name[6:])
            if wanted is None or k in wanted:
                found.update({p.stem: (p, k) for p in d.glob("*.mhd")})
        self.scans = {uid: found[uid][0] for uid in sorted(found)}
        self.subset_of = {uid: found[uid][1] for uid in sorted(found)}

    def _csv(self, names: Sequence[str], columns: list[str]) -> pd.DataFrame:
        path = next((self.root / n for n in names if (self.root / n).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"none of {list(names)} found in LUNA16 root {self.root}")
        df = pd.read_csv(path)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {columns}, got {list(df.columns)}")
        df = df[columns]
        return df[df["seriesuid"].isin(self.scans)].reset_index(drop=True)

    def read_annotations(self) -> pd.DataFrame:
        """``annotations.csv`` rows of the indexed scans (world mm)."""
        return self._csv(["annotations.csv"], ANNOTATION_COLUMNS)

    def read_candidates(self) -> pd.DataFrame:
        """``candidates_V2.csv`` (else the deprecated ``candidates.csv``) rows of the indexed scans."""
        return self._csv(["candidates_V2.csv", "candidates.csv"], CANDIDATE_COLUMNS)

    def read_landmarks(self) -> pd.DataFrame:
        """``landmarks.csv`` rows of the indexed scans (world mm); only the synthetic set has one."""
        return self._csv(["landmarks.csv"], LANDMARK_COLUMNS)

    def scan_path(self, seriesuid: str) -> Path:
        if seriesuid not in self.scans:
            raise KeyError(f"seriesuid {seriesuid} is not among the {len(self.scans)} scans under {self.root}")
        return self.scans[seriesuid]

    def lung_mask_path(self, seriesuid: str) -> Path:
        return self._sidecar(LUNG_MASK_DIR, seriesuid)

    def nodule_mask_path(self, seriesuid: str) -> Path:
        """The nodule mask written by ``write_luna16``; only the synthetic set has them."""
        return self._sidecar(NODULE_MASK_DIR, seriesuid)

    def _sidecar(self, folder: str, seriesuid: str) -> Path:
        path = self.root / folder / f"{seriesuid}.mhd"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (expected {folder}/<seriesuid>.mhd under {self.root})")
        return path


def _cube_size(size: int | Sequence[int]) -> tuple[int, int, int]:
    s = (size,) * 3 if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"cube size {size!r}: expected a positive int or a (z, y, x) triple")
    return s  # type: ignore[return-value]


def gather_cubes(volume: np.ndarray, centres_zyx: np.ndarray, size: tuple[int, int, int], fill) -> np.ndarray:
    """Cubes ``(M, *size)`` of ``volume`` ``(Z, Y, X)`` around integer centres ``(M, 3)``, in one fancy-index gather.

    Cube ``m`` covers ``[c - size // 2, c - size // 2 + size)`` per axis; voxels outside the volume get ``fill``.
    """
    c = np.asarray(centres_zyx, dtype=np.int64).reshape(-1, 3)
    idx = [c[:, a, None] - size[a] // 2 + np.arange(size[a]) for a in range(3)]  # (M, s_a) each
    valid = [(i >= 0) & (i < n) for i, n in zip(idx, volume.shape)]
    iz, iy, ix = (np.clip(i, 0, n - 1) for i, n in zip(idx, volume.shape))
    cubes = volume[iz[:, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    inside = valid[0][:, :, None, None] & valid[1][:, None, :, None] & valid[2][:, None, None, :]
    return np.where(inside, cubes, np.asarray(fill, dtype=volume.dtype))


def _per_scan(index: LUNA16Index, table: pd.DataFrame):
    """Yield ``(seriesuid, scan, rows)`` for each indexed scan with rows in ``table``, reading each scan once."""
    for uid, rows in table.groupby("seriesuid", sort=True):
        yield uid, read_scan(index.scan_path(uid)), rows


def extract_candidate_cubes(index: LUNA16Index, size: int | Sequence[int] = 32,
                            hu_window: tuple[float, float] = HU_WINDOW, subsets: Iterable[int] | None = None,
                            dtype=np.float16) -> dict[str, np.ndarray]:
    """Cubes around every candidate (LUNA16 false-positive reduction, Models Genesis "NCC").

    Per scan, all its candidates are cut at once (``gather_cubes``); voxels outside the scan take the scan's minimum
    HU. Values are HU windowed to [0, 1].

    Args:
        size: cube edge in voxels, or ``(z, y, x)``.
        subsets: keep only candidates of scans in these subsets (None: all indexed scans).

    Returns:
        ``cubes (M, z, y, x)`` in [0, 1], ``labels (M,)`` int64, ``seriesuid (M,)``, ``subset (M,)``,
        ``world (M, 3)`` candidate ``(x, y, z)`` mm, ``voxel (M, 3)`` int centre ``(z, y, x)``.
    """
    size3 = _cube_size(size)
    table = index.read_candidates()
    if subsets is not None:
        keep = {int(s) for s in subsets}
        table = table[table["seriesuid"].map(index.subset_of).isin(keep)]
    parts = []
    for uid, scan, rows in _per_scan(index, table):
        world = rows[["coordX", "coordY", "coordZ"]].to_numpy(float)
        centre = np.rint(world_to_voxel(world, scan.origin, scan.spacing, scan.direction)).astype(np.int64)
        cubes = gather_cubes(scan.hu, centre, size3, scan.hu.min())
        parts.append({"cubes": hu_to_unit(cubes, hu_window).astype(dtype), "labels": rows["class"].to_numpy(np.int64),
                      **_meta(uid, index, rows, world, centre)})
    return _concat(parts, {"cubes": np.zeros((0, *size3), dtype), "labels": np.zeros(0, np.int64), **_empty_meta()})


def extract_nodule_patches(index: LUNA16Index, size: int | Sequence[int] = 32,
                           hu_window: tuple[float, float] = HU_WINDOW, subsets: Iterable[int] | None = None,
                           dtype=np.float16) -> dict[str, np.ndarray]:
    """Image cubes centred on each annotated nodule with the matching binary nodule-mask cubes (3D segmentation).

    Masks come from ``synth/nodule_masks/`` (synthetic set only); outside the scan the image takes the scan's minimum
    and the mask 0.

    Returns:
        ``images (N, z, y, x)`` in [0, 1], ``masks (N, z, y, x)`` uint8 {0, 1}, ``seriesuid (N,)``, ``subset (N,)``,
        ``world (N, 3)``, ``voxel (N, 3)``, ``diameter_mm (N,)``.
    """
    import SimpleITK as sitk

    size3 = _cube_size(size)
    table = index.read_annotations()
    if subsets is not None:
        keep = {int(s) for s in subsets}
        table = table[table["seriesuid"].map(index.subset_of).isin(keep)]
    parts = []
    for uid, scan, rows in _per_scan(index, table):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(index.nodule_mask_path(uid))))
        if mask.shape != scan.hu.shape:
            raise ValueError(f"{index.nodule_mask_path(uid)}: mask shape {mask.shape} != scan shape {scan.hu.shape}")
        world = rows[["coordX", "coordY", "coordZ"]].to_numpy(float)
        centre = np.rint(world_to_voxel(world, scan.origin, scan.spacing, scan.direction)).astype(np.int64)
        image = hu_to_unit(gather_cubes(scan.hu, centre, size3, scan.hu.min()), hu_window).astype(dtype)
        parts.append({"images": image, "masks": (gather_cubes(mask, centre, size3, 0) > 0).astype(np.uint8),
                      "diameter_mm": rows["diameter_mm"].to_numpy(float), **_meta(uid, index, rows, world, centre)})
    return _concat(parts, {"images": np.zeros((0, *size3), dtype), "masks": np.zeros((0, *size3), np.uint8),
                           "diameter_mm": np.zeros(0), **_empty_meta()})


def _concat(parts: list[dict], empty: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate per-scan results key by key; ``empty`` (0-row arrays of the right shapes) when there are none."""
    return {k: np.concatenate([p[k] for p in parts]) for k in empty} if parts else empty


def _meta(uid: str, index: LUNA16Index, rows: pd.DataFrame, world: np.ndarray, centre: np.ndarray) -> dict:
    return {"seriesuid": np.array([uid] * len(rows), dtype=object), "subset": np.full(len(rows), index.subset_of[uid]),
            "world": world, "voxel": centre}


def _empty_meta() -> dict[str, np.ndarray]:
    return {"seriesuid": np.zeros(0, object), "subset": np.zeros(0, np.int64), "world": np.zeros((0, 3)),
            "voxel": np.zeros((0, 3), np.int64)}
