"""Evaluation every method shares: kNN monitor, linear evaluation (probe, lincls, finetune), classification
accuracy.

Every function takes the network as a module and puts it in eval mode itself (and restores its mode after): features
from a network whose BatchNorm is still in training mode would be silently wrong."""
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from augmentations import build_transform
from loading import TransformDataset, make_train_loader
from optim import amp_step, lr_at, set_lr
from runtime import Runtime


@contextmanager
def evaluating(*modules):
    """Modules in eval mode inside the block, each back in the mode it had after."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def extract_features(rt: Runtime, encoder, loader, normalize=True):
    """Features and labels of every image in `loader` (in dataset order) under encoder.eval(), from all processes.

    Under DDP each process encodes its own shard (loader built on a rank-strided Subset) and the shards are
    interleaved back into dataset order.
    """
    feats, labels = [], []
    with evaluating(encoder):
        for images, y in tqdm(loader, desc="features", leave=False, disable=not rt.is_main):
            with rt.autocast():
                f = encoder(rt.to_device(images))
            feats.append(f.float())
            labels.append(y.to(rt.device))
    feats, labels = torch.cat(feats), torch.cat(labels)
    if normalize:
        feats = F.normalize(feats, dim=1)
    if rt.distributed:
        feats, labels = interleave_shards(feats), interleave_shards(labels)
    return feats, labels


def interleave_shards(x):
    """Inverse of sharding a dataset as indices rank::world_size: all_gather (padded) then interleave."""
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    total = sum(int(s) for s in sizes)
    return torch.stack(parts, dim=1).reshape(longest * world, *x.shape[1:])[:total]


@torch.no_grad()
def knn_predict(features, bank, bank_labels, num_classes, k=200, t=0.1, chunk_size=1024):
    """Weighted kNN vote (InstDisc, as in the MoCo demo) -> class scores (N, num_classes).

    features (N, D) and bank (M, D) L2-normalised; each neighbour votes exp(sim / t) for its class. Queries are
    processed in chunks so memory stays at chunk_size × M.
    """
    k = min(k, bank.shape[0])
    scores = []
    for chunk in features.split(chunk_size):
        sim, idx = (chunk @ bank.t()).topk(k, dim=1)
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device, dtype=sim.dtype)
        scores.append(votes.scatter_add_(1, bank_labels[idx], (sim / t).exp()))
    return torch.cat(scores)


def topk_accuracy(scores, labels, ks=(1, 5)):
    """Top-k accuracies in percent; k larger than the number of classes is skipped (None)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    correct = ranked == labels[:, None]
    return [100.0 * correct[:, :k].any(dim=1).float().mean().item() if k <= scores.shape[1] else None for k in ks]


def knn_top1(rt: Runtime, encoder, memory_loader, test_loader, num_classes, k=200, t=0.1):
    bank, bank_labels = extract_features(rt, encoder, memory_loader)
    feats, labels = extract_features(rt, encoder, test_loader)
    return topk_accuracy(knn_predict(feats, bank, bank_labels, num_classes, k, t), labels, ks=(1,))[0]


def linear_probe(rt: Runtime, encoder, train_loader, test_loader, num_classes, epochs=100, batch_size=256, lr=1e-3,
                 seed=0):
    """Fast linear probe: a linear classifier trained with Adam on cached, standardised frozen features.

    Returns (top1, top5) on the test set, top5 None when there are 5 classes or fewer.
    """
    train_x, train_y = extract_features(rt, encoder, train_loader, normalize=False)
    test_x, test_y = extract_features(rt, encoder, test_loader, normalize=False)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator(device="cpu").manual_seed(seed)
    head = nn.Linear(train_x.shape[1], num_classes).to(rt.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-6)
    steps = max(1, (train_x.shape[0] + batch_size - 1) // batch_size)
    for epoch in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator).to(rt.device)
        for step, idx in enumerate(order.split(batch_size)):
            set_lr(optimizer, lr_at(epoch + step / steps, lr, epochs))
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # fp32 features: no loss scaling
            optimizer.step()
    with torch.no_grad():
        return tuple(topk_accuracy(head(test_x), test_y))


@torch.no_grad()
def classification_accuracy(rt: Runtime, classifier, loader):
    """(top1, top5) of a classifier module over a labelled loader, gathered over processes."""
    scores, labels = extract_features(rt, classifier, loader, normalize=False)
    return tuple(topk_accuracy(scores, labels))


def train_linear_head(rt: Runtime, backbone, head, train_loader, epochs, optimizer, lr_fn, desc="linear"):
    """Train `head` on the frozen `backbone` over augmented batches (facebookresearch/moco's main_lincls protocol,
    and SimCLR's output-head fine-tune). The backbone stays in eval mode, so its BatchNorm statistics are kept."""
    mode = backbone.training
    backbone.eval()
    head.train()
    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)  # each epoch its own order and its own augmented views
        for step, (images, labels) in enumerate(tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                                                     disable=not rt.is_main)):
            set_lr(optimizer, lr_fn(epoch + step / len(train_loader)))
            images, labels = rt.to_device(images), labels.to(rt.device, non_blocking=True)
            with torch.no_grad(), rt.autocast():
                feats = backbone(images)
            with rt.autocast():
                loss = F.cross_entropy(head(feats.float()), labels)
            amp_step(rt, optimizer, loss)
    backbone.train(mode)


def linear_evaluation(rt: Runtime, opts, backbone, splits, num_classes, crop_size, batch, memory_loader,
                      test_loader):
    """Frozen-backbone linear evaluation -> (top1, top5): `probe` on cached features of the memory split (the kNN
    monitor's batches), `lincls` as facebookresearch/moco's main_lincls, `finetune` as simclr_main's output head."""
    if opts.linear_protocol == "probe":
        return linear_probe(rt, backbone, memory_loader, test_loader, num_classes,
                                       epochs=opts.linear_epochs, seed=opts.seed)
    epochs = opts.linear_epochs
    loader = make_train_loader(rt, TransformDataset(splits.memory, build_transform("supervised", crop_size)), batch,
                               opts.workers, opts.seed + 1)
    head = torch.nn.Linear(backbone.feat_dim, num_classes).to(rt.device)
    if opts.linear_protocol == "lincls":  # SGD lr 30 momentum 0.9 wd 0, lr x0.1 at 60% and 80% of the epochs
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
        optimizer = torch.optim.SGD(head.parameters(), lr=30.0, momentum=0.9, weight_decay=0.0)
        lr_fn = lambda t: lr_at(int(t), 30.0, epochs, "step", (0.6 * epochs, 0.8 * epochs))  # noqa: E731
    else:
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
        lr_fn = lambda t: lr_at(t, 1e-3, epochs)  # noqa: E731
    trained = torch.nn.parallel.DistributedDataParallel(head) if rt.distributed else head
    train_linear_head(rt, backbone, trained, loader, epochs, optimizer, lr_fn, desc=opts.linear_protocol)
    return classification_accuracy(rt, torch.nn.Sequential(backbone, head), test_loader)
