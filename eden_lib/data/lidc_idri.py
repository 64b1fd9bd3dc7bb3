"""LIDC-IDRI (Armato et al., Med. Phys. 38(2), 2011; TCIA): CT series with the readers' XML nodule outlines.

Layout (``reference/dataset_formats.md`` §9)::

    root/LIDC-IDRI-XXXX/<study folder>/<series folder>/*.dcm + one <reading>.xml

Folder names are not relied on (newer TCIA downloads rename them): a series is a folder of ``.dcm`` files, its UIDs,
``PatientID``, ``PatientSex`` and ``PatientAge`` come from the DICOM header. Series whose ``Modality`` is not ``CT``
(the chest radiographs of some patients, read in ``IdriReadMessage`` XML files) are skipped.

The XML subset read here, without pylidc (``LidcReadMessage``, namespace ``http://www.nih.gov``): the
``ResponseHeader`` ``SeriesInstanceUid``; up to four ``readingSession`` elements (one per reader, in file order), each
with ``unblindedReadNodule`` entries: ``noduleID``, the ``characteristics`` ratings (``subtlety``,
``internalStructure``, ``calcification``, ``sphericity``, ``margin``, ``lobulation``, ``spiculation``, ``texture``,
``malignancy``) and per-slice ``roi`` contours (``imageZposition``, ``imageSOP_UID``, ``inclusion``, ``edgeMap``
``xCoord``/``yCoord`` pixel column/row). Not read: ``nonNodule`` marks (non-nodules >= 3 mm, one point each) and the
session header fields other than the series UID.

Masks. A nodule whose every ``roi`` is a single point is a nodule < 3 mm (the readers only marked its centre): it is
listed by ``nodules()`` but drawn in no mask. For the others each ``roi`` polygon is filled with its outline
included; ``inclusion`` FALSE contours are holes, filled the same way (outline included) and removed from that
nodule's inclusion contours on the same slice. Per reader the union of its nodules is taken; ``reader_count`` is
the number of readers covering a voxel and ``mask`` is ``reader_count >= min_readers`` (1: any reader; the LUNA16
reference standard uses 3 of 4 readers for its nodule list). The label ``nodule`` is 1 when the mask is non-empty.

Pitfalls handled: folder names are not UIDs; non-CT series skipped; slices ordered by position (``ct3d``);
``inclusion`` FALSE holes; point-only (< 3 mm) reads; a ``roi`` whose ``imageSOP_UID`` is not in the series is
placed by ``imageZposition`` (nearest slice within half the slice spacing) and is an error naming the XML otherwise;
XML of another series is an error. There is no official split (``split`` must be None).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from eden_lib.data.ct3d import dicom_sex, parse_age, read_dicom_header, read_dicom_series, scale_hu
from eden_lib.data.subvolumes import HU_WINDOW

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy")
LABELS = ("nodule",)


@dataclass
class LIDCRoi:
    """One contour: ``xy`` ``(P, 2)`` int pixel ``(column, row)``."""

    z: float
    sop_uid: str
    inclusion: bool
    xy: np.ndarray


@dataclass
class LIDCNodule:
    reader: int
    nodule_id: str
    characteristics: dict[str, float]
    rois: list[LIDCRoi]

    @property
    def small(self) -> bool:
        """True for a nodule < 3 mm (every roi is a single point)."""
        return all(len(r.xy) == 1 for r in self.rois)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag).lower() == name.lower()), None)


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag) == name]


def _text(element: ET.Element, name: str, path: Path, where: str) -> str:
    child = _child(element, name)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: {where} has no <{name}>")
    return child.text.strip()


def _number(text: str, path: Path, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: {where} has {text!r}, expected a number") from None


def read_lidc_xml(path: Path) -> tuple[str, int, list[LIDCNodule]] | None:
    """Parse one LIDC reading file.

    Returns:
        ``(series_uid, n_readers, nodules)``, or None when the file is not a ``LidcReadMessage`` (a radiograph
        ``IdriReadMessage``).

    Raises:
        ValueError: naming the file (and the reader and nodule) for malformed XML, a missing tag or a non-numeric
            coordinate.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from e
    if _local(root.tag) != "LidcReadMessage":
        return None
    header = _child(root, "ResponseHeader")
    if header is None:
        raise ValueError(f"{path}: LidcReadMessage without <ResponseHeader>")
    series_uid = _text(header, "SeriesInstanceUid", path, "ResponseHeader")
    sessions = _children(root, "readingSession")
    nodules = []
    for reader, session in enumerate(sessions):
        for element in _children(session, "unblindedReadNodule"):
            nodule_id = _text(element, "noduleID", path, f"reader {reader} unblindedReadNodule")
            where = f"reader {reader} nodule {nodule_id!r}"
            ratings = {}
            characteristics = _child(element, "characteristics")
            if characteristics is not None:
                for name in CHARACTERISTICS:
                    child = _child(characteristics, name)
                    if child is not None and child.text and child.text.strip():
                        ratings[name] = _number(child.text.strip(), path, f"{where} <{name}>")
            rois = []
            for roi in _children(element, "roi"):
                z = _number(_text(roi, "imageZposition", path, where), path, f"{where} <imageZposition>")
                sop = _text(roi, "imageSOP_UID", path, where)
                inclusion_el = _child(roi, "inclusion")
                inclusion = inclusion_el is None or (inclusion_el.text or "TRUE").strip().upper() != "FALSE"
                edges = _children(roi, "edgeMap")
                if not edges:
                    raise ValueError(f"{path}: {where} roi at z={z} has no <edgeMap>")
                xy = np.array([[_number(_text(e, c, path, f"{where} edgeMap"), path, f"{where} <{c}>")
                                for c in ("xCoord", "yCoord")] for e in edges]).astype(np.int64)
                rois.append(LIDCRoi(z=z, sop_uid=sop, inclusion=inclusion, xy=xy))
            nodules.append(LIDCNodule(reader=reader, nodule_id=nodule_id, characteristics=ratings, rois=rois))
    return series_uid, len(sessions), nodules


def _fill(xy: np.ndarray, shape_xy: tuple[int, int]) -> np.ndarray:
    """Filled polygon (outline included) as bool ``(X, Y)``; fewer than 3 points mark just those pixels."""
    canvas = Image.new("1", shape_xy, 0)
    points = [tuple(p) for p in xy.tolist()]
    draw = ImageDraw.Draw(canvas)
    if len(points) >= 3:
        draw.polygon(points, fill=1, outline=1)
    elif len(points) == 2:
        draw.line(points, fill=1)
    else:
        draw.point(points, fill=1)
    return np.asarray(canvas, dtype=bool).T


def _slice_index(roi: LIDCRoi, series, sop_index: dict[str, int], xml: Path) -> int:
    if roi.sop_uid in sop_index:
        return sop_index[roi.sop_uid]
    distance = np.abs(series.ipp[:, 2] - roi.z)
    k = int(np.argmin(distance))
    if distance[k] > max(0.5 * float(series.geometry.spacing[2]), 1e-3):
        raise ValueError(f"{xml}: roi imageSOP_UID {roi.sop_uid} is not in the series and imageZposition {roi.z} "
                         f"matches no slice (nearest at z={series.ipp[k, 2]:.3f})")
    return k


def reader_count_volume(nodules: list[LIDCNodule], series, xml: Path) -> np.ndarray:
    """``(X, Y, Z)`` uint8: the number of readers whose contoured nodules cover each voxel of ``series``."""
    shape = series.hu.shape
    sop_index = {uid: k for k, uid in enumerate(series.sop_uids)}
    readers = sorted({n.reader for n in nodules})
    count = np.zeros(shape, np.uint8)
    for reader in readers:
        covered = np.zeros(shape, bool)
        for nodule in (n for n in nodules if n.reader == reader and not n.small):
            planes: dict[int, list[np.ndarray]] = {}
            for roi in nodule.rois:
                k = _slice_index(roi, series, sop_index, xml)
                inc, exc = planes.setdefault(k, [np.zeros(shape[:2], bool), np.zeros(shape[:2], bool)])
                (inc if roi.inclusion else exc)[...] |= _fill(roi.xy, shape[:2])
            for k, (inc, exc) in planes.items():
                covered[:, :, k] |= inc & ~exc
        count += covered
    return count


class LIDCIDRI(Dataset):
    """LIDC-IDRI CT series with nodule masks from the readers' XML.

    Each item: ``image`` float32 ``(1, X, Y, Z)`` (HU windowed to [0, 1]; raw HU if ``hu_window`` is None),
    ``label`` float32 ``(1,)`` (``nodule``), ``sex``/``age`` from the DICOM header (None when absent),
    ``patient_id`` (``PatientID``, e.g. ``LIDC-IDRI-0001``), ``series_uid``, ``mask`` uint8 ``(X, Y, Z)`` {0, 1},
    ``reader_count`` uint8 ``(X, Y, Z)``, and ``origin``/``spacing``/``direction`` (LPS, see ``ct3d``).

    Args:
        root: the ``LIDC-IDRI`` folder.
        split: must be None (LIDC-IDRI has no official split).
        min_readers: readers needed for a voxel to enter ``mask`` (1-4).
        hu_window: HU range mapped to [0, 1].
    """

    labels = LABELS

    def __init__(self, root: Path | str, split: str | None = None, min_readers: int = 1,
                 hu_window: tuple[float, float] | None = HU_WINDOW) -> None:
        self.root = Path(root)
        if split is not None:
            raise ValueError(f"LIDCIDRI: split={split!r}; LIDC-IDRI has no official split, expected None")
        if not 1 <= min_readers <= 4:
            raise ValueError(f"LIDCIDRI: min_readers={min_readers}, expected 1..4")
        if not self.root.is_dir():
            raise FileNotFoundError(f"LIDC-IDRI root {self.root} does not exist")
        self.min_readers, self.hu_window = min_readers, hu_window
        rows, self._files, self._reads = [], [], []
        for folder in sorted({p.parent for p in self.root.rglob("*.dcm")}):
            files = sorted(folder.glob("*.dcm"))
            ds = read_dicom_header(files[0])
            if str(ds.get("Modality", "")).upper() != "CT":
                continue
            series_uid = str(ds.get("SeriesInstanceUID", ""))
            reads = [(x, r) for x in sorted(folder.glob("*.xml")) if (r := read_lidc_xml(x)) is not None]
            if len(reads) != 1:
                raise ValueError(f"{folder}: expected one LidcReadMessage XML next to the CT slices, found "
                                 f"{[x.name for x, _ in reads]}")
            xml, (xml_series, n_readers, nodules) = reads[0]
            if xml_series != series_uid:
                raise ValueError(f"{xml}: SeriesInstanceUid {xml_series} differs from the DICOM series {series_uid} "
                                 f"in {folder}")
            patient = str(ds.get("PatientID", "") or "").strip() or folder.relative_to(self.root).parts[0]
            rows.append({"patient_id": patient, "study_uid": str(ds.get("StudyInstanceUID", "")),
                         "series_uid": series_uid, "sex": dicom_sex(ds), "age": parse_age(ds.get("PatientAge")),
                         "n_slices": len(files), "n_readers": n_readers,
                         "n_nodule_reads": sum(not n.small for n in nodules),
                         "n_small_reads": sum(n.small for n in nodules),
                         "folder": str(folder.relative_to(self.root)), "xml": xml.name})
            self._files.append(files)
            self._reads.append((xml, nodules))
        self.meta = pd.DataFrame(rows, columns=["patient_id", "study_uid", "series_uid", "sex", "age", "n_slices",
                                                "n_readers", "n_nodule_reads", "n_small_reads", "folder", "xml"])

    def __len__(self) -> int:
        return len(self.meta)

    def nodules(self, i: int) -> pd.DataFrame:
        """The reader nodules of item ``i`` (no pixels read): ``reader, nodule_id, small, n_rois, z_min, z_max`` and
        the ``CHARACTERISTICS`` ratings (NaN where not rated, e.g. nodules < 3 mm)."""
        _, nodules = self._reads[i]
        rows = [{"reader": n.reader, "nodule_id": n.nodule_id, "small": n.small, "n_rois": len(n.rois),
                 "z_min": min((r.z for r in n.rois), default=np.nan), "z_max": max((r.z for r in n.rois),
                                                                                   default=np.nan),
                 **{c: n.characteristics.get(c, np.nan) for c in CHARACTERISTICS}} for n in nodules]
        return pd.DataFrame(rows, columns=["reader", "nodule_id", "small", "n_rois", "z_min", "z_max",
                                           *CHARACTERISTICS])

    def __getitem__(self, i: int) -> dict:
        row = self.meta.iloc[i]
        series = read_dicom_series(self._files[i])
        xml, nodules = self._reads[i]
        count = reader_count_volume(nodules, series, xml)
        mask = (count >= self.min_readers).astype(np.uint8)
        return {"image": scale_hu(series.hu, self.hu_window),
                "label": torch.tensor([float(mask.any())], dtype=torch.float32),
                "sex": row["sex"] if isinstance(row["sex"], str) else None,
                "age": None if pd.isna(row["age"]) else int(row["age"]),
                "patient_id": row["patient_id"], "series_uid": row["series_uid"],
                "mask": torch.from_numpy(mask), "reader_count": torch.from_numpy(count),
                **series.geometry.as_tensors()}
