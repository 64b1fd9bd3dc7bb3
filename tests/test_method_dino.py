"""DINO method: multi-crop step on CPU, EMA teacher, centre, resumable schedule state, learning, config errors."""

import numpy as np
import pytest
import torch

from eden_lib.data.batches import render_batches
from eden_lib.engine import TrainConfig, fit
from eden_lib.methods import BuildContext, MethodConfigError, build_method
from eden_lib.models.ema import cosine_momentum

CTX = BuildContext(spatial_dims=2, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                   unet2d_decoder=(32, 16, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=32)
TINY = {"batch_size": 8, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local": 2}


def dino(total_steps: int = 10, **overrides):
    torch.manual_seed(0)
    method = build_method("dino", {**TINY, **overrides}, CTX)
    method.set_total_steps(total_steps)
    return method


def renders(seed: int = 0) -> dict:
    return {"image": torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(seed))}


def step(method, opt, batch, seed: int = 1) -> torch.Tensor:
    out = method(batch, torch.Generator().manual_seed(seed))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    method.after_step()
    return out["loss"].detach()


def test_multi_crop_shapes_and_budget_views():
    method = dino()
    crops = method.multi_crop(renders()["image"], torch.Generator().manual_seed(0))
    assert [c.shape for c in crops] == [(16, 1, 32, 32), (16, 1, 16, 16)]
    assert method.views == pytest.approx(2 + 2 / 4)
    assert build_method("dino", {"out_dim": 64}, CTX).views == pytest.approx(4.0)  # paper: 2 global + 8 local


def test_step_keeps_the_teacher_out_of_backprop_and_moves_it_by_the_ema():
    method = dino(total_steps=10)
    opt = method.configure_optimizer()
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    center_before = method.loss.center.clone()
    batch = renders()
    crops = method.multi_crop(batch["image"], torch.Generator().manual_seed(1))
    with torch.no_grad():
        teacher_out = method.teacher(crops[0])  # the same crops the step draws from the same seed
    out = method(batch, torch.Generator().manual_seed(1))
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    last_layer = method.student.head.last_layer.parametrizations.weight
    assert last_layer.original1.grad is None  # frozen during the first freeze_last_layer * total steps
    opt.step()
    method.after_step()
    m = cosine_momentum(0.996, 0, 10)
    for before, t, s in zip(teacher_before, method.teacher.parameters(), method.student.parameters()):
        torch.testing.assert_close(t, m * before + (1 - m) * s)
    torch.testing.assert_close(method.loss.center, 0.9 * center_before + 0.1 * teacher_out.mean(0, keepdim=True))
    assert int(method.steps_done) == 1
    torch.testing.assert_close(last_layer.original0, torch.ones_like(last_layer.original0))  # g stays 1


def test_step_counter_and_centre_survive_a_state_dict_round_trip():
    method = dino()
    opt = method.configure_optimizer()
    for _ in range(2):
        step(method, opt, renders())
    fresh = dino()
    fresh.load_state_dict(method.state_dict())
    assert int(fresh.steps_done) == 2
    torch.testing.assert_close(fresh.loss.center, method.loss.center)
    assert fresh.loss.center.abs().sum() > 0


def test_eval_mode_leaves_the_centre_alone():
    method = dino()
    step(method, method.configure_optimizer(), renders())
    center = method.loss.center.clone()
    method.eval()
    with torch.no_grad():
        method(renders(1), torch.Generator().manual_seed(2))
    assert torch.equal(method.loss.center, center) and center.abs().sum() > 0


def test_a_run_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path):
    images = (np.random.default_rng(0).random((16, 64, 64)) * 255).astype(np.uint8)
    factory = render_batches(images, np.zeros((16, 3), np.float32), np.arange(16), 8, 2)

    def run(directory, stop=None):
        method = dino(total_steps=2 * 2)
        opt = method.configure_optimizer()
        cfg = TrainConfig(epochs=2, checkpoint_dir=directory, device="cpu", verbose=False, stop_after_epochs=stop)
        fit(method, factory, opt, cfg, scheduler=method.configure_scheduler(opt, 2), steps_per_epoch=2)
        return method

    whole = run(tmp_path / "whole")
    run(tmp_path / "killed", stop=1)
    resumed = run(tmp_path / "killed")
    assert int(resumed.steps_done) == 4
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_loss_falls_on_a_fixed_batch():
    method = dino(total_steps=8, base_lr=0.5, warmup_teacher_temp=0.07, freeze_last_layer=0.0)  # lr 0.016
    opt = method.configure_optimizer()
    batch = renders()
    losses = [step(method, opt, batch).item() for _ in range(8)]
    assert losses[-1] < losses[0], losses


def test_training_needs_the_total_number_of_steps():
    method = build_method("dino", TINY, CTX)
    with pytest.raises(RuntimeError, match="set_total_steps"):
        method(renders(), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "block, key",
    [({"dims": [2, 3]}, "dims"), ({"n_local": -1}, "n_local"), ({"teacher_temp": 0}, "teacher_temp"),
     ({"global_scale": [0.5]}, "global_scale"), ({"local_scale": [0.7, 0.3]}, "local_scale"),
     ({"momentum": 1.5}, "momentum"), ({"out_dim": "big"}, "out_dim"), ({"batch_size": 1}, "batch_size")],
)
def test_config_errors_name_the_key(block, key):
    with pytest.raises(MethodConfigError, match=rf"methods\.dino\.{key} = "):
        build_method("dino", block, CTX)
