"""Training volumes of a LUNA16 root in the study's 3D convention, with their landmarks in voxel coordinates."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from eden_lib.data.luna16 import LUNA16Index, read_scan, world_to_voxel
from eden_lib.data.subvolumes import hu_to_unit


def load_training_volumes(root: str | Path, subsets: Iterable[int]
                          ) -> tuple[list[str], np.ndarray, dict[str, pd.DataFrame | None]]:
    """Read every scan of ``subsets`` under a LUNA16 root.

    Returns:
        ``uids`` (sorted seriesuids), ``volumes`` ``(S, X, Y, Z)`` float32 in [0, 1] (HU window -1000..1000), and
        ``landmarks``: uid -> DataFrame ``landmark, x, y, z`` (continuous voxel coordinates, ``(x, y, z)`` axes) from
        ``landmarks.csv``, or None for every scan when the root has no landmarks (real LUNA16).

    Raises:
        FileNotFoundError: no scans in ``subsets``.
        ValueError: the scans differ in shape (real data must be resampled to one grid first).
    """
    subsets = list(subsets)
    index = LUNA16Index(root, subsets)
    if not index.scans:
        raise FileNotFoundError(f"no scans in subsets {subsets} under LUNA16 root {root}")
    try:
        table = index.read_landmarks()
    except FileNotFoundError:
        table = None
    uids, volumes, landmarks = list(index.scans), [], {}
    for uid in uids:
        scan = read_scan(index.scan_path(uid))
        volumes.append(hu_to_unit(np.transpose(scan.hu, (2, 1, 0))))
        landmarks[uid] = None
        if table is not None:
            rows = table[table["seriesuid"] == uid]
            zyx = world_to_voxel(rows[["coordX", "coordY", "coordZ"]].to_numpy(float).reshape(-1, 3), scan.origin,
                                 scan.spacing, scan.direction)
            landmarks[uid] = pd.DataFrame({"landmark": rows["landmark"].to_numpy(), "x": zyx[:, 2], "y": zyx[:, 1],
                                           "z": zyx[:, 0]})
    shapes = {uid: v.shape for uid, v in zip(uids, volumes)}
    if len(set(shapes.values())) > 1:
        first = volumes[0].shape
        odd = [uid for uid, s in shapes.items() if s != first]
        raise ValueError(f"LUNA16 root {root}: scans differ in shape (x, y, z): {uids[0]} is {first} but {odd[:3]} "
                         f"are {[shapes[u] for u in odd[:3]]}; real data needs resampling to one grid first")
    return uids, np.stack(volumes), landmarks


def training_spacing(root: str | Path, subsets: Iterable[int]) -> np.ndarray:
    """The voxel size ``(x, y, z)`` mm shared by the scans of ``subsets`` (read from the headers only).

    Raises:
        ValueError: the scans differ in spacing, naming two of them.
    """
    import SimpleITK as sitk

    subsets = list(subsets)
    spacings = {}
    for uid, path in LUNA16Index(root, subsets).scans.items():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        spacings[uid] = np.asarray(reader.GetSpacing(), float)
    if not spacings:
        raise FileNotFoundError(f"no scans in subsets {list(subsets)} under LUNA16 root {root}")
    first, *rest = spacings.items()
    for uid, s in rest:
        if not np.allclose(s, first[1], rtol=1e-4):
            raise ValueError(f"LUNA16 root {root}: {first[0]} has spacing {tuple(first[1])} mm but {uid} has "
                             f"{tuple(s)}; real data needs resampling to one grid first")
    return first[1]
