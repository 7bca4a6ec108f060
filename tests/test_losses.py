import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from losses import (byol_loss, debiased_infonce, mochi_negatives, moco_infonce, negative_cosine, nt_xent, sinkhorn,
                    swav_loss)

REPO = Path(__file__).resolve().parents[1]


def naive_infonce(q, k, queue, t, extra=None):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        negs = list(queue) + ([] if extra is None else list(extra[i]))
        neg = sum(math.exp(float(q[i] @ n) / t) for n in negs)
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


# --- moco_infonce with per-query extra negatives -------------------------------------------------------------

def test_moco_infonce_extra_negatives_match_naive_per_row_loop():
    q, k, queue = unit(5, 6, seed=40), unit(5, 6, seed=41), unit(9, 6, seed=42)
    extra = F.normalize(torch.randn(5, 3, 6, generator=torch.Generator().manual_seed(43), dtype=torch.float64), dim=2)
    assert math.isclose(moco_infonce(q, k, queue, 0.2, extra_negatives=extra).item(),
                        naive_infonce(q, k, queue, 0.2, extra), rel_tol=1e-10)
    # Row i's extras are its own: permuting them across rows changes the loss.
    assert not math.isclose(moco_infonce(q, k, queue, 0.2, extra_negatives=extra.roll(1, 0)).item(),
                            naive_infonce(q, k, queue, 0.2, extra), rel_tol=1e-6)


# --- debiased InfoNCE ------------------------------------------------------------------------------------------

def naive_debiased(q, k, queue, t, tau_plus, extra=None):
    """Chuang et al.'s formula written out directly (no log space), per row."""
    losses = []
    for i in range(q.shape[0]):
        negs = list(queue) + ([] if extra is None else list(extra[i]))
        pos = torch.exp(q[i] @ k[i] / t)
        neg = sum(torch.exp(q[i] @ n / t) for n in negs)
        n = len(negs)
        floor = torch.tensor(n * math.exp(-1 / t), dtype=q.dtype)
        ng = torch.maximum((-tau_plus * n * pos + neg) / (1 - tau_plus), floor)
        losses.append(-torch.log(pos / (pos + ng)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("tau_plus,t,with_extra", [(0.1, 0.5, False), (0.5, 0.5, False), (0.3, 0.2, True)])
def test_debiased_infonce_value_and_gradient_match_naive_formula(tau_plus, t, with_extra):
    q, queue = unit(6, 8, seed=10), unit(12, 8, seed=12)
    k = torch.cat([q[:3], unit(3, 8, seed=11)])  # rows 0-2 have pos = e^(1/t): there the clamp binds at large τ⁺
    extra = F.normalize(torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(13), dtype=torch.float64),
                        dim=2) if with_extra else None
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    ours = debiased_infonce(q1, k, queue, t, tau_plus, extra_negatives=extra)
    naive = naive_debiased(q2, k, queue, t, tau_plus, extra)
    assert torch.allclose(ours, naive, rtol=1e-10)
    ours.backward()
    naive.backward()
    assert torch.allclose(q1.grad, q2.grad, rtol=1e-8, atol=1e-12)


def test_debiased_infonce_clamp_case_is_exercised():
    # The (0.5, 0.5) case above: the numerator −τ⁺N·pos + Σneg is negative for rows with k = q.
    q, queue = unit(3, 8, seed=10), unit(12, 8, seed=12)
    pos, neg = torch.exp((q * q).sum(1) / 0.5), torch.exp(q @ queue.t() / 0.5).sum(1)
    assert (-0.5 * 12 * pos + neg < 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_extra", [False, True])
def test_debiased_infonce_equals_moco_infonce_at_tau_plus_zero(dtype, with_extra):
    q, k, queue = unit(6, 8, seed=20).to(dtype), unit(6, 8, seed=21).to(dtype), unit(30, 8, seed=22).to(dtype)
    extra = F.normalize(torch.randn(6, 2, 8, dtype=dtype), dim=2) if with_extra else None
    for t in (0.07, 0.5):
        q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
        a, b = debiased_infonce(q1, k, queue, t, 0.0, extra), moco_infonce(q2, k, queue, t, extra)
        a.backward()
        b.backward()
        tol = 1e-6 if dtype == torch.float32 else 1e-13
        assert torch.allclose(a, b, rtol=tol, atol=tol)
        assert torch.allclose(q1.grad, q2.grad, rtol=tol * 10, atol=tol)


def test_debiased_infonce_is_finite_in_fp32_where_naive_formula_overflows():
    t, tau_plus = 0.01, 0.1
    q, queue = unit(4, 8, seed=30), unit(16, 8, seed=31)
    k = torch.cat([q[:2], unit(2, 8, seed=32)])
    q32, k32, queue32 = q.float().requires_grad_(), k.float(), queue.float()
    assert not torch.isfinite(naive_debiased(q32.detach(), k32, queue32, t, tau_plus))  # exp(100) = inf in fp32
    loss = debiased_infonce(q32, k32, queue32, t, tau_plus)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q32.grad).all()
    q64 = q.clone().requires_grad_()
    reference = naive_debiased(q64, k, queue, t, tau_plus)  # fp64 holds e^100
    reference.backward()
    assert math.isclose(loss.item(), reference.item(), rel_tol=1e-4)
    assert torch.allclose(q32.grad.double(), q64.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("tau_plus", [-0.1, 1.0, 1.5, float("nan")])
def test_debiased_infonce_rejects_tau_plus_outside_unit_interval(tau_plus):
    q = unit(2, 4, seed=0)
    with pytest.raises(ValueError):
        debiased_infonce(q, q, unit(3, 4, seed=1), 0.1, tau_plus)


# --- MoCHi hard negatives --------------------------------------------------------------------------------------

def mochi(q, queue, n_hard=4, s=6, s_prime=3, seed=0, **kw):
    return mochi_negatives(q, queue, n_hard, s, s_prime, generator=torch.Generator().manual_seed(seed), **kw)


def coefficients(target, a, b):
    """x, y with target = x·a + y·b by least squares, and the residual norm."""
    basis = torch.stack([a, b], dim=1)
    sol = torch.linalg.lstsq(basis, target[:, None]).solution[:, 0]
    return sol[0].item(), sol[1].item(), (basis @ sol - target).norm().item()


def test_mochi_negatives_shape_norm_and_counts():
    q, queue = unit(5, 8, seed=50), unit(20, 8, seed=51)
    for s, s_prime in [(6, 3), (0, 2), (4, 0), (0, 0)]:
        negatives = mochi(q, queue, s=s, s_prime=s_prime)
        assert negatives.shape == (5, s + s_prime, 8)
        assert torch.allclose(negatives.norm(dim=2), torch.ones(5, s + s_prime, dtype=torch.float64))


def test_mochi_mixed_negatives_come_from_two_distinct_hardest_negatives():
    q, queue = unit(5, 8, seed=52), unit(20, 8, seed=53)
    negatives, d = mochi(q, queue, n_hard=4, s=10, s_prime=0, return_details=True)
    hardest = (q @ queue.t()).argsort(dim=1, descending=True)[:, :4]
    assert torch.equal(d["hard"].sort(1).values, hardest.sort(1).values)
    for r in range(5):
        for m in range(10):
            i, j, alpha = d["i"][r, m].item(), d["j"][r, m].item(), d["alpha"][r, m].item()
            assert i != j and i in hardest[r] and j in hardest[r] and 0 <= alpha <= 1
            x, y, residual = coefficients(negatives[r, m], queue[i], queue[j])
            assert residual < 1e-12 and x >= 0 and y >= 0  # in the cone of its two sources
            assert math.isclose(x / (x + y), alpha, abs_tol=1e-10)


def test_mochi_query_mixed_negatives_have_beta_at_most_half():
    q, queue = unit(5, 8, seed=54), unit(20, 8, seed=55)
    negatives, d = mochi(q, queue, n_hard=3, s=2, s_prime=8, return_details=True)
    hardest = (q @ queue.t()).argsort(dim=1, descending=True)[:, :3]
    for r in range(5):
        for m in range(8):
            j = d["query_j"][r, m].item()
            assert j in hardest[r]
            x, y, residual = coefficients(negatives[r, 2 + m], q[r], queue[j])
            beta = x / (x + y)  # recovered by projection onto span{q, n_j}
            assert residual < 1e-12 and 0 <= beta <= 0.5
            assert math.isclose(beta, d["beta"][r, m].item(), abs_tol=1e-10)


def test_mochi_with_one_hard_negative_repeats_it():
    q, queue = unit(3, 8, seed=56), unit(10, 8, seed=57)
    negatives = mochi(q, queue, n_hard=1, s=3, s_prime=0)
    hardest = queue[(q @ queue.t()).argmax(dim=1)]
    assert torch.allclose(negatives, hardest[:, None].expand(3, 3, 8))


def test_mochi_negatives_carry_no_gradient():
    q = unit(4, 8, seed=58).requires_grad_()
    negatives = mochi(q, unit(12, 8, seed=59).requires_grad_())
    assert not negatives.requires_grad and negatives.grad_fn is None


def test_mochi_negatives_are_reproducible_from_the_generator():
    q, queue = unit(4, 8, seed=60), unit(12, 8, seed=61)
    assert torch.equal(mochi(q, queue, seed=3), mochi(q, queue, seed=3))
    assert not torch.equal(mochi(q, queue, seed=3), mochi(q, queue, seed=4))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    first = mochi_negatives(q, queue, 4, 6, 3, generator=g)
    g.set_state(state)  # what a resume restores
    assert torch.equal(first, mochi_negatives(q, queue, 4, 6, 3, generator=g))


@pytest.mark.parametrize("n_hard,s,s_prime", [(0, 2, 2), (13, 2, 2), (4, -1, 2), (4, 2, -1)])
def test_mochi_rejects_bad_counts(n_hard, s, s_prime):
    with pytest.raises(ValueError):
        mochi(unit(2, 8, seed=0), unit(12, 8, seed=1), n_hard=n_hard, s=s, s_prime=s_prime)


# --- SimSiam / BYOL --------------------------------------------------------------------------------------------

def test_negative_cosine_and_byol_values_and_stop_gradient():
    p = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    pd, zd = p.detach(), z.detach()
    cos = [float(pd[i] @ zd[i]) / (float(pd[i].norm()) * float(zd[i].norm())) for i in range(5)]
    assert math.isclose(negative_cosine(p, z).item(), -sum(cos) / 5, rel_tol=1e-12)
    assert math.isclose(byol_loss(p, z).item(), sum(2 - 2 * c for c in cos) / 5, rel_tol=1e-12)
    (negative_cosine(p, z) + byol_loss(p, z)).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


# --- SwAV ------------------------------------------------------------------------------------------------------

def naive_sinkhorn(scores, epsilon, iterations):
    """The paper's algorithm with explicit loops over entries (no max subtraction)."""
    b, k = scores.shape
    q = [[math.exp(float(scores[j, i]) / epsilon) for j in range(b)] for i in range(k)]  # K × B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[i][j] for i in range(k)) for j in range(b)]
        q = [[q[i][j] / cols[j] / b for j in range(b)] for i in range(k)]
    return torch.tensor([[q[i][j] * b for i in range(k)] for j in range(b)], dtype=torch.float64)


def test_sinkhorn_matches_naive_loop():
    scores = unit(6, 4, seed=70)
    for iterations in (1, 3):
        assert torch.allclose(sinkhorn(scores, 0.05, iterations), naive_sinkhorn(scores, 0.05, iterations),
                              rtol=1e-10, atol=1e-14)


def test_sinkhorn_codes_are_assignments_and_converge_to_equipartition():
    scores = unit(12, 5, seed=71)
    codes = sinkhorn(scores, 0.05, 3)
    assert torch.allclose(codes.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    assert (codes >= 0).all()
    converged = sinkhorn(scores, 0.1, 500)
    assert torch.allclose(converged.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(converged.sum(0) / 12, torch.full((5,), 1 / 5, dtype=torch.float64), atol=1e-6)


def test_sinkhorn_is_stable_in_fp32_and_detached():
    scores = unit(6, 4, seed=72).float().requires_grad_()
    assert not torch.isfinite(torch.exp((scores.detach() + 10) / 0.05)).all()  # the unshifted exp overflows
    codes = sinkhorn(scores + 10, 0.05, 3)
    assert torch.isfinite(codes).all() and not codes.requires_grad and codes.dtype == torch.float32
    assert torch.allclose(codes, sinkhorn(scores, 0.05, 3), atol=1e-5)
    assert torch.allclose(codes.double(), naive_sinkhorn(scores.detach().double(), 0.05, 3), atol=1e-5)


def test_sinkhorn_distributed_needs_a_process_group():
    with pytest.raises(RuntimeError):
        sinkhorn(unit(4, 3, seed=0), distributed=True)


SINKHORN_RANK = """
import sys
sys.path.insert(0, sys.argv[4])
import torch, torch.distributed as dist
from losses import sinkhorn
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
scores = torch.load(sys.argv[3])
torch.save(sinkhorn(scores[rank * 3:(rank + 1) * 3], 0.05, 3, distributed=True), sys.argv[3] + str(rank))
dist.destroy_process_group()
"""


def test_sinkhorn_distributed_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    scores = unit(6, 4, seed=74)
    scores[3:] += 0.7  # the two ranks have different maxima
    torch.save(scores, tmp_path / "scores.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SINKHORN_RANK, str(r), str(tmp_path / "store"),
                               str(tmp_path / "scores.pt"), str(REPO)], env=env, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
    codes = torch.cat([torch.load(tmp_path / f"scores.pt{r}") for r in range(2)])
    assert torch.allclose(codes, sinkhorn(scores, 0.05, 3), rtol=1e-10, atol=1e-14)


def naive_swav(scores_list, codes_list, t):
    views, total = len(scores_list), 0.0
    for c, codes in enumerate(codes_list):
        subloss = 0.0
        for v in range(views):
            if v == c:
                continue
            ce = 0.0
            for b in range(codes.shape[0]):
                logits = [float(x) / t for x in scores_list[v][b]]
                log_z = math.log(sum(math.exp(x) for x in logits))
                ce += -sum(float(codes[b, kk].detach()) * (logits[kk] - log_z) for kk in range(len(logits)))
            subloss += ce / codes.shape[0]
        total += subloss / (views - 1)
    return total / len(codes_list)


def test_swav_loss_matches_naive_loops_and_codes_get_no_gradient():
    scores = [unit(3, 5, seed=80 + v) for v in range(4)]  # 2 global + 2 local views
    codes = [sinkhorn(s, 0.05, 3).requires_grad_() for s in scores[:2]]
    loss = swav_loss(scores, codes, 0.1)
    assert math.isclose(loss.item(), naive_swav(scores, codes, 0.1), rel_tol=1e-12)
    scores = [s.clone().requires_grad_() for s in scores]
    swav_loss(scores, codes, 0.1).backward()
    assert all(c.grad is None for c in codes) and all(s.grad is not None for s in scores)
    assert torch.autograd.gradcheck(lambda *s: swav_loss(list(s), [c.detach() for c in codes], 0.1), tuple(scores))


# --- precision ---------------------------------------------------------------------------------------------------

def test_new_losses_run_in_fp32_under_autocast():
    q, k, queue = (unit(4, 8, seed=s).float() for s in (90, 91, 92))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qh, kh, queueh = (torch.nn.Linear(8, 8)(x) for x in (q, k, queue))  # bf16 activations
        assert qh.dtype == torch.bfloat16
        extra = mochi_negatives(F.normalize(qh, dim=1), F.normalize(queueh, dim=1), 3, 2, 2)
        out = [debiased_infonce(F.normalize(qh, dim=1), F.normalize(kh, dim=1), F.normalize(queueh, dim=1), 0.1, 0.1),
               moco_infonce(F.normalize(qh, dim=1), F.normalize(kh, dim=1), F.normalize(queueh, dim=1), 0.1, extra),
               negative_cosine(qh, kh), byol_loss(qh, kh), sinkhorn(qh),
               swav_loss([qh, kh], [sinkhorn(qh)])]
    assert extra.dtype == torch.float32
    assert all(o.dtype == torch.float32 for o in out)
