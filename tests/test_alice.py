"""Alice: token distillation loss, CASA, column masking, one step on CPU, the casa ablation, learning, the schedules,
config errors and the exported UNet3D."""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from eden_lib.engine import TrainConfig, fit
from eden_lib.losses.token_distillation import TokenDistillationLoss
from eden_lib.methods import networks
from eden_lib.methods.alice import Alice, AliceConfig, column_mask, cosine_schedule
from eden_lib.methods.base import BuildContext, MethodConfigError, parse_config
from eden_lib.methods.branches.casa import CASA
from eden_lib.models.unet3d import UNet3D

CTX = BuildContext(spatial_dims=3, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                   unet2d_decoder=(32, 16, 8, 8, 8), unet3d_width=4, n_labels=1)
TINY = {"batch_size": 2, "out_dim": 32, "patch_out_dim": 16, "head_in_dim": 16, "hidden_dim": 32,
        "bottleneck_dim": 8, "casa_heads": 4, "crop": [16, 16, 16]}


def alice(total_steps: int = 10, **overrides) -> Alice:
    torch.manual_seed(0)
    method = Alice(parse_config("alice", AliceConfig, {**TINY, **overrides}), CTX)
    method.set_total_steps(total_steps)
    return method


def pair(seed: int = 0, b: int = 2, crop=(16, 16, 16)) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"query": torch.rand(b, 1, *crop, generator=g), "key": torch.rand(b, 1, *crop, generator=g)}


def test_token_distillation_matches_the_formula_and_updates_its_centre():
    loss_fn = TokenDistillationLoss(5, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, 5))
    center = loss_fn.center.clone()
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    loss = loss_fn(student, teacher, teacher_temp=0.04)
    expected = 0.0
    for v in range(2):
        for b in range(3):
            for n in range(4):
                p_t = torch.softmax((teacher[v, b, n] - center[0]) / 0.04, dim=0)
                expected += -(p_t * torch.log_softmax(student[v, b, n] / 0.1, dim=0)).sum() / 24
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * teacher.reshape(-1, 5).mean(0, keepdim=True))
    loss_fn.eval()
    before = loss_fn.center.clone()
    loss_fn(student, teacher, 0.04)
    torch.testing.assert_close(loss_fn.center, before)  # monitoring leaves the centre alone
    with pytest.raises(ValueError, match="differ"):
        loss_fn(student[:, :, :2], teacher, 0.04)


def test_casa_shapes_uses_its_context_and_gradients():
    torch.manual_seed(0)
    casa = CASA(16, heads=4, dropout=0.1).eval()
    q, ctx = torch.randn(2, 8, 16, requires_grad=True), torch.randn(2, 64, 16)
    out = casa(q, ctx)
    assert out.shape == (2, 8, 16)
    assert not torch.allclose(out, casa(q, ctx + torch.randn_like(ctx)))
    teacher_ctx = torch.randn(2, 64, 16, requires_grad=True)
    with torch.no_grad():
        target = casa(q, teacher_ctx)
    assert not target.requires_grad
    out.sum().backward()
    assert q.grad is not None and teacher_ctx.grad is None
    with pytest.raises(ValueError, match="divisible"):
        CASA(10, heads=4)


def test_column_mask_masks_12_of_16_columns_through_the_depth_deterministically():
    shape = (3, 1, 16, 16, 8)
    mask = column_mask(shape, 4, 0.75, torch.Generator().manual_seed(5))
    assert mask.shape == (3, 1, 16, 16, 8) and mask.dtype == torch.bool
    assert torch.equal(mask, mask[..., :1].expand_as(mask))  # each column runs through the whole depth
    squares = mask[:, 0, :, :, 0].reshape(3, 4, 4, 4, 4)  # (B, gx, 4, gy, 4)
    per_square = squares.float().mean(dim=(2, 4))
    assert set(per_square.unique().tolist()) <= {0.0, 1.0}  # whole squares only
    assert per_square.sum(dim=(1, 2)).tolist() == [12, 12, 12]
    assert mask.float().mean().item() == pytest.approx(0.75)
    assert torch.equal(mask, column_mask(shape, 4, 0.75, torch.Generator().manual_seed(5)))
    assert not torch.equal(mask, column_mask(shape, 4, 0.75, torch.Generator().manual_seed(6)))
    assert not torch.equal(mask[0], mask[1])  # drawn per sample


def test_step_losses_teacher_out_of_backprop_and_unmasked_reconstruction_target():
    method = alice()
    opt = method.configure_optimizer()
    batch = pair()
    out = method(batch, torch.Generator().manual_seed(1))
    assert set(out) == {"loss", "loss_cls", "loss_patch", "loss_rec"}
    assert all(torch.isfinite(v) for v in out.values())
    expected = out["loss_cls"] + out["loss_patch"] + 10 * out["loss_rec"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.casa.parameters())
    assert method.student.head.anchor_proj.weight.grad is not None  # decoder tokens reach the loss through CASA
    last_layers = (method.student.head.last_layer, method.student.head.patch_last_layer)
    assert all(layer.parametrizations.weight.original1.grad is None for layer in last_layers)  # frozen at step 0
    # the reconstruction target is the unmasked pair, over every voxel
    views = torch.cat([batch["query"], batch["key"]])
    masked, mask = method.student_inputs(views, torch.Generator().manual_seed(1))
    assert torch.equal(masked, views.masked_fill(mask, 0)) and mask.float().mean() == 0.75
    with torch.no_grad():
        reconstruction = method.student.unet.encode_decode(masked)[2]
    assert out["loss_rec"].item() == pytest.approx(F.mse_loss(reconstruction, views).item(), rel=1e-5)


def test_ema_schedules_and_state_for_resume():
    method = alice(total_steps=4, freeze_last_layer=0.0)
    opt = method.configure_optimizer()
    batch = pair()
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    for i in range(2):
        out = method(batch, torch.Generator().manual_seed(i))
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(cosine_schedule(0.04, 0.4, i, 4))
        assert opt.param_groups[1]["weight_decay"] == 0.0
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.after_step()
    assert int(method.steps_done) == 2
    assert cosine_schedule(0.04, 0.4, 4, 4) == pytest.approx(0.4)
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))
    # the teacher's batch-norm statistics are its own (unmasked crops), not the student's
    bn_t, bn_s = method.teacher.unet.down_tr64.ops[0].bn1, method.student.unet.down_tr64.ops[0].bn1
    assert not torch.allclose(bn_t.running_mean, bn_s.running_mean)
    state = method.state_dict()
    assert {"steps_done", "cls_loss.center", "patch_loss.center"} <= set(state)
    resumed = alice(total_steps=4, freeze_last_layer=0.0)
    resumed.load_state_dict(state)
    assert int(resumed.steps_done) == 2


def test_every_parameter_gradient_is_clipped_as_it_is_computed():
    method = alice(clip_grad=0.01)
    method(pair(), torch.Generator().manual_seed(0))["loss"].backward()
    norms = [p.grad.norm().item() for p in method.trained_parameters() if p.grad is not None]
    assert max(norms) <= 0.01 * (1 + 1e-4)
    unclipped = alice(clip_grad=0.0)
    unclipped(pair(), torch.Generator().manual_seed(0))["loss"].backward()
    assert max(p.grad.norm().item() for p in unclipped.trained_parameters() if p.grad is not None) > 0.01


def test_without_casa_the_patch_loss_compares_encoder_tokens():
    method = alice(casa=False, patch_out_dim=10)  # 10 is not a multiple of casa_heads: fine without CASA
    assert method.casa is None and method.student.head.anchor_proj is None
    assert not any("casa" in k or "anchor_proj" in k for k in method.state_dict())
    out = method(pair(), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert method.student.head.query_proj.weight.grad is not None


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    method = alice(total_steps=30, base_lr=0.128, freeze_last_layer=0.0)  # lr = 0.128 * 2 / 256 = 1e-3
    opt = method.configure_optimizer()
    batch = pair(3)
    history = []
    for i in range(12):
        out = method(batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.after_step()
        history.append({k: v.item() for k, v in out.items()})
    assert history[-1]["loss_rec"] < 0.8 * history[0]["loss_rec"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_fit_runs_the_method_through_the_engine():
    method = alice(total_steps=2)

    def batches(epoch, generator):
        return [pair(epoch * 2 + i) for i in range(2)]

    history = fit(method, batches, method.configure_optimizer(), TrainConfig(epochs=1, device="cpu", verbose=False,
                                                                             monitor=[pair(9)]),
                  scheduler=method.configure_scheduler(method.optimizer, 1))
    assert int(method.steps_done) == 2
    assert {"loss", "loss_cls", "loss_patch", "loss_rec", "monitor_loss_rec"} <= set(history[0])


@pytest.mark.parametrize(("block", "key"), [
    ({"dims": [2]}, "dims"),
    ({"crop": [64, 64, 60]}, "crop"),
    ({"crop": [64, 64]}, "crop"),
    ({"crop": [40, 40, 64], "mask_grid": 3}, "crop"),
    ({"views": "other"}, "views"),
    ({"patch_out_dim": 100}, "patch_out_dim"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"teacher_temp_warmup": 1.5}, "teacher_temp_warmup"),
    ({"out_dim": 0}, "out_dim"),
    ({"lambda_rec": -1.0}, "lambda_rec"),
])
def test_config_errors_name_the_key(block, key):
    with pytest.raises(MethodConfigError, match=rf"methods\.alice\.{key} "):
        parse_config("alice", AliceConfig, block)


def test_config_defaults_are_the_paper_values_and_3d_only():
    cfg = parse_config("alice", AliceConfig, {})
    assert (cfg.lambda_cls, cfg.lambda_patch, cfg.lambda_rec, cfg.mask_ratio, cfg.mask_grid) == (1, 1, 10, 0.75, 4)
    assert cfg.lr == pytest.approx(5e-5 * 8 / 256)
    with pytest.raises(MethodConfigError, match="not configured for 2D"):
        Alice(cfg, BuildContext(**{**CTX.__dict__, "spatial_dims": 2}))
    with pytest.raises(ValueError, match="16, 16, 16"):
        alice()(pair(crop=(16, 16, 8)), torch.Generator())


def test_exported_teacher_unet_loads_into_the_study_network():
    method = alice()
    exported = method.exports()["unet3d"]
    assert isinstance(exported, UNet3D) and exported is method.teacher.unet
    target = networks.unet_3d(CTX)
    target.load_state_dict(exported.state_dict())  # strict: same keys and shapes, decoder included
    x = torch.rand(1, 1, 16, 16, 16)
    target.eval(), exported.eval()
    torch.testing.assert_close(target(x), exported(x))
    assert math.isclose(sum(p.numel() for p in target.parameters()), sum(p.numel() for p in exported.parameters()))


def _write_anatomy(folder, seed: int = 0) -> None:
    """A tiny anatomy-stage output: 3 volumes and 4 view pairs per mode."""
    import numpy as np
    import pandas as pd

    g = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "volumes.npy", g.random((3, 24, 24, 20)).astype(np.float16))
    for mode in ("matched", "oracle", "random"):
        pd.DataFrame({"scan_q": [0, 1, 2, 0], "xq": [12, 10, 8, 14], "yq": [12, 9, 15, 11], "zq": [10, 8, 12, 9],
                      "scan_k": [2, 0, 1, 2], "xk": [11, 13, 9, 12], "yk": [12, 10, 14, 12], "zk": [9, 10, 11, 8],
                      "score": [0.95] * 4}).to_csv(folder / f"pairs_{mode}.csv", index=False)


def test_pipeline_pretrains_alice_on_the_mined_pairs_and_exports_the_teacher(tmp_path, monkeypatch):
    from eden_lib.checkpoints import load_weights
    from eden_lib.pipeline import pretrain

    monkeypatch.setenv("EDEN_ROOT", str(tmp_path))
    (tmp_path / "data" / "prepared" / "ct").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "ct" / "subvolumes.npy").write_bytes(b"ct")  # fingerprinted only
    cfg = {"profile": "test", "seed": 0, "data": {"image_size": 32},
           "pretrain": {"device": "cpu", "amp": False, "image_passes_2d": 1, "volume_passes_3d": 16, "epochs": 2,
                        "monitor_samples": 2, "backbone_2d": {"name": "resnet18", "widths": [4, 8, 8, 8]},
                        "unet2d_decoder": [8, 8, 8, 8, 8], "unet3d_width": 4},
           "methods": {"alice": {**TINY, "views": "oracle"}}}
    with pytest.raises(FileNotFoundError, match=r"pairs_oracle.csv.*run the 'anatomy' stage"):
        pretrain.pretrain_dims(cfg, "alice", 3)
    _write_anatomy(tmp_path / "data" / "anatomy")
    result = pretrain.pretrain_dims(cfg, "alice", 3)
    assert result["complete"] and len(result["history"]) == 2 and "monitor_loss_rec" in result["history"][0]
    unet = networks.unet_3d(CTX)
    load_weights(unet, tmp_path / "data" / "models" / "alice" / "unet3d.pt")
    fingerprint = pretrain.fingerprint(cfg, "alice", 3)
    shutil.rmtree(tmp_path / "data" / "anatomy")
    _write_anatomy(tmp_path / "data" / "anatomy", seed=1)  # other mined pairs: another fingerprint
    assert pretrain.fingerprint(cfg, "alice", 3) != fingerprint
