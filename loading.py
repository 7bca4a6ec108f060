"""From datasets to batches: the augmenting dataset, the seeded epoch sampler, worker setup, train and eval loaders, and
eval batches read once and replayed from memory."""
import os
import random

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from augmentations import MultiCrop, MultiView
from datasets import ImageDataset
from runtime import Runtime

EVAL_CACHE_BYTES = 2 * 2**30  # eval sets up to this size after the eval transform are kept in memory (CIFAR: 0.18 GB)


class TransformDataset(Dataset):
    """Applies an Albumentations transform (ending in ToTensorV2) to each image, n_views times for multi-view (one
    tensor per image when n_views is 1); or a views object (MultiView, MultiCrop), which gives each image its list of
    views. The default collate batches a list of views position by position, so multi-crop's global and local
    positions may differ in size: a batch is then a list of per-view batches.

    An index may come as (index, draw_key) from EpochSampler: the augmentations are then drawn from an RNG seeded by
    that key, so they depend on (seed, epoch, index) only, not on the worker that serves them or on a resume.
    """

    def __init__(self, base: ImageDataset, transform, n_views: int = 1):
        if isinstance(transform, (MultiView, MultiCrop)):
            self.views, self.single = transform, False
        else:
            self.views, self.single = MultiView(transform, n_views), n_views == 1
        self.base, self.labels = base, base.labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, item):
        index, draw_key = item if isinstance(item, tuple) else (item, None)
        if draw_key is not None:  # Albumentations 2.x draws from its own generators, not numpy's global state
            rng = np.random.default_rng(draw_key)
            self.views.set_random_state(rng, random.Random(int(rng.bit_generator.random_raw())))
        image, label = self.base[index]
        views = self.views(image)
        return (views[0] if self.single else views), label


class EpochSampler(DistributedSampler):
    """DistributedSampler (this process's share of a permutation fixed by seed and epoch; also for one process)
    that pairs every index with the key its augmentations are drawn from."""

    def __init__(self, dataset, rank=0, world_size=1, seed=0):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)

    def __iter__(self):
        return ((index, (self.seed, self.epoch, index)) for index in super().__iter__())


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Loader workers per process: this node's usable cores shared among its torchrun processes, at most 16 (the
    MoCo demo's num_workers). At 32 px one worker augments about 5k views/s, so a GPU step needs many of them."""
    return max(1, min(16, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _init_worker(worker_id: int) -> None:
    cv2.setNumThreads(0)  # OpenCV's own thread pool in every worker oversubscribes the cores
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size, workers, sampler=None, drop_last=False, device_type="cpu", persistent=True,
                seed=0):
    """Each loader has its own generator: making an iterator draws its workers' base seed from it, not from torch's
    global RNG, which the run's own draws (shuffle-BN, MoCHi) use and a checkpoint restores. A resumed process makes
    its iterators at other epochs than a straight run, and must not shift those draws by doing so."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      pin_memory=device_type == "cuda", persistent_workers=persistent and workers > 0,
                      worker_init_fn=_init_worker, generator=torch.Generator().manual_seed(seed))


def make_train_loader(rt: Runtime, dataset, batch_size, workers, seed=0) -> DataLoader:
    """Shuffled, augmentation-seeded loader of full batches of this process's share (call sampler.set_epoch)."""
    sampler = EpochSampler(dataset, rt.rank, rt.world_size, seed)
    return make_loader(dataset, batch_size, workers, sampler, drop_last=True, device_type=rt.device.type, seed=seed)


class ReplayedBatches:
    """A loader read once: its first pass keeps every batch, later passes replay them without any worker.

    For eval sets, whose transform is deterministic: the kNN monitor re-encodes the same images every epoch, and
    re-running the workers for that would cost loader time every epoch for identical batches."""

    def __init__(self, loader):
        self.loader, self.batches = loader, None

    def __len__(self):
        return len(self.loader) if self.batches is None else len(self.batches)

    def __iter__(self):
        if self.batches is not None:
            yield from self.batches
            return
        batches = []
        for batch in self.loader:
            batches.append(batch)
            yield batch
        self.batches, self.loader = batches, None  # dropping the loader ends its workers


def make_eval_loader(rt: Runtime, dataset, batch_size, workers):
    """In-order batches; under DDP each process takes images rank, rank + world, ... (see evaluation.interleave_shards).
    A set that fits in EVAL_CACHE_BYTES (as the views it becomes) is read once and replayed (ReplayedBatches);
    a larger one is re-read on every pass by persistent workers."""
    if rt.world_size > 1:
        dataset = Subset(dataset, range(rt.rank, len(dataset), rt.world_size))
    image = dataset[0][0] if len(dataset) else None  # one image probes the size every image has after the transform
    if image is None or len(dataset) * image.numel() * image.element_size() > EVAL_CACHE_BYTES:
        return make_loader(dataset, batch_size, workers, device_type=rt.device.type)
    return ReplayedBatches(make_loader(dataset, batch_size, workers, device_type=rt.device.type, persistent=False))
