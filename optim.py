"""Optimizers, learning-rate schedules and the one mixed-precision optimizer step every training loop takes."""
import math

import torch

from lars import LARS
from runtime import Runtime

OPTIMIZERS = ("sgd", "adam", "lars")


def build_optimizer(name, params, lr, weight_decay, momentum=0.9, foreach=None):
    """SGD (momentum 0.9), Adam, or LARS (biases and BatchNorm excluded from adaptation and decay)."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=foreach)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_at(t, base_lr, epochs, schedule="cos", milestones=(), warmup_epochs=0):
    """Learning rate at (fractional) epoch t: linear warm-up, then cosine to 0, or x0.1 at each milestone t >= m."""
    if t < warmup_epochs:
        return base_lr * t / warmup_epochs
    if schedule == "cos":
        progress = (t - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return base_lr * 0.1 ** sum(t >= m for m in milestones)


def demo_lr(epoch, base_lr, epochs, cos=True, milestones=()):
    """facebookresearch/moco's CIFAR demo, exactly: it counts epochs from 1 and sets the lr once per epoch, so the
    0-based `epoch` trains at the demo's value for epoch + 1 (for 0.06 and 200 epochs: first 0.0599963, last 0).
    Milestones give the step schedule (x0.1 from each demo epoch >= m); no cosine and no milestones: constant."""
    schedule = "cos" if cos and not milestones else "step"
    return lr_at(epoch + 1, base_lr, epochs, schedule, milestones)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def amp_step(rt: Runtime, optimizer, loss):
    """zero_grad, backward and step through the runtime's loss scaler (a no-op scaler unless fp16)."""
    optimizer.zero_grad(set_to_none=True)
    rt.scaler.scale(loss).backward()
    rt.scaler.step(optimizer)
    rt.scaler.update()
