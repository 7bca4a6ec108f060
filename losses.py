"""Contrastive losses: MoCo's InfoNCE against a queue of negatives, and SimCLR's NT-Xent."""
import torch
import torch.nn.functional as F


def moco_infonce(q, k, queue, temperature):
    """q, k: (N, D) L2-normalised queries and positive keys; queue: (K, D) L2-normalised negatives.

    logits = [q·k, q·queueᵀ] / T with the positive at index 0; returns the mean cross-entropy.
    """
    with full_precision(q):
        q, k, queue = upcast(q), upcast(k), upcast(queue)
        positive = (q * k).sum(dim=1, keepdim=True)
        negatives = q @ queue.t()
        logits = torch.cat([positive, negatives], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)


def nt_xent(z1, z2, temperature):
    """SimCLR's loss. z1, z2: (N, D) projections of two views (normalised here).

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


def full_precision(x):
    """Losses run in fp32 even under autocast: logits scaled by 1/T lose too many digits in bf16/fp16."""
    return torch.autocast(x.device.type, enabled=False)


def upcast(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
