"""The two-view losses against their formulas: hand-computed values and independent naive loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import BarlowTwinsLoss as MonaiBarlowTwinsLoss

from eden_lib.losses import BarlowTwinsLoss, InfoNCELoss, LSGANLoss, SymmetricNegativeCosineLoss, in_batch_info_nce


def test_info_nce_hand_value():
    q = k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # logits / tau=0.5: [2, 0, -2]
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert InfoNCELoss(0.5)(q, k, queue).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(5, 8, generator=g), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(7, 8, generator=g), dim=1)
    total = 0.0
    for i in range(5):
        logits = [float(q[i] @ k[i]) / 0.2] + [float(q[i] @ queue[j]) / 0.2 for j in range(7)]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert InfoNCELoss(0.2)(q, k, queue).item() == pytest.approx(total / 5, rel=1e-5)


def test_in_batch_info_nce_matches_a_naive_loop_and_chance():
    g = torch.Generator().manual_seed(1)
    q, k = (F.normalize(torch.randn(6, 8, generator=g), dim=1) for _ in range(2))
    total = 0.0
    for i in range(6):
        logits = [float(q[i] @ k[j]) / 0.1 for j in range(6)]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    assert in_batch_info_nce(q, k, 0.1).item() == pytest.approx(total / 6, rel=1e-5)
    same = F.normalize(torch.ones(6, 8), dim=1)  # indistinguishable keys: chance, ln B
    assert in_batch_info_nce(same, same, 0.2).item() == pytest.approx(math.log(6), rel=1e-6)


def _naive_barlow(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> float:
    b, d = z1.shape

    def standardise(z):
        cols = []
        for j in range(d):
            col = [float(v) for v in z[:, j]]
            mean = sum(col) / b
            var = sum((v - mean) ** 2 for v in col) / b
            cols.append([(v - mean) / math.sqrt(var + 1e-5) for v in col])
        return cols

    a, c = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[i][n] * c[j][n] for n in range(b)) / b
            loss += (1 - cij) ** 2 if i == j else lambd * cij**2
    return loss


def test_barlow_twins_matches_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert BarlowTwinsLoss(5.1e-3)(z1, z2).item() == pytest.approx(_naive_barlow(z1, z2, 5.1e-3), rel=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_views_unlike_monai():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # standardised, uncorrelated columns
    assert BarlowTwinsLoss()(z, 3 * z + 2).item() == pytest.approx(0.0, abs=1e-4)
    # MONAI standardises with the unbiased std: C_ii = (B - 1) / B = 0.75, so 2 * 0.25^2 remains
    assert MonaiBarlowTwinsLoss(lambd=5.1e-3)(z, z).item() == pytest.approx(0.125, abs=1e-4)


def test_negative_cosine_hand_value_and_stop_gradient():
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 2.0]], requires_grad=True)
    z1 = torch.tensor([[3.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = SymmetricNegativeCosineLoss()(p1, p2, z1, z2)  # -cos(p1, z2) / 2 - cos(p2, z1) / 2 = -1/2 - 0
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    assert z1.grad is None and z2.grad is None and p2.grad is not None


def test_lsgan_hand_values():
    gan = LSGANLoss()
    assert gan.generator(torch.tensor([[[[0.5, 1.5]]]])).item() == pytest.approx(0.25)
    d_real, d_fake = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.5, 0.0]]]])
    # 0.5 * [mean((1-1)^2, (0-1)^2) + mean(0.5^2, 0^2)] = 0.5 * (0.5 + 0.125)
    assert gan.discriminator(d_real, d_fake).item() == pytest.approx(0.3125)
