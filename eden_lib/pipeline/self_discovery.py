"""Stage ``self_discovery``: the visual words TransVW and Semantic Genesis pretrain on, discovered once for both
(STUDY §10; ``reference/genesis_family.md`` §3.2; the algorithm is :mod:`eden_lib.data.self_discovery`).

For each spatial dimension an active visual-word method pretrains in: an auto-encoder embeds the training patients
(3D: whole training CT scans read through the LUNA16 loader; 2D: the training radiographs of the prepared cache),
each of ``self_discovery.n_classes`` classes takes a reference patient and its nearest neighbours, and the same
coordinates are cropped from every member at every scale. 3D crops have the Models Genesis sub-volume size and border
(``data.ct.subvolume``, ``subvolume_border``) and pass its acceptance test on the reference at
``self_discovery.max_tissue_fraction``; 2D crops
are ``self_discovery.crop_size_2d`` render pixels resized to ``data.image_size``.

Writes ``data/visual_words/<d>d/``: ``crops.npy`` float16 ``(M, *size)`` in [0, 1], ``labels.npy`` int64 ``(M,)``
(the pseudo-label, the class index), ``crops.csv`` (patient, label, level, rank, box), ``words.csv`` (one row per
class: reference, anchor, members) and ``info.json``; ``data/visual_words/info.json`` lists the dimensions.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from eden_lib import paths

KIND = "visual_words"


def visual_word_methods(cfg: dict) -> list[str]:
    """Active methods that pretrain on visual words (their ``data`` asks for ``"visual_words"``)."""
    from eden_lib.methods import method_class

    return [m for m in cfg["active_methods"] if KIND in method_class(m).data.values()]


def visual_word_dims(cfg: dict) -> list[int]:
    """The spatial dimensions any active visual-word method pretrains in."""
    from eden_lib.methods import validate_method_config

    return sorted({d for m in visual_word_methods(cfg) for d in validate_method_config(m, cfg["methods"][m]).dims})


def check_classes(cfg: dict) -> None:
    """Every visual-word method must classify as many classes as self-discovery finds (raises ConfigError)."""
    from eden_lib.config import ConfigError

    n = cfg["self_discovery"]["n_classes"]
    for m in visual_word_methods(cfg):
        if cfg["methods"][m].get("n_classes", n) != n:
            raise ConfigError(f"methods.{m}.n_classes = {cfg['methods'][m]['n_classes']} but self_discovery.n_classes "
                             f"= {n}: the classification head needs one output per discovered visual word")


def discovery_config(cfg: dict, dims: int):
    """The :class:`~eden_lib.data.self_discovery.SelfDiscoveryConfig` of the study for ``dims`` D."""
    try:
        return _discovery_config(cfg, dims)
    except ValueError as exc:  # SelfDiscoveryConfig names its field; say where it comes from
        raise ValueError(f"params self_discovery / data.ct ({dims}D): {exc}") from None


def _discovery_config(cfg: dict, dims: int):
    from eden_lib.data.self_discovery import SelfDiscoveryConfig

    sd, ct = cfg["self_discovery"], cfg["data"]["ct"]
    common = dict(
        spatial_dims=dims, n_classes=sd["n_classes"], instances_per_class=sd["instances_per_class"],
        scales=tuple(tuple(s) for s in sd["scales"]), min_anchor_distance=sd["min_anchor_distance"],
        reference_order=sd["reference_order"], ae_width=sd["ae_width"], ae_epochs=sd["ae_epochs"],
        ae_batch_size=sd["ae_batch_size"], ae_lr=sd["ae_lr"], device=cfg["pretrain"]["device"], seed=cfg["seed"],
    )
    if dims == 3:
        bxy, bz = ct["subvolume_border"]
        return SelfDiscoveryConfig(**common, crop_size=tuple(ct["subvolume"]), border=(bxy, bxy, bz),
                                   max_tissue_fraction=sd["max_tissue_fraction"], ae_size=tuple(sd["ae_size_3d"]))
    size = cfg["data"]["image_size"]
    return SelfDiscoveryConfig(**common, crop_size=(sd["crop_size_2d"],) * 2, out_size=(size, size),
                               max_tissue_fraction=None, ae_size=tuple(sd["ae_size_2d"]),
                               ae_backbone_2d=cfg["pretrain"]["backbone_2d"]["name"])


class TrainingScans(Sequence):
    """The training CT scans of a LUNA16 root, read on access: ``(X, Y, Z)`` float32 in [0, 1] (HU window
    -1000..1000, the Models Genesis orientation of :mod:`eden_lib.pipeline.prepare`). The last scan read is kept."""

    def __init__(self, root: Path, n_train_subsets: int) -> None:
        from eden_lib.data.luna16 import LUNA16Index

        index = LUNA16Index(root, subsets=range(n_train_subsets))
        if not index.scans:
            raise FileNotFoundError(f"no training scans (subsets 0..{n_train_subsets - 1}) under LUNA16 root {root}")
        self.ids = list(index.scans)
        self._paths = list(index.scans.values())
        self._read = lru_cache(maxsize=1)(self._load)

    def _load(self, i: int) -> np.ndarray:
        from eden_lib.data.luna16 import read_scan
        from eden_lib.data.subvolumes import hu_to_unit

        return hu_to_unit(np.transpose(read_scan(self._paths[i]).hu, (2, 1, 0)))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self._read(int(i))


class _Rows(Sequence):
    """Rows ``indices`` of an array (e.g. a memory-mapped image cache), read on access."""

    def __init__(self, array: np.ndarray, indices: np.ndarray) -> None:
        self.array, self.indices = array, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return np.asarray(self.array[self.indices[int(i)]])


def training_patients(cfg: dict, dims: int) -> tuple[Sequence, list[str]]:
    """(the training volumes / radiographs to discover words in, their ids: seriesuid or image index)."""
    if dims == 3:
        from eden_lib.pipeline.prepare import luna16_root, n_train_subsets

        scans = TrainingScans(luna16_root(cfg), n_train_subsets(cfg))
        return scans, scans.ids
    from eden_lib.data import prepared

    cxr = prepared.load_cxr()
    train = cxr.split_indices("train")
    return _Rows(cxr.images, train), cxr.meta["image_index"].to_numpy()[train].astype(str).tolist()


def discover(cfg: dict, dims: int, out: Path) -> dict:
    """Discover and crop the visual words in ``dims`` D into ``out``; returns the summary written to info.json."""
    from eden_lib.data.self_discovery import discover_visual_words, embed_patients, extract_visual_word_crops

    sd_cfg = discovery_config(cfg, dims)
    volumes, ids = training_patients(cfg, dims)
    embeddings, history = embed_patients(volumes, sd_cfg)
    words = discover_visual_words(embeddings, volumes, sd_cfg)
    crops, labels, meta = extract_visual_word_crops(volumes, words, sd_cfg, dtype=np.float16)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "crops.npy", crops[:, 0])
    np.save(out / "labels.npy", labels)
    axes = "xyz" if dims == 3 else "rc"
    table = pd.DataFrame({"patient": np.asarray(ids)[meta["patient"]], "label": meta["label"],
                          "level": meta["level"], "rank": meta["rank"]})
    for a, axis in enumerate(axes):
        table[f"start_{axis}"], table[f"size_{axis}"] = meta["start"][:, a], meta["size"][:, a]
    table.to_csv(out / "crops.csv", index=False)
    pd.DataFrame({
        "label": np.arange(len(words.references)),
        "reference": np.asarray(ids)[words.references],
        **{f"anchor_{axis}": words.anchors[:, a] for a, axis in enumerate(axes)},
        "members": [" ".join(np.asarray(ids)[m]) for m in words.members],
        "mean_distance": words.distances[:, 1:].mean(axis=1) if words.distances.shape[1] > 1 else 0.0,
    }).to_csv(out / "words.csv", index=False)
    info = {
        "spatial_dims": dims, "n_patients": len(ids), "n_classes": int(len(words.references)),
        "instances_per_class": int(words.members.shape[1]), "levels": len(sd_cfg.scales),
        "n_crops": int(len(labels)), "crop_size": list(sd_cfg.crop_size), "out_size": list(sd_cfg.out_size),
        "autoencoder_loss": {"first": history[0]["loss"], "final": history[-1]["loss"]},
    }  # no wall time here: the words' digest enters TransVW's checkpoint fingerprint (timing: reports/timing/)
    (out / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def run_self_discovery(cfg: dict) -> pd.DataFrame:
    """Run the stage: one row per discovered dimension (an empty table when no visual-word method is active)."""
    from eden_lib.reporting.io import write_json

    check_classes(cfg)
    root = paths.data_dir() / KIND
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    paths.figures_dir("self_discovery").mkdir(parents=True, exist_ok=True)  # a stage output, even when empty
    dims_list = visual_word_dims(cfg)
    rows = [discover(cfg, d, root / f"{d}d") for d in dims_list]
    (root / "info.json").write_text(json.dumps({"dims": dims_list, "methods": visual_word_methods(cfg)}) + "\n")
    write_json({"profile": cfg["profile"], "methods": visual_word_methods(cfg), **{f"{r['spatial_dims']}d": r for r in rows}},
               paths.metrics_file("self_discovery", "visual_words"))
    return pd.DataFrame(rows)


def load_visual_words(dims: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(crops ``(M, *size)`` float16 memory map in [0, 1], labels ``(M,)`` int64, info) of ``dims`` D."""
    folder = paths.data_dir() / KIND / f"{dims}d"
    missing = [n for n in ("crops.npy", "labels.npy", "info.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: run the 'self_discovery' stage (it discovers words in "
                                "the dimensions the active visual-word methods pretrain in)")
    return (np.load(folder / "crops.npy", mmap_mode="r"), np.load(folder / "labels.npy"),
            json.loads((folder / "info.json").read_text()))


def save_word_figures() -> list[Path]:
    """One grid of visual words per discovered dimension under ``reports/figures/self_discovery/``."""
    from eden_lib.reporting import figures

    written = []
    for folder in sorted((paths.data_dir() / KIND).glob("?d")):
        dims = int(folder.name[0])
        crops, labels, _ = load_visual_words(dims)
        meta = pd.read_csv(folder / "crops.csv")
        fig = figures.visual_words_grid(crops, labels, meta["rank"].to_numpy(), meta["level"].to_numpy())
        written.append(figures.save(fig, paths.figures_dir("self_discovery") / f"visual_words_{dims}d.png"))
    return written
