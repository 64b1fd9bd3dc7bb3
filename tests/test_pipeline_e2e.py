"""The whole pipeline under the smoke profile, with real DVC and papermill, in a scratch copy of the repository.

One `dvc repro` (module fixture) feeds every test here: the report has real numbers for every active method, the
executed notebooks hold no errors, a transfer-only change reruns only transfer and what follows, and a pretraining
killed midway resumes from its last checkpoint with the same numbers as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "EDEN_ROOT": str(root),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "eden-ci", "GIT_AUTHOR_EMAIL": "ci@eden.invalid",
        "GIT_COMMITTER_NAME": "eden-ci", "GIT_COMMITTER_EMAIL": "ci@eden.invalid",
    }


def _run(args: list[str], root: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=root, env=_env(root), capture_output=True, text=True, **kw)


def _set_param(root: Path, old: str, new: str) -> None:
    params = root / "params.yaml"
    text = params.read_text()
    assert old in text, old
    params.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    _set_param(root, "profile: synthetic ", "profile: smoke ")
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "scratch copy"]):
        _run(args, root, check=True)
    result = _run([str(BIN / "dvc"), "repro"], root, timeout=2700)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root


def test_report_has_real_numbers_for_every_method(smoke_repo):
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    report = (smoke_repo / "reports" / "REPORT.md").read_text()
    assert "profile `smoke`" in report
    for method in params["active_methods"]:
        metrics = json.loads((smoke_repo / "reports" / "metrics" / "transfer" / f"{method}.json").read_text())
        means = [b["mean"] for t in metrics["summary"].values() for p in t.values() for b in p.values()]
        assert means and all(m is not None and 0 <= m <= 1 for m in means), method
        assert f"| {method} " in report
    for section in ("## Pretraining", "## Transfer", "## Few-shot segmentation", "## Zero-shot landmark embeddings",
                    "## Gender bias", "## Compute", "figures/embedding/compositionality.png"):
        assert section in report


def test_executed_notebooks_hold_no_errors(smoke_repo):
    executed = sorted((smoke_repo / "reports" / "executed").rglob("*.ipynb"))
    assert len(executed) >= 6
    for path in executed:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", (path.name, out.get("evalue"))
                assert out.get("name") != "stderr" or "Traceback" not in "".join(out.get("text", "")), path.name


def _stages_changed_by(root: Path, old: str, new: str) -> set[str]:
    """What ``dvc status`` lists with ``old`` replaced by ``new`` in params.yaml (restored afterwards)."""
    _set_param(root, old, new)
    try:
        return set(json.loads(_run([str(BIN / "dvc"), "status", "--json"], root, check=True).stdout))
    finally:
        _set_param(root, new, old)


def test_changing_a_transfer_parameter_reruns_only_transfer_and_downstream(smoke_repo):
    changed = _stages_changed_by(smoke_repo, "    C: 0.5", "    C: 0.25")
    assert any(s.startswith("transfer@") for s in changed)
    assert not any(s == "prepare" or s.startswith("pretrain@") for s in changed), changed
    # the claim stages that run the transfer stage's probes or fine-tuning read the transfer parameters too
    downstream = {"embedding", "bias", "report", "ark_sites", "separability", "genesis_dims", "localisation",
                  "domain_transfer"}
    assert changed <= {s for s in changed if s.startswith("transfer@")} | downstream


def test_changing_one_methods_override_reruns_only_that_method(smoke_repo):
    old = "simsiam: {batch_size: 64, lr: 0.0125"
    changed = _stages_changed_by(smoke_repo, old, old.replace("0.0125", "0.02"))
    assert changed == {"pretrain@simsiam"}, changed  # its transfer reruns only if the exported weights change


def test_pretraining_killed_midway_resumes_from_its_last_checkpoint(smoke_repo, tmp_path):
    import torch

    models = smoke_repo / "data" / "models" / "models_genesis"
    metrics = smoke_repo / "reports" / "metrics" / "pretrain" / "models_genesis.json"
    uninterrupted = {p.name: torch.load(p, weights_only=True)["state_dict"] for p in models.glob("*.pt")}
    uninterrupted_metrics = metrics.read_text()
    ckpt = smoke_repo / "data" / "checkpoints" / "models_genesis"
    shutil.rmtree(ckpt)
    shutil.rmtree(models)
    cmd = [sys.executable, "-m", "eden_lib.pipeline.pretrain", "--method", "models_genesis"]
    proc = subprocess.Popen(cmd, cwd=smoke_repo, env=_env(smoke_repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (ckpt / "2d" / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (models / "unet.pt").exists()  # killed before the end
    rerun = _run(cmd, smoke_repo, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resumed from" in rerun.stdout and "2d/last.pt" in rerun.stdout
    # the resumed run reproduces the uninterrupted DVC run exactly: same weights, same loss curve
    assert metrics.read_text() == uninterrupted_metrics
    for name, state in uninterrupted.items():
        resumed = torch.load(models / name, weights_only=True)["state_dict"]
        assert all(torch.equal(state[k], resumed[k]) for k in state), name


def test_pretraining_runs_under_torchrun_with_ddp(smoke_repo):
    import torch

    name = "supervised"
    shutil.rmtree(smoke_repo / "data" / "checkpoints" / name)
    shutil.rmtree(smoke_repo / "data" / "models" / name)
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "eden_lib.pipeline.pretrain",
           "--method", name]
    result = _run(cmd, smoke_repo, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((smoke_repo / "reports" / "metrics" / "pretrain" / f"{name}.json").read_text())
    for dims in ("2d", "3d"):
        assert metrics[dims]["final_loss"] < metrics[dims]["first_loss"]
    state = torch.load(smoke_repo / "data" / "models" / name / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())
