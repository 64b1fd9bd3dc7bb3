"""Static checks that dvc.yaml, params.yaml, the notebooks and the registry agree (no pipeline run)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eden_lib.config import load_params

ROOT = Path(__file__).resolve().parent.parent
DVC = str(Path(sys.executable).parent / "dvc")
STAGE_NOTEBOOK = {
    "prepare": "00_prepare",
    "self_discovery": "05_self_discovery",
    "anatomy": "06_anatomy",
    "pretrain": "10_pretrain",
    "transfer": "20_transfer",
    "embedding": "30_embedding",
    "bias": "40_gender_bias",
    "froc": "60_froc",
    "ark_sites": "70_ark_sites",
    "interpolation": "71_interpolation",
    "separability": "72_separability",
    "genesis_dims": "73_genesis_dims",
    "convergence": "74_convergence",
    "localisation": "75_localisation",
    "natural_source": "15_natural_source",
    "domain_transfer": "76_domain_transfer",
    "report": "90_report",
}


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_dvc_lists_exactly_the_stages_the_config_resolves():
    out = subprocess.run([DVC, "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"}, check=True).stdout.split()
    for profile in ("synthetic", "smoke", "extended", "paper"):
        methods = load_params(profile=profile, validate_methods=False)["active_methods"]
        expected = ["prepare", "anatomy", "self_discovery", *(f"pretrain@{m}" for m in methods),
                    *(f"transfer@{m}" for m in methods), "embedding", "bias", "froc", "ark_sites", "interpolation",
                    "separability", "genesis_dims", "convergence", "localisation", "natural_source",
                    "domain_transfer", "report"]
        assert sorted(out) == sorted(expected), profile


def test_every_stage_runs_its_notebook_with_declared_parameters():
    import papermill

    for name, stage in dvc_yaml()["stages"].items():
        body = stage.get("do", stage)
        notebook = f"notebooks/{STAGE_NOTEBOOK[name]}.ipynb"
        assert re.match(rf"mkdir -p reports/executed\S* && papermill --engine eden {notebook} reports/executed/", body["cmd"]), name
        assert notebook in body["deps"], name
        passed = set(re.findall(r" -p (\w+)", body["cmd"].split("papermill", 1)[1]))
        declared = set(papermill.inspect_notebook(str(ROOT / notebook)))
        assert passed <= declared, (name, passed - declared)


def test_every_declared_dependency_exists():
    for name, stage in dvc_yaml()["stages"].items():
        body = stage.get("do", stage)
        for dep in body["deps"]:
            if dep.startswith("data/") or dep.startswith("reports/"):
                continue  # produced by an upstream stage
            for method in load_params(validate_methods=False)["active_methods"]:
                assert (ROOT / dep.replace("${item}", method)).exists(), (name, dep)


def outputs(body: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]


def test_a_folder_dependency_holds_only_pretraining_exports():
    """``data/models`` is read whole by the claim stages, so only ``pretrain@`` may write under it: a claim stage's
    models there would make every reader of the folder rerun (and wait) whenever that claim reruns."""
    stages = dvc_yaml()["stages"]
    assert any("data/models" in s.get("do", s)["deps"] for s in stages.values())
    for name, stage in stages.items():
        for out in outputs(stage.get("do", stage)):
            assert not out.startswith("data/models/") or name == "pretrain", (name, out)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_thin_and_output_free(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1
    source = "\n".join("".join(c["source"]) for c in code)
    assert not re.search(r"^\s*(class |def |for |while )", source, re.M), "logic belongs in eden_lib"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_import_eden_lib_is_cheap():
    code = "import sys, eden_lib, eden_lib.config, eden_lib.paths; print(sorted(m for m in ('torch', 'monai', 'umap', 'seaborn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
