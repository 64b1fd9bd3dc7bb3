"""Fine-tuning with the first k encoder stages frozen (CAiD's transfer ablation): frozen weights and batch-norm
statistics stay as pretrained, the rest trains, k = 0 is the plain fine-tuning loop."""

import numpy as np
import pytest
import torch
from torch import nn

from eden_lib.data.batches import _permuted_batches
from eden_lib.engine import TrainConfig, fit
from eden_lib.evaluation.finetune import Downstream, FinetuneConfig, Validation, finetune, freeze_stages
from eden_lib.models.backbones import ResNetEncoder
from eden_lib.models.convnext import ConvNeXtEncoder


def mse(out, target):
    return ((out - target) ** 2).mean()


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18", [4, 4, 8, 8])
    return nn.Sequential(encoder, nn.Linear(encoder.out_dim, 2))


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randn(n, 2, generator=g)


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**dict(epochs=2, batch_size=4, lr=0.05, weight_decay=1e-4, device="cpu"), **kw})


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("validated", [False, True])
def test_frozen_stages_keep_weights_and_batch_norm_statistics_the_rest_trains(validated):
    net, (x, y) = _net(), _data()
    before = _state(net)
    validation = Validation(x[:4], y[:4].numpy(), lambda pred, target: -float(((pred - target) ** 2).mean()))
    finetune(net, mse, x, y, _cfg(freeze_stages=2, evaluations=3), seed=0,
             validation=validation if validated else None)
    after = net.state_dict()
    frozen = ("0.conv1.", "0.bn1.", "0.layer1.")  # stem and layer1: parameters and BN buffers
    for key in before:
        if key.startswith(frozen):
            assert torch.equal(before[key], after[key]), key
        elif not key.endswith("num_batches_tracked"):
            assert not torch.equal(before[key], after[key]), key
    assert after["0.layer2.0.bn1.num_batches_tracked"] > 0
    assert not any(p.requires_grad for p in net[0].layer1.parameters())
    assert all(p.requires_grad for p in net[0].layer2.parameters())


def test_nothing_frozen_is_the_plain_fine_tuning_loop_bit_for_bit():
    x, y = _data()
    net = _net()
    finetune(net, mse, x, y, _cfg(freeze_stages=0), seed=3)
    reference = _net()  # the loop before freezing existed: AdamW over every parameter, the engine's fit
    model = Downstream(reference, mse)

    def batches(epoch, generator):
        for idx in _permuted_batches(len(x), 4, 2, generator):
            yield {"image": x[idx], "target": y[idx]}

    fit(model, batches, torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-4),
        TrainConfig(epochs=2, seed=3, device="cpu", amp=True, verbose=False))
    for key, value in reference.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key


@pytest.mark.parametrize("k", [-1, 6, 2.0, True])
def test_a_stage_count_out_of_range_fails_naming_the_value(k):
    with pytest.raises(ValueError, match=rf"freeze_stages = {k!r}: expected an integer from 0"):
        _cfg(freeze_stages=k)


def test_freezing_needs_an_encoder_with_stages():
    assert freeze_stages(nn.Linear(3, 1), 0) == []
    with pytest.raises(ValueError, match="freeze_stages = 1: Linear holds no 2D encoder"):
        freeze_stages(nn.Linear(3, 1), 1)


@pytest.mark.parametrize("encoder", [ResNetEncoder("resnet18", [4, 4, 8, 8]),
                                     ConvNeXtEncoder("convnext_atto", [4, 8, 8, 8])])
def test_stage_modules_partition_the_encoder_in_stage_order(encoder):
    encoder.eval()
    stages = encoder.stage_modules()
    assert len(stages) == len(encoder.stages(torch.zeros(1, 1, 32, 32))) == 5
    ids = [{id(p) for p in s.parameters()} for s in stages]
    assert all(ids) and sum(map(len, ids)) == len(set().union(*ids))  # non-empty, disjoint
    rest = {id(p) for p in encoder.parameters()} - set().union(*ids)
    assert rest == {id(p) for p in getattr(encoder, "norm", nn.Identity()).parameters()}  # ConvNeXt's final norm
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 32, generator=g)
    for k in range(1, 6):  # the first k maps depend only on the first k stages' weights
        maps = [m.detach().clone() for m in encoder.stages(x)]
        with torch.no_grad():
            for p in stages[k - 1].parameters():
                p.add_(0.5)
        changed = [not torch.equal(a, b) for a, b in zip(maps, encoder.stages(x))]
        assert changed == [i >= k - 1 for i in range(5)], (k, changed)
    assert np.isfinite(encoder(x).detach().numpy()).all()
