import math

import torch
import torch.nn.functional as F

from losses import moco_infonce, nt_xent


def naive_infonce(q, k, queue, t):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def naive_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(math.exp(float(z[i] @ z[m]) / t) for m in range(n2) if m != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_moco_infonce_matches_naive_formula():
    q, k, queue = unit(6, 8, seed=1), unit(6, 8, seed=2), unit(20, 8, seed=3)
    assert math.isclose(moco_infonce(q, k, queue, 0.1).item(), naive_infonce(q, k, queue, 0.1), rel_tol=1e-5)


def test_moco_infonce_gradient_matches_autograd_of_naive_formula():
    q, k, queue = unit(4, 5, seed=4).requires_grad_(), unit(4, 5, seed=5), unit(7, 5, seed=6)
    moco_infonce(q, k, queue, 0.2).backward()
    q2 = q.detach().clone().requires_grad_()
    pos = (q2 * k).sum(1) / 0.2
    logsumexp = torch.logsumexp(torch.cat([pos[:, None], q2 @ queue.t() / 0.2], 1), dim=1)
    (logsumexp - pos).mean().backward()
    assert torch.allclose(q.grad.double(), q2.grad, atol=1e-5)


def test_nt_xent_matches_naive_formula_and_normalises_inside():
    z1, z2 = torch.randn(5, 7, dtype=torch.float64) * 3, torch.randn(5, 7, dtype=torch.float64)
    assert math.isclose(nt_xent(z1, z2, 0.5).item(), naive_nt_xent(z1, z2, 0.5), rel_tol=1e-5)


def test_nt_xent_gradient_matches_finite_differences():
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_perfect_alignment_gives_low_loss():
    z = unit(8, 16, seed=7)
    assert nt_xent(z, z, 0.05).item() < nt_xent(z, unit(8, 16, seed=8), 0.05).item()
