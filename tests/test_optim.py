"""Optimizers, schedules and the mixed-precision step, against values written out here."""
import math

import pytest
import torch

from lars import LARS
from optim import amp_step, build_optimizer, demo_lr, lr_at, set_lr


@pytest.mark.parametrize("name,cls,extra", [("sgd", torch.optim.SGD, {"momentum": 0.9}),
                                            ("adam", torch.optim.Adam, {}),
                                            ("lars", LARS, {"momentum": 0.9, "eta": 0.001})])
def test_each_optimizer_choice_gives_its_class_and_hyperparameters(name, cls, extra):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    optimizer = build_optimizer(name, model.parameters(), lr=0.25, weight_decay=1e-4)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.25 and group["weight_decay"] == 1e-4
    assert {k: group[k] for k in extra} == extra
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4
    if name == "lars":  # biases and BatchNorm parameters: no adaptation, no decay
        assert optimizer.exclude(model[0].bias) and optimizer.exclude(model[1].weight)
        assert not optimizer.exclude(model[0].weight)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("rmsprop", model.parameters(), 0.1, 0)


def test_demo_schedule_matches_facebookresearch_moco_exactly():
    """The demo: for epoch in 1..epochs: lr = base * 0.5 * (1 + cos(pi * epoch / epochs)), set once per epoch."""
    demo = [0.06 * 0.5 * (1 + math.cos(math.pi * e / 200)) for e in range(1, 201)]
    ours = [demo_lr(e, 0.06, 200) for e in range(200)]  # our epochs count from 0
    assert ours == pytest.approx(demo, abs=1e-15)
    assert ours[0] == pytest.approx(0.0599963, abs=1e-7) and ours[-1] == pytest.approx(0.0, abs=1e-15)


def test_demo_step_schedule_drops_where_the_demo_does():
    """The demo: lr *= 0.1 for each milestone with epoch >= milestone, epochs counted from 1: with --schedule 120 160
    the demo's epoch 120 (our epoch 119) is the first at 0.1x."""
    lrs = [demo_lr(e, 0.06, 200, milestones=[120, 160]) for e in range(200)]
    assert lrs[118] == 0.06 and lrs[119] == pytest.approx(0.006) and lrs[158] == pytest.approx(0.006)
    assert lrs[159] == pytest.approx(0.0006) and lrs[199] == pytest.approx(0.0006)
    assert [demo_lr(e, 0.06, 200, cos=False) for e in (0, 199)] == [0.06, 0.06]  # --no-cos, no milestones


def test_warmup_then_cosine():
    # 10 warm-up epochs from 0, then cosine to 0 over the remaining 90 (SimCLR's LARS recipe)
    assert lr_at(0, 0.6, 100, warmup_epochs=10) == 0
    assert lr_at(5, 0.6, 100, warmup_epochs=10) == pytest.approx(0.3)
    assert lr_at(10, 0.6, 100, warmup_epochs=10) == pytest.approx(0.6)
    assert lr_at(55, 0.6, 100, warmup_epochs=10) == pytest.approx(0.3)
    assert lr_at(100, 0.6, 100, warmup_epochs=10) == pytest.approx(0.0, abs=1e-12)


def test_amp_step_is_a_plain_step_in_fp32():
    class FP32:
        scaler = torch.amp.GradScaler("cpu", enabled=False)

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    set_lr(opt_a, 0.5)
    set_lr(opt_b, 0.5)
    amp_step(FP32(), opt_a, a(x).pow(2).mean())
    opt_b.zero_grad()
    b(x).pow(2).mean().backward()
    opt_b.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
