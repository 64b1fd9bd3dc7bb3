"""MoCo-v2, Barlow Twins, SimSiam, CAiD and DiRA on CPU at tiny widths: momentum branch, queue, shuffle-BN,
DiRA's discriminator step and its checkpointing, restoration, config errors."""

import math

import pytest
import torch
from torch import nn

from eden_lib.engine import TrainConfig, fit
from eden_lib.methods import BuildContext, MethodConfigError, build_method, validate_method_config
from eden_lib.methods.branches.moco import split_forward
from eden_lib.models.heads import barlow_twins_projector, moco_v2_projector, simsiam_predictor, simsiam_projector

CTX = BuildContext(spatial_dims=2, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                   unet2d_decoder=(16, 8, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=32)
TINY = {"batch_size": 4, "lr": 0.05, "queue_size": 16, "bn_splits": 2, "moco_hidden": 32, "moco_dim": 16,
        "bt_dim": 32, "simsiam_dim": 32, "simsiam_pred_dim": 8}
MOCO = {k: TINY[k] for k in ("batch_size", "lr", "queue_size", "bn_splits", "moco_hidden", "moco_dim")}
DIRA = {**TINY, "d_widths": [8, 8, 8, 8]}


def renders(seed: int = 0, b: int = 4) -> dict:
    return {"image": torch.rand(b, 1, 64, 64, generator=torch.Generator().manual_seed(seed))}


def build(name: str, block: dict, total_steps: int = 8):
    torch.manual_seed(0)
    method = build_method(name, block, CTX)
    method.set_total_steps(total_steps)
    return method


def step(method, opt, batch, seed: int = 1) -> dict:
    out = method(batch, torch.Generator().manual_seed(seed))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    method.after_step()
    return {k: float(v.detach()) for k, v in out.items()}


@pytest.mark.parametrize("name, block, keys", [
    ("moco_v2", MOCO, {"loss"}),
    ("barlow_twins", {"batch_size": 4, "bt_dim": 32}, {"loss"}),
    ("simsiam", {"batch_size": 4, "simsiam_dim": 32, "simsiam_pred_dim": 8}, {"loss"}),
    ("caid", TINY, {"loss", "loss_dis", "loss_res"}),
    ("caid", {**TINY, "ssl": "simsiam"}, {"loss", "loss_dis", "loss_res"}),
    ("dira", {**DIRA, "ssl": "barlow_twins", "warmup_fraction": 0.0}, {"loss", "loss_dis", "loss_res", "loss_adv"}),
])
def test_one_step_on_cpu(name, block, keys):
    method = build(name, block)
    out = step(method, method.configure_optimizer(), renders())
    assert set(out) == keys and all(torch.isfinite(torch.tensor(v)) for v in out.values())


def test_heads_have_the_paper_layouts():
    assert [type(m).__name__ for m in moco_v2_projector(8, 16, 4)] == ["Linear", "ReLU", "Linear"]
    bt = barlow_twins_projector(8, 16)
    assert [type(m).__name__ for m in bt] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    proj, pred = simsiam_projector(8, 16), simsiam_predictor(16, 4)
    assert not proj[-1].affine and proj[-1].num_features == 16
    assert pred(proj(torch.randn(3, 8))).shape == (3, 16) and pred[0].out_features == 4


def test_moco_momentum_branch_gets_no_gradient_and_follows_the_ema():
    method = build("moco_v2", {**MOCO, "key_momentum": 0.9})
    branch, opt = method.discriminative, method.configure_optimizer()
    key_params = list(branch.key_encoder.parameters()) + list(branch.key_projector.parameters())
    assert not {id(p) for p in key_params} & {id(p) for g in opt.param_groups for p in g["params"]}
    before = [p.clone() for p in key_params]
    out = method(renders(), torch.Generator().manual_seed(1))
    out["loss"].backward()
    assert all(p.grad is None for p in key_params)
    opt.step()
    method.after_step()
    online = list(branch.encoder.parameters()) + list(branch.projector.parameters())
    for old, key, new in zip(before, key_params, online):
        torch.testing.assert_close(key, 0.9 * old + 0.1 * new)
    assert any(not torch.equal(old, key) for old, key in zip(before, key_params))


def test_moco_queue_is_a_fifo_of_the_keys():
    method = build("moco_v2", {**MOCO, "queue_size": 12})
    branch, batch = method.discriminative, renders()
    initial = branch.queue.clone()
    out = method(batch, torch.Generator().manual_seed(1))  # enqueues this step's keys at rows 0..3
    g = torch.Generator().manual_seed(1)
    _, view2, _ = method.two_views(batch["image"], g)
    keys = branch.keys(view2, g)  # the same draws as inside forward
    torch.testing.assert_close(branch.queue[:4], keys)
    torch.testing.assert_close(branch.queue[4:], initial[4:])
    assert int(branch.queue_ptr) == 4 and out["loss"].requires_grad
    marks = [torch.full((4, 16), float(i)) for i in range(3)]
    for mark in marks:
        branch.enqueue(mark)
    assert int(branch.queue_ptr) == 4  # wrapped: rows 4..11 then 0..3 (the oldest)
    torch.testing.assert_close(branch.queue[4:8], marks[0])
    torch.testing.assert_close(branch.queue[:4], marks[2])


@pytest.mark.parametrize("name, block", [("moco_v2", MOCO), ("caid", TINY),
                                         ("dira", {**DIRA, "warmup_fraction": 0.0})])
def test_eval_mode_leaves_queue_and_discriminator_alone(name, block):
    """Monitoring (eval mode) scores the batch with in-batch negatives and changes no running state."""
    method = build(name, block)
    branch = method.discriminative
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.eval()
    with torch.no_grad():
        out = method(renders(), torch.Generator().manual_seed(1))
    assert all(torch.equal(value, before[key]) for key, value in method.state_dict().items())
    assert int(branch.queue_ptr) == 0 and getattr(method, "_pair", None) is None  # DiRA: no D step pending
    # chance of 4 in-batch keys is ln 4 (the queue of 16 would give ~ln 17 at initialisation)
    assert abs(float(out["loss_dis" if name != "moco_v2" else "loss"]) - math.log(4)) < 0.5


def test_moco_loss_falls_against_a_fixed_queue():
    method = build("moco_v2", MOCO)
    opt, batch = method.configure_optimizer(), renders()
    queue = method.discriminative.queue.clone()
    losses = []
    for _ in range(6):
        method.discriminative.queue.copy_(queue)
        losses.append(step(method, opt, batch)["loss"])
    assert losses[-1] < losses[0], losses


def test_split_forward_normalises_each_shuffled_split_on_its_own():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2)) * 3 + 1
    order = torch.tensor([5, 0, 7, 2, 1, 6, 3, 4])
    out = split_forward(nn.BatchNorm1d(3, affine=False), x, 2, order)
    expected = torch.empty_like(x)
    for idx in (order[:4], order[4:]):
        chunk = x[idx]
        expected[idx] = (chunk - chunk.mean(0)) / torch.sqrt(chunk.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out, expected)
    whole = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    assert not torch.allclose(out, whole, atol=1e-3)


def test_moco_queries_use_per_split_statistics_and_keys_a_shuffled_split():
    method = build("moco_v2", MOCO)
    branch = method.discriminative
    views = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    moved = views.clone()
    moved[3] = moved[3] * 0.1  # a sample of the other split (samples 0, 1 | 2, 3)
    first = branch.stages(views)[-1][:2]
    torch.testing.assert_close(branch.stages(moved)[-1][:2], first)  # split 0 never sees sample 3
    key_net = nn.Sequential(branch.key_encoder, branch.key_projector)
    keys = branch.keys(views, torch.Generator().manual_seed(4))
    order = torch.randperm(4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        shuffled = torch.nn.functional.normalize(split_forward(key_net, views, 2, order), dim=1)
        natural = torch.nn.functional.normalize(split_forward(key_net, views, 2, torch.arange(4)), dim=1)
    torch.testing.assert_close(keys, shuffled)
    assert set(order[:2].tolist()) != {0, 1} and not torch.allclose(keys, natural)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def test_dira_discriminator_step_changes_only_the_discriminator():
    method = build("dira", {**DIRA, "warmup_fraction": 0.0})
    opt = method.configure_optimizer()
    d_params = list(method.discriminator.parameters())
    assert not {id(p) for p in d_params} & {id(p) for g in opt.param_groups for p in g["params"]}
    out = method(renders(), torch.Generator().manual_seed(1))
    assert out["loss_adv"] > 0
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None for p in d_params)  # the generator's loss leaves D alone
    opt.step()
    generator_params = method.trainable_parameters()
    g_before, d_before = _snapshot(generator_params), _snapshot(d_params)
    method.after_step()
    assert all(torch.equal(a, b) for a, b in zip(g_before, generator_params))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, d_params) if b.ndim > 1)


def test_dira_adversarial_stage_starts_after_the_warmup_fraction():
    method = build("dira", {**DIRA, "warmup_fraction": 0.5}, total_steps=4)
    opt = method.configure_optimizer()
    d_params = list(method.discriminator.parameters())
    adv, d_moved = [], []
    for _ in range(4):
        d_before = _snapshot(d_params)
        adv.append(step(method, opt, renders())["loss_adv"])
        d_moved.append(any(not torch.equal(a, b) for a, b in zip(d_before, d_params)))
    assert [a > 0 for a in adv] == [False, False, True, True]
    assert d_moved == [False, False, True, True]


def _fit_dira(path, **kw):
    method = build("dira", {**DIRA, "ssl": "simsiam", "warmup_fraction": 0.0}, total_steps=6)
    opt = method.configure_optimizer()

    def batches(epoch, generator):
        for _ in range(2):
            yield {"image": torch.rand(4, 1, 64, 64, generator=generator)}

    fit(method, batches, opt, TrainConfig(epochs=3, checkpoint_dir=path, device="cpu", verbose=False, **kw),
        scheduler=method.configure_scheduler(opt, 3))
    return method


def test_dira_discriminator_optimizer_round_trips_through_resume(tmp_path):
    full = _fit_dira(tmp_path / "full")
    _fit_dira(tmp_path / "split", stop_after_epochs=1)
    resumed = _fit_dira(tmp_path / "split")
    assert int(resumed.steps_done) == 6
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    full_state, resumed_state = full.d_optimizer.state_dict()["state"], resumed.d_optimizer.state_dict()["state"]
    assert full_state.keys() == resumed_state.keys() and full_state[0]["step"] == 6
    for k in full_state:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(full_state[k][key], resumed_state[k][key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["caid", "dira"])
def test_restoration_loss_falls_on_a_fixed_batch(name):
    method = build(name, {**DIRA, "ssl": "barlow_twins", "lr": 0.1} if name == "dira" else {**TINY, "lr": 0.1})
    opt, batch = method.configure_optimizer(), renders()
    res = [step(method, opt, batch)["loss_res"] for _ in range(6)]
    assert res[-1] < 0.9 * res[0], res


@pytest.mark.parametrize("name, block, key", [
    ("moco_v2", {"batch_size": 4, "queue_size": 10}, "queue_size"),
    ("moco_v2", {"batch_size": 4, "bn_splits": 3}, "bn_splits"),
    ("moco_v2", {"temperature": 0.0}, "temperature"),
    ("barlow_twins", {"bt_lambda": -1.0}, "bt_lambda"),
    ("simsiam", {"dims": [2, 3]}, "dims"),
    ("simsiam", {"scale": [0.5]}, "scale"),
    ("simsiam", {"flip_p": 1.5}, "flip_p"),
    ("caid", {"ssl": "byol"}, "ssl"),
    ("caid", {"ssl": "simsiam", "simsiam_pred_dim": 0}, "simsiam_pred_dim"),
    ("dira", {"warmup_fraction": 1.5}, "warmup_fraction"),
    ("dira", {"d_widths": [8, 8]}, "d_widths"),
])
def test_config_errors_name_the_key_and_value(name, block, key):
    with pytest.raises(MethodConfigError, match=rf"methods\.{name}\.{key} = "):
        validate_method_config(name, block)


def test_caid_checks_only_the_chosen_branch():
    validate_method_config("caid", {"ssl": "simsiam", "batch_size": 6, "bn_splits": 4})  # MoCo fields unused


def test_queue_larger_than_the_run_can_fill_is_refused():
    method = build_method("moco_v2", MOCO, CTX)
    with pytest.raises(MethodConfigError, match="queue_size = 16 exceeds the 12 keys"):
        method.set_total_steps(3)
