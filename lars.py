"""LARS (You et al. 2017) as used by SimCLR: layer-wise trust ratio on SGD with momentum."""
import torch


class LARS(torch.optim.Optimizer):
    """For each parameter p with gradient g: g ← g + wd·p; trust = eta·‖p‖/‖g‖ (1 when either norm is 0);
    v ← momentum·v + lr·trust·g; p ← p − v.

    Parameters for which `exclude(p)` is true (by default the 1-D ones: biases and BatchNorm) get neither
    weight decay nor adaptation (trust = 1). A param group may also set `exclude` to True/False for all its params.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, exclude=None):
        if lr <= 0:
            raise ValueError(f"LARS needs lr > 0, got {lr}")
        self.exclude = exclude or (lambda p: p.ndim == 1)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, exclude=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                excluded = group["exclude"] if group["exclude"] is not None else self.exclude(p)
                trust = 1.0
                if not excluded:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, 1.0)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(group["momentum"]).add_(g * (group["lr"] * trust))
                p.sub_(v)
        return loss
