"""Contrastive and self-distillation losses.

MoCo's InfoNCE against a queue (plain, debiased, with MoCHi's mixed hard negatives), SimCLR's NT-Xent,
BYOL/SimSiam's cosine losses, SwAV's Sinkhorn codes and swapped prediction, and i-Mix's cross-entropy over a contrast
set. All are computed in fp32 (fp64 inputs stay fp64) even under autocast. The per-image forms (reduction="none")
are what mixing.Draw.loss weighs toward two targets.
"""
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def moco_infonce(q, k, queue, temperature, extra_negatives=None, reduction="mean"):
    """InfoNCE against a queue (He et al., "Momentum Contrast", CVPR 2020).

    q, k: (N, D) L2-normalised queries and positive keys; queue: (K, D) L2-normalised negatives;
    extra_negatives: optional (N, E, D) per-query negatives (e.g. from `mochi_negatives`).
    logits_i = [q_i·k_i, q_i·queueᵀ, q_i·extra_iᵀ] / T with the positive at index 0; returns the mean
    cross-entropy over the N queries.
    """
    with full_precision(q):
        q, k = upcast(q), upcast(k)
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, _negative_similarities(q, queue, extra_negatives)], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels, reduction=reduction)


def contrast_cross_entropy(q, contrast, temperature, targets):
    """i-Mix's loss (Lee et al., ICLR 2021) toward virtual labels: (N,) cross-entropies of the logits
    q·contrastᵀ / T at the target indices. q: (N, D), contrast: (M, D), both normalised here; MoCo's contrast is the
    batch's keys then the queue, the N-pair form's (SimCLR) the other view's projections."""
    with full_precision(q):
        logits = F.normalize(upcast(q), dim=1) @ F.normalize(upcast(contrast), dim=1).t() / temperature
        return F.cross_entropy(logits, targets, reduction="none")


def debiased_infonce(q, k, queue, temperature, tau_plus, extra_negatives=None):
    """Debiased InfoNCE (Chuang et al., "Debiased Contrastive Learning", NeurIPS 2020), MoCo form.

    Shapes as in `moco_infonce`. With t = temperature, pos = exp(q·k/t) and neg_j = exp(q·n_j/t) over the
    N = K (+ E) negatives of each query:
        Ng   = max((Σ_j neg_j − τ⁺·N·pos) / (1 − τ⁺), N·e^(−1/t))
        loss = mean over queries of −log(pos / (pos + Ng))
    τ⁺ (tau_plus) is the class prior of the positive class, in [0, 1); at τ⁺ = 0 this is `moco_infonce`
    (the clamp cannot bind for unit vectors, since q·n ≥ −1). Computed in log space: exp(1/t) overflows
    fp32 at t = 0.01.
    """
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    with full_precision(q):
        q, k = upcast(q), upcast(k)
        positive = (q * k).sum(dim=1) / temperature  # log pos
        negatives = _negative_similarities(q, queue, extra_negatives) / temperature
        n = negatives.shape[1]
        log_sum_neg = torch.logsumexp(negatives, dim=1)
        log_floor = math.log(n) - 1.0 / temperature  # log(N·e^(−1/t))
        if tau_plus == 0.0:
            log_ng = log_sum_neg
        else:
            # log(Σneg − τ⁺N·pos) = a + log(1 − exp(b − a)), defined where b < a; elsewhere the clamp holds.
            a, b = log_sum_neg, math.log(tau_plus * n) + positive
            valid = b < a
            # Where invalid the branch is unused, but its gradient must still be finite (0·NaN is NaN).
            safe_gap = torch.where(valid, b - a, torch.full_like(a, -1.0))
            log_ng = torch.where(valid, a + _log1mexp(safe_gap) - math.log1p(-tau_plus), torch.full_like(a, -math.inf))
        log_ng = torch.clamp(log_ng, min=log_floor)
        return (torch.logaddexp(positive, log_ng) - positive).mean()


def mochi_negatives(q, queue, n_hard, s, s_prime, generator=None, return_details=False):
    """Synthetic hard negatives of MoCHi (Kalantidis et al., "Hard Negative Mixing for Contrastive
    Learning", NeurIPS 2020).

    q: (N, D) queries (normalised here); queue: (K, D) L2-normalised negatives. For each query, its n_hard
    hardest negatives (highest q·n) form the set H; from it
        s       negatives normalize(α·h_i + (1 − α)·h_j), α ~ U(0, 1), h_i ≠ h_j in H (when n_hard > 1),
        s_prime negatives normalize(β·q + (1 − β)·h_j),   β ~ U(0, 0.5), h_j in H.
    Returns the detached (N, s + s_prime, D) tensor, mixed negatives first, to pass as `extra_negatives`.
    All randomness comes from `generator` (the global RNG of q's device when None), so a resumed run that
    restores the generator draws the same negatives. With return_details=True also returns a dict of the
    queue indices and coefficients: hard (N, n_hard), i, j, alpha (N, s), query_j, beta (N, s_prime).
    """
    num_queue = queue.shape[0]
    if not 1 <= n_hard <= num_queue:
        raise ValueError(f"n_hard must be in [1, K={num_queue}], got {n_hard}")
    if s < 0 or s_prime < 0:
        raise ValueError(f"s and s_prime must be non-negative, got s={s}, s_prime={s_prime}")
    with torch.no_grad(), full_precision(q):
        q, queue = F.normalize(upcast(q.detach()), dim=1), upcast(queue.detach())
        n, device = q.shape[0], q.device
        rng_device = generator.device if generator is not None else device

        def draw(fn, *args):
            return fn(*args, generator=generator, device=rng_device).to(device)

        hard = (q @ queue.t()).topk(n_hard, dim=1).indices  # (N, n_hard) queue indices, hardest first
        # Ordered pairs i ≠ j, uniform: j is i shifted by 1..n_hard-1 positions (cyclically).
        pick_i = draw(torch.randint, 0, n_hard, (n, s))
        pick_j = (pick_i + draw(torch.randint, 1, n_hard, (n, s))) % n_hard if n_hard > 1 else pick_i
        alpha = draw(torch.rand, (n, s)).to(q.dtype)
        pick_q = draw(torch.randint, 0, n_hard, (n, s_prime))
        beta = 0.5 * draw(torch.rand, (n, s_prime)).to(q.dtype)
        i, j, query_j = hard.gather(1, pick_i), hard.gather(1, pick_j), hard.gather(1, pick_q)
        mixed = alpha[..., None] * queue[i] + (1 - alpha[..., None]) * queue[j]
        with_query = beta[..., None] * q[:, None] + (1 - beta[..., None]) * queue[query_j]
        negatives = F.normalize(torch.cat([mixed, with_query], dim=1), dim=2)
    if return_details:
        return negatives, dict(hard=hard, i=i, j=j, alpha=alpha, query_j=query_j, beta=beta)
    return negatives


def nt_xent(z1, z2, temperature):
    """SimCLR's loss (Chen et al., ICML 2020). z1, z2: (N, D) projections of two views (normalised here).

    Each of the 2N anchors has its other view as positive and the remaining 2N-2 projections as negatives;
    returns the mean over the 2N anchors.
    """
    n = z1.shape[0]
    with full_precision(z1):
        z = F.normalize(upcast(torch.cat([z1, z2])), dim=1)
        logits = z @ z.t() / temperature
        logits.fill_diagonal_(float("-inf"))
        targets = torch.arange(2 * n, device=z.device).roll(n)  # anchor i's positive is i ± n
        return F.cross_entropy(logits, targets)


def negative_cosine(p, z, reduction="mean"):
    """SimSiam's loss (Chen & He, CVPR 2021): −cos(p, sg(z)), mean over the batch. p, z: (N, D).

    z is detached here (the stop-gradient); symmetrise by calling it once per view pairing.
    """
    with full_precision(p):
        return _reduce(-_cosine(upcast(p), upcast(z.detach())), reduction)


def byol_loss(p, z, reduction="mean"):
    """BYOL's loss (Grill et al., NeurIPS 2020): ‖p̂ − ẑ‖² = 2 − 2·cos(p, sg(z)), mean over the batch.

    p: (N, D) online predictions; z: (N, D) target projections, detached here.
    """
    with full_precision(p):
        return _reduce(2 - 2 * _cosine(upcast(p), upcast(z.detach())), reduction)


def _reduce(per_image, reduction):
    return per_image.mean() if reduction == "mean" else per_image


@torch.no_grad()
def sinkhorn(scores, epsilon=0.05, iterations=3, distributed=False):
    """SwAV's codes (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS 2020; `distributed_sinkhorn` in facebookresearch/swav main_swav.py).

    scores: (B, K) prototype scores. Q = exp(scores/ε)ᵀ (K, B), scaled to total 1; then `iterations` times:
    each row (prototype) scaled to sum 1/K, then each column (sample) to sum 1/B. Returns (B·Q)ᵀ, (B, K),
    detached, whose rows sum to 1. With distributed=True (torch.distributed initialised) B is the global
    batch and the total and row sums are all-reduced, so each process gets its rows of the codes of the
    concatenated batch.
    """
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sinkhorn(distributed=True) needs an initialised torch.distributed process group")
    with full_precision(scores):
        scores = upcast(scores.detach())
        num_prototypes = scores.shape[1]
        # One global max: a common scale factor cancels in the normalisations, a per-process one would not.
        top = scores.max()
        if distributed:
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
        codes = torch.exp((scores - top) / epsilon).t()
        batch = codes.shape[1] * (dist.get_world_size() if distributed else 1)
        total = codes.sum()
        if distributed:
            dist.all_reduce(total)
        codes /= total
        for _ in range(iterations):
            rows = codes.sum(dim=1, keepdim=True)
            if distributed:
                dist.all_reduce(rows)
            codes /= rows
            codes /= num_prototypes
            codes /= codes.sum(dim=0, keepdim=True)
            codes /= batch
        codes *= batch
        return codes.t()


def swav_loss(scores_list, codes_list, temperature=0.1):
    """SwAV's swapped prediction (Caron et al., NeurIPS 2020, as in facebookresearch/swav main_swav.py).

    scores_list: V tensors (B, K) of prototype scores, one per view; codes_list: C ≤ V tensors (B, K) of
    codes (from `sinkhorn`, detached here) for the first C views. With p_v = softmax(scores_v / T):
        loss = (1/C) Σ_c (1/(V−1)) Σ_{v≠c} mean_b −Σ_k q_c[b, k] · log p_v[b, k]
    """
    num_views = len(scores_list)
    if not 1 <= len(codes_list) <= num_views or num_views < 2:
        raise ValueError(f"need 2+ views and 1..V code views, got V={num_views}, C={len(codes_list)}")
    with full_precision(scores_list[0]):
        log_probs = [F.log_softmax(upcast(s) / temperature, dim=1) for s in scores_list]
        loss = 0
        for c, codes in enumerate(codes_list):
            cross = sum(code_cross_entropy(log_probs[v], codes).mean() for v in range(num_views) if v != c)
            loss = loss + cross / (num_views - 1)
        return loss / len(codes_list)


def code_cross_entropy(log_probs, codes):
    """(B,) −Σ_k q[b, k] · log_probs[b, k]: one view's prediction (log softmax(scores / T)) of another's codes
    (detached)."""
    return -(upcast(codes.detach()) * log_probs).sum(dim=1)


def _negative_similarities(q, queue, extra_negatives):
    """(N, K [+ E]) similarities of each query to the queue, then to its own extra negatives."""
    negatives = q @ upcast(queue).t()
    if extra_negatives is None:
        return negatives
    extra = torch.einsum("nd,ned->ne", q, upcast(extra_negatives))
    return torch.cat([negatives, extra], dim=1)


def _log1mexp(x):
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _cosine(p, z):
    return (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)


def full_precision(x):
    """Losses run in fp32 even under autocast: logits scaled by 1/T lose too many digits in bf16/fp16."""
    return torch.autocast(x.device.type, enabled=False)


def upcast(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
