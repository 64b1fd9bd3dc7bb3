"""Fine-tuning with a validation curve, early stopping and best weights; the engine's after_epoch hook; k-shot and
group hold-out subsets; parallel jobs; the CT train / validation / test split of the transfer stage."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from eden_lib.engine import TrainConfig, fit
from eden_lib.evaluation.finetune import FinetuneConfig, Validation, finetune
from eden_lib.evaluation.subsets import class_shot_subset, group_holdout, label_fraction_subset
from eden_lib.parallel import run_jobs
from eden_lib.pipeline.transfer import ct_splits, validation_rows
from eden_lib.seed import seed_everything


def mse(out, target):
    return ((out - target) ** 2).mean()


def _data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x.sum(1, keepdim=True)


def _net() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _cfg(**kw) -> FinetuneConfig:
    base = dict(epochs=1, batch_size=8, lr=0.1, weight_decay=0.0, min_steps=0, device="cpu", evaluations=5,
                patience=0)
    return FinetuneConfig(**{**base, **kw})


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _scripted(net: nn.Module, values: list[float], snapshots: list[dict[str, torch.Tensor]]) -> Validation:
    """A validation whose score returns ``values`` in turn and records the net's weights at each call."""
    x_val, y_val = _data(12, seed=1)

    def score(pred, y):
        assert isinstance(pred, np.ndarray) and pred.shape == (12, 1)
        snapshots.append(_state(net))
        return values[len(snapshots) - 1]

    return Validation(x_val, y_val.numpy(), score)


# --- finetune -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "cfg", "steps"), [
    (32, _cfg(), 4),                                  # evaluations are ignored without a validation set
    (32, _cfg(epochs=3, batch_size=5), 21),           # ceil(32 / 5) * 3
    (32, _cfg(epochs=2, min_steps=9), 10),            # min_steps 9 over 2 epochs: 5 per epoch
    (6, _cfg(epochs=1, batch_size=8, min_steps=3), 3),  # batch size capped at n
])
def test_finetune_without_validation_returns_no_curve_and_keeps_step_count(n, cfg, steps):
    calls = []

    def counting_loss(out, target):
        calls.append(len(out))
        return mse(out, target)

    x, y = _data(n)
    assert finetune(_net(), counting_loss, x, y, cfg, seed=0) == []
    assert len(calls) == steps
    assert set(calls) == {min(cfg.batch_size, n)}


def test_finetune_config_rounds():
    assert _cfg(epochs=1, evaluations=5).rounds(True) == 5
    assert _cfg(epochs=1, evaluations=5).rounds(False) == 1
    assert _cfg(epochs=8, evaluations=5).rounds(True) == 8
    assert _cfg(epochs=0, evaluations=0).rounds(True) == 1


def test_validation_curve_has_one_point_per_evaluation():
    calls = []

    def counting_loss(out, target):
        calls.append(1)
        return mse(out, target)

    x, y = _data()
    x_val, y_val = _data(12, seed=1)
    validation = Validation(x_val, y_val.numpy(), lambda pred, y: -float(((pred - y) ** 2).mean()))
    curve = finetune(_net(), counting_loss, x, y, _cfg(), seed=0, validation=validation)
    assert len(curve) == 5
    assert all(set(point) == {"step", "value"} for point in curve)
    steps = [point["step"] for point in curve]
    assert all(a < b for a, b in zip(steps, steps[1:]))
    assert steps[-1] == len(calls)


def test_finetune_ends_with_the_weights_of_the_best_round():
    net, snapshots = _net(), []
    x, y = _data()
    curve = finetune(net, mse, x, y, _cfg(), seed=0, validation=_scripted(net, [0.1, 0.9, 0.2, 0.3, 0.4], snapshots))
    assert [point["value"] for point in curve] == [0.1, 0.9, 0.2, 0.3, 0.4]
    assert len(snapshots) == 5
    assert not torch.equal(snapshots[1]["weight"], snapshots[-1]["weight"])  # training moved on after round 2
    _assert_same_state(_state(net), snapshots[1])


def test_early_stopping_after_patience_rounds_without_gain():
    net, snapshots = _net(), []
    x, y = _data()
    validation = _scripted(net, [0.5, 0.4, 0.3, 0.9, 1.0], snapshots)
    curve = finetune(net, mse, x, y, _cfg(patience=2), seed=0, validation=validation)
    assert [point["value"] for point in curve] == [0.5, 0.4, 0.3]
    assert len(snapshots) == 3
    _assert_same_state(_state(net), snapshots[0])


def test_patience_zero_never_stops_early():
    net, snapshots = _net(), []
    x, y = _data()
    validation = _scripted(net, [0.9, 0.8, 0.7, 0.6, 0.5], snapshots)
    curve = finetune(net, mse, x, y, _cfg(patience=0), seed=0, validation=validation)
    assert len(curve) == 5
    _assert_same_state(_state(net), snapshots[0])


def test_finetune_with_validation_is_deterministic():
    x, y = _data()
    x_val, y_val = _data(12, seed=1)
    validation = Validation(x_val, y_val.numpy(), lambda pred, y: -float(((pred - y) ** 2).mean()))

    def run(seed):
        net = _net()
        return finetune(net, mse, x, y, _cfg(), seed=seed, validation=validation), _state(net)

    (curve_a, state_a), (curve_b, state_b), (_, state_c) = run(3), run(3), run(4)
    assert curve_a == curve_b
    _assert_same_state(state_a, state_b)
    assert not torch.equal(state_a["weight"], state_c["weight"])


# --- engine: after_epoch and stop_requested -----------------------------------------------------------------------


class Hooked(nn.Module):
    """A method module with an ``after_epoch`` hook that asks to stop after epoch ``stop_after``."""

    def __init__(self, stop_after: int | None) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.stop_after = stop_after
        self.stop_requested = False

    def forward(self, batch, generator):
        return {"loss": mse(self.lin(batch["x"]), batch["y"])}

    def after_epoch(self, epoch):
        self.stop_requested = epoch == self.stop_after
        return {"val_score": 10.0 + epoch}


def _hooked_batches(epoch, generator):
    for _ in range(2):
        x = torch.randn(8, 4, generator=generator)
        yield {"x": x, "y": x.sum(1, keepdim=True)}


def _fit_hooked(stop_after):
    torch.manual_seed(0)
    model = Hooked(stop_after)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return fit(model, _hooked_batches, opt, TrainConfig(epochs=4, device="cpu", verbose=False))


def test_after_epoch_values_are_in_the_history():
    history = _fit_hooked(stop_after=None)
    assert [row["val_score"] for row in history] == [10.0, 11.0, 12.0, 13.0]


def test_stop_requested_ends_training_after_that_epoch():
    history = _fit_hooked(stop_after=1)
    assert [row["epoch"] for row in history] == [0, 1]


# --- subsets --------------------------------------------------------------------------------------------------------


def _multilabel_pool(n: int = 400) -> np.ndarray:
    g = np.random.default_rng(0)
    labels = (g.random((n, 3)) < [0.2, 0.05, 0.4]).astype(float)
    labels[:30, 0] = np.nan
    labels[:, 1] = 0.0
    labels[7, 1] = 1.0  # a label with a single positive
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_shot_subset_meets_every_requirement_and_no_more(seed):
    labels, shots = _multilabel_pool(), 3
    idx = class_shot_subset(labels, shots, seed)
    assert idx.dtype == np.int64 and (np.diff(idx) > 0).all()
    assert idx.size <= 2 * shots * labels.shape[1]
    positives, negatives = (labels[idx] == 1).sum(0), (labels[idx] == 0).sum(0)
    assert (positives >= np.minimum(shots, (labels == 1).sum(0))).all()
    assert (negatives >= np.minimum(shots, (labels == 0).sum(0))).all()
    assert positives[1] == 1 and 7 in idx


@pytest.mark.parametrize("seed", [0, 1])
def test_class_shot_subset_single_label_is_exactly_k_per_class(seed):
    labels = np.array([[1.0]] * 10 + [[0.0]] * 20 + [[np.nan]] * 5)
    idx = class_shot_subset(labels, 4, seed)
    assert idx.size == 8
    assert (labels[idx, 0] == 1).sum() == 4 and (labels[idx, 0] == 0).sum() == 4


def test_class_shot_subset_takes_no_filler_rows():
    labels = np.zeros((60, 3))
    labels[np.arange(30), np.arange(30) % 3] = 1.0  # exclusive labels: a positive of one is a negative of the others
    idx = class_shot_subset(labels, 2, seed=0)
    np.testing.assert_array_equal((labels[idx] == 1).sum(0), [2, 2, 2])
    assert idx.size == 6


def test_class_shot_subset_depends_only_on_the_seed():
    labels = _multilabel_pool()
    np.testing.assert_array_equal(class_shot_subset(labels, 3, 5), class_shot_subset(labels.copy(), 3, 5))
    assert not np.array_equal(class_shot_subset(labels, 3, 5), class_shot_subset(labels, 3, 6))


@pytest.mark.parametrize(("labels", "shots"), [(np.zeros((10, 2)), 0), (np.zeros(10), 2)])
def test_class_shot_subset_rejects_bad_input(labels, shots):
    with pytest.raises(ValueError, match="class_shot_subset"):
        class_shot_subset(labels, shots, seed=0)


def _groups() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat([f"scan{i}" for i in range(10)], [1, 2, 3, 4, 5] * 2))


@pytest.mark.parametrize(("fraction", "n_out"), [(0.3, 3), (0.01, 1), (0.7, 7), (0.99, 9)])
def test_group_holdout_holds_out_whole_groups(fraction, n_out):
    groups = _groups()
    held = group_holdout(groups, fraction, seed=0)
    assert held.shape == groups.shape and held.dtype == bool
    assert not set(groups[held]) & set(groups[~held])
    assert len(set(groups[held])) == n_out


def test_group_holdout_never_holds_out_every_group():
    held = group_holdout(np.array(["a", "a", "b"]), 0.9, seed=0)
    assert 0 < held.sum() < 3 and len(set(np.array(["a", "a", "b"])[held])) == 1


def test_group_holdout_depends_only_on_the_seed():
    groups = _groups()
    np.testing.assert_array_equal(group_holdout(groups, 0.3, 1), group_holdout(groups.copy(), 0.3, 1))
    draws = {tuple(group_holdout(groups, 0.3, seed)) for seed in range(5)}
    assert len(draws) > 1


@pytest.mark.parametrize(("groups", "fraction"), [
    (np.array(["a", "b"]), 0.0), (np.array(["a", "b"]), 1.0), (np.array(["a", "b"]), -0.2),
    (np.array(["a", "b"]), 1.5), (np.array(["a", "a"]), 0.5),
])
def test_group_holdout_rejects_bad_input(groups, fraction):
    with pytest.raises(ValueError, match="group_holdout"):
        group_holdout(groups, fraction, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_fraction_subset_still_keeps_the_rare_positives(seed):
    labels = np.zeros((10, 2))
    labels[3, 0] = labels[7, 1] = 1.0
    np.testing.assert_array_equal(label_fraction_subset(labels, 0.2, seed, min_positives=1), [3, 7])
    idx = label_fraction_subset(labels, 0.5, seed, min_positives=1)
    assert idx.size == 5 and {3, 7} <= set(idx)


# --- parallel jobs --------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_determinism():
    """seed_everything switches torch to deterministic algorithms; put the setting back after the test."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _train(seed: int) -> np.ndarray:
    seed_everything(seed)
    net = nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.randn(16, 4)
    for _ in range(5):
        opt.zero_grad()
        mse(net(x), x.sum(1, keepdim=True)).backward()
        opt.step()
    return torch.cat([net.weight.detach().flatten(), net.bias.detach()]).numpy().copy()


def test_run_jobs_returns_results_in_job_order():
    jobs = [lambda i=i: i * 10 for i in range(5)]
    assert run_jobs(jobs, workers=1) == [0, 10, 20, 30, 40]
    assert run_jobs(jobs, workers=2) == [0, 10, 20, 30, 40]


def test_run_jobs_gives_the_same_results_for_any_worker_count(restore_determinism):
    jobs = [lambda s=s: _train(s) for s in range(3)]
    serial, forked = run_jobs(jobs, workers=1), run_jobs(jobs, workers=2)
    for a, b in zip(serial, forked, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(serial[0], serial[1])


def _failing() -> None:
    raise ValueError("job 1 failed")


def test_run_jobs_reraises_a_failing_job():
    with pytest.raises(ValueError, match="job 1 failed"):
        run_jobs([lambda: 0, _failing, lambda: 2], workers=2)


def test_run_jobs_runs_one_thread_per_job_and_restores_the_parent_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_jobs([torch.get_num_threads] * 2, workers=1) == [1, 1]
        assert torch.get_num_threads() == 2
        assert run_jobs([torch.get_num_threads] * 2, workers=2) == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- CT splits of the transfer stage --------------------------------------------------------------------------------


def _ct_cfg(size: int = 64) -> dict:
    return {"seed": 0, "transfer": {"validation": {"size": size, "ct_scan_fraction": 0.25}}}


def _ct_meta(train_scans: int) -> pd.DataFrame:
    train = [(f"train{i}", "train") for i in range(train_scans) for _ in range(3)]
    test = [(f"test{i}", "test") for i in range(2) for _ in range(2)]
    rows = np.random.default_rng(0).permutation(np.array(train + test, dtype=object))
    return pd.DataFrame(rows, columns=["seriesuid", "split"])


@pytest.mark.parametrize("size", [64, 4])
def test_ct_splits_validate_on_held_out_training_scans(size):
    meta = _ct_meta(train_scans=8)
    train, val, test = ct_splits(_ct_cfg(size), meta)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert (meta["split"].to_numpy()[np.concatenate([train, val])] == "train").all()
    assert (meta["split"].to_numpy()[test] == "test").all() and len(test) == 4
    scans = meta["seriesuid"].to_numpy()
    assert not set(scans[train]) & set(scans[val])
    assert len(val) == min(size, 6)  # 2 of the 8 scans (0.25) with 3 rows each, capped at size
    assert len(train) == 18


def test_ct_splits_without_a_second_training_scan_have_no_validation():
    meta = _ct_meta(train_scans=1)
    train, val, test = ct_splits(_ct_cfg(), meta)
    assert len(val) == 0 and len(train) == 3 and len(test) == 4


def test_validation_rows_caps_at_size():
    pool = np.arange(100, 200)
    rows = validation_rows(_ct_cfg(64), pool)
    assert len(rows) == 64 and len(set(rows)) == 64 and set(rows) <= set(pool)
    np.testing.assert_array_equal(rows, validation_rows(_ct_cfg(64), pool))
    np.testing.assert_array_equal(np.sort(validation_rows(_ct_cfg(64), pool[:10])), pool[:10])
