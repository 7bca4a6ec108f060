"""The nets methods are made of: torchvision ResNet backbones with the CIFAR stem, SplitBatchNorm, heads, and the
cross-process gather."""
import copy
from functools import partial

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn as nn
import torch.nn.functional as F
import torchvision

ARCHS = ("resnet18", "resnet34", "resnet50")


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm over `num_splits` sub-batches, as the MoCo CIFAR demo simulates multi-GPU BN on one device.

    As in the demo, sample n belongs to split n % num_splits; running stats are the mean over splits.
    """

    def __init__(self, num_features, num_splits, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        running_mean, running_var = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), running_mean, running_var,
                           self.weight.repeat(s), self.bias.repeat(s), True, self.momentum, self.eps)
        self.running_mean.copy_(running_mean.view(s, c).mean(dim=0))
        self.running_var.copy_(running_var.view(s, c).mean(dim=0))
        return out.reshape(n, c, h, w)


def build_backbone(arch, cifar_stem=True, bn_splits=1, width=1.0):
    """torchvision ResNet without its classifier: images -> (N, feat_dim) features.

    The CIFAR stem (3x3 stride-1 conv1, no max-pool) keeps 32-px images from shrinking to 1x1 too early.
    width scales every stage's channels (0.25: 16-32-64-128 for ResNet-18), so a CPU trains a backbone in minutes.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    norm_layer = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
    if width != 1.0:
        narrow(net, width)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, net.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def stage_channels(width):
    """The four stages' base channels at `width` (64-128-256-512 at 1.0; Bottleneck blocks output 4x that)."""
    return [max(1, round(c * width)) for c in (64, 128, 256, 512)]


def narrow(net, width):
    """Rebuild a torchvision ResNet's stem and stages at `width` times the channels, with torchvision's init."""
    block = type(net.layer1[0])
    channels = stage_channels(width)
    net.inplanes = channels[0]
    net.conv1 = nn.Conv2d(3, channels[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = net._norm_layer(channels[0])
    for i, (name, planes) in enumerate(zip(("layer1", "layer2", "layer3", "layer4"), channels)):
        setattr(net, name, net._make_layer(block, planes, len(getattr(net, name)), stride=1 if i == 0 else 2))
    net.fc = nn.Linear(channels[3] * block.expansion, net.fc.out_features)
    for m in net.modules():  # torchvision ResNet.__init__'s init, for the rebuilt layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def projection_head(in_dim, out_dim, hidden_dim=None, batch_norm=True):
    """Linear head, or a 2-layer MLP head when hidden_dim is given: with BatchNorm after the hidden layer (SimCLR, BYOL,
    SimSiam, SwAV), or without it (MoCo-v2's builder.py: Linear, ReLU, Linear)."""
    if not hidden_dim:
        return nn.Linear(in_dim, out_dim)
    norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), *norm, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def gather_all(x, with_grad=False):
    """Concatenate a tensor from every process, in rank order; identity on one process.

    with_grad: gradients flow back to each process's own part (summed over the processes' losses), so SimCLR's
    negatives come from every GPU and N processes × batch b train like one process with batch N·b.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        return torch.cat(dist_nn.all_gather(x.contiguous()))
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def momentum_copy(module):
    """A frozen copy of `module`, which ema_update then moves towards it: MoCo's key encoder, BYOL's target."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target, online, momentum):
    """target = momentum * target + (1 - momentum) * online, over the parameters (buffers are the target's own).
    momentum may be a tensor (BYOL's tau buffer), so that a compiled forward is not recompiled for every value."""
    target_params, online_params = list(target.parameters()), list(online.parameters())
    torch._foreach_mul_(target_params, momentum)
    if isinstance(momentum, torch.Tensor):
        torch._foreach_add_(target_params, torch._foreach_mul(online_params, 1 - momentum))
    else:
        torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
