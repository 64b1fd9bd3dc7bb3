"""CAD-PE, the pulmonary embolism detection challenge (González et al., "Computer Aided Detection for Pulmonary
Embolism Challenge (CAD-PE)", arXiv:2003.13440, 2020; IEEE DataPort "CAD-PE").

Layout (``reference/dira_caid_transfer_alice_cadpe.md`` §5.1, ``reference/dataset_formats.md`` §9)::

    root/**/<id>.nrrd          CTPA, HU
    root/**/<id>RefStd.nrrd    reference standard: integer label map, one label per embolus, 0 background

searched recursively (flat, or images and references in separate folders). ``.nii``, ``.nii.gz``, ``.mha`` and
``.mhd`` are accepted in place of ``.nrrd`` (all read with SimpleITK, ``luna16.read_scan``); DICOM series are not.

IDs ``001``-``040`` are the challenge scans (``001``-``020`` training, ``021``-``040`` the evaluation set whose
reference was withheld during the challenge), ``eNNNN`` the 51 post-challenge scans. Splits: ``"train"``
(001-020), ``"test"`` (021-040), ``"post_challenge"`` (eNNNN), ``"other"`` (any other ID); a sequence of these
names selects their union (third-party work trains on ``("train", "post_challenge")`` and tests on ``"test"``);
None = all.

Axis order. Challenge markers are ``Scan X Y Z`` **voxel** coordinates in file order (x fastest), so ``image`` and
``emboli`` are kept in the file's ``(X, Y, Z)`` voxel order, never reoriented (``sitk.GetArrayFromImage``'s
``(z, y, x)`` is transposed): ``emboli[x, y, z]`` is the label under marker ``(x, y, z)``. Geometry
(``origin``/``spacing``/``direction``, LPS) is the file's, kept for the mm tolerance of the FROC and for world
coordinates (``luna16.voxel_to_world`` after reversing to ``(z, y, x)``).

Pitfalls handled: scan IDs keep their leading zeros (strings); the number of emboli is the number of distinct
non-zero labels, not the maximum label (gaps in the numbering are tolerated); negative or non-integer labels are an
error naming the file; the reference must share the image's grid (shape, spacing, origin, direction) or it is an
error naming it; PE-free scans (``002`` and ``031`` in the release) stay in the set: they count in the FROC's
false positives per scan; a missing reference or an unreadable/truncated file is an error naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from eden_lib.data.ct3d import Geometry, scale_hu
from eden_lib.data.luna16 import CTScan, read_scan, voxel_to_world
from eden_lib.data.subvolumes import HU_WINDOW

LABELS = ("pe",)
SPLITS = ("train", "test", "post_challenge", "other")
REFSTD_SUFFIX = "RefStd"
EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")


def split_of(scan_id: str) -> str:
    """``"train"`` for 001-020, ``"test"`` for 021-040, ``"post_challenge"`` for eNNNN, else ``"other"``."""
    if re.fullmatch(r"\d+", scan_id) and 1 <= int(scan_id) <= 40:
        return "train" if int(scan_id) <= 20 else "test"
    return "post_challenge" if re.fullmatch(r"e\d+", scan_id) else "other"


def _stem(path: Path) -> str | None:
    name = path.name
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
    return None if ext is None else name[: -len(ext)]


def read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """A SimpleITK-readable 3D file as ``(X, Y, Z)`` (stored dtype) and its LPS geometry; errors name the file."""
    try:
        scan: CTScan = read_scan(path)
    except RuntimeError as e:  # SimpleITK reports unreadable and truncated files as RuntimeError
        raise ValueError(f"{path}: unreadable or truncated image file ({str(e).strip().splitlines()[-1]})") from e
    return (np.ascontiguousarray(scan.hu.transpose(2, 1, 0)),
            Geometry(origin=scan.origin, spacing=scan.spacing, direction=scan.direction))


def read_reference(path: Path) -> tuple[np.ndarray, Geometry]:
    """A ``RefStd`` label map as int16 ``(X, Y, Z)`` with its geometry, checked to hold integers in [0, 32767]."""
    labels, geometry = read_volume(path)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{path}: non-integer labels in the reference standard")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int16).max):
        raise ValueError(f"{path}: labels range {labels.min()}..{labels.max()}, expected 0 (background) and "
                         f"1..{np.iinfo(np.int16).max} (one per embolus)")
    return labels.astype(np.int16), geometry


def emboli_voxels(emboli: np.ndarray) -> dict[int, np.ndarray]:
    """Each embolus's voxels: ``{label: (n, 3) int64 (x, y, z)}`` for every non-zero label, in label order."""
    flat = np.flatnonzero(emboli)
    labels = emboli.ravel()[flat]
    order = np.argsort(labels, kind="stable")
    flat, labels = flat[order], labels[order]
    coords = np.stack(np.unravel_index(flat, emboli.shape), axis=1).astype(np.int64)
    cuts = np.flatnonzero(np.diff(labels)) + 1
    return {int(group[0]): c for group, c in zip(np.split(labels, cuts), np.split(coords, cuts)) if len(group)}


def emboli_table(emboli: np.ndarray, geometry: Geometry | None = None) -> pd.DataFrame:
    """One row per embolus: ``label, n_voxels, x, y, z`` (voxel centroid) and, given the geometry, ``volume_mm3``
    and the world centroid ``world_x, world_y, world_z`` (LPS mm). Vectorised (one ``bincount`` per axis)."""
    flat = np.flatnonzero(emboli)
    labels = emboli.ravel()[flat].astype(np.int64)
    present = np.unique(labels)
    counts = np.bincount(labels, minlength=int(present.max(initial=0)) + 1)
    coords = np.unravel_index(flat, emboli.shape)
    centroid = np.stack([np.bincount(labels, weights=c, minlength=len(counts))[present] for c in coords], axis=1)
    centroid = centroid / counts[present, None] if len(present) else np.zeros((0, 3))
    table = pd.DataFrame({"label": present, "n_voxels": counts[present], "x": centroid[:, 0], "y": centroid[:, 1],
                          "z": centroid[:, 2]})
    if geometry is not None:
        world = voxel_to_world(centroid[:, ::-1], geometry.origin, geometry.spacing, geometry.direction)
        table["volume_mm3"] = table["n_voxels"] * float(np.prod(geometry.spacing))
        table[["world_x", "world_y", "world_z"]] = np.asarray(world).reshape(-1, 3)
    return table


class _References(Mapping):
    """Lazy ``{scan_id: emboli (X, Y, Z)}``: each RefStd is read when asked for (the FROC reads one at a time)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths

    def __getitem__(self, scan_id: str) -> np.ndarray:
        return read_reference(self._paths[scan_id])[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


class CADPE(Dataset):
    """CAD-PE CTPA scans with their per-embolus reference standard.

    Each item: ``image`` float32 ``(1, X, Y, Z)`` (HU windowed to [0, 1]; raw HU if ``hu_window`` is None),
    ``emboli`` int16 ``(X, Y, Z)`` (0 background, one label per embolus), ``n_emboli`` (int), ``label`` float32
    ``(1,)`` (``pe``: 1 when the scan has an embolus), ``sex``/``age`` None (not distributed), ``patient_id`` (the
    scan ID, e.g. ``"001"``, ``"e0032"``), ``origin``/``spacing``/``direction`` (the file's, LPS).

    Args:
        root: folder holding the ``<id>`` and ``<id>RefStd`` files (searched recursively).
        split: a name from ``SPLITS``, a sequence of them, or None (all).
        hu_window: HU range mapped to [0, 1].
    """

    labels = LABELS

    def __init__(self, root: Path | str, split: str | Sequence[str] | None = None,
                 hu_window: tuple[float, float] | None = HU_WINDOW) -> None:
        self.root = Path(root)
        wanted = SPLITS if split is None else (split,) if isinstance(split, str) else tuple(split)
        unknown = [s for s in wanted if s not in SPLITS]
        if unknown:
            raise ValueError(f"CADPE: split={split!r}, expected names from {list(SPLITS)} or None")
        if not self.root.is_dir():
            raise FileNotFoundError(f"CAD-PE root {self.root} does not exist")
        self.hu_window = hu_window
        images, references = {}, {}
        for path in sorted(self.root.rglob("*")):
            stem = _stem(path)
            if stem is None or not path.is_file():
                continue
            is_ref = stem.endswith(REFSTD_SUFFIX)
            found = references if is_ref else images
            key = stem[: -len(REFSTD_SUFFIX)] if is_ref else stem
            if key in found:
                raise ValueError(f"CAD-PE: {key}{REFSTD_SUFFIX if is_ref else ''} found twice: {found[key]} and {path}")
            found[key] = path
        lonely = sorted(set(references) - set(images))
        if lonely:
            raise FileNotFoundError(f"CAD-PE: {references[lonely[0]]} has no image {lonely[0]}.nrrd under {self.root}")
        rows = []
        for scan_id in sorted(images):
            if split_of(scan_id) not in wanted:
                continue
            if scan_id not in references:
                raise FileNotFoundError(f"CAD-PE: {images[scan_id]} has no reference standard "
                                        f"{scan_id}{REFSTD_SUFFIX}.nrrd under {self.root}")
            rows.append({"patient_id": scan_id, "split": split_of(scan_id), "image_path": images[scan_id],
                         "refstd_path": references[scan_id]})
        self.meta = pd.DataFrame(rows, columns=["patient_id", "split", "image_path", "refstd_path"])

    def __len__(self) -> int:
        return len(self.meta)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, Geometry]:
        """HU ``(X, Y, Z)`` (stored dtype), emboli int16 ``(X, Y, Z)`` and geometry of item ``i``, grids checked."""
        row = self.meta.iloc[i]
        hu, geometry = read_volume(row["image_path"])
        emboli, ref = read_reference(row["refstd_path"])
        same = (emboli.shape == hu.shape and np.allclose(ref.spacing, geometry.spacing, atol=1e-4)
                and np.allclose(ref.origin, geometry.origin, atol=1e-3)
                and np.allclose(ref.direction, geometry.direction, atol=1e-4))
        if not same:
            raise ValueError(f"{row['refstd_path']}: grid (shape {emboli.shape}, spacing {ref.spacing.tolist()}, "
                             f"origin {ref.origin.tolist()}) differs from the image {row['image_path']} (shape "
                             f"{hu.shape}, spacing {geometry.spacing.tolist()}, origin {geometry.origin.tolist()})")
        return hu, emboli, geometry

    def __getitem__(self, i: int) -> dict:
        hu, emboli, geometry = self.read(i)
        n = len(np.unique(emboli[emboli > 0]))
        return {"image": scale_hu(hu, self.hu_window), "emboli": torch.from_numpy(emboli), "n_emboli": n,
                "label": torch.tensor([float(n > 0)]), "sex": None, "age": None,
                "patient_id": self.meta["patient_id"].iloc[i], **geometry.as_tensors()}

    def reference_standards(self) -> Mapping[str, np.ndarray]:
        """Lazy ``{scan_id: emboli}`` over the items, for ``evaluation.froc`` (one RefStd in memory at a time)."""
        return _References(dict(zip(self.meta["patient_id"], self.meta["refstd_path"])))

    def spacings(self) -> dict[str, np.ndarray]:
        """``{scan_id: (3,) voxel size along X, Y, Z in mm}`` read from the headers only."""
        import SimpleITK as sitk

        out = {}
        for scan_id, path in zip(self.meta["patient_id"], self.meta["refstd_path"]):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
            except RuntimeError as e:
                raise ValueError(f"{path}: unreadable image header ({str(e).strip().splitlines()[-1]})") from e
            out[scan_id] = np.array(reader.GetSpacing(), dtype=float)
        return out
