"""NIH ChestX-ray14: the real on-disk format, a writer for SynthCXR and the loader used for both.

Layout (``reference/dataset_formats.md`` §1): PNGs named ``{patient:08d}_{follow_up:03d}.png`` in a flat
``images/`` folder (NIH Box) or nested ``images_001/images/`` folders (Kaggle), ``Data_Entry_2017_v2020.csv``
(or the Kaggle ``Data_Entry_2017.csv``) with one row per image, the patient-disjoint ``train_val_list.txt`` and
``test_list.txt``, and ``BBox_List_2017.csv`` (finding boxes of test images, :func:`read_bbox_list`). Synthetic
data adds sidecars NIH does not have, under ``synth/``: mask bitfields (``synth/masks/<Image Index>``),
``synth/landmarks.csv`` (``image_index, landmark, x, y``) and ``synth/meta.csv`` (``image_index, site``). Real NIH
data simply has no ``synth/`` folder.

Labels are the 14 official findings (``NIH14``, the order of the JLiang Lab list files); ``No Finding`` is all
zeros; a row whose ``Finding Labels`` cell is empty is unknown (NaN).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from eden_lib.seed import rng

if TYPE_CHECKING:
    from eden_lib.data.synth_cxr import SynthCXR

NIH14 = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The 14 official ChestX-ray14 labels in the official (JLiang Lab list file) order."""

NO_FINDING = "No Finding"
DATA_ENTRY = "Data_Entry_2017_v2020.csv"
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
BBOX_LIST = "BBox_List_2017.csv"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
"""The real header: 9 fields, while every data row has 6 (``file,label,x,y,w,h``)."""
BBOX_COLUMNS = ["Image Index", "Finding Label", "x", "y", "w", "h"]
BBOX_SPELLINGS = {"Infiltrate": "Infiltration"}
"""Box labels spelled otherwise than in ``Data_Entry_2017*.csv`` (the real file writes ``Infiltrate``)."""
_COLUMNS = {
    "Image Index": "image_index",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}


def write_chestxray14(root: Path, synth: "SynthCXR", test_fraction: float, seed: int) -> None:
    """Write ``synth`` in the NIH Box layout under ``root`` (8-bit grayscale PNGs, CSV, split lists, sidecars).

    The test split holds ``round(test_fraction * n_patients)`` whole patients, drawn with ``seed``. Finding boxes
    (``synth.boxes``) go to ``BBox_List_2017.csv`` for the test images only, as in the real release.
    """
    from eden_lib.data.synth_cxr import FINDINGS, LANDMARKS

    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"write_chestxray14: test_fraction={test_fraction!r}, expected a float in [0, 1)")
    root = Path(root)
    meta = synth.meta
    n, size = len(meta), synth.images.shape[-1]
    for arr, name, shape in ((synth.masks, "masks", (n, size, size)), (synth.labels, "labels", (n, len(FINDINGS))),
                             (synth.landmarks, "landmarks", (n, len(LANDMARKS), 2))):
        if arr.shape != shape:
            raise ValueError(f"write_chestxray14: synth.{name} has shape {arr.shape}, expected {shape}")
    names = meta["image_index"].tolist()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "synth" / "masks").mkdir(parents=True, exist_ok=True)

    def save(i: int) -> None:
        Image.fromarray(synth.images[i]).save(root / "images" / names[i], compress_level=1)
        Image.fromarray(synth.masks[i]).save(root / "synth" / "masks" / names[i], compress_level=1)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(save, range(n)))

    spacing = round(350.0 / size, 4)  # a 35 cm film
    findings = np.array(FINDINGS)
    with open(root / DATA_ENTRY, "w", newline="") as fh:
        fh.write(DATA_ENTRY_HEADER + "\n")
        w = csv.writer(fh, lineterminator="\n")
        for i, row in enumerate(meta.itertuples(index=False)):
            labels = "|".join(findings[synth.labels[i].astype(bool)]) or NO_FINDING
            w.writerow([row.image_index, labels, row.follow_up, row.patient_id, row.age, row.sex, row.view,
                        size, size, spacing, spacing])

    patients = np.unique(meta["patient_id"].to_numpy())
    test_patients = rng(seed, "nihsplit").permutation(patients)[: int(round(test_fraction * len(patients)))]
    is_test = meta["patient_id"].isin(test_patients).to_numpy()
    for split, mask in (("test", is_test), ("train_val", ~is_test)):
        (root / SPLIT_FILES[split]).write_text("".join(f"{name}\n" for name in meta["image_index"][mask]))
    write_bbox_list(root / BBOX_LIST, synth.boxes[synth.boxes["image_index"].isin(set(meta["image_index"][is_test]))])

    lm = pd.DataFrame({
        "image_index": np.repeat(names, len(LANDMARKS)),
        "landmark": np.tile(LANDMARKS, n),
        "x": synth.landmarks[..., 0].ravel(),
        "y": synth.landmarks[..., 1].ravel(),
    })
    lm.to_csv(root / "synth" / "landmarks.csv", index=False, float_format="%.4f")
    meta[["image_index", "site"]].to_csv(root / "synth" / "meta.csv", index=False)


def write_bbox_list(path: Path, boxes: pd.DataFrame) -> None:
    """Write ``boxes`` (``image_index, finding, x, y, w, h``; pixels of the stored PNG) as ``BBox_List_2017.csv``: the
    9-field header, then one 6-field row ``file,label,x,y,w,h`` per box with float coordinates."""
    with open(path, "w", newline="") as fh:
        fh.write(BBOX_HEADER + "\n")
        w = csv.writer(fh, lineterminator="\n")
        for row in boxes.itertuples(index=False):
            w.writerow([row.image_index, row.finding, *(repr(float(getattr(row, k))) for k in "xywh")])


def read_bbox_list(path: Path | str) -> pd.DataFrame:
    """Read a ``BBox_List_2017.csv`` into columns ``Image Index, Finding Label, x, y, w, h`` (one row per box, file
    order; float pixels of the stored PNG, ``(x, y)`` the top-left corner).

    Accepts the real file's quirks: the header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (9 fields over 6-field
    rows; a header naming ``x,y,w,h`` is accepted too), empty trailing fields, and ``Infiltrate`` for
    ``Infiltration`` (labels come back in the ``NIH14`` spelling).

    Raises:
        ValueError: naming the file and the 1-based line of a header without these columns, a row without 6 fields,
            a label outside ``NIH14``, or a coordinate that is not a finite number (or a negative width/height).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIH box list not found: {path}")
    with open(path, newline="") as fh:
        lines = list(csv.reader(fh))
    if not lines:
        raise ValueError(f"{path}: empty; expected the header {BBOX_HEADER!r} and one row per box")
    header = [f.strip() for f in lines[0]]
    while header and not header[-1]:
        header.pop()
    if header[:2] != BBOX_COLUMNS[:2] or not (header[2:3] == ["Bbox [x"] or header[2:6] == BBOX_COLUMNS[2:]):
        missing = [c for c in BBOX_COLUMNS[:2] if c not in header] or ["Bbox [x,y,w,h]"]
        raise ValueError(f"{path}: row 1 (header) has columns {header}, missing {missing}; expected {BBOX_HEADER!r}")
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        fields = [f.strip() for f in fields]
        while fields and not fields[-1]:
            fields.pop()
        if not fields:
            continue
        if len(fields) != 6:
            raise ValueError(f"{path}: row {number} has {len(fields)} field(s) {fields}; expected 6: "
                             "Image Index,Finding Label,x,y,w,h")
        name, label = fields[0], BBOX_SPELLINGS.get(fields[1], fields[1])
        if label not in NIH14:
            raise ValueError(f"{path}: row {number} ({name}) has label {fields[1]!r}; expected one of {list(NIH14)} "
                             f"or {list(BBOX_SPELLINGS)}")
        try:
            x, y, w, h = (float(f) for f in fields[2:])
        except ValueError:
            raise ValueError(f"{path}: row {number} ({name}) has coordinates {fields[2:]}; expected four numbers "
                             "x,y,w,h") from None
        if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
            raise ValueError(f"{path}: row {number} ({name}) has box {[x, y, w, h]}; expected finite x, y and "
                             "w, h >= 0")
        rows.append((name, label, x, y, w, h))
    return pd.DataFrame(rows, columns=BBOX_COLUMNS).astype({c: np.float64 for c in "xywh"})


def stored_sizes(root: Path | str, names: Sequence[str]) -> np.ndarray:
    """``(width, height)`` int64 ``(N, 2)`` of the stored PNGs ``names`` of a ChestX-ray14 root (the frame of the box
    list), found as the loader finds them (flat ``images/`` or nested folders)."""
    found = _image_paths(Path(root), list(names))
    return np.array([_native_size(p)[::-1] for p in found], dtype=np.int64).reshape(len(found), 2)


def read_data_entry(path: Path | str) -> pd.DataFrame:
    """Read a ``Data_Entry_2017*.csv`` into columns ``image_index, finding_labels, follow_up, patient_id, age,
    sex, view`` (one row per image, file order).

    Accepts the v2020 Box file, the 2017/Kaggle file with a trailing comma on every line (an ``Unnamed``
    column), and copies whose sex column is ``Patient Sex`` instead of ``Patient Gender``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIH data entry file not found: {path}")
    df = pd.read_csv(path, dtype={"Image Index": str, "Finding Labels": str}, keep_default_na=True)
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed")]]
    df = df.rename(columns={c: c.strip() for c in df.columns}).rename(columns={"Patient Sex": "Patient Gender"})
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}, expected the NIH header "
                         f"{DATA_ENTRY_HEADER!r} (or 'Patient Sex' for 'Patient Gender')")
    out = df[list(_COLUMNS)].rename(columns=_COLUMNS)
    out["image_index"] = out["image_index"].str.strip()
    for column in ("follow_up", "patient_id", "age"):
        values = pd.to_numeric(out[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise ValueError(f"{path}: column {column!r} row {row} ({out['image_index'].iloc[row]}) has "
                             f"{out[column].iloc[row]!r}, expected an integer")
        out[column] = values.astype(np.int64)
    out["sex"] = out["sex"].astype(str).str.strip()
    out["view"] = out["view"].astype(str).str.strip()
    return out.reset_index(drop=True)


def encode_labels(finding_labels: pd.Series, labels: Sequence[str], source: str = "") -> np.ndarray:
    """Multi-hot float32 ``(N, K)`` from ``|``-joined ``Finding Labels``; an empty cell gives a NaN row."""
    unknown = [lab for lab in labels if lab not in NIH14]
    if unknown:
        raise ValueError(f"{source}: unknown label(s) {unknown}; expected names from {list(NIH14)}")
    col = {lab: k for k, lab in enumerate(labels)}
    out = np.zeros((len(finding_labels), len(labels)), np.float32)
    for i, cell in enumerate(finding_labels):
        if not isinstance(cell, str) or not cell.strip():
            out[i] = np.nan
            continue
        for token in cell.split("|"):
            token = token.strip()
            if token != NO_FINDING and token not in NIH14:
                raise ValueError(f"{source}: row {i} has finding {token!r}; expected one of {list(NIH14)} or "
                                 f"{NO_FINDING!r}")
            if token in col:
                out[i, col[token]] = 1.0
    return out


def _data_entry_file(root: Path) -> Path:
    for name in (DATA_ENTRY, "Data_Entry_2017.csv"):
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("Data_Entry_2017*.csv"))
    if not found:
        raise FileNotFoundError(f"{root}: no {DATA_ENTRY} (or Data_Entry_2017*.csv) found")
    return found[0]


def _image_paths(root: Path, names: Sequence[str]) -> list[Path]:
    """Path of every image name: the flat ``images/`` folder first, else a recursive search (Kaggle layout)."""
    flat = root / "images"
    paths = [flat / name for name in names]
    if all(p.is_file() for p in paths):
        return paths
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*.png")):
        if "synth" not in p.relative_to(root).parts[:1]:
            found.setdefault(p.name, p)
    missing = [name for name in names if name not in found]
    if missing:
        raise FileNotFoundError(f"{root}: image {missing[0]} not found (flat images/ or nested folders); "
                                f"{len(missing)} missing in all")
    return [found[name] for name in names]


def read_image(path: Path, size: int | None = None, resample: int = Image.BILINEAR) -> np.ndarray:
    """One image as uint8 ``(H, W)``: RGB/RGBA/palette PNGs become single channel, 16-bit is divided by 257."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.clip(np.asarray(im, dtype=np.float64), 0, 65535)
            im = Image.fromarray(np.round(arr / 257.0).astype(np.uint8))
        elif im.mode != "L":
            im = im.convert("L")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), resample)
        return np.asarray(im, dtype=np.uint8)


class _Index:
    """Parsed metadata of one ChestX-ray14 root: the code path shared by the Dataset and the bulk reader."""

    def __init__(self, root: Path | str, split: str | None, labels: Sequence[str]) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLIT_FILES:
            raise ValueError(f"ChestXray14: split={split!r}, expected one of {list(SPLIT_FILES)} or None")
        entry = _data_entry_file(self.root)
        meta = read_data_entry(entry)
        if split is not None:
            list_file = self.root / SPLIT_FILES[split]
            if not list_file.is_file():
                raise FileNotFoundError(f"ChestXray14: split list {list_file} not found")
            names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
            unknown = sorted(set(names) - set(meta["image_index"]))
            if unknown:
                raise ValueError(f"{list_file}: {len(unknown)} image(s) not in {entry.name}, e.g. {unknown[0]}")
            meta = meta[meta["image_index"].isin(set(names))].reset_index(drop=True)
        self.labels = tuple(labels)
        self.targets = encode_labels(meta["finding_labels"], self.labels, str(entry))
        self.paths = _image_paths(self.root, meta["image_index"].tolist())
        synth = self.root / "synth"
        self.mask_dir = synth / "masks" if (synth / "masks").is_dir() else None
        self.landmark_names: tuple[str, ...] = ()
        self.landmarks = None
        if (synth / "landmarks.csv").is_file():
            lm = pd.read_csv(synth / "landmarks.csv")
            self.landmark_names = tuple(pd.unique(lm["landmark"]))
            table = lm.pivot(index="image_index", columns="landmark", values=["x", "y"])
            missing = sorted(set(meta["image_index"]) - set(table.index))
            if missing:
                raise ValueError(f"{synth / 'landmarks.csv'}: no landmarks for image {missing[0]}")
            table = table.reindex(meta["image_index"])
            xy = [table["x"][list(self.landmark_names)].to_numpy(), table["y"][list(self.landmark_names)].to_numpy()]
            self.landmarks = np.stack(xy, axis=-1).astype(np.float32)
        if (synth / "meta.csv").is_file():
            meta = meta.merge(pd.read_csv(synth / "meta.csv"), on="image_index", how="left")
        self.meta = meta

    def mask_path(self, i: int) -> Path:
        path = self.mask_dir / self.meta["image_index"].iloc[i]
        if not path.is_file():
            raise FileNotFoundError(f"ChestXray14: mask sidecar {path} not found")
        return path

    def scaled_landmarks(self, i: int, native: tuple[int, int], size: int | None) -> np.ndarray:
        """Landmarks of image ``i`` in pixels of the returned image (pixel centres scale with the image)."""
        pts = self.landmarks[i].copy()
        if size is not None:
            pts[:, 0] = (pts[:, 0] + 0.5) * (size / native[1]) - 0.5
            pts[:, 1] = (pts[:, 1] + 0.5) * (size / native[0]) - 0.5
        return pts


def _native_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


class ChestXray14(Dataset):
    """NIH ChestX-ray14 (real or synthetic) as a map-style dataset.

    Each item is a dict: ``image`` float32 tensor ``(1, H, W)`` in [0, 1], ``label`` float32 ``(K,)`` (NaN where
    unknown), ``sex``, ``age``, ``patient_id``, ``image_index``, and with the ``synth/`` sidecars ``mask`` uint8
    ``(H, W)`` bitfield and ``landmarks`` float32 ``(L, 2)`` pixel ``(x, y)``.

    Args:
        root: folder with the data entry CSV, the split lists and the images.
        split: ``"train_val"``, ``"test"`` or None (every row of the CSV).
        labels: label columns, default all ``NIH14``.
        image_size: resize to ``image_size`` squared (bilinear; masks nearest); None keeps the stored size.
    """

    def __init__(self, root: Path | str, split: str | None = None, labels: Sequence[str] = NIH14,
                 image_size: int | None = None) -> None:
        self.index = _Index(root, split, labels)
        self.image_size = image_size
        self.meta = self.index.meta
        self.labels = self.index.labels
        self.landmark_names = self.index.landmark_names

    def __len__(self) -> int:
        return len(self.index.paths)

    def __getitem__(self, i: int) -> dict:
        idx, row = self.index, self.meta.iloc[i]
        image = read_image(idx.paths[i], self.image_size)
        item = {
            "image": torch.from_numpy(image.astype(np.float32) / 255.0)[None],
            "label": torch.from_numpy(idx.targets[i].copy()),
            "sex": row["sex"],
            "age": int(row["age"]),
            "patient_id": int(row["patient_id"]),
            "image_index": row["image_index"],
        }
        if idx.mask_dir is not None:
            item["mask"] = torch.from_numpy(read_image(idx.mask_path(i), self.image_size, Image.NEAREST).copy())
        if idx.landmarks is not None:
            native = _native_size(idx.paths[i]) if self.image_size is not None else image.shape
            item["landmarks"] = torch.from_numpy(idx.scaled_landmarks(i, native, self.image_size))
        return item


def load_chestxray14_arrays(root: Path | str, labels: Sequence[str] = NIH14, size: int | None = None,
                            split: str | None = None) -> dict:
    """Read a whole ChestX-ray14 root into arrays (for ``prepare``'s tensor cache), parsing as the Dataset does.

    Returns dict ``images`` uint8 ``(N, H, W)``, ``labels`` float32 ``(N, K)``, ``meta`` DataFrame, ``masks``
    uint8 ``(N, H, W)`` or None, ``landmarks`` float32 ``(N, L, 2)`` or None, ``landmark_names``.
    """
    idx = _Index(root, split, labels)
    n = len(idx.paths)

    def load(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(idx.paths[i], size)
        mask = read_image(idx.mask_path(i), size, Image.NEAREST) if idx.mask_dir is not None else None
        return image, mask

    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(load, range(n)))
    shapes = {im.shape for im, _ in loaded}
    if len(shapes) > 1:
        first = loaded[0][0].shape
        odd = next(i for i, (im, _) in enumerate(loaded) if im.shape != first)
        raise ValueError(f"{idx.paths[odd]}: shape {loaded[odd][0].shape} differs from {first}; pass size= to resize")
    images = np.stack([im for im, _ in loaded]) if n else np.zeros((0, size or 0, size or 0), np.uint8)
    masks = np.stack([m for _, m in loaded]) if idx.mask_dir is not None and n else None
    landmarks = None
    if idx.landmarks is not None:
        native = _native_size(idx.paths[0]) if n else (0, 0)
        landmarks = np.stack([idx.scaled_landmarks(i, native, size) for i in range(n)]) if n else idx.landmarks
    return {"images": images, "labels": idx.targets, "meta": idx.meta, "masks": masks, "landmarks": landmarks,
            "landmark_names": idx.landmark_names}
