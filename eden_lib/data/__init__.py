"""Data: the synthetic anatomy generators, the real-dataset loaders and the patient-level splits.

:data:`DATASETS` names every real-data loader (the vocabulary of ``data.roots`` in params.yaml). Each is a
``torch.utils.data.Dataset`` class taking the dataset's folder in its native layout and a split, and yielding dicts
with ``image``, ``label`` (NaN where unknown), ``sex``, ``age``, ``patient_id`` and masks / boxes where the dataset
has them (STUDY §8). The classes are imported on first use, so ``import eden_lib.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

#: registry name -> "module:Class" of the loader
DATASETS: dict[str, str] = {
    "chestxray14": "eden_lib.data.chestxray14:ChestXray14",
    "chexpert": "eden_lib.data.chexpert:CheXpert",
    "mimic_cxr": "eden_lib.data.mimic_cxr:MIMICCXR",
    "vindr_cxr": "eden_lib.data.vindr_cxr:VinDrCXR",
    "rsna_pneumonia": "eden_lib.data.rsna_pneumonia:RSNAPneumonia",
    "siim_acr": "eden_lib.data.siim_acr:SIIMACRPneumothorax",
    "jsrt": "eden_lib.data.jsrt_scr:JSRT",
    "montgomery": "eden_lib.data.nlm_tb:Montgomery",
    "shenzhen": "eden_lib.data.nlm_tb:Shenzhen",
    "luna16": "eden_lib.data.luna16_dataset:LUNA16",
    "lidc_idri": "eden_lib.data.lidc_idri:LIDCIDRI",
    "lits": "eden_lib.data.lits:LiTS",
    "brats2018": "eden_lib.data.brats:BraTS2018",
    "rsna_str_pe": "eden_lib.data.rsna_str_pe:RSNASTRPE",
    "cad_pe": "eden_lib.data.cad_pe:CADPE",
}


def dataset_class(name: str) -> type:
    """The loader class registered as ``name`` (imported now)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_dataset(name: str, root: Any, split: str | None = None, **kwargs: Any) -> Any:
    """``DATASETS[name](root, split, **kwargs)``: e.g. ``open_dataset("chexpert", "/data/CheXpert-v1.0", "valid")``."""
    return dataset_class(name)(root, split, **kwargs)
