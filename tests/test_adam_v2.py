"""Adam-v2: part-whole views, composability / decomposability losses, the method's stages, EMA, branches, state."""

import pytest
import torch
import torch.nn.functional as F

from eden_lib.losses.part_whole import composability_loss, decomposability_loss
from eden_lib.methods.adam_v2 import AdamV2, AdamV2Config
from eden_lib.methods.base import BuildContext, MethodConfigError, parse_config
from eden_lib.models.ema import cosine_momentum
from eden_lib.transforms.part_whole import (LOCAL_AREA_BIN_EDGES, PartWholeRecipe, WholeMultiCrop, spread_bins,
                                            whole_boxes)

CTX = BuildContext(spatial_dims=2, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                   unet2d_decoder=(32, 16, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=32)
TINY = {"batch_size": 4, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local": 2}
FULL = {**TINY, "warmup_fraction": 0.0}  # every step in the full (LCD) stage


def adam(total_steps: int = 10, **overrides) -> AdamV2:
    torch.manual_seed(0)
    method = AdamV2(parse_config("adam_v2", AdamV2Config, {**TINY, **overrides}), CTX)
    method.set_total_steps(total_steps)
    return method


def renders(seed: int = 0, size: int = 64) -> dict:
    return {"image": torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(seed))}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def step(method: AdamV2, opt: torch.optim.Optimizer, batch: dict, seed: int = 1) -> dict:
    out = method(batch, gen(seed))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    method.after_step()
    return out


# views


def test_spread_bins_keep_the_extremes():
    bins = list(zip(LOCAL_AREA_BIN_EDGES[:-1], LOCAL_AREA_BIN_EDGES[1:]))
    assert spread_bins(LOCAL_AREA_BIN_EDGES, 8) == tuple(bins)
    assert spread_bins(LOCAL_AREA_BIN_EDGES, 2) == ((0.05, 0.1), (0.7, 0.8))
    assert spread_bins(LOCAL_AREA_BIN_EDGES, 4) == tuple(bins[i] for i in (0, 2, 5, 7))


def test_wholes_sit_on_pixels_inside_the_margin():
    boxes = whole_boxes(256, 256, 2, gen(0), margin=50 / 1024)
    torch.testing.assert_close(boxes[:, 0], torch.full((256,), 0.25))
    left = ((boxes[:, 1:] + 1) * 256 - 64) / 2  # pixel offsets of the 64-pixel wholes
    torch.testing.assert_close(left, left.round())
    assert left.min() >= 12 and left.max() <= 256 - 64 - 12
    assert torch.equal(whole_boxes(3, 256, 0, gen(0), margin=0.05), torch.tensor([[1.0, 0.0, 0.0]] * 3))


@pytest.mark.parametrize("g", [0, 1])
def test_the_parts_tile_the_whole(g):
    images = renders(size=64 * 2**g)["image"]
    clean = PartWholeRecipe(32).crops(images, g, gen(3))
    quadrants = [clean.whole[:, :, r:r + 16, c:c + 16] for r in (0, 16) for c in (0, 16)]  # TL, TR, BL, BR
    for i, quadrant in enumerate(quadrants):
        # a part at 32 px holds the exact pixels of its 32-pixel quarter; view 0 halves them
        torch.testing.assert_close(F.avg_pool2d(clean.parts[4 * i:4 * (i + 1)], 2), quadrant)


@pytest.mark.parametrize("g", [0, 1, 2])
def test_every_localizability_view_is_centred_on_the_whole(g):
    axis = torch.arange(128.0) / 128
    ramps = torch.stack([axis.expand(128, 128), axis[:, None].expand(128, 128)] * 2)[:, None]  # x, y, x, y ramps
    clean = PartWholeRecipe(32, local_areas=spread_bins(LOCAL_AREA_BIN_EDGES, 3)).crops(ramps, g, gen(g))
    centre = clean.whole.mean(dim=(1, 2, 3))  # a linear image's mean is its value at the crop's centre
    torch.testing.assert_close(clean.global_view.mean(dim=(1, 2, 3)), centre)
    for local in clean.local.unflatten(0, (3, 4)):
        torch.testing.assert_close(local.mean(dim=(1, 2, 3)), centre)
    spread = [v.std(dim=(1, 2, 3)) for v in (clean.whole, clean.global_view, clean.local[:4])]
    assert (spread[0] >= spread[1]).all() and (spread[1] > spread[2]).all()  # nested: the smallest bin comes first
    mean_of_parts = clean.parts.unflatten(0, (4, 4)).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(mean_of_parts, centre)


def test_augmented_views_and_warmup_multi_crop_shapes():
    images = renders()["image"]
    views = PartWholeRecipe(32, local_areas=spread_bins(LOCAL_AREA_BIN_EDGES, 2)).views(images, 1, gen(0))
    assert [v.shape for v in views] == [(4, 1, 32, 32), (4, 1, 32, 32), (8, 1, 16, 16), (16, 1, 32, 32)]
    assert all(0 <= v.min() and v.max() <= 1 + 1e-6 for v in views)
    crops = WholeMultiCrop(32, n_local=3).views(images, 2, gen(0))
    assert [c.shape for c in crops] == [(8, 1, 32, 32), (12, 1, 16, 16)]


# losses


def test_composability_loss_is_the_mse_of_unit_vectors():
    composed, teacher = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    expected = ((composed / composed.norm(dim=1, keepdim=True) - teacher / teacher.norm(dim=1, keepdim=True)) ** 2)
    torch.testing.assert_close(composability_loss(composed, teacher), expected.mean())
    composability_loss(composed, teacher).backward()
    assert teacher.grad is None and composed.grad is not None


def test_decomposability_loss_matches_the_formula():
    decomposed, teacher = torch.randn(5, 4 * 8), torch.randn(4, 5, 8)
    target = [t / t.norm(dim=1, keepdim=True) for t in teacher]
    joint = decomposed / decomposed.norm(dim=1, keepdim=True)
    slices = [decomposed[:, 8 * i:8 * (i + 1)] for i in range(4)]
    faithful = sum(((joint[:, 8 * i:8 * (i + 1)] - target[i]) ** 2).mean() for i in range(4)) / 4
    per_part = sum(((s / s.norm(dim=1, keepdim=True) - t) ** 2).mean() for s, t in zip(slices, target)) / 4
    torch.testing.assert_close(decomposability_loss(decomposed, teacher, "faithful"), faithful)
    torch.testing.assert_close(decomposability_loss(decomposed, teacher, "per_part"), per_part)
    with pytest.raises(ValueError, match="decompose norm"):
        decomposability_loss(decomposed, teacher, "joint")


def test_only_per_part_normalisation_reaches_zero_for_perfect_directions():
    teacher = torch.randn(4, 5, 8)
    perfect = (3 * F.normalize(teacher, dim=-1)).transpose(0, 1).flatten(1)  # every slice along its target
    assert decomposability_loss(perfect, teacher, "per_part") < 1e-12
    # jointly normalised, each slice has norm 1/2 against a unit target: ||t/2 - t||^2 = 1/4 per part, / D elements
    torch.testing.assert_close(decomposability_loss(perfect, teacher, "faithful"), torch.tensor(1 / (4 * 8)))


# the method


def test_heads_budget_and_export():
    method = adam()
    keys = method.state_dict()
    assert keys["compose_head.0.weight"].shape == (64, 4 * 64) and keys["compose_head.2.weight"].shape == (64, 64)
    assert keys["decompose_head.0.weight"].shape == (64, 64) and keys["decompose_head.2.weight"].shape == (4 * 64, 64)
    assert method.exports()["encoder"] is method.teacher.encoder
    assert method.views == pytest.approx(0.65 * (2 + 0.5) + 0.35 * (1 + 1.5 + 4))
    assert adam(comp_weight=0.0, dec_weight=0.0).views == pytest.approx(2.5)
    paper = AdamV2(parse_config("adam_v2", AdamV2Config, {"out_dim": 64}), CTX)
    assert paper.views == pytest.approx(0.65 * 4 + 0.35 * 8)  # 2 global + 8 local; view 0 + view 1 + 8 local + 4


def test_full_step_keeps_the_teacher_out_of_backprop_and_moves_it_by_the_ema():
    method = adam(total_steps=10, **FULL)
    opt = method.configure_optimizer()
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    center_before = method.loss.center.clone()
    batch = renders()
    with torch.no_grad():  # the view 0 the step draws from the same seed (granularity 0 at step 0)
        teacher_out = method.teacher(method.full_views.views(batch["image"], 0, gen(1)).whole)
    out = method(batch, gen(1))
    assert (int(out["stage"]), int(out["granularity"])) == (1, 0)
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    for head in (method.compose_head, method.decompose_head):
        assert all(p.grad is not None for p in head.parameters())
    opt.step()
    method.after_step()
    m = cosine_momentum(0.996, 0, 10)
    for before, t, s in zip(teacher_before, method.teacher.parameters(), method.student.parameters()):
        torch.testing.assert_close(t, m * before + (1 - m) * s)
    torch.testing.assert_close(method.loss.center, 0.9 * center_before + 0.1 * teacher_out.mean(0, keepdim=True))
    assert int(method.steps_done) == 1
    torch.testing.assert_close(out["loss"], out["loss_loc"] + out["loss_comp"] + out["loss_dec"])


def test_the_schedule_follows_the_paper_fractions():
    method = adam(total_steps=100)
    expected = {0: (0, 0), 25: (0, 0), 26: (0, 1), 51: (0, 1), 52: (0, 2), 64: (0, 2), 65: (1, 0), 66: (1, 0),
                67: (1, 1), 78: (1, 1), 79: (1, 2), 99: (1, 2)}
    assert {s: method.stage_and_granularity(s) for s in expected} == expected


def test_stage_and_granularity_switch_across_steps_and_the_heads_wait_for_the_full_stage():
    method = adam(total_steps=4, granularities=[0, 1], warmup_fraction=0.5, warmup_granularity_fractions=[0.5, 0.5],
                  full_granularity_fractions=[0.5, 0.5])
    opt = method.configure_optimizer()
    seen = []
    for i in range(4):
        out = method(renders(i), gen(i))
        opt.zero_grad()
        out["loss"].backward()
        heads_trained = all(p.grad is not None for p in method.compose_head.parameters())
        seen.append((int(out["stage"]), int(out["granularity"]), heads_trained, float(out["loss_dec"]) > 0))
        opt.step()
        method.after_step()
    assert seen == [(0, 0, False, False), (0, 1, False, False), (1, 0, True, True), (1, 1, True, True)]


@pytest.mark.parametrize("branch, head", [("loc", "student.head"), ("comp", "compose_head"),
                                          ("dec", "decompose_head")])
def test_a_weight_of_zero_removes_its_term_and_its_gradients(branch, head):
    method = adam(**FULL, **{f"{branch}_weight": 0.0})
    out = method(renders(), gen(0))
    out["loss"].backward()
    assert out[f"loss_{branch}"] == 0
    others = [out[f"loss_{b}"] for b in ("loc", "comp", "dec") if b != branch]
    assert all(o > 0 for o in others)
    torch.testing.assert_close(out["loss"].detach(), sum(others))
    assert all(p.grad is None for p in method.get_submodule(head).parameters())
    assert any(p.grad is not None for p in method.student.encoder.parameters())


def test_steps_centre_and_teacher_survive_a_state_dict_round_trip():
    method = adam(**FULL)
    opt = method.configure_optimizer()
    for i in range(2):
        step(method, opt, renders(i), seed=i)
    fresh = adam(**FULL)
    fresh.load_state_dict(method.state_dict())
    assert int(fresh.steps_done) == 2
    assert fresh.loss.center.abs().sum() > 0
    for a, b in zip(fresh.state_dict().values(), method.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.stage_and_granularity(2) == method.stage_and_granularity(2)


@pytest.mark.parametrize("warmup_fraction", [0.0, 1.0])
def test_eval_mode_leaves_centre_teacher_and_step_alone(warmup_fraction):
    method = adam(warmup_fraction=warmup_fraction)
    step(method, method.configure_optimizer(), renders())
    state = {k: v.clone() for k, v in method.state_dict().items()}
    method.eval()
    with torch.no_grad():
        out = method(renders(1), gen(2))
    assert int(out["stage"]) == (warmup_fraction == 0.0)
    assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items())
    assert method.loss.center.abs().sum() > 0


def test_training_needs_the_total_number_of_steps():
    method = AdamV2(parse_config("adam_v2", AdamV2Config, TINY), CTX)
    with pytest.raises(RuntimeError, match="set_total_steps"):
        method(renders(), gen(0))


def test_the_optimizer_trains_student_and_heads_without_decay_on_biases():
    method = adam()
    groups = method.configure_optimizer().param_groups
    trained = {id(p) for g in groups for p in g["params"]}
    assert not trained & {id(p) for p in method.teacher.parameters()}
    assert {id(p) for p in method.compose_head.parameters()} <= trained
    assert groups[1]["weight_decay"] == 0 and all(p.ndim <= 1 for p in groups[1]["params"])
    assert groups[0]["lr"] == pytest.approx(5e-4 * 4 / 256)


@pytest.mark.parametrize(
    "block, key",
    [({"dims": [2, 3]}, "dims"), ({"n_local": -1}, "n_local"), ({"teacher_temp": 0}, "teacher_temp"),
     ({"global_area": [0.5]}, "global_area"), ({"local_area_bins": [0.1, 0.05]}, "local_area_bins"),
     ({"momentum": 1.5}, "momentum"), ({"out_dim": "big"}, "out_dim"), ({"granularities": [-1]}, "granularities"),
     ({"warmup_granularity_fractions": [0.5, 0.4, 0.2]}, "warmup_granularity_fractions"),
     ({"full_granularity_fractions": [0.5, 0.5]}, "full_granularity_fractions"), ({"loc_weight": 0}, "loc_weight"),
     ({"comp_weight": -1}, "comp_weight"), ({"decompose_norm": "joint"}, "decompose_norm"),
     ({"warmup_fraction": 0, "loc_weight": 0, "comp_weight": 0, "dec_weight": 0}, "dec_weight")],
)
def test_config_errors_name_the_key(block, key):
    with pytest.raises(MethodConfigError, match=rf"methods\.adam_v2\.{key} = "):
        parse_config("adam_v2", AdamV2Config, block)
