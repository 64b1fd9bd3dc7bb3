"""The Ark setting: several chest X-ray sites, each with its own label set, written in a different real layout.

``data.sites`` in params.yaml lists the sites in training order. Each names the real dataset whose on-disk format
and loader it uses, its labels (names of that dataset, each mapped to one SynthCXR finding or the OR of several),
keyword arguments of the loader (label policies) and the knobs of its synthetic conventions:

- ``chestxray14``: PNG + ``Data_Entry_2017_v2020.csv`` (``|``-joined names) + split lists; ``label_noise`` is the
  fraction of label cells flipped, as text mining does.
- ``chexpert``: JPEG + ``train.csv`` (``1.0``/``0.0``/``-1.0``/blank) and ``valid.csv`` (radiologist consensus,
  ``1.0``/``0.0`` only); ``uncertain_positive``/``uncertain_negative`` are the fractions of positive/negative cells
  written uncertain (-1.0), ``not_mentioned`` the fraction of the remaining negatives written blank.
- ``mimic_cxr``: JPEG under ``files/p??/p<subject>/s<study>/<dicom_id>.jpg``, the chexpert-labeler, split and
  metadata CSVs (gzip) and MIMIC-IV ``hosp/patients.csv.gz`` for sex; the CheXpert knobs apply to every split.
- ``vindr_cxr``: 12-bit MONOCHROME1 DICOMs (the loader must invert them), ``image_labels_train.csv`` with
  ``readers`` rows per image, each cell flipped with probability ``reader_disagreement``, and one consensus row per
  test image; ``annotations_*.csv`` hold the ``No finding`` rows only (no boxes are synthesised).

Synthetic mode (``data.source: synthetic``) takes each site's images from the prepared CXR cache (its SynthCXR site
of the same name), writes them under ``data/raw/synthetic/sites/<site>/``, and reads every split back through
``open_dataset(<dataset>, root, split)``; rows keep the cache's ``image_index``, ``patient_id`` and split (train/val
go to the format's training split, or MIMIC's ``validate``; test to its test or valid split). Real mode reads
``data.roots.<dataset>`` through the same loaders; the format's training split is cut into train/val by patient.
Either way the result is the sites cache of :mod:`eden_lib.data.prepared` (``data/prepared/sites/``); a sex the
loader cannot tell is written ``U``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from eden_lib import paths
from eden_lib.seed import rng

SPLITS = ("train", "val", "test")
SITE_KEYS = ("dataset", "labels", "loader", "synthetic")
FIXED_ARGS = ("root", "split", "labels", "image_size")
"""Loader arguments ``prepare`` sets itself; ``data.sites.<site>.loader`` may set the others."""
JPEG_QUALITY = 95
GZIP = {"method": "gzip", "mtime": 0}  # byte-identical files for the same data
CHEXPERT_SEX = {"M": "Male", "F": "Female"}
NO_FINDING = ("No Finding", "No finding")
"""The CheXpert/MIMIC and VinDr-CXR labels that the writers derive from the others (not mappable)."""


@dataclass(frozen=True)
class Format:
    """How one real dataset is laid out for a site.

    ``folder``: the dataset folder inside the site's raw folder (what the loader gets as ``root``); ``vocabulary``:
    ``"module:NAME"`` of the label names the loader accepts; ``splits``: prepared split -> the format's split;
    ``key``: the item field naming an image; ``knobs``: synthetic knob -> ``(low, high, type)``.
    """

    folder: str
    vocabulary: str
    splits: Mapping[str, str]
    key: str
    knobs: Mapping[str, tuple[float, float, type]]


_UNCERTAIN = {"uncertain_positive": (0.0, 1.0, float), "uncertain_negative": (0.0, 1.0, float),
              "not_mentioned": (0.0, 1.0, float)}
FORMATS: dict[str, Format] = {
    "chestxray14": Format("ChestX-ray14", "eden_lib.data.chestxray14:NIH14",
                          {"train": "train_val", "val": "train_val", "test": "test"}, "image_index",
                          {"label_noise": (0.0, 0.5, float)}),
    "chexpert": Format("CheXpert-v1.0-small", "eden_lib.data.chexpert:CHEXPERT14",
                       {"train": "train", "val": "train", "test": "valid"}, "path", _UNCERTAIN),
    "mimic_cxr": Format("mimic-cxr-jpg/2.0.0", "eden_lib.data.mimic_cxr:MIMIC14",
                        {"train": "train", "val": "validate", "test": "test"}, "dicom_id", _UNCERTAIN),
    "vindr_cxr": Format("vindr-cxr/1.0.0", "eden_lib.data.vindr_cxr:VINDR_LABELS",
                        {"train": "train", "val": "train", "test": "test"}, "image_id",
                        {"readers": (1, 17, int), "reader_disagreement": (0.0, 0.5, float)}),
}
"""The real layouts a site can take (each a loader of ``eden_lib.data.DATASETS``)."""

MIMIC_PATIENTS = "mimic-iv/hosp/patients.csv.gz"
"""Where a synthetic MIMIC site's MIMIC-IV ``patients`` table lies, relative to the site's raw folder."""


@dataclass(frozen=True)
class SiteSpec:
    """One validated ``data.sites`` entry: ``labels`` maps each site label to the findings it is the OR of."""

    name: str
    dataset: str
    labels: dict[str, tuple[str, ...]]
    loader: dict
    synthetic: dict


@dataclass
class SiteData:
    """One site's share of the CXR cache, to be written: ``images`` uint8 ``(n, R, R)`` with bright bone,
    ``targets`` uint8 ``(n, K)`` clean site labels, ``meta`` n rows (``image_index, patient_id, follow_up, sex,
    age, view, split`` and ``row``, the position in the CXR cache)."""

    images: np.ndarray
    targets: np.ndarray
    meta: pd.DataFrame


@dataclass
class SiteArrays:
    """One site read back: ``images`` uint8 ``(n, R, R)``, ``labels`` float32 ``(n, K)`` (NaN unknown), ``meta``
    n rows (``image_index, patient_id, sex, split``)."""

    images: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame


# --- validation ------------------------------------------------------------------------------------------------


def _config_error(message: str) -> Exception:
    from eden_lib.config import ConfigError

    return ConfigError(message)


def vocabulary(dataset: str) -> tuple[str, ...]:
    """The label names the loader of ``dataset`` accepts."""
    module, name = FORMATS[dataset].vocabulary.split(":")
    return tuple(getattr(importlib.import_module(module), name))


def loader_options(dataset: str) -> list[str]:
    """Arguments of the loader of ``dataset`` that ``data.sites.<site>.loader`` may set."""
    from eden_lib.data import dataset_class

    params = inspect.signature(dataset_class(dataset).__init__).parameters
    return [p for p in params if p not in ("self", *FIXED_ARGS)]


def _mapping(value: object, key: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise _config_error(f"'{key}' = {value!r} is not allowed; expected a mapping")
    return value


def _check_keys(block: Mapping, allowed: Sequence[str], key: str) -> None:
    unknown = [f"{key}.{k}" for k in block if k not in allowed]
    missing = [f"{key}.{k}" for k in allowed if k not in block]
    if unknown or missing:
        problems = ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
        raise _config_error(f"'{key}': {' and '.join(problems)}; expected exactly the keys {list(allowed)}")


def _site_labels(block: object, dataset: str, findings: Sequence[str], key: str) -> dict[str, tuple[str, ...]]:
    labels = _mapping(block, key)
    if not labels:
        raise _config_error(f"'{key}' is empty; expected at least one <{dataset} label>: <finding or [findings]>")
    names = vocabulary(dataset)
    out = {}
    for name, value in labels.items():
        if name not in names or name in NO_FINDING:
            raise _config_error(f"'{key}' has {name!r}, which is not a {dataset} finding; expected names from "
                                f"{[n for n in names if n not in NO_FINDING]}")
        mapped = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
        bad = [f for f in mapped if f not in findings]
        if not mapped or bad:
            raise _config_error(f"'{key}.{name}' = {value!r} is not allowed; expected a finding or a non-empty list "
                                f"of findings of data.cxr.labels {list(findings)}")
        out[str(name)] = mapped
    return out


def _check_knobs(block: object, dataset: str, key: str) -> dict:
    knobs = _mapping(block, key)
    _check_keys(knobs, list(FORMATS[dataset].knobs), key)
    for name, (low, high, kind) in FORMATS[dataset].knobs.items():
        value = knobs[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise _config_error(f"'{key}.{name}' = {value!r} is not allowed; expected "
                                f"{'an integer' if kind is int else 'a number'} in [{low}, {high}]")
    return dict(knobs)


def _check_loader(block: object, dataset: str, key: str) -> dict:
    options = _mapping(block, key)
    allowed = loader_options(dataset)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise _config_error(f"'{key}' has {[f'{key}.{k}' for k in unknown]}, which the {dataset} loader does not "
                            f"take; allowed: {allowed}")
    return dict(options)


def _site_spec(name: str, block: object, cfg: dict) -> SiteSpec:
    key = f"data.sites.{name}"
    block = _mapping(block, key)
    _check_keys(block, SITE_KEYS, key)
    dataset = block["dataset"]
    if dataset not in FORMATS:
        raise _config_error(f"'{key}.dataset' = {dataset!r} is not allowed; expected one of {list(FORMATS)}")
    findings = list(cfg["data"]["cxr"]["labels"])
    return SiteSpec(name=str(name), dataset=dataset,
                    labels=_site_labels(block["labels"], dataset, findings, f"{key}.labels"),
                    loader=_check_loader(block["loader"], dataset, f"{key}.loader"),
                    synthetic=_check_knobs(block["synthetic"], dataset, f"{key}.synthetic"))


def check_sites(cfg: dict) -> list[SiteSpec]:
    """The validated ``data.sites`` block in training order; raises ``ConfigError`` naming the key and value."""
    sites = _mapping(cfg["data"]["sites"], "data.sites")
    if not sites:
        raise _config_error("'data.sites' is empty; expected at least one site")
    if cfg["data"]["source"] == "synthetic":
        from eden_lib.data.synth_cxr import SITES

        unknown = [s for s in sites if s not in SITES]
        if unknown:
            raise _config_error(f"'data.sites' has {[f'data.sites.{s}' for s in unknown]}: with data.source "
                                f"synthetic each site is a SynthCXR site; expected names from {list(SITES)}")
    return [_site_spec(name, block, cfg) for name, block in sites.items()]


# --- labels ----------------------------------------------------------------------------------------------------


def site_targets(clean: np.ndarray, findings: Sequence[str], spec: SiteSpec) -> np.ndarray:
    """Clean site labels uint8 ``(N, K)`` from finding labels ``(N, F)`` (columns ``findings``): site label ``k``
    is 1 where any of its findings is."""
    col = {f: i for i, f in enumerate(findings)}
    return np.stack([(clean[:, [col[f] for f in fs]] > 0.5).any(axis=1) for fs in spec.labels.values()],
                    axis=1).astype(np.uint8)


def labeler_states(targets: np.ndarray, knobs: Mapping[str, float], g: np.random.Generator) -> np.ndarray:
    """CheXpert-labeler states float32 ``(n, K)`` from 0/1 ``targets``: 1, 0, -1 (uncertain), NaN (blank).

    A positive cell is uncertain with probability ``uncertain_positive``, a negative one with
    ``uncertain_negative``; a negative that stays certain is left blank with probability ``not_mentioned``.
    """
    u = g.random(targets.shape)
    blank = g.random(targets.shape) < knobs["not_mentioned"]
    pos = targets == 1
    uncertain = np.where(pos, u < knobs["uncertain_positive"], u < knobs["uncertain_negative"])
    states = np.where(pos, 1.0, np.where(blank, np.nan, 0.0))
    return np.where(uncertain, -1.0, states).astype(np.float32)


def _cell(state: float) -> str:
    return "" if np.isnan(state) else f"{state:.1f}"


def _full_columns(states: np.ndarray, spec: SiteSpec, columns: Sequence[str], fill: float) -> np.ndarray:
    """``(n, len(columns))`` with the site's labels in place and ``fill`` elsewhere."""
    out = np.full((len(states), len(columns)), fill, np.float32)
    for k, name in enumerate(spec.labels):
        out[:, list(columns).index(name)] = states[:, k]
    return out


# --- writers: each writes one site under ``root`` (the dataset folder) and returns the loader's key of every row
# --- (in row order) and the loader arguments the written files need


def _save_all(save: Callable[[int], None], n: int) -> None:
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(save, range(n)))


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)


def _format_splits(site: SiteData, dataset: str) -> np.ndarray:
    return site.meta["split"].map(FORMATS[dataset].splits).to_numpy()


def write_chestxray14_site(root: Path, spec: SiteSpec, site: SiteData, g: np.random.Generator) -> tuple[list, dict]:
    """NIH Box layout (PNG, ``Data_Entry_2017_v2020.csv``, split lists) with ``label_noise`` of the cells flipped."""
    from eden_lib.data.chestxray14 import DATA_ENTRY, DATA_ENTRY_HEADER, NO_FINDING, SPLIT_FILES

    m = site.meta
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = m["image_index"].tolist()
    _save_all(lambda i: Image.fromarray(site.images[i]).save(root / "images" / names[i], compress_level=1), len(m))
    flips = g.random(site.targets.shape) < spec.synthetic["label_noise"]
    noisy = site.targets.astype(bool) ^ flips
    labels = np.array(list(spec.labels))
    size = site.images.shape[-1]
    spacing = round(350.0 / size, 4)  # a 35 cm film
    with open(root / DATA_ENTRY, "w", newline="") as fh:
        fh.write(DATA_ENTRY_HEADER + "\n")
        w = csv.writer(fh, lineterminator="\n")
        for i, row in enumerate(m.itertuples(index=False)):
            w.writerow([row.image_index, "|".join(labels[noisy[i]]) or NO_FINDING, row.follow_up, row.patient_id,
                        row.age, row.sex, row.view, size, size, spacing, spacing])
    split = _format_splits(site, "chestxray14")
    for name, file in SPLIT_FILES.items():
        (root / file).write_text("".join(f"{x}\n" for x, s in zip(names, split) if s == name))
    return names, {}


def _no_finding(states: np.ndarray) -> np.ndarray:
    """CheXpert-labeler ``No Finding`` ``(n,)``: 1.0 where no site label is positive or uncertain, else blank."""
    return np.where(((states == 1) | (states == -1)).any(axis=1), np.nan, 1.0)


def write_chexpert_site(root: Path, spec: SiteSpec, site: SiteData, g: np.random.Generator) -> tuple[list, dict]:
    """CheXpert layout: JPEGs, ``train.csv`` with labeler states, ``valid.csv`` with consensus 0/1 labels."""
    from eden_lib.data.chexpert import CHEXPERT14, SPLIT_FILES

    m = site.meta
    split = _format_splits(site, "chexpert")
    files = [f"{s}/patient{p:05d}/study{f + 1}/view1_frontal.jpg"
             for s, p, f in zip(split, m["patient_id"], m["follow_up"])]
    _save_all(lambda i: _save_jpeg(site.images[i], root / files[i]), len(m))
    states = labeler_states(site.targets, spec.synthetic, g)
    full = _full_columns(states, spec, CHEXPERT14, np.nan)
    full[:, CHEXPERT14.index("No Finding")] = _no_finding(states)
    valid = split == "valid"
    full[valid] = _full_columns(site.targets[valid], spec, CHEXPERT14, 0.0)
    full[valid, CHEXPERT14.index("No Finding")] = (site.targets[valid] == 0).all(axis=1)
    table = pd.DataFrame({"Path": [f"{root.name}/{f}" for f in files], "Sex": m["sex"].map(CHEXPERT_SEX),
                          "Age": m["age"], "Frontal/Lateral": "Frontal", "AP/PA": m["view"]})
    for k, column in enumerate(CHEXPERT14):
        table[column] = [_cell(v) for v in full[:, k]]
    for name, file in SPLIT_FILES.items():
        table[split == name].to_csv(root / file, index=False)
    return table["Path"].tolist(), {}


def dicom_id(image_index: str) -> str:
    """A MIMIC-style ``dicom_id`` (five dash-joined groups of 8 hex digits) derived from ``image_index``."""
    digest = hashlib.sha1(image_index.encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def write_mimic_site(root: Path, spec: SiteSpec, site: SiteData, g: np.random.Generator) -> tuple[list, dict]:
    """MIMIC-CXR-JPG layout (``files/``, chexpert-labeler, split and metadata CSVs) and MIMIC-IV ``patients``."""
    from eden_lib.data.mimic_cxr import CHEXPERT_FILE, METADATA_FILE, MIMIC14, SPLIT_FILE

    m = site.meta
    subject = 10_000_000 + m["patient_id"].to_numpy(np.int64)
    study = 50_000_000 + m["row"].to_numpy(np.int64)
    ids = [dicom_id(x) for x in m["image_index"]]
    files = [f"files/p{str(s)[:2]}/p{s}/s{t}/{d}.jpg" for s, t, d in zip(subject, study, ids)]
    _save_all(lambda i: _save_jpeg(site.images[i], root / files[i]), len(m))
    states = labeler_states(site.targets, spec.synthetic, g)
    full = _full_columns(states, spec, MIMIC14, np.nan)
    full[:, MIMIC14.index("No Finding")] = _no_finding(states)
    labels = pd.DataFrame({"subject_id": subject, "study_id": study})
    for k, column in enumerate(MIMIC14):
        labels[column] = [_cell(v) for v in full[:, k]]
    labels.to_csv(root / CHEXPERT_FILE, index=False, compression=GZIP)
    ids_table = pd.DataFrame({"dicom_id": ids, "study_id": study, "subject_id": subject})
    ids_table.assign(split=_format_splits(site, "mimic_cxr")).to_csv(root / SPLIT_FILE, index=False, compression=GZIP)
    size = site.images.shape[-1]
    procedure = "CHEST (PA AND LAT)"
    ids_table.assign(
        PerformedProcedureStepDescription=procedure, ViewPosition=m["view"].to_numpy(), Rows=size, Columns=size,
        StudyDate=21500101 + m["follow_up"].to_numpy() * 10000, StudyTime="120000.000",
        ProcedureCodeSequence_CodeMeaning=procedure,
        ViewCodeSequence_CodeMeaning=np.where(m["view"] == "AP", "antero-posterior", "postero-anterior"),
        PatientOrientationCodeSequence_CodeMeaning="Erect",
    ).to_csv(root / METADATA_FILE, index=False, compression=GZIP)
    patients = pd.DataFrame({"subject_id": subject, "gender": m["sex"].to_numpy(), "anchor_age": m["age"].to_numpy(),
                             "anchor_year": 2150, "anchor_year_group": "2014 - 2016", "dod": ""})
    patients_file = root.parents[1] / MIMIC_PATIENTS  # beside mimic-cxr-jpg/2.0.0/, in the site's folder
    patients_file.parent.mkdir(parents=True, exist_ok=True)
    patients.drop_duplicates("subject_id").to_csv(patients_file, index=False, compression=GZIP)
    return ids, {"patients": patients_file}


def _vindr_rows(values: np.ndarray, spec: SiteSpec) -> np.ndarray:
    """int ``(n, 28)`` ``image_labels_*.csv`` cells from 0/1 site labels ``(n, K)``: the site's labels, 0 for the
    others, ``No finding`` 1 where the row marks nothing."""
    from eden_lib.data.vindr_cxr import NO_FINDING, VINDR_LABELS

    full = _full_columns(values, spec, VINDR_LABELS, 0.0)
    nf = VINDR_LABELS.index(NO_FINDING)
    full[:, nf] = np.delete(full, nf, axis=1).sum(axis=1) == 0
    return full.astype(np.int64)


def _write_vindr_labels(folder: Path, split: str, ids: list[str], rad: list[str] | None, rows: np.ndarray) -> None:
    """``image_labels_<split>.csv`` and ``annotations_<split>.csv`` (a box-less row per ``No finding``)."""
    from eden_lib.data.vindr_cxr import BOX_COLUMNS, NO_FINDING, VINDR_LABELS

    head = {"image_id": ids} | ({"rad_id": rad} if rad is not None else {})
    pd.concat([pd.DataFrame(head), pd.DataFrame(rows, columns=list(VINDR_LABELS))], axis=1).to_csv(
        folder / f"image_labels_{split}.csv", index=False)
    quiet = rows[:, VINDR_LABELS.index(NO_FINDING)] == 1
    boxes = pd.DataFrame(head)[quiet].assign(class_name=NO_FINDING, **{c: "" for c in BOX_COLUMNS})
    boxes.to_csv(folder / f"annotations_{split}.csv", index=False)


def write_vindr_site(root: Path, spec: SiteSpec, site: SiteData, g: np.random.Generator) -> tuple[list, dict]:
    """VinDr-CXR PhysioNet layout: 12-bit MONOCHROME1 DICOMs, ``readers`` disagreeing rows per training image."""
    from pydicom.uid import generate_uid

    from eden_lib.data.dicom import write_dicom

    m = site.meta
    ids = [hashlib.md5(x.encode()).hexdigest() for x in m["image_index"]]
    split = _format_splits(site, "vindr_cxr")
    stored = (4095 - (site.images.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)  # 12 bits, high = dark

    def save(i: int) -> None:
        write_dicom(root / split[i] / f"{ids[i]}.dicom", stored[i], "MONOCHROME1", bits_stored=12,
                    PatientSex=m["sex"].iloc[i], PatientAge=f"{int(m['age'].iloc[i]):03d}Y",
                    ViewPosition=m["view"].iloc[i], SOPInstanceUID=generate_uid(entropy_srcs=[ids[i]]))

    _save_all(save, len(m))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    train = np.flatnonzero(split == "train")
    readers, p = spec.synthetic["readers"], spec.synthetic["reader_disagreement"]
    reads = np.repeat(site.targets[train], readers, axis=0)
    reads = reads ^ (g.random(reads.shape) < p).astype(np.uint8)
    rad = [f"R{r + 1}" for i in train for r in g.choice(17, readers, replace=False)]
    _write_vindr_labels(root / "annotations", "train", [ids[i] for i in train for _ in range(readers)], rad,
                        _vindr_rows(reads, spec))
    test = np.flatnonzero(split == "test")
    _write_vindr_labels(root / "annotations", "test", [ids[i] for i in test], None,
                        _vindr_rows(site.targets[test], spec))
    return ids, {}


WRITERS: dict[str, Callable[[Path, SiteSpec, SiteData, np.random.Generator], tuple[list, dict]]] = {
    "chestxray14": write_chestxray14_site,
    "chexpert": write_chexpert_site,
    "mimic_cxr": write_mimic_site,
    "vindr_cxr": write_vindr_site,
}


# --- reading back ----------------------------------------------------------------------------------------------


def _read_items(ds, key: str, size: int, k: int) -> SiteArrays:
    """Every item of a loader: images uint8 ``(n, size, size)``, labels ``(n, k)``, meta (``key, patient_id, sex``)."""
    images = np.zeros((len(ds), size, size), np.uint8)
    labels = np.zeros((len(ds), k), np.float32)

    def load(i: int) -> dict:
        item = ds[i]
        images[i] = np.round(item["image"][0].numpy() * 255.0)
        labels[i] = item["label"].numpy()
        return item

    with ThreadPoolExecutor(2) as pool:
        items = list(pool.map(load, range(len(ds))))
    meta = pd.DataFrame({"key": [str(item[key]) for item in items],
                         "patient_id": [str(item["patient_id"]) for item in items],
                         "sex": [item["sex"] or "U" for item in items]})
    return SiteArrays(images, labels, meta)


def read_site(spec: SiteSpec, root: Path, size: int, written: Mapping) -> SiteArrays:
    """Every split of one site through ``open_dataset`` (the real loader); ``meta`` adds ``format_split``.

    ``written``: loader arguments the synthetic files need (they override ``spec.loader``).
    """
    from eden_lib.data import open_dataset

    fmt = FORMATS[spec.dataset]
    parts = []
    for split in dict.fromkeys(fmt.splits.values()):
        try:
            ds = open_dataset(spec.dataset, root, split, labels=list(spec.labels), image_size=size,
                              **{**spec.loader, **written})
        except (ValueError, TypeError) as err:
            raise ValueError(f"data.sites.{spec.name}: the {spec.dataset} loader rejects {root} (split "
                             f"{split!r}, loader arguments {spec.loader}): {err}") from err
        part = _read_items(ds, fmt.key, size, len(spec.labels))
        part.meta["format_split"] = split
        parts.append(part)
    return SiteArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                      pd.concat([p.meta for p in parts], ignore_index=True))


# --- the two modes ---------------------------------------------------------------------------------------------


def _stream(name: str) -> int:
    """A 32-bit random-stream number for a site name (``rng`` keeps only 8 bytes of a string stream)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)


def site_data(images: np.ndarray, labels: np.ndarray, meta: pd.DataFrame, findings: Sequence[str],
              spec: SiteSpec) -> SiteData:
    """The rows of SynthCXR site ``spec.name`` from the CXR cache (``images`` ``(N, R, R)`` in each site's polarity,
    ``labels`` ``(N, F)``, ``meta`` with ``image_index, patient_id, follow_up, sex, age, view, site, split``), with
    bright bone and ``row`` (the position in the cache)."""
    from eden_lib.data.synth_cxr import SITES

    rows = np.flatnonzero(meta["site"].to_numpy() == spec.name)
    if rows.size == 0:
        raise ValueError(f"data.sites.{spec.name}: the prepared CXR cache has no image of SynthCXR site "
                         f"{spec.name!r} (sites there: {sorted(set(meta['site']))})")
    site_images = np.asarray(images[rows])
    if SITES[spec.name].invert:
        site_images = 255 - site_images
    return SiteData(site_images, site_targets(np.asarray(labels[rows]), findings, spec),
                    meta.iloc[rows].reset_index(drop=True).assign(row=rows))


def synthetic_site(spec: SiteSpec, site: SiteData, site_dir: Path, size: int, seed: int) -> SiteArrays:
    """Write one site in its format under ``site_dir``, read it back, and align the rows with ``site.meta``.

    Returns the read-back arrays in ``site.meta`` order, with ``image_index``, ``patient_id`` and ``split`` from the
    cache and ``sex`` as the loader read it (which must agree with the cache).
    """
    root = site_dir / FORMATS[spec.dataset].folder
    keys, written = WRITERS[spec.dataset](root, spec, site, rng(seed, "sites", _stream(spec.name)))
    back = read_site(spec, root, size, written)
    position = pd.Series(np.arange(len(keys)), index=keys).reindex(back.meta["key"]).to_numpy()
    if len(back.meta) != len(keys) or np.isnan(position).any():
        raise RuntimeError(f"data.sites.{spec.name}: the {spec.dataset} loader read {len(back.meta)} images from "
                           f"{root}, {len(keys)} were written")
    order = np.argsort(position)
    meta = site.meta[["image_index", "patient_id", "split"]].assign(sex=back.meta["sex"].to_numpy()[order])
    differs = meta["sex"].to_numpy() != site.meta["sex"].to_numpy()
    if differs.any():
        i = int(np.flatnonzero(differs)[0])
        raise RuntimeError(f"data.sites.{spec.name}: image {meta['image_index'].iloc[i]} reads back with sex "
                           f"{meta['sex'].iloc[i]!r} from {root}, the cache says {site.meta['sex'].iloc[i]!r}")
    return SiteArrays(back.images[order], back.labels[order], meta)


def real_site(spec: SiteSpec, roots: Mapping, size: int, val_fraction: float, seed: int) -> SiteArrays:
    """One site read from ``data.roots.<dataset>``; a format split that feeds both train and val is cut by patient."""
    from eden_lib.data.splits import carve_validation

    root = roots.get(spec.dataset)
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(f"data.roots.{spec.dataset} = {root!r} is not a folder (data.source is 'real' and "
                                f"data.sites.{spec.name} reads the {spec.dataset} dataset)")
    back = read_site(spec, Path(root), size, {})
    ours: dict[str, list[str]] = {}
    for split, fmt_split in FORMATS[spec.dataset].splits.items():
        ours.setdefault(fmt_split, []).append(split)
    meta = back.meta.rename(columns={"key": "image_index"})
    meta["split"] = meta["format_split"].map({f: s[0] if len(s) == 1 else "train_val" for f, s in ours.items()})
    if (meta["split"] == "train_val").any():
        meta["split"] = carve_validation(meta, val_fraction, seed)
    return SiteArrays(back.images, back.labels, meta[["image_index", "patient_id", "sex", "split"]])


def stack_sites(specs: Sequence[SiteSpec], parts: Sequence[SiteArrays]) -> tuple[np.ndarray, np.ndarray,
                                                                                  pd.DataFrame]:
    """The sites cache arrays: images uint8 ``(N, R, R)``, labels float32 ``(N, K_max)`` NaN-padded, meta
    (``image_index, patient_id, sex, site, split``)."""
    k_max = max(len(s.labels) for s in specs)
    labels = [np.pad(p.labels, ((0, 0), (0, k_max - p.labels.shape[1])), constant_values=np.nan) for p in parts]
    meta = pd.concat([p.meta.assign(site=s.name) for s, p in zip(specs, parts)], ignore_index=True)
    return (np.concatenate([p.images for p in parts]), np.concatenate(labels).astype(np.float32),
            meta[["image_index", "patient_id", "sex", "site", "split"]])


def _cache_meta(cxr) -> pd.DataFrame:
    """The CXR cache's meta with ``follow_up`` and ``view`` from the synthetic ChestX-ray14 data entry file."""
    from eden_lib.data.chestxray14 import DATA_ENTRY, read_data_entry

    entry = read_data_entry(paths.raw_dir("synthetic") / "chestxray14" / DATA_ENTRY)
    meta = cxr.meta.merge(entry[["image_index", "follow_up", "view"]], on="image_index", how="left",
                          validate="one_to_one")
    if meta["view"].isna().any():
        raise RuntimeError(f"{DATA_ENTRY} of the synthetic ChestX-ray14 data lacks image "
                           f"{meta['image_index'][meta['view'].isna()].iloc[0]} of the prepared CXR cache")
    return meta


def prepare_sites(cfg: dict) -> pd.DataFrame:
    """Write (synthetic) or read (real) every site of ``data.sites`` and write ``data/prepared/sites/``.

    Synthetic mode needs the CXR cache and the synthetic ChestX-ray14 files ``prepare`` has just written. Returns one
    row per site: ``dataset`` (``sites/<site>``), ``n_train, n_val, n_test, patients, seconds``.
    """
    from eden_lib.data import prepared

    specs = check_sites(cfg)
    data = cfg["data"]
    size = data["cxr"]["render_size"]
    synthetic = data["source"] == "synthetic"
    if synthetic:
        cxr = prepared.load_cxr()
        meta = _cache_meta(cxr)
    parts, rows = [], []
    for spec in specs:
        t0 = time.perf_counter()
        if synthetic:
            site = site_data(cxr.images, cxr.labels, meta, cxr.info["labels"], spec)
            part = synthetic_site(spec, site, paths.raw_dir("synthetic") / "sites" / spec.name, size, cfg["seed"])
        else:
            part = real_site(spec, data["roots"], size, data["cxr"]["val_fraction"], cfg["seed"])
        parts.append(part)
        counts = part.meta["split"].value_counts()
        rows.append({"dataset": f"sites/{spec.name}", **{f"n_{s}": int(counts.get(s, 0)) for s in SPLITS},
                     "patients": int(part.meta["patient_id"].nunique()),
                     "seconds": round(time.perf_counter() - t0, 1)})
    images, labels, meta_out = stack_sites(specs, parts)
    info = {"source": data["source"], "render_size": size,
            "sites": [{"name": s.name, "dataset": s.dataset, "labels": list(s.labels)} for s in specs]}
    prepared.write_sites(paths.prepared_dir("sites"), images, labels, meta_out, info)
    return pd.DataFrame(rows)
