"""Ark (Ma et al., MICCAI 2023): loss, schedules, cyclic batches, epoch-wise EMA, resume, pipeline and weight loading."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from eden_lib.checkpoints import CheckpointError, load_checkpoint, load_pretrained, save_atomic, save_weights
from eden_lib.data import prepared
from eden_lib.data.batches import site_batches, site_steps
from eden_lib.engine import TrainConfig, fit
from eden_lib.methods import BuildContext, MethodConfigError, build_method
from eden_lib.methods.ark import ArkNetwork, consistency_ramp
from eden_lib.methods.networks import encoder_2d
from eden_lib.methods.supervised import masked_bce

COUNTS = (3, 2)  # labels of site 0 and site 1; K_max = 3
BLOCK = {"batch_size": 4, "lr": 0.05, "projector_dim": 16}


def ctx(counts: tuple[int, ...] = COUNTS) -> BuildContext:
    return BuildContext(spatial_dims=2, backbone_2d={"name": "resnet18", "widths": [4, 8, 8, 8]},
                        unet2d_decoder=(8, 8, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=32,
                        site_label_counts=counts)


def ark(block: dict | None = None, steps=(2, 3), epochs: int = 2):
    torch.manual_seed(0)
    method = build_method("ark", {**BLOCK, **(block or {})}, ctx())
    method.set_schedule(list(steps), epochs)
    return method


def site_batch(site: int, g: torch.Generator, b: int = 4) -> dict:
    labels = (torch.rand(b, 3, generator=g) > 0.5).float()
    labels[0, 0] = float("nan")  # unknown
    labels[:, COUNTS[site]:] = float("nan")  # padding past the site's labels
    return {"image": torch.rand(b, 1, 32, 32, generator=g), "label": labels,
            "site": torch.full((b,), site, dtype=torch.int64)}


def write_sites(folder, n_per_site=(10, 14), size=32, seed=0):
    """A tiny sites cache: 2 sites, train / val / test rows, NaN padding past each site's labels."""
    rng = np.random.default_rng(seed)
    n = sum(n_per_site)
    labels = np.full((n, 3), np.nan, np.float32)
    rows, start = [], 0
    for site, (count, k) in enumerate(zip(n_per_site, COUNTS)):
        labels[start:start + count, :k] = rng.integers(0, 2, (count, k))
        splits = ["val", "test"] * 2 + ["train"] * (count - 4)
        rows += [{"image_index": f"s{site}_{i}.png", "patient_id": f"p{site}_{i}", "sex": "M",
                  "site": f"site{site}", "split": splits[i]} for i in range(count)]
        start += count
    labels[0, 1] = np.nan  # an unknown label
    info = {"sites": [{"name": f"site{s}", "dataset": "chestxray14", "labels": [f"L{j}" for j in range(k)]}
                      for s, k in enumerate(COUNTS)]}
    prepared.write_sites(folder, rng.integers(0, 256, (n, size, size)), labels, pd.DataFrame(rows), info)
    return prepared.load_sites(folder)


def site_factory(sites, steps):
    rows = [sites.indices(name, "train") for name in sites.site_names]
    return site_batches(sites.images, sites.labels, rows, steps, batch_size=4)


def test_loss_is_its_formula_with_unknown_labels_masked():
    method = ark()
    method.steps_done.fill_(5 + 2)  # epoch 1, site 1's turn: turn u = 3 of U = 4
    batch = site_batch(1, torch.Generator().manual_seed(0))
    out = method(batch, torch.Generator().manual_seed(1))
    student_view, teacher_view = method.views_of(batch["image"], torch.Generator().manual_seed(1))
    z_s, z_t = method.student(student_view), method.teacher(teacher_view)
    logits = method.student.omni_heads[1](z_s)
    y = batch["label"][:, :2]
    known = ~torch.isnan(y)
    p = torch.sigmoid(logits)
    bce = -(torch.nan_to_num(y) * torch.log(p) + (1 - torch.nan_to_num(y)) * torch.log(1 - p))[known].mean()
    mse = ((z_s - z_t) ** 2).mean()
    lam = 0.5 * (1 - math.cos(math.pi * 3 / 4)) / 2
    assert out["loss_cls"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert out["loss_cons"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert out["lambda"].item() == pytest.approx(lam)
    assert out["loss"].item() == pytest.approx(((1 - lam) * bce + lam * mse).item(), rel=1e-5)
    assert mse.item() > 0  # student (batch statistics, intensity on its view) and teacher (running statistics) differ


def test_masked_bce_on_known_values():
    logits = torch.tensor([[0.0, 2.0], [0.0, -1.0]])
    labels = torch.tensor([[1.0, float("nan")], [float("nan"), 0.0]])  # unknown entries leave the mean
    assert masked_bce(logits, labels).item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-1))) / 2)
    assert ark({"consistency_weight": 0.0}).consistency_weight(3) == 0.0  # lambda 0: classification only


def test_lambda_ramp_and_ema_momentum_schedules():
    method = ark(steps=(2, 3), epochs=2)  # U = 4 turns
    assert method.turns == 4
    assert [method.consistency_weight(u) for u in (0, 2, 4)] == pytest.approx([0.0, 0.25, 0.5])
    assert [method.ema_momentum(u) for u in (0, 2, 4)] == pytest.approx([0.9, 0.95, 1.0])
    assert consistency_ramp(1, 4, 0.5) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)) / 2)
    assert [method.turn_at(s) for s in range(6)] == [(0, 0, False), (0, 0, True), (1, 1, False), (1, 1, False),
                                                     (1, 1, True), (2, 0, False)]


def test_one_step_trains_the_student_and_only_the_batch_sites_head():
    method = ark()
    opt = method.configure_optimizer()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"]
    out = method(site_batch(0, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    assert torch.isfinite(out["loss"])
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is None for p in method.student.omni_heads[1].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.omni_heads[0].parameters())
    assert method.student.encoder.conv1.weight.grad.abs().sum() > 0
    before = method.student.encoder.conv1.weight.clone()
    opt.step()
    assert not torch.equal(before, method.student.encoder.conv1.weight)


def test_teacher_changes_only_at_the_end_of_a_site_turn_by_its_ema():
    method = ark(steps=(2, 3), epochs=2)
    opt = method.configure_optimizer()
    g = torch.Generator().manual_seed(0)
    changed = []
    for step, site in enumerate([0, 0, 1, 1, 1]):
        before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
        out = method(site_batch(site, g), g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        student = {k: v.clone() for k, v in method.student.state_dict().items()}
        method.after_step()
        after = method.teacher.state_dict()
        changed.append(any(not torch.equal(before[k], after[k]) for k in before))
        if step == 1:  # the end of site 0's turn: m = 0.9
            key = "encoder.conv1.weight"
            assert torch.allclose(after[key], 0.9 * before[key] + 0.1 * student[key], atol=1e-6)
    assert changed == [False, True, False, False, True]
    assert int(method.steps_done) == 5


def test_batches_must_follow_the_schedule_and_hold_one_site():
    method = ark(steps=(2, 3))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="site 0's turn"):
        method(site_batch(1, g), g)
    mixed = site_batch(0, g)
    mixed["site"][1] = 1
    with pytest.raises(ValueError, match="one site"):
        method(mixed, g)
    method.eval()  # the monitored loss scores any site's batch
    assert torch.isfinite(method(site_batch(1, g), g)["loss"])
    unscheduled = build_method("ark", BLOCK, ctx())
    with pytest.raises(RuntimeError, match="set_schedule"):
        unscheduled(site_batch(0, g), g)
    with pytest.raises(ValueError, match="one per site"):
        unscheduled.set_schedule([2], 1)


def test_ark_needs_the_sites_label_counts_and_valid_values():
    with pytest.raises(MethodConfigError, match="site_label_counts"):
        build_method("ark", BLOCK, ctx(()))
    with pytest.raises(MethodConfigError, match=r"methods.ark.consistency_weight = 1.5"):
        build_method("ark", {**BLOCK, "consistency_weight": 1.5}, ctx())
    with pytest.raises(MethodConfigError, match=r"methods.ark.dims"):
        build_method("ark", {**BLOCK, "dims": [2, 3]}, ctx())


def test_site_steps_split_in_proportion_with_at_least_one_each():
    assert site_steps([100, 300], 8) == [2, 6]
    assert site_steps([1, 1000], 4) == [1, 4]
    assert site_steps([1, 1000], 4, multiple=2) == [2, 4]
    assert site_steps([0, 50, 50], 3) == [0, 2, 1]  # an empty site gets no turn; ties: the first site
    with pytest.raises(ValueError, match="empty"):
        site_steps([0, 0], 3)


def test_site_batches_come_in_site_blocks_in_order_and_are_deterministic(tmp_path):
    sites = write_sites(tmp_path / "sites")
    factory = site_factory(sites, [2, 3])
    first = list(factory(0, torch.Generator().manual_seed(7)))
    again = list(factory(0, torch.Generator().manual_seed(7)))
    other = list(factory(0, torch.Generator().manual_seed(8)))
    assert [int(b["site"][0]) for b in first] == [0, 0, 1, 1, 1]
    for b in first:
        assert b["image"].shape == (4, 1, 32, 32) and b["image"].dtype == torch.float32
        assert 0 <= b["image"].min() and b["image"].max() <= 1
        assert b["label"].shape == (4, 3) and b["site"].dtype == torch.int64
        assert len(set(b["site"].tolist())) == 1
        assert torch.isnan(b["label"][:, COUNTS[int(b["site"][0])]:]).all()
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"].nan_to_num(-1), b["label"].nan_to_num(-1))
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, other))


def test_state_dict_round_trip_keeps_weights_and_counter():
    method = ark()
    g = torch.Generator().manual_seed(0)
    opt = method.configure_optimizer()
    for site in (0, 0):
        out = method(site_batch(site, g), g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.after_step()
    fresh = ark()
    fresh.load_state_dict(method.state_dict(), strict=True)
    assert int(fresh.steps_done) == 2
    for (k, a), b in zip(method.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert set(method.exports()) == {"encoder", "teacher"}
    assert method.exports()["encoder"] is method.teacher.encoder


def _fit(tmp_path, sites, **kw):
    method = ark(steps=(2, 3), epochs=3)
    opt = method.configure_optimizer()
    cfg = TrainConfig(epochs=3, checkpoint_dir=tmp_path, seed=1, fingerprint="ark", device="cpu", verbose=False, **kw)
    history = fit(method, site_factory(sites, [2, 3]), opt, cfg, scheduler=method.configure_scheduler(opt, 3),
                  steps_per_epoch=5)
    return method, history


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path):
    sites = write_sites(tmp_path / "sites")
    full, full_hist = _fit(tmp_path / "full", sites)
    _, partial = _fit(tmp_path / "split", sites, stop_after_epochs=1)
    assert len(partial) == 1
    resumed, hist = _fit(tmp_path / "split", sites)
    assert [h["epoch"] for h in hist] == [0, 1, 2] and int(resumed.steps_done) == 15
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert hist[-1]["loss"] == pytest.approx(full_hist[-1]["loss"])
    assert hist[-1]["lambda"] > hist[0]["lambda"]


def test_pipeline_pretrains_ark_on_the_sites_and_exports_the_teacher(tmp_path, monkeypatch):
    from eden_lib.pipeline import pretrain

    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    write_sites(tmp_path / "data" / "prepared" / "sites")
    (tmp_path / "data" / "prepared" / "cxr").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "cxr" / "images.npy").write_bytes(b"cxr")  # fingerprinted only
    cfg = {"profile": "test", "seed": 0,
           "data": {"image_size": 32, "cxr": {"labels": ["a", "b", "c"], "val_fraction": 0.1}},
           "pretrain": {"device": "cpu", "amp": False, "image_passes_2d": 80, "volume_passes_3d": 1, "epochs": 2,
                        "monitor_samples": 4, "backbone_2d": {"name": "resnet18", "widths": [4, 8, 8, 8]},
                        "unet2d_decoder": [8, 8, 8, 8, 8], "unet3d_width": 4},
           "methods": {"ark": BLOCK}}
    result = pretrain.pretrain_dims(cfg, "ark", 2)
    assert result["complete"] and len(result["history"]) == 2
    assert "monitor_loss" in result["history"][0]
    # 80 passes / (4 x 2 views) / 2 epochs = 5 steps an epoch, split 6 : 10 training rows -> 2 + 3
    assert int(load_checkpoint(pretrain.checkpoint_dir("ark", 2) / "last.pt")["model"]["steps_done"]) == 10
    assert (tmp_path / "data" / "models" / "ark" / "teacher.pt").is_file()
    encoder = encoder_2d(ctx())
    assert load_pretrained(tmp_path / "data" / "models" / "ark" / "encoder.pt", encoder)["source"] == "eden"
    fingerprint = pretrain.fingerprint(cfg, "ark", 2)
    write_sites(tmp_path / "data" / "prepared" / "sites", seed=1)  # other site data: another fingerprint
    assert pretrain.fingerprint(cfg, "ark", 2) != fingerprint


def _release_layout(net: ArkNetwork, prefix: str = "") -> dict:
    """``net``'s weights as the Ark release writes them: bare backbone keys, projector, omni_heads, timm's head."""
    state = {f"{prefix}{k.removeprefix('encoder.')}": v.clone() for k, v in net.state_dict().items()}
    state[f"{prefix}head.weight"], state[f"{prefix}head.bias"] = torch.zeros(1000, 8), torch.zeros(1000)
    return state


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def _net(seed: int) -> ArkNetwork:
    torch.manual_seed(seed)
    return ArkNetwork(encoder_2d(ctx()), 16, True, COUNTS)


def test_ark_layout_loads_strictly_into_a_network_and_its_encoder(tmp_path):
    source = _net(0)
    save_atomic(_release_layout(source, "module."), tmp_path / "bare.pth.tar")
    save_atomic({"teacher": _release_layout(source), "state_dict": {}, "epoch": 3}, tmp_path / "wrapped.pth.tar")
    for name in ("bare.pth.tar", "wrapped.pth.tar"):
        net = _net(1)
        info = load_pretrained(tmp_path / name, net)
        assert info["source"] == "ark" and info["dropped"][-2:] in (["head.bias", "head.weight"],
                                                                    ["module.head.bias", "module.head.weight"])
        _assert_same(source, net)
        encoder = encoder_2d(ctx())
        info = load_pretrained(tmp_path / name, encoder, source="ark")
        assert any("omni_heads.1.weight" in k for k in info["dropped"])
        _assert_same(source.encoder, encoder)
    assert load_pretrained(tmp_path / "wrapped.pth.tar", _net(2))["entry"] == "teacher"


def test_this_repositorys_ark_outputs_load_through_the_ark_source(tmp_path):
    method = ark()
    save_weights(method.teacher, tmp_path / "teacher.pt")
    save_atomic({"model": method.state_dict(), "epoch": 0}, tmp_path / "last.pt")
    for name in ("teacher.pt", "last.pt"):
        net, encoder = _net(3), encoder_2d(ctx())
        load_pretrained(tmp_path / name, net, source="ark")
        load_pretrained(tmp_path / name, encoder, source="ark")
        _assert_same(method.teacher, net)
        _assert_same(method.teacher.encoder, encoder)
    assert load_pretrained(tmp_path / "last.pt", _net(3))["source"] == "ark"  # detected: teacher.omni_heads.*


def test_broken_ark_files_and_swin_files_into_a_resnet_fail_naming_the_problem(tmp_path):
    state = _release_layout(_net(0))
    del state["layer1.0.conv1.weight"]
    save_atomic({"teacher": state}, tmp_path / "broken.pth.tar")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['encoder.layer1.0.conv1.weight'\]"):
        load_pretrained(tmp_path / "broken.pth.tar", _net(1))
    swin = {"patch_embed.proj.weight": torch.zeros(128, 3, 4, 4),
            "layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(169, 4),
            "projector.0.weight": torch.zeros(1376, 1024), "omni_heads.0.weight": torch.zeros(14, 1376)}
    save_atomic(swin, tmp_path / "ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar")
    with pytest.raises(CheckpointError, match="holds a Swin Transformer backbone .* the model has none; .* swin_b"):
        load_pretrained(tmp_path / "ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar", _net(1))
