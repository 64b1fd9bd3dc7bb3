"""Every path of the study, resolved from the repository root.

Papermill runs notebooks with the repository root as working directory, JupyterLab with ``notebooks/``; both
resolve the same files through this module. ``EDEN_ROOT`` overrides the root (tests point it at a scratch copy).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The study's root: ``$EDEN_ROOT`` if set, else the folder above the ``eden_lib`` package."""
    env = os.environ.get("EDEN_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def params_file() -> Path:
    return repo_root() / "params.yaml"


def data_dir() -> Path:
    return repo_root() / "data"


def raw_dir(dataset: str) -> Path:
    """Where a dataset lives on disk in its native layout (synthetic data is written here by ``prepare``)."""
    return data_dir() / "raw" / dataset


def prepared_dir(dataset: str) -> Path:
    """The memory-mappable tensor cache ``prepare`` writes for one dataset."""
    return data_dir() / "prepared" / dataset


def models_dir(run: str) -> Path:
    """Exported weights of a run: ``data/models/<method>`` for a study method, ``data/claims/<stage>/<condition>``
    for a claim stage's run ``"<stage>/<condition>"`` (kept out of ``data/models``, which several stages read
    whole, so a claim stage's outputs never become their dependency)."""
    return data_dir() / ("claims" if "/" in run else "models") / run


def logs_dir() -> Path:
    """Progress logs of training runs (kept out of the executed notebooks and out of DVC outputs)."""
    return data_dir() / "logs"


def features_file(method: str) -> Path:
    return data_dir() / "features" / f"{method}.npz"


def reports_dir() -> Path:
    return repo_root() / "reports"


def metrics_file(stage: str, name: str) -> Path:
    return reports_dir() / "metrics" / stage / f"{name}.json"


def figures_dir(stage: str) -> Path:
    return reports_dir() / "figures" / stage
