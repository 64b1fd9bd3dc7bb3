"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019; images from NIH ChestX-ray14, masks by SIIM/ACR radiologists)
as a map-style dataset with pneumothorax masks decoded from run-length encoding.

Layout (``reference/dataset_formats.md`` §6; ``root`` is the competition folder)::

    dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    dicom-images-test/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    train-rle.csv        ImageId, EncodedPixels      (note the space before EncodedPixels)

Items are the images that have rows in the RLE file; ``ImageId`` is the SOPInstanceUID, so both image trees are
walked once and files are found by stem, whichever folder holds them (the widely shared ``train-rle.csv`` covers the
stage-1 train and test images). ``split`` then keeps the images of one folder.

Pitfalls handled:

- The header's second column is ``" EncodedPixels"``: column names and cells are stripped.
- ``-1`` means no pneumothorax (label 0, empty mask); an image with several rows (separate regions, up to 10) gets
  the union of their masks; ``-1`` together with a region for the same image fails.
- RLE is "relative" by default (Kaggle ``mask_functions.py``, as torchxrayvision, BenchmarkTransferLearning and
  Adam decode it): integer pairs (offset, length), the offset counted from the end of the previous run, over the
  flattened canvas in column-major order (reshape to ``(W, H)`` and transpose). ``mode="absolute"`` reads standard
  Kaggle RLE with 1-based starts (reported for the stage-2 ``stage_2_train.csv``; unverified here), where starts must
  not go back; relative data read as absolute fails there, and absolute data read as relative usually runs past
  the canvas, which fails too. The canvas (default 1024, the size of every SIIM image) is a parameter, and an image
  of another size fails rather than receiving a misplaced mask.
- Pixels are JPEG Baseline 8-bit MONOCHROME2 in the real files; decoding goes through pydicom and assumes no transfer
  syntax. Sex, age (a plain number string), view and ``PatientID`` come from the DICOM header; ``patient_id`` falls
  back to the ImageId when the header has no ``PatientID``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from eden_lib.data.dicom import (
    header_frame,
    index_files,
    optional_int,
    read_csv_lines,
    read_pixels,
    to_image_tensor,
)

RLE_FILE = "train-rle.csv"
IMAGE_DIRS = {"train": "dicom-images-train", "test": "dicom-images-test"}
LABELS = ("Pneumothorax",)
MODES = ("relative", "absolute")
NEGATIVE = "-1"


def parse_rle(rle: str, n_pixels: int, mode: str = "relative") -> tuple[np.ndarray, np.ndarray]:
    """Runs of one RLE string as 0-based flat (column-major) ``starts`` and ``lengths`` (int64); ``-1`` has none.

    Raises:
        ValueError: (without the file name; callers add it) for a malformed string or runs outside the canvas.
    """
    if mode not in MODES:
        raise ValueError(f"RLE mode={mode!r}, expected one of {list(MODES)}")
    text = rle.strip()
    if text == NEGATIVE:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = text.split()
    if not tokens or len(tokens) % 2 or not all(t.isascii() and t.isdigit() for t in tokens):
        raise ValueError(f"RLE {text[:40]!r} is not an even number of non-negative integers, nor -1")
    values = np.array(tokens, dtype=np.int64)
    first, lengths = values[0::2], values[1::2]
    if (lengths == 0).any():
        raise ValueError(f"RLE {text[:40]!r} has a run of length 0")
    if mode == "relative":
        ends = np.cumsum(first + lengths)
        starts = ends - lengths
    else:
        starts = first - 1
        ends = starts + lengths
        if (starts < 0).any() or (starts[1:] < ends[:-1]).any():
            raise ValueError(f"RLE {text[:40]!r} is not absolute RLE (starts must be >= 1 and never before the end "
                             f"of the previous run); relative RLE needs mode='relative'")
    if ends[-1] > n_pixels:
        raise ValueError(f"RLE runs end at pixel {int(ends[-1])}, past the {n_pixels}-pixel canvas (wrong canvas "
                         f"size, or absolute RLE read with mode='relative'?)")
    return starts, lengths


def runs_to_mask(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W)`` mask, 1 on the runs (flat index ``x * H + y``, column-major)."""
    height, width = shape
    flat = np.zeros(height * width, np.uint8)
    for start, length in zip(starts, lengths):
        flat[start:start + length] = 1
    return flat.reshape(width, height).T.copy()


def rle_decode(rle: str, shape: tuple[int, int] = (1024, 1024), mode: str = "relative") -> np.ndarray:
    """One RLE string -> uint8 ``(H, W)`` mask of 0/1 (``-1`` gives an empty mask)."""
    return runs_to_mask(*parse_rle(rle, shape[0] * shape[1], mode), shape)


def rle_encode(mask: np.ndarray, mode: str = "relative") -> str:
    """A ``(H, W)`` mask (nonzero = foreground) -> RLE string over the column-major flattening; ``-1`` if empty."""
    if mode not in MODES:
        raise ValueError(f"RLE mode={mode!r}, expected one of {list(MODES)}")
    flat = np.asarray(mask).astype(bool).T.ravel()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(np.int8), [0]])))
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return NEGATIVE
    first = starts - np.concatenate([[0], ends[:-1]]) if mode == "relative" else starts + 1
    return " ".join(f"{a} {b}" for a, b in zip(first, ends - starts))


class SIIMACRPneumothorax(Dataset):
    """SIIM-ACR Pneumothorax as a map-style dataset.

    Each item is a dict: ``image`` float32 ``(1, H, W)`` in [0, 1], ``label`` float32 ``(1,)`` (1 = pneumothorax),
    ``mask`` uint8 ``(H, W)`` 0/1 (union of the image's regions; nearest-resized with the image), ``sex``
    ``"M"``/``"F"``/None, ``age`` int or None, ``patient_id`` (DICOM ``PatientID``), ``image_id`` (the ImageId /
    SOPInstanceUID) and ``view`` (``"PA"``/``"AP"``/None).

    ``meta`` has one row per item: ``image_id, split, patient_id, n_regions, sex, age, view``.

    Args:
        root: the competition folder.
        split: ``"train"`` (images under ``dicom-images-train``), ``"test"`` (under ``dicom-images-test``) or None
            (every image of the RLE file).
        rle_file: the RLE CSV, relative to ``root`` (``stage_2_train.csv`` with ``mode="absolute"``).
        mode: ``"relative"`` (``train-rle.csv``) or ``"absolute"``.
        canvas: side of the square image the RLE indexes (1024 for SIIM).
        image_size: resize to ``image_size`` squared (bilinear; mask nearest); None keeps the DICOM size.
        workers: threads reading the DICOM headers for ``meta`` at construction.
    """

    labels = LABELS

    def __init__(self, root: Path | str, split: str | None = None, rle_file: str = RLE_FILE, mode: str = "relative",
                 canvas: int = 1024, image_size: int | None = None, workers: int = 4) -> None:
        self.root = Path(root)
        if split is not None and split not in IMAGE_DIRS:
            raise ValueError(f"SIIMACRPneumothorax: split={split!r}, expected one of {list(IMAGE_DIRS)} or None")
        if mode not in MODES:
            raise ValueError(f"SIIMACRPneumothorax: mode={mode!r}, expected one of {list(MODES)}")
        self.canvas, self.image_size = int(canvas), image_size
        path = self.root / rle_file
        df = read_csv_lines(path, ["ImageId", "EncodedPixels"], what="SIIM-ACR RLE")
        runs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        negative: dict[str, int] = {}
        first_line: dict[str, int] = {}
        for image_id, rle, line in zip(df["ImageId"], df["EncodedPixels"], df["line"]):
            if not image_id:
                raise ValueError(f"{path}: line {line} has an empty ImageId")
            try:
                parsed = parse_rle(rle, self.canvas ** 2, mode)
            except ValueError as e:
                raise ValueError(f"{path}: line {line} (ImageId {image_id}): {e}") from e
            first_line.setdefault(image_id, line)
            if rle == NEGATIVE:
                negative[image_id] = line
            else:
                runs.setdefault(image_id, []).append(parsed)
            if image_id in negative and image_id in runs:
                raise ValueError(f"{path}: line {line} (ImageId {image_id}): both -1 (line {negative[image_id]}) and "
                                 f"a pneumothorax region; expected one or the other")
        folders = [self.root / d for d in IMAGE_DIRS.values() if (self.root / d).is_dir()]
        if not folders:
            raise FileNotFoundError(f"SIIMACRPneumothorax: {self.root} has none of {list(IMAGE_DIRS.values())}")
        files = index_files(folders, ".dcm")
        folder_split = {self.root / d: s for s, d in IMAGE_DIRS.items()}
        ids, paths, splits = [], [], []
        for image_id, line in first_line.items():
            if image_id not in files:
                raise FileNotFoundError(f"SIIMACRPneumothorax: no {image_id}.dcm under {[str(f) for f in folders]} "
                                        f"for ImageId {image_id} ({path.name} line {line})")
            found = files[image_id]
            image_split = next(s for f, s in folder_split.items() if f in found.parents)
            if split is None or image_split == split:
                ids.append(image_id)
                paths.append(found)
                splits.append(image_split)
        self.paths: list[Path] = paths
        self._runs = [runs.get(image_id, []) for image_id in ids]
        self.targets = np.array([[float(bool(r))] for r in self._runs], np.float32).reshape(len(ids), 1)
        headers = header_frame(paths, workers)
        self.meta = pd.DataFrame({
            "image_id": ids, "split": splits,
            "patient_id": headers["dicom_patient_id"].where(headers["dicom_patient_id"].notna(), pd.Series(ids)),
            "n_regions": [len(r) for r in self._runs],
        }).join(headers[["sex", "age", "view"]])

    def __len__(self) -> int:
        return len(self.paths)

    def mask(self, i: int) -> np.ndarray:
        """uint8 ``(canvas, canvas)`` union mask of item ``i``."""
        shape = (self.canvas, self.canvas)
        out = np.zeros(shape, np.uint8)
        for starts, lengths in self._runs[i]:
            out |= runs_to_mask(starts, lengths, shape)
        return out

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        pixels = read_pixels(self.paths[i])
        if pixels.shape != (self.canvas, self.canvas):
            raise ValueError(f"{self.paths[i]}: image is {pixels.shape[0]}x{pixels.shape[1]} but the RLE canvas is "
                             f"{self.canvas}x{self.canvas}; pass canvas= to match")
        mask = self.mask(i)
        if self.image_size is not None and mask.shape != (self.image_size, self.image_size):
            mask = np.asarray(Image.fromarray(mask).resize((self.image_size, self.image_size), Image.NEAREST))
        return {
            "image": to_image_tensor(pixels, self.image_size),
            "label": torch.from_numpy(self.targets[i].copy()),
            "mask": torch.from_numpy(mask.copy()),
            "sex": row["sex"],
            "age": optional_int(row["age"]),
            "patient_id": row["patient_id"],
            "image_id": row["image_id"],
            "view": row["view"],
        }
