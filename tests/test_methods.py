"""Every registered method: one step on CPU, the loss falls over a few steps (last three against first three), exports round-trip strictly."""

import pytest
import torch

from eden_lib.checkpoints import load_weights, save_weights
from eden_lib.methods import METHODS, BuildContext, MethodConfigError, build_method, validate_method_config
from eden_lib.methods.supervised import masked_bce

CTX = dict(backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]}, unet2d_decoder=(32, 16, 8, 8, 8),
           unet3d_width=4, image_size=32, site_label_counts=(3, 2))


def ctx(dims: int, name: str = "") -> BuildContext:
    """The tiny context; ``supervised_site`` trains on one site (3 labels), ``ark`` on two."""
    sites = {"site_label_counts": (3,)} if name == "supervised_site" else {}
    return BuildContext(spatial_dims=dims, n_labels=3 if dims == 2 else 1, **{**CTX, **sites})


def batch(dims: int, generator: torch.Generator, renders: bool = False, classes: int = 0) -> dict:
    """Training crops (2D at image_size 32), whole 64 x 64 renders for ``cxr_renders`` methods, or 3D cubes;
    ``classes > 0``: ``visual_words`` crops with one class index each."""
    shape = (4, 1, 64, 64) if renders else (4, 1, 32, 32) if dims == 2 else (4, 1, 16, 16, 16)
    x = torch.rand(shape, generator=generator)
    labels = (torch.rand(4, 3 if dims == 2 else 1, generator=generator) > 0.5).float()
    if classes:
        labels = torch.randint(classes, (4,), generator=generator)
    return {"image": x, "label": labels}


TINY_TWO_VIEW = {"batch_size": 4, "lr": 0.05}
TINY_MOCO = {"queue_size": 16, "bn_splits": 2, "moco_hidden": 32, "moco_dim": 16}
BLOCKS = {"scratch": {}, "supervised": {"lr": 0.01}, "models_genesis": {"batch_size": 4, "lr": 0.1},
          "dino": {"batch_size": 4, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local": 2,
                   "base_lr": 0.5, "warmup_teacher_temp": 0.07},
          "moco_v2": {**TINY_TWO_VIEW, **TINY_MOCO}, "barlow_twins": {**TINY_TWO_VIEW, "bt_dim": 32},
          "simsiam": {**TINY_TWO_VIEW, "simsiam_dim": 32, "simsiam_pred_dim": 8},
          "caid": {**TINY_TWO_VIEW, "ssl": "barlow_twins", "bt_dim": 32},
          "dira": {**TINY_TWO_VIEW, "ssl": "simsiam", "simsiam_dim": 32, "simsiam_pred_dim": 8,
                   "d_widths": [8, 8, 8, 8], "warmup_fraction": 0.0},
          "transvw": {"batch_size": 4, "n_classes": 3}, "semantic_genesis": {"batch_size": 4, "n_classes": 3},
          "adam_v1": {**TINY_TWO_VIEW, **TINY_MOCO},
          "adam_v2": {"batch_size": 4, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local": 2,
                      "base_lr": 0.5, "warmup_fraction": 0.0},
          "ark": {"batch_size": 4, "lr": 0.05, "projector_dim": 16},
          "supervised_site": {"batch_size": 4, "lr": 0.05, "projector_dim": 16},
          "alice": {"batch_size": 4, "base_lr": 0.256, "out_dim": 32, "patch_out_dim": 16, "head_in_dim": 16,
                    "hidden_dim": 32, "bottleneck_dim": 8, "casa_heads": 4, "crop": [16, 16, 16],
                    "freeze_last_layer": 0.0}}
#: on a fixed batch a queue-based loss rises: the queue fills with the batch's own keys, negatives that match the
#: positives (test_methods_siamese.py checks that MoCo's loss falls against a fixed queue)
QUEUE_FED = {"moco_v2", "adam_v1"}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_and_exports(name, dims, tmp_path):
    if name == "external":
        pytest.skip("external loads a checkpoint file: tests/test_external.py")
    if dims not in validate_method_config(name, BLOCKS[name]).dims:
        pytest.skip(f"{name} is not configured for {dims}D")
    torch.manual_seed(0)
    method = build_method(name, BLOCKS[name], ctx(dims, name))
    if method.trains:
        if hasattr(method, "set_total_steps"):
            method.set_total_steps(8)
        if hasattr(method, "set_schedule"):  # Ark: the 8 steps are site 0's turn
            method.set_schedule([8, 1], 1)
        opt = method.configure_optimizer()
        g = torch.Generator().manual_seed(0)
        fixed = batch(dims, g, renders=method.data.get(dims) in ("cxr_renders", "cxr_sites"),
                      classes=method.cfg.n_classes if method.data.get(dims) == "visual_words" else 0)
        if method.data.get(dims) == "cxr_sites":
            fixed["site"] = torch.zeros(4, dtype=torch.int64)
        if method.data.get(dims) == "ct_view_pairs":  # Alice: two crops of two scans
            fixed = {"query": fixed["image"], "key": torch.rand(fixed["image"].shape, generator=g)}
        losses = []
        for _ in range(8):
            out = method(fixed, torch.Generator().manual_seed(1))
            assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
            opt.zero_grad()
            out["loss"].backward()
            grads = [p.grad for p in method.parameters() if p.requires_grad]
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
            opt.step()
            if hasattr(method, "after_step"):
                method.after_step()
            # CAiD / DiRA: the restoration must improve; Alice: its reconstruction (the distillation terms are
            # centred and sharpened against a moving teacher, not monotone on 8 steps)
            losses.append(out.get("loss_res", out.get("loss_rec", out["loss"])).item())
        # the mean of the last three steps against the first three: one step of a batch-of-4 method is noisy
        assert name in QUEUE_FED or sum(losses[-3:]) < sum(losses[:3]), losses
    for export, module in method.exports().items():
        save_weights(module, tmp_path / f"{export}.pt")
        fresh = build_method(name, BLOCKS[name], ctx(dims, name)).exports()[export]
        load_weights(fresh, tmp_path / f"{export}.pt")
        for a, b in zip(module.state_dict().values(), fresh.state_dict().values()):
            assert torch.equal(a, b)


def test_exports_name_the_modules_transfer_reads():
    assert set(build_method("models_genesis", {}, ctx(2)).exports()) == {"encoder", "unet"}
    assert set(build_method("models_genesis", {}, ctx(3)).exports()) == {"unet3d"}
    assert set(build_method("supervised", {}, ctx(2)).exports()) == {"encoder"}
    for name in ("moco_v2", "barlow_twins", "simsiam"):
        assert set(build_method(name, BLOCKS[name], ctx(2)).exports()) == {"encoder"}
    for name in ("caid", "dira"):
        exports = build_method(name, BLOCKS[name], ctx(2)).exports()
        assert set(exports) == {"encoder", "unet"} and exports["unet"].encoder is exports["encoder"]


def test_method_refuses_a_dimension_it_is_not_configured_for():
    with pytest.raises(MethodConfigError, match="not configured for 3D"):
        build_method("models_genesis", {"dims": [2]}, ctx(3))


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[0.0, 5.0]])
    labels = torch.tensor([[1.0, float("nan")]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(1.0))
    assert masked_bce(logits, labels).item() == pytest.approx(expected.item())
