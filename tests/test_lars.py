import torch

from lars import LARS


def reference_lars(params, grads_per_step, lr, momentum, wd, eta, excluded):
    """The update written out by hand, parameter by parameter, with python floats where possible."""
    params = [p.clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            if excluded[i]:
                trust = 1.0
            else:
                g = g + wd * p
                pn, gn = p.norm().item(), g.norm().item()
                trust = eta * pn / gn if pn > 0 and gn > 0 else 1.0
            buffers[i] = momentum * buffers[i] + lr * trust * g
            params[i] = p - buffers[i]
    return params


def test_lars_matches_hand_written_update_for_weights_and_1d_params():
    torch.manual_seed(0)
    weight, bias = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    zero_weight = torch.zeros(2, 2, dtype=torch.float64)  # ‖p‖ = 0: trust must fall back to 1
    start = [weight, bias, zero_weight]
    grads = [[torch.randn_like(p) for p in start] for _ in range(4)]
    expected = reference_lars(start, grads, lr=0.5, momentum=0.9, wd=1e-3, eta=0.01, excluded=[False, True, False])

    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = LARS(params, lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.01)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    for got, want in zip(params, expected):
        assert torch.allclose(got.detach(), want, atol=1e-12)


def test_param_group_can_force_exclusion():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [w], "exclude": True}], lr=0.1, momentum=0.0, weight_decay=0.5)
    w.grad = torch.full((2, 2), 2.0)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((2, 2), 1 - 0.1 * 2.0))  # plain SGD: no decay, trust 1


def test_bad_lr_is_rejected():
    import pytest
    with pytest.raises(ValueError):
        LARS([torch.nn.Parameter(torch.ones(1))], lr=0.0)
