"""ResNet backbones (torchvision) with the CIFAR stem, SplitBatchNorm, and the MoCo-v1 and SimCLR models."""
import copy
from functools import partial

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from losses import moco_infonce

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


def build_backbone(arch, cifar_stem=True, bn_splits=1):
    """torchvision ResNet without its classifier: images -> (N, feat_dim) features.

    The CIFAR stem (3x3 stride-1 conv1, no max-pool) keeps 32-px images from shrinking to 1x1 too early.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    norm_layer = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def projection_head(in_dim, out_dim, hidden_dim=None):
    """Linear head, or a 2-layer MLP head when hidden_dim is given (MoCo-v2 / SimCLR)."""
    if not hidden_dim:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class Encoder(nn.Sequential):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head


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


class MoCo(nn.Module):
    """MoCo-v1 (He et al. 2020) following facebookresearch/moco and its CIFAR demo.

    Query encoder trained by SGD, key encoder its momentum average, a queue of K L2-normalised keys as negatives,
    and shuffle-BN: keys are encoded in a shuffled batch order (across processes under DDP), so BatchNorm cannot
    leak which query/key pair belongs together.

    With n views: the asymmetric loss uses view 0 as the query against each other view as key and averages over
    those n-1 pairs; the symmetric loss does this for every view as query and SUMS over the n query views, which for
    two views is the demo's loss_12 + loss_21. Every key used in the loss is enqueued.
    """

    def __init__(self, arch="resnet18", dim=128, K=4096, m=0.99, T=0.1, cifar_stem=True, bn_splits=1,
                 symmetric=False, mlp_hidden=None):
        super().__init__()
        self.K, self.m, self.T, self.symmetric = K, m, T, symmetric
        backbone = build_backbone(arch, cifar_stem, bn_splits)
        self.encoder_q = Encoder(backbone, projection_head(backbone.feat_dim, dim, mlp_hidden))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self):
        q_params = list(self.encoder_q.parameters())
        k_params = list(self.encoder_k.parameters())
        torch._foreach_mul_(k_params, self.m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys):
        """Write keys at the pointer, wrapping around the end of the queue (K need not divide the batch)."""
        keys = gather_all(keys)[-self.K:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.K)

    @torch.no_grad()
    def shuffled_keys(self, images):
        """Encode keys under a random batch permutation (shared across processes), returned in input order."""
        all_images = gather_all(images)
        perm = torch.randperm(all_images.shape[0], device=images.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(perm, src=0)
            rank, n = dist.get_rank(), images.shape[0]
        else:
            rank, n = 0, all_images.shape[0]
        local = perm[rank * n:(rank + 1) * n]
        keys = F.normalize(self.encoder_k(all_images[local]), dim=1)
        all_keys = torch.empty((all_images.shape[0], keys.shape[1]), dtype=keys.dtype, device=keys.device)
        all_keys[perm] = gather_all(keys)
        return all_keys[rank * n:(rank + 1) * n]

    def forward(self, views):
        """views: list of n >= 2 image batches of the same images. Returns the loss."""
        with torch.no_grad():
            self.momentum_update()
        query_views = range(len(views)) if self.symmetric else [0]
        key_views = sorted({j for i in query_views for j in range(len(views)) if j != i})
        keys = {j: self.shuffled_keys(views[j]) for j in key_views}
        queue = self.queue.clone().detach()
        loss = 0.0
        for i in query_views:
            q = F.normalize(self.encoder_q(views[i]), dim=1)
            pair_losses = [moco_infonce(q, keys[j], queue, self.T)
                           for j in range(len(views)) if j != i]
            loss = loss + sum(pair_losses) / len(pair_losses)
        self.enqueue(torch.cat([keys[j] for j in key_views]))
        return loss


class SimCLR(nn.Module):
    """Backbone + projection head (hidden + output layer) for NT-Xent, + an output head (linear to num_classes)
    that is fine-tuned on the frozen backbone, or trained with it for the supervised baseline."""

    def __init__(self, arch="resnet18", num_classes=10, projection_dim=128, hidden_dim=None, cifar_stem=True):
        super().__init__()
        self.backbone = build_backbone(arch, cifar_stem)
        hidden_dim = hidden_dim or self.backbone.feat_dim  # 512 for ResNet-18, 2048 for ResNet-50, as in the paper
        self.projection = projection_head(self.backbone.feat_dim, projection_dim, hidden_dim)
        self.output_head = nn.Linear(self.backbone.feat_dim, num_classes)

    def forward(self, x, classify=False):
        """Projections of the images (the contrastive space), or class logits with classify=True."""
        features = self.backbone(x)
        return self.output_head(features) if classify else self.projection(features)
