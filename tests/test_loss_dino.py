"""DINO loss: the vectorised loss equals the paper's formula written as a naive loop; the centre follows its EMA."""

import math

import pytest
import torch

from eden_lib.losses.dino import DINOLoss, teacher_temperature


def naive_dino_loss(student, teacher, center, tau_s, tau_t):
    """Nested lists [crop][sample][k] of logits; the paper's formula, one crop pair and sample at a time."""
    total, terms = 0.0, 0
    for g, t in enumerate(teacher):
        for v, s in enumerate(student):
            if g == v:
                continue
            for b in range(len(t)):
                e = [math.exp((t[b][k] - center[k]) / tau_t) for k in range(len(t[b]))]
                p_t = [x / sum(e) for x in e]
                log_z = math.log(sum(math.exp(s[b][k] / tau_s) for k in range(len(s[b]))))
                total += -sum(p_t[k] * (s[b][k] / tau_s - log_z) for k in range(len(s[b]))) / len(t)
            terms += 1
    return total / terms


@pytest.mark.parametrize("n_views", [2, 4])
def test_loss_matches_the_formula_and_moves_the_centre(n_views):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(n_views, 3, 5, generator=g)
    teacher = torch.randn(2, 3, 5, generator=g)
    loss_fn = DINOLoss(out_dim=5, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.linspace(-0.5, 0.5, 5))
    center = loss_fn.center[0].tolist()
    loss = loss_fn(student, teacher, teacher_temp=0.04)
    expected = naive_dino_loss(student.tolist(), teacher.tolist(), center, 0.1, 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    new_center = [0.9 * c + 0.1 * m for c, m in zip(center, teacher.reshape(6, 5).mean(0).tolist())]
    assert loss_fn.center[0].tolist() == pytest.approx(new_center, rel=1e-5, abs=1e-7)


def test_no_gradient_reaches_the_teacher_and_the_centre_is_saved():
    student = torch.randn(3, 4, 8, requires_grad=True)
    teacher = torch.randn(2, 4, 8, requires_grad=True)
    loss_fn = DINOLoss(out_dim=8)
    loss_fn(student, teacher, teacher_temp=0.07).backward()
    assert student.grad is not None and teacher.grad is None
    assert "center" in loss_fn.state_dict()


def test_teacher_temperature_warms_up_linearly_then_holds():
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(99, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)
