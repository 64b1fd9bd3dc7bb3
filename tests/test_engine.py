import pytest
import torch
from torch import nn

from eden_lib.engine import NonFiniteLossError, TrainConfig, fit, monitor_loss


class TinyRegression(nn.Module):
    """A method-shaped module: forward(batch, generator) -> {"loss", ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.steps = 0

    def forward(self, batch, generator):
        err = self.lin(batch["x"]) - batch["y"]
        return {"loss": (err**2).mean(), "abs_err": err.abs().mean()}

    def after_step(self):
        self.steps += 1


def batches(epoch, generator):
    for _ in range(5):
        x = torch.randn(8, 4, generator=generator)
        yield {"x": x, "y": x.sum(1, keepdim=True)}


def _run(tmp_path, fingerprint="a", **kw):
    torch.manual_seed(0)
    model = TinyRegression()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    cfg = TrainConfig(epochs=4, checkpoint_dir=tmp_path, seed=3, fingerprint=fingerprint, device="cpu", **kw)
    return model, fit(model, batches, opt, cfg, scheduler=sched)


def test_loss_falls_and_metrics_are_per_epoch(tmp_path):
    model, history = _run(tmp_path)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"] / 4
    assert {"loss", "abs_err", "lr", "seconds"} <= set(history[0])
    assert history[2]["lr"] == pytest.approx(0.025)  # the scheduler stepped per epoch
    assert model.steps == 20


def test_resume_after_stop_gives_identical_weights(tmp_path):
    full, full_hist = _run(tmp_path / "full")
    _, partial = _run(tmp_path / "split", stop_after_epochs=2)
    assert len(partial) == 2
    resumed, hist = _run(tmp_path / "split")
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert hist[-1]["loss"] == pytest.approx(full_hist[-1]["loss"])


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path, capsys):
    _run(tmp_path, fingerprint="a", stop_after_epochs=2)
    _, hist = _run(tmp_path, fingerprint="b", stop_after_epochs=1)
    assert [h["epoch"] for h in hist] == [0]
    assert "another configuration" in capsys.readouterr().out


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    def bad_batches(epoch, generator):
        for step in range(3):
            x = torch.randn(8, 4, generator=generator)
            y = x.sum(1, keepdim=True)
            if epoch == 1 and step == 2:
                y = y * float("nan")
            yield {"x": x, "y": y}

    model = TinyRegression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 2"):
        fit(model, bad_batches, opt, TrainConfig(epochs=3, device="cpu"))


def test_same_seed_same_numbers_on_cpu(tmp_path):
    a, ha = _run(tmp_path / "a")
    b, hb = _run(tmp_path / "b")
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


class WithAuxiliaryOptimizer(TinyRegression):
    """Also trains a second layer with its own Adam in ``after_step`` (like DiRA's discriminator)."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(4, 1)
        self.aux_optimizer = torch.optim.Adam(self.aux.parameters(), lr=0.05)
        self.last_x = None

    def forward(self, batch, generator):
        self.last_x = batch["x"]
        return super().forward(batch, generator)

    def after_step(self):
        super().after_step()
        self.aux_optimizer.zero_grad()
        ((self.aux(self.last_x) - 1) ** 2).mean().backward()
        self.aux_optimizer.step()

    def auxiliary_optimizers(self):
        return {"aux": self.aux_optimizer}


def _run_aux(path, **kw):
    torch.manual_seed(0)
    model = WithAuxiliaryOptimizer()
    opt = torch.optim.SGD(model.lin.parameters(), lr=0.05)
    fit(model, batches, opt, TrainConfig(epochs=4, checkpoint_dir=path, seed=3, device="cpu", **kw))
    return model


def test_auxiliary_optimizer_state_is_checkpointed_and_resumed(tmp_path):
    full = _run_aux(tmp_path / "full")
    _run_aux(tmp_path / "split", stop_after_epochs=2)
    saved = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["auxiliary_optimizers"]["aux"]
    assert saved["state"][0]["step"] == 10
    resumed = _run_aux(tmp_path / "split")  # Adam restarted from empty moments would end elsewhere
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


class DenormalProbe(TinyRegression):
    """Records what a float32 denormal (1e-40) becomes inside a training step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def forward(self, batch, generator):
        tiny = torch.full((1,), 1e-38) * torch.full((1,), 1e-2)  # 1e-40: below float32's normal range
        self.seen.append(float(tiny))
        return super().forward(batch, generator)


def test_denormals_are_flushed_during_training_only(tmp_path):
    model = DenormalProbe()
    fit(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), TrainConfig(epochs=1, seed=0, verbose=False))
    assert model.seen and all(v == 0.0 for v in model.seen)
    assert float(torch.full((1,), 1e-38) * torch.full((1,), 1e-2)) > 0  # restored afterwards


class RandomisedRegression(TinyRegression):
    """Adds generator noise to its loss and counts the calls it sees in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.train_calls = 0

    def forward(self, batch, generator):
        self.train_calls += self.training
        out = super().forward(batch, generator)
        return {**out, "loss_noise": torch.rand((), generator=generator)}


def test_monitored_loss_scores_fixed_batches_after_each_epoch(tmp_path):
    monitor = list(batches(0, torch.Generator().manual_seed(9)))
    torch.manual_seed(0)
    model = RandomisedRegression()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = fit(model, batches, opt, TrainConfig(epochs=3, seed=3, device="cpu", monitor=monitor))
    assert model.train_calls == 15 and model.training  # monitoring runs in eval mode and restores train mode
    assert history[-1]["monitor_loss"] < history[0]["monitor_loss"]
    noise = {h["monitor_loss_noise"] for h in history}
    assert len(noise) == 1  # the same draws every epoch
    again = monitor_loss(model, monitor, torch.device("cpu"), seed=3)
    with torch.no_grad():
        expected = sum(float(((model.lin(b["x"]) - b["y"]) ** 2).mean()) for b in monitor) / len(monitor)
    assert again["monitor_loss"] == pytest.approx(expected, rel=1e-6)
    assert "monitor_abs_err" not in again  # only losses are monitored


def test_monitoring_leaves_training_unchanged(tmp_path):
    plain, _ = _run(tmp_path / "plain")
    monitored, history = _run(tmp_path / "monitored", monitor=list(batches(0, torch.Generator().manual_seed(9))))
    assert "monitor_loss" in history[0]
    for a, b in zip(plain.state_dict().values(), monitored.state_dict().values()):
        assert torch.equal(a, b)
