"""DiRA / CAiD restoration corruptions: mode frequencies, what each mode may change, swaps against a naive loop."""

import pytest
import torch

from eden_lib.transforms.restoration import RestorationCorruption, corrupt, rectangles, swap


def _renders(b: int, side: int = 32) -> torch.Tensor:
    return 0.1 + 0.9 * torch.rand(b, 1, side, side, generator=torch.Generator().manual_seed(0))  # no zeros


def test_modes_follow_the_released_probabilities_and_are_seeded():
    x = _renders(4000, 32)
    out, mode = corrupt(x, RestorationCorruption(), torch.Generator().manual_seed(1))
    freq = torch.bincount(mode, minlength=4).float() / len(mode)
    torch.testing.assert_close(freq, torch.tensor([0.30, 0.05, 0.30, 0.35]), atol=0.025, rtol=0)
    again, _ = corrupt(x, RestorationCorruption(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, again)


def test_each_mode_changes_only_what_it_should():
    x = _renders(400, 32)
    out, mode = corrupt(x, RestorationCorruption(), torch.Generator().manual_seed(2))
    changed = (out != x).flatten(1)
    assert not changed[mode == 3].any()  # none
    for m in (0, 1):  # cut-outs and out-painting only write zeros
        assert (out[mode == m].flatten(1)[changed[mode == m]] == 0).all()
        assert changed[mode == m].any(dim=1).all()
    inpaint, outpaint = changed[mode == 0].float().mean(), changed[mode == 1].float().mean()
    assert 0.02 < inpaint < 0.5 and 0.02 < outpaint < 0.5  # a few cut-outs; blank outside several large windows
    shuffled = mode == 2
    assert changed[shuffled].any(dim=1).float().mean() > 0.9
    values = set(torch.unique(x[shuffled]).tolist())
    assert set(torch.unique(out[shuffled]).tolist()) <= values  # pixels move, none is invented


def test_swap_matches_a_sequential_copy_including_overlaps():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 2, 16, 16, generator=g)
    side = torch.randint(1, 7, (64,), generator=g)
    a = torch.randint(0, 10, (64, 2), generator=g)
    b = torch.randint(0, 10, (64, 2), generator=g)
    out = swap(x, side, a, b)
    for i in range(64):
        s, (ay, ax), (by, bx) = int(side[i]), a[i].tolist(), b[i].tolist()
        ref = x[i].clone()
        block_a = ref[:, ay : ay + s, ax : ax + s].clone()
        ref[:, ay : ay + s, ax : ax + s] = ref[:, by : by + s, bx : bx + s].clone()
        ref[:, by : by + s, bx : bx + s] = block_a
        torch.testing.assert_close(out[i], ref)


@pytest.mark.parametrize("stop_p, expected", [(1.0, 1), (0.0, 10)])
def test_rectangles_stop_early_with_stop_p(stop_p, expected):
    cfg = RestorationCorruption(stop_p=stop_p)
    mask = rectangles(200, 64, (3, 20), cfg, torch.Generator().manual_seed(4))
    rows, cols = mask.any(dim=2).sum(1), mask.any(dim=1).sum(1)
    if expected == 1:  # exactly one rectangle: the mask fills its bounding box
        assert torch.equal(mask.sum(dim=(1, 2)), rows * cols)
        assert ((rows >= 3) & (rows <= 20) & (cols >= 3) & (cols <= 20)).all()
    else:
        assert (mask.sum(dim=(1, 2)) < rows * cols).float().mean() > 0.9


def test_probabilities_are_checked():
    with pytest.raises(ValueError, match="inpaint_p \\+ outpaint_p \\+ shuffle_p"):
        RestorationCorruption(inpaint_p=0.5, outpaint_p=0.3, shuffle_p=0.3)
