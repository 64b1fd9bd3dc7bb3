"""Adam-v1 on CPU at tiny widths: the anatomy decomposer, the purposive-pruner loss against its formula, and the
method's stages, momentum branch, pruning switch, eval mode, checkpointed state and config errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from eden_lib.losses import InfoNCELoss, PurposivePrunerLoss
from eden_lib.methods import build_method
from eden_lib.methods.adam_v1 import AdamV1, AdamV1Config
from eden_lib.methods.base import BuildContext, MethodConfigError, parse_config
from eden_lib.transforms.decomposer import choose_parts, crop_parts, grid_shape, part_boxes, part_view, rotate
from eden_lib.transforms.views import ViewConfig

CTX = BuildContext(spatial_dims=2, backbone_2d={"name": "resnet18", "widths": [8, 16, 32, 64]},
                   unet2d_decoder=(16, 8, 8, 8, 8), unet3d_width=4, n_labels=3, image_size=32)
TINY = {"batch_size": 4, "lr": 0.05, "queue_size": 16, "bn_splits": 2, "moco_hidden": 32, "moco_dim": 16}
PLAIN_VIEWS = {"jitter_p": 0.0, "blur_p": 0.0, "rotation": 0.0}  # geometry only


def renders(seed: int = 0, b: int = 4) -> dict:
    return {"image": torch.rand(b, 1, 64, 64, generator=torch.Generator().manual_seed(seed))}


def cells(n: int, b: int = 4, side: int = 64) -> torch.Tensor:
    """Renders whose part p of level n is the constant (p + 1) / 32."""
    rows, cols = grid_shape(n)
    values = (torch.arange(rows * cols, dtype=torch.float32) + 1).view(1, 1, rows, cols) / 32
    return F.interpolate(values, size=(side, side), mode="nearest").expand(b, 1, side, side).contiguous()


def build(block: dict | None = None, total_steps: int = 6) -> AdamV1:
    torch.manual_seed(0)
    method = AdamV1(parse_config("adam_v1", AdamV1Config, {**TINY, **(block or {})}), CTX)
    method.set_total_steps(total_steps)
    return method


def step(method: AdamV1, opt: torch.optim.Optimizer, batch: dict, seed: int = 1) -> dict:
    out = method(batch, torch.Generator().manual_seed(seed))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    method.after_step()
    return {k: float(v.detach()) for k, v in out.items()}


# --- anatomy decomposer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(5))
def test_the_2n_parts_tile_the_image_without_overlap(n):
    rows, cols = grid_shape(n)
    assert rows * cols == 2**n and rows == 2 ** math.ceil(n / 2) and cols == 2 ** (n // 2)
    boxes = part_boxes(torch.arange(2**n), n) * 16  # on a 16 x 16 pixel raster
    cover = torch.zeros(16, 16)
    for x0, y0, x1, y1 in boxes.round().long().tolist():
        assert x1 > x0 and y1 > y0
        cover[y0:y1, x0:x1] += 1
    assert torch.equal(cover, torch.ones(16, 16))


@pytest.mark.parametrize("n", range(5))
def test_the_chosen_part_is_the_slice_of_its_box(n):
    images = torch.rand(6, 2, 32, 32, generator=torch.Generator().manual_seed(n))
    index = choose_parts(6, n, torch.Generator().manual_seed(1))
    parts = crop_parts(images, index, n)
    rows, cols = grid_shape(n)
    assert parts.shape == (6, 2, 32 // rows, 32 // cols)
    for i, (x0, y0, x1, y1) in enumerate((part_boxes(index, n) * 32).round().long().tolist()):
        assert torch.equal(parts[i], images[i, :, y0:y1, x0:x1])


def test_parts_are_drawn_uniformly_and_seeded():
    draws = choose_parts(8000, 2, torch.Generator().manual_seed(0))
    assert torch.equal(draws, choose_parts(8000, 2, torch.Generator().manual_seed(0)))
    counts = torch.bincount(draws, minlength=4)
    assert counts.numel() == 4 and (counts - 2000).abs().max() < 150, counts
    assert not torch.equal(draws, choose_parts(8000, 2, torch.Generator().manual_seed(1)))


def test_uneven_splits_and_negative_levels_are_refused():
    with pytest.raises(ValueError, match="4x4 equal parts"):
        crop_parts(torch.rand(2, 1, 30, 30), torch.zeros(2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=">= 0"):
        grid_shape(-1)


def test_rotation_is_identity_at_zero_and_rot90_at_ninety_with_zero_fill():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = rotate(x, torch.tensor([0.0, 90.0, 45.0]))
    torch.testing.assert_close(y[0], x[0])
    torch.testing.assert_close(y[1], torch.rot90(x[1], 1, (1, 2)))
    assert y[2, 0, 0, 0] == 0 and y[2, 0, 8, 8] > 0  # corners come from outside the image


@pytest.mark.parametrize("n", [0, 2, 3, 4])
def test_views_are_crops_within_the_anchor_part(n):
    images = cells(n)
    index = choose_parts(4, n, torch.Generator().manual_seed(2))
    cfg = ViewConfig(size=32, scale=(0.45, 1.0), jitter_p=0.0, blur_p=0.0, flip_p=0.0)
    view = part_view(crop_parts(images, index, n), cfg, 0.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(view, ((index + 1) / 32).view(4, 1, 1, 1).expand(4, 1, 32, 32))
    again = part_view(crop_parts(images, index, n), cfg, 30.0, torch.Generator().manual_seed(3))
    assert torch.equal(again, part_view(crop_parts(images, index, n), cfg, 30.0, torch.Generator().manual_seed(3)))


# --- purposive-pruner loss ------------------------------------------------------------------------------------------


def test_pruner_hand_value_drops_keys_at_and_above_the_threshold():
    q = k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(0.75)], [0.0, 1.0], [-1.0, 0.0]])  # cosines 1, 0.5, 0, -1
    loss, pruned = PurposivePrunerLoss(0.5, threshold=0.5)(q, k, queue)  # kept logits: [2 (positive), 0, -2]
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2))), rel=1e-6)
    assert pruned.item() == 0.5


def test_pruner_matches_a_naive_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(6, 8, generator=g), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    total, n_pruned = 0.0, 0
    for i in range(6):
        cosines = [float(q[i] @ queue[j]) for j in range(20)]
        kept = [c / 0.2 for c in cosines if c < 0.3]
        n_pruned += 20 - len(kept)
        positive = float(q[i] @ k[i]) / 0.2
        total += -positive + math.log(math.exp(positive) + sum(math.exp(v) for v in kept))
    loss, pruned = PurposivePrunerLoss(0.2, threshold=0.3)(q, k, queue)
    assert 0 < n_pruned < 120
    assert loss.item() == pytest.approx(total / 6, rel=1e-5)
    assert pruned.item() == pytest.approx(n_pruned / 120)


@pytest.mark.parametrize("threshold", [None, 1.0, 1.5])
def test_pruner_off_is_plain_info_nce_even_for_a_copy_of_the_query(threshold):
    g = torch.Generator().manual_seed(1)
    q, k = (F.normalize(torch.randn(5, 8, generator=g), dim=1) for _ in range(2))
    queue = torch.cat([q[:2], F.normalize(torch.randn(7, 8, generator=g), dim=1)])  # cosine 1 (+- rounding)
    loss, pruned = PurposivePrunerLoss(0.2, threshold)(q, k, queue)
    assert torch.equal(loss, InfoNCELoss(0.2)(q, k, queue)) and pruned.item() == 0


def test_pruned_keys_do_not_move_the_loss_and_the_positive_is_kept():
    q = F.normalize(torch.tensor([[1.0, 0.2, 0.0]]), dim=1).requires_grad_()
    queue = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    near = F.normalize(torch.tensor([[1.0, 0.1, 0.05], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)  # still >= 0.8
    criterion = PurposivePrunerLoss(0.2, 0.8)
    loss, pruned = criterion(q, q.detach(), queue)  # the positive (cosine 1) is never pruned
    assert torch.isfinite(loss) and pruned.item() == pytest.approx(1 / 3)
    assert criterion(q, q.detach(), near)[0].item() == pytest.approx(loss.item(), abs=1e-7)
    loss.backward()
    assert torch.isfinite(q.grad).all()


def test_pruner_arguments_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        PurposivePrunerLoss(0.0)
    with pytest.raises(ValueError, match="threshold"):
        PurposivePrunerLoss(0.2, -1.0)


# --- the method -----------------------------------------------------------------------------------------------------


def test_paper_defaults_validate():
    cfg = AdamV1Config()
    cfg.validate("adam_v1")
    assert (cfg.batch_size, cfg.lr, cfg.temperature, cfg.key_momentum, cfg.queue_size, cfg.moco_dim) == (
        256, 0.03, 0.2, 0.999, 65536, 128)
    assert cfg.granularities == (0, 2, 4) and cfg.pruner and cfg.sim_threshold == 0.8 and cfg.rotation == 30.0
    assert cfg.flip_p == 0.0 and cfg.bn_splits == 4 and cfg.scale == (0.45, 1.0)  # area (0.2, 1.0), 4 GPUs


def test_one_step_on_cpu_and_the_exported_encoder():
    method = build({"granularities": [2], "stage_fractions": [1.0]})
    out = step(method, method.configure_optimizer(), renders())
    assert set(out) == {"loss", "loss_dis", "granularity", "pruned_fraction"}
    assert all(math.isfinite(v) for v in out.values()) and out["loss"] == out["loss_dis"] and out["granularity"] == 2
    assert method.exports() == {"encoder": method.discriminative.encoder}
    assert method.data == {2: "cxr_renders"} and method.views == 2 and int(method.steps_done) == 1


def test_momentum_encoder_gets_no_gradient_and_follows_the_ema():
    method = build({"key_momentum": 0.9, "granularities": [4], "stage_fractions": [1.0], "sim_threshold": 0.0})
    branch, opt = method.discriminative, method.configure_optimizer()
    key_params = list(branch.key_encoder.parameters()) + list(branch.key_projector.parameters())
    assert not {id(p) for p in key_params} & {id(p) for g in opt.param_groups for p in g["params"]}
    before = [p.clone() for p in key_params]
    out = method(renders(), torch.Generator().manual_seed(1))
    assert out["pruned_fraction"] > 0
    out["loss"].backward()
    assert all(p.grad is None for p in key_params)
    opt.step()
    method.after_step()
    online = list(branch.encoder.parameters()) + list(branch.projector.parameters())
    for old, key, new in zip(before, key_params, online):
        torch.testing.assert_close(key, 0.9 * old + 0.1 * new)


def test_stages_follow_steps_done_over_the_run():
    method = build({"queue_size": 8}, total_steps=3)
    opt = method.configure_optimizer()
    assert [step(method, opt, renders(), seed=i)["granularity"] for i in range(3)] == [0, 2, 4]
    uneven = build({"stage_fractions": [0.5, 0.25, 0.25]}, total_steps=8)
    levels = []
    for done in range(10):  # past the announced length: the last stage
        uneven.steps_done.fill_(done)
        levels.append(uneven.granularity())
    assert levels == [0] * 4 + [2] * 2 + [4] * 4
    unannounced = AdamV1(parse_config("adam_v1", AdamV1Config, TINY), CTX)
    with pytest.raises(RuntimeError, match="set_total_steps"):
        unannounced(renders(), torch.Generator().manual_seed(0))


def test_both_views_come_from_one_anchor_part():
    method = build({**PLAIN_VIEWS, "granularities": [4], "stage_fractions": [1.0]})
    view1, view2 = method.anchor_views(cells(4), 4, torch.Generator().manual_seed(5))
    values = view1.flatten(1)[:, :1]
    torch.testing.assert_close(view1, values.view(4, 1, 1, 1).expand_as(view1))  # one constant cell per view,
    torch.testing.assert_close(view2, view1)  # the same for both views
    assert values.unique().numel() > 1


def test_queue_and_steps_done_round_trip_and_the_run_resumes_in_its_stage():
    method = build(total_steps=6)
    opt = method.configure_optimizer()
    for i in range(3):
        step(method, opt, renders(), seed=i)
    state = method.state_dict()
    assert {"discriminative.queue", "discriminative.queue_ptr", "steps_done"} <= set(state)
    resumed = build(total_steps=6)
    resumed.load_state_dict(state)
    assert int(resumed.steps_done) == 3 and int(resumed.discriminative.queue_ptr) == 12
    assert torch.equal(resumed.discriminative.queue, method.discriminative.queue)
    a, b = (m(renders(), torch.Generator().manual_seed(9)) for m in (method, resumed))
    assert a["granularity"] == b["granularity"] == 2
    torch.testing.assert_close(a["loss"], b["loss"])


def test_a_moco_v2_state_loads_as_the_coarse_stage():
    """Chaining from a moco_v2 run (its n = 0 stage): the same keys, only the step counter is new."""
    moco = build_method("moco_v2", TINY, CTX)
    missing, unexpected = build().load_state_dict(moco.state_dict(), strict=False)
    assert missing == ["steps_done"] and unexpected == []


def _loss_and_info_nce(block: dict) -> tuple[dict, torch.Tensor]:
    """One training forward of a single-stage method at n = 2, and plain InfoNCE of the same views and queue."""
    method = build({"granularities": [2], "stage_fractions": [1.0], **block})
    branch, batch = method.discriminative, renders()
    queue = branch.queue.clone()
    out = method(batch, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        view1, view2 = method.anchor_views(batch["image"], 2, g)
        q = F.normalize(branch.projected_view1(view1, None), dim=1)
        expected = InfoNCELoss(method.cfg.temperature)(q, branch.keys(view2, g), queue)
    return out, expected


@pytest.mark.parametrize("block", [{"pruner": False}, {"sim_threshold": 1.0}])
def test_pruner_off_at_a_fine_level_is_plain_info_nce(block):
    out, expected = _loss_and_info_nce(block)
    torch.testing.assert_close(out["loss"].detach(), expected)
    assert out["pruned_fraction"] == 0 and out["granularity"] == 2


def test_pruner_on_drops_negatives_and_changes_the_loss():
    out, expected = _loss_and_info_nce({"sim_threshold": 0.0})
    assert 0 < out["pruned_fraction"] < 1 and out["loss"].item() < expected.item()


def test_eval_mode_leaves_the_state_alone_and_scores_in_batch():
    method = build({"granularities": [4], "stage_fractions": [1.0]})
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.eval()
    with torch.no_grad():
        out = method(renders(), torch.Generator().manual_seed(1))
    assert all(torch.equal(value, before[key]) for key, value in method.state_dict().items())
    assert out["granularity"] == 4 and out["pruned_fraction"] == 0
    assert abs(out["loss"].item() - math.log(4)) < 0.5  # chance of 4 in-batch keys


@pytest.mark.parametrize("block, key", [
    ({"granularities": []}, "granularities"),
    ({"granularities": [0, -1], "stage_fractions": [0.5, 0.5]}, "granularities"),
    ({"stage_fractions": [0.5, 0.5]}, "stage_fractions"),
    ({"stage_fractions": [0.5, 0.3, 0.3]}, "stage_fractions"),
    ({"stage_fractions": [1.0, 0.0, 0.0]}, "stage_fractions"),
    ({"sim_threshold": 1.5}, "sim_threshold"),
    ({"rotation": -1.0}, "rotation"),
    ({"pruner": "yes"}, "pruner"),
    ({"queue_size": 10}, "queue_size"),
])
def test_config_errors_name_the_key_and_value(block, key):
    with pytest.raises(MethodConfigError, match=rf"methods\.adam_v1\.{key} = "):
        parse_config("adam_v1", AdamV1Config, {**TINY, **block})
