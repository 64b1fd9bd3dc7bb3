"""TransVW / Semantic Genesis (eden_lib.methods.branches.visual_words): loss formula, transformations, training on
CPU in 2D and 3D, determinism, params blocks, config and label errors, the exported UNet3D."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from eden_lib.checkpoints import load_weights, save_weights
from eden_lib.methods import METHODS, BuildContext, MethodConfigError, build_method, validate_method_config
from eden_lib.methods import networks
from eden_lib.methods.branches.visual_words import elastic_deform, gaussian_smooth
from eden_lib.methods.semantic_genesis import SemanticGenesisConfig
from eden_lib.methods.transvw import TransVWConfig

C = 3
TINY = {"batch_size": 4, "n_classes": C}
CTX = dict(backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]}, unet2d_decoder=(16, 8, 8, 8, 8),
           unet3d_width=4, image_size=32)
#: every perturbation off, no elastic deformation: the identity transform
NONE = {"elastic_rate": 0.0, "shuffle_p": 0.0, "nonlinear_p": 0.0, "inpaint_p": 0.0, "outpaint_p": 0.0}


def ctx(dims: int) -> BuildContext:
    return BuildContext(spatial_dims=dims, n_labels=1, **CTX)


def method(dims: int, name: str = "transvw", **block):
    torch.manual_seed(0)
    return build_method(name, {**TINY, **block}, ctx(dims))


def words(dims: int, seed: int = 0, n: int = 4) -> dict:
    """Clean crops (2D 32 x 32, 3D 16^3) in [0, 1] and class indices."""
    g = torch.Generator().manual_seed(seed)
    size = (32, 32) if dims == 2 else (16, 16, 16)
    return {"image": torch.rand(n, 1, *size, generator=g), "label": torch.arange(n) % C}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("dims", [2, 3])
def test_loss_is_weighted_mse_plus_cross_entropy_of_the_model_outputs(dims):
    m = method(dims, lambda_rec=2.0, lambda_cls=0.5)
    batch = words(dims)
    out = m(batch, gen(7))
    restored, logits = m.outputs(m.transform(batch["image"], gen(7)))  # the same draws as the step
    mse = ((restored - batch["image"]) ** 2).mean()  # target: the clean, undeformed crop
    ce = -torch.log_softmax(logits, dim=1)[torch.arange(4), batch["label"]].mean()
    assert out["loss_rec"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert out["loss_cls"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(2.0 * mse.item() + 0.5 * ce.item(), rel=1e-5)
    accuracy = (logits.argmax(1) == batch["label"]).float().mean()
    assert out["cls_accuracy"].item() == pytest.approx(accuracy.item())
    assert restored.shape == batch["image"].shape and logits.shape == (4, C)


def test_paper_weights_are_the_default():
    cfg = TransVWConfig()
    assert (cfg.lambda_rec, cfg.lambda_cls, cfg.n_classes, cfg.lr, cfg.batch_size) == (1.0, 0.01, 44, 1e-3, 64)
    m = method(3)
    batch = words(3)
    out = m(batch, gen(3))
    assert out["loss"].item() == pytest.approx(out["loss_rec"].item() + 0.01 * out["loss_cls"].item(), rel=1e-5)


# -------------------------------------------------------------------------------------------- transformations
@pytest.mark.parametrize("dims", [2, 3])
def test_transform_changes_the_input_and_keeps_the_unit_range(dims):
    m = method(dims)
    clean = words(dims, n=8)["image"]
    x = m.transform(clean, gen(0))
    assert x.shape == clean.shape and 0 <= x.min() and x.max() <= 1
    assert all(not torch.equal(a, b) for a, b in zip(x, clean))  # elastic always, then one perturbation
    assert torch.equal(method(dims, **NONE).transform(clean, gen(0)), clean)


def changed_box(clean: torch.Tensor, x: torch.Tensor, changed: bool = True) -> list[int]:
    """Side lengths of the bounding box of the voxels that changed (or stayed, ``changed=False``) in one sample."""
    where = ((x != clean) if changed else (x == clean))[0].nonzero()
    return (where.max(0).values - where.min(0).values + 1).tolist()


def test_each_probability_selects_its_own_perturbation_with_the_transvw_counts():
    big = torch.rand(4, 1, 32, 32, 32, generator=gen(2))
    shuffled = method(3, **{**NONE, "shuffle_p": 1.0}).transform(big, gen(1))
    moved = (shuffled != big).flatten(1).sum(1)
    assert moved.max() > 0 and (moved <= 5 * 3 * 3 * 3).all()  # 5 blocks of side <= 32 // 10 (Genesis: 10,000)
    clean = words(3, n=4)["image"]  # 16^3
    inpainted = method(3, **{**NONE, "inpaint_p": 1.0}).transform(clean, gen(1))
    for a, b in zip(clean, inpainted):
        assert all(2 <= s <= 5 for s in changed_box(a, b))  # one box of side 16 // 6 .. 16 // 3
    outpainted = method(3, **{**NONE, "outpaint_p": 1.0}).transform(clean, gen(1))
    for a, b in zip(clean, outpainted):
        assert all(7 <= s <= 10 for s in changed_box(a, b, changed=False))  # one kept window of 16 - (6 .. 9)
    mapped = method(3, **{**NONE, "nonlinear_p": 1.0}).transform(clean, gen(1))
    for a, b in zip(clean, mapped):  # one monotone intensity curve per sample: the order is kept or reversed
        order = a.flatten().argsort()
        steps = b.flatten()[order].diff()
        assert (a - b).abs().max() > 1e-3
        assert (steps >= -1e-6).all() or (steps <= 1e-6).all()


def test_elastic_deformation_matches_scipy_and_leaves_depth_alone():
    """The released ``elastic_transform`` recipe, recomputed with SciPy from the same noise."""
    x = torch.rand(2, 1, 16, 16, 8, generator=gen(0))
    out = elastic_deform(x, torch.ones(2, dtype=torch.bool), 991.0, 8.0, gen(5))
    noise = (torch.rand(2, 2, 16, 16, 8, generator=gen(5)) * 2 - 1).double().numpy()
    grid = np.meshgrid(*(np.arange(n) for n in (16, 16, 8)), indexing="ij")
    for n in range(2):
        shift = [ndimage.gaussian_filter(noise[n, a], 8, mode="constant", truncate=4.0) * 991 for a in (0, 1)]
        coords = [grid[0] + shift[0], grid[1] + shift[1], grid[2]]
        expected = ndimage.map_coordinates(x[n, 0].double().numpy(), coords, order=1, mode="reflect")
        assert np.abs(out[n, 0].double().numpy() - expected).max() < 1e-3
    assert (out - x).abs().max() > 0.1
    # a crop that varies along depth only is unchanged: no displacement along the depth axis
    ramp = torch.linspace(0, 1, 8).expand(2, 1, 16, 16, 8).contiguous()
    assert torch.allclose(elastic_deform(ramp, torch.ones(2, dtype=torch.bool), 991.0, 8.0, gen(5)), ramp, atol=1e-6)
    skip = torch.tensor([True, False])
    assert torch.equal(elastic_deform(x, skip, 991.0, 8.0, gen(5))[1], x[1])


def test_gaussian_smoothing_is_scipys_constant_mode_filter():
    field = torch.rand(1, 2, 12, 20, 9, generator=gen(0)).double()
    expected = ndimage.gaussian_filter(field.numpy(), sigma=(0, 0, 8, 8, 8), mode="constant", truncate=4.0)
    assert np.allclose(gaussian_smooth(field, 8.0).numpy(), expected, atol=1e-10)


def test_2d_displacements_have_the_size_of_a_slice_of_the_3d_field():
    image = torch.linspace(0, 1, 64).view(64, 1).expand(32, 1, 64, 64).contiguous()  # ramp: value = row / 63
    out2 = elastic_deform(image, torch.ones(32, dtype=torch.bool), 991.0, 8.0, gen(0))
    shift2 = ((out2 - image) * 63)[:, 0, 16:48, 16:48].std()  # interior: no border reflection
    cube = torch.linspace(0, 1, 64).view(64, 1, 1).expand(4, 1, 64, 64, 32).contiguous()
    out3 = elastic_deform(cube, torch.ones(4, dtype=torch.bool), 991.0, 8.0, gen(0))
    shift3 = ((out3 - cube) * 63)[:, 0, 16:48, 16:48, 8:24].std()
    assert 2.5 < shift3 < 5.0 and 0.6 < shift2 / shift3 < 1.6  # ~3.8 voxels either way, not ~20 in 2D


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("dims", [2, 3])
def test_steps_change_every_part_and_the_loss_falls(dims):
    m = method(dims, lr=0.01)
    opt = m.configure_optimizer()
    assert isinstance(opt, torch.optim.Adam)
    batch = words(dims)
    head = m.cls_head if dims == 2 else m.ynet3d.clc_out
    decoder = m.unet.decoder if dims == 2 else m.ynet3d.up_tr64
    encoder = m.unet.encoder if dims == 2 else m.ynet3d.down_tr64
    before = {part: [p.detach().clone() for p in mod.parameters()] for part, mod in
              (("head", head), ("decoder", decoder), ("encoder", encoder))}
    losses = []
    for step in range(6):
        out = m(batch, gen(1))  # the same transformation every step: a fixed regression problem
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        if step == 0:
            for part, mod in (("head", head), ("decoder", decoder), ("encoder", encoder)):
                assert any(not torch.equal(a, b) for a, b in zip(before[part], mod.parameters())), part
    assert losses[-1] < losses[0], losses


def test_scheduler_halves_the_lr_after_the_step_fraction():
    m = method(2, lr_step_fraction=0.5)
    opt = m.configure_optimizer()
    sched = m.configure_scheduler(opt, epochs=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_step_other_seed_other_transform(dims):
    batch = words(dims)
    a, b = method(dims)(batch, gen(4)), method(dims)(batch, gen(4))
    assert all(torch.equal(a[k], b[k]) for k in ("loss", "loss_rec", "loss_cls", "cls_accuracy"))
    m = method(dims)
    assert torch.equal(m.transform(batch["image"], gen(4)), m.transform(batch["image"], gen(4)))
    assert not torch.equal(m.transform(batch["image"], gen(4)), m.transform(batch["image"], gen(5)))


# ------------------------------------------------------------------------------------------------ registry
def test_both_methods_build_from_their_params_blocks(raw_params):
    for name, config_cls in (("transvw", TransVWConfig), ("semantic_genesis", SemanticGenesisConfig)):
        cfg = validate_method_config(name, raw_params["methods"][name])
        assert isinstance(cfg, config_cls) and cfg == config_cls()  # the block states the paper values
        assert (cfg.n_classes, cfg.lambda_cls, cfg.lambda_rec, cfg.batch_size, cfg.lr) == (44, 0.01, 1.0, 64, 1e-3)
        assert (cfg.elastic_rate, cfg.elastic_alpha, cfg.elastic_sigma, cfg.shuffle_blocks) == (1.0, 991.0, 8.0, 5)
        assert (cfg.shuffle_p, cfg.nonlinear_p, cfg.inpaint_p, cfg.outpaint_p) == (0.25,) * 4
        assert METHODS[name].name == name and METHODS[name].data == {2: "visual_words", 3: "visual_words"}
        assert cfg.dims == (2, 3)
        for dims in cfg.dims:
            built = build_method(name, raw_params["methods"][name], ctx(dims))
            assert type(built) is METHODS[name]
    # the conference version is the same code and values under another name (fact sheet section 4)
    assert vars(TransVWConfig()) == vars(SemanticGenesisConfig())


def test_exports_are_what_transfer_loads(tmp_path):
    exports = method(2).exports()
    assert set(exports) == {"encoder", "unet"} and exports["unet"].encoder is exports["encoder"]
    m = method(3)
    (name, unet), = m.exports().items()
    assert name == "unet3d"
    assert list(unet.state_dict()) == list(networks.unet_3d(ctx(3)).state_dict())  # no clc_out head keys
    assert unet.down_tr64 is m.ynet3d.down_tr64 and unet.out_tr is m.ynet3d.out_tr  # shared, not copied
    save_weights(unet, tmp_path / "unet3d.pt")
    fresh = networks.unet_3d(ctx(3))
    load_weights(fresh, tmp_path / "unet3d.pt")  # strict, as transfer loads it
    x = words(3)["image"]
    fresh.eval()
    m.eval()
    assert torch.allclose(fresh(x), m.ynet3d(x)[0])


# ----------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("key, value, message", [
    ("lambda_cls", -0.1, r"methods\.transvw\.lambda_cls = -0\.1; expected >= 0"),
    ("shuffle_p", 1.5, r"methods\.transvw\.shuffle_p = 1\.5; expected a probability in \[0, 1\]"),
    ("outpaint_p", 0.5, r"methods\.transvw\.outpaint_p = 0\.5; expected shuffle_p \+ nonlinear_p .* <= 1"),
    ("n_classes", 1, r"methods\.transvw\.n_classes = 1; expected an integer >= 2"),
    ("n_classes", "44", r"methods\.transvw\.n_classes = '44'; expected int"),
    ("elastic_sigma", 0.0, r"methods\.transvw\.elastic_sigma = 0\.0; expected > 0"),
    ("dims", [4], r"methods\.transvw\.dims = \[4\]; expected .*\[2, 3\]"),
    ("lambda", 1.0, r"methods\.transvw: unknown keys \['lambda'\]; allowed: .*lambda_cls"),
])
def test_a_bad_config_value_names_key_value_and_allowed(key, value, message):
    with pytest.raises(MethodConfigError, match=message):
        validate_method_config("transvw", {key: value})


def test_semantic_genesis_errors_name_its_own_block():
    with pytest.raises(MethodConfigError, match=r"methods\.semantic_genesis\.lambda_rec = -1\.0"):
        validate_method_config("semantic_genesis", {"lambda_rec": -1.0})


@pytest.mark.parametrize("label, message", [
    (torch.tensor([0, 1, 2, 3]), r"transvw: visual-word label 3 is outside \[0, 3\); methods\.transvw\.n_classes = 3"),
    (torch.tensor([0, -1, 2, 1]), r"visual-word label -1 is outside \[0, 3\)"),
    (torch.tensor([0.0, 1.0, 2.0, 1.0]), r"batch\['label'\] must be \(4,\) integer class indices, got torch\.float32"),
    (torch.tensor([[0], [1], [2], [1]]), r"batch\['label'\] must be \(4,\) .* \(4, 1\)"),
])
def test_labels_outside_the_classes_error_clearly(label, message):
    m = method(3)
    with pytest.raises(ValueError, match=message):
        m({"image": words(3)["image"], "label": label}, gen(0))


def test_crops_outside_the_unit_range_error_clearly():
    batch = words(2)
    with pytest.raises(ValueError, match=r"transvw: batch\['image'\] must hold clean crops in \[0, 1\], got min"):
        method(2)({"image": batch["image"] * 2, "label": batch["label"]}, gen(0))
