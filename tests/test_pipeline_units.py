"""Pure pieces of the stage modules: summaries, verdict sentences, paths."""

import numpy as np
import pandas as pd
import pytest

from eden_lib import paths
from eden_lib.evaluation.statistics import compare_methods
from eden_lib.pipeline.report import _sentence
from eden_lib.pipeline.transfer import summarize


def test_summary_keys_have_no_dots_and_ignore_nan_runs():
    records = [
        {"task": "t", "protocol": "linear_probe", "budget": "0.1", "seed": s, "metric": "auc", "value": v,
         "per_class": {}}
        for s, v in enumerate([0.6, 0.7, float("nan")])
    ]
    out = summarize(records)
    cell = out["t"]["linear_probe"]["b_0p1"]
    assert cell["n"] == 2
    assert np.isclose(cell["mean"], 0.65) and np.isclose(cell["std"], np.std([0.6, 0.7], ddof=1))


def test_verdicts_say_where_a_method_did_not_help():
    rng = np.random.default_rng(0)
    rows = [{"method": m, "seed": s, "value": base + rng.normal(0, 0.005)}
            for m, base in (("scratch", 0.6), ("better", 0.8), ("same", 0.6)) for s in range(5)]
    cmp = compare_methods(pd.DataFrame(rows), reference="scratch")
    text = " ".join(_sentence(cmp, "scratch", "auc"))
    assert "better was better than scratch by +0.2" in text
    assert "same did not differ significantly from scratch" in text


def test_paths_follow_eden_root(monkeypatch, tmp_path):
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    assert paths.repo_root() == tmp_path.resolve()
    assert paths.metrics_file("transfer", "scratch") == tmp_path.resolve() / "reports/metrics/transfer/scratch.json"
    monkeypatch.delenv("EDEN_ROOT")
    assert (paths.repo_root() / "params.yaml").is_file()


def test_loss_terms_are_the_first_and_final_epoch_means_of_each_part():
    from eden_lib.pipeline.pretrain import loss_terms

    history = [{"epoch": 0, "loss": 3.0, "loss_dis": 2.0, "loss_res": 0.1, "lr": 0.1},
               {"epoch": 1, "loss": 2.5, "loss_dis": 1.9, "loss_res": 0.06, "lr": 0.05}]
    assert loss_terms(history) == {"dis": {"first": 2.0, "final": 1.9}, "res": {"first": 0.1, "final": 0.06}}
    assert loss_terms([{"epoch": 0, "loss": 1.0, "lr": 0.1}]) == {}
    assert loss_terms([]) == {}


def test_pretraining_fingerprint_follows_the_prepared_data(monkeypatch, tmp_path):
    from eden_lib.config import load_params
    from eden_lib.pipeline.pretrain import fingerprint

    cfg = load_params(profile="smoke")
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    cxr = paths.prepared_dir("cxr")
    cxr.mkdir(parents=True)
    np.save(cxr / "images.npy", np.zeros((2, 4, 4), np.uint8))
    first = fingerprint(cfg, "simsiam", 2)
    assert fingerprint(cfg, "simsiam", 2) == first
    np.save(cxr / "images.npy", np.ones((2, 4, 4), np.uint8))  # regenerated data: same shape, other bytes
    assert fingerprint(cfg, "simsiam", 2) != first
    with pytest.raises(FileNotFoundError, match="prepared ct data"):
        fingerprint(cfg, "models_genesis", 3)


def _tiny_cxr(tmp_path, splits: list[str]) -> None:
    """Prepared CXR whose image i is filled with the value i (so a batch names its source rows)."""
    from eden_lib.data.prepared import write_cxr

    n = len(splits)
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 16, 16), np.uint8)
    meta = pd.DataFrame({"patient_id": np.arange(n), "split": splits})
    write_cxr(paths.prepared_dir("cxr"), images, np.zeros((n, 2, 16, 16)), np.zeros((n, 3, 2)), np.zeros((n, 7)),
              meta, {})


def test_monitor_batches_are_fixed_validation_samples(monkeypatch, tmp_path):
    import torch

    from eden_lib.config import load_params
    from eden_lib.methods import build_method
    from eden_lib.pipeline.pretrain import build_context, monitor_batches

    cfg = load_params(profile="smoke")
    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    _tiny_cxr(tmp_path, ["train"] * 10 + ["val"] * 5 + ["test"] * 5)
    cfg["pretrain"]["monitor_samples"] = 6
    method = build_method("simsiam", {**cfg["methods"]["simsiam"], "batch_size": 4}, build_context(cfg, 2, 7))
    first = monitor_batches(cfg, method, 2)
    rows = {round(float(v) * 255) for b in first for v in b["image"].amax(dim=(1, 2, 3))}
    assert [b["image"].shape[0] for b in first] == [4, 4] and rows <= set(range(10, 15))  # validation rows only
    again = monitor_batches(cfg, method, 2)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))  # the same samples every call
    cfg["data"]["cxr"]["val_fraction"] = 0  # no validation split: training images
    rows = {round(float(v) * 255) for b in monitor_batches(cfg, method, 2) for v in b["image"].amax(dim=(1, 2, 3))}
    assert rows <= set(range(10))
    cfg["pretrain"]["monitor_samples"] = 0
    assert monitor_batches(cfg, method, 2) == []


def test_int_at_least_takes_integers_from_its_minimum_and_never_a_bool():
    from eden_lib.pipeline.checks import int_at_least

    rule = int_at_least(1)
    assert rule(1) and rule(7)
    assert not rule(0) and not rule(True) and not rule(2.0) and not rule("2")
    assert not int_at_least(10)(9) and int_at_least(10)(10)
