"""loading.py: augmenting datasets, the seeded epoch sampler, workers, train and eval loaders (offline, CPU)."""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

import cli
from augmentations import build_multicrop
import datasets as D
import loading as L
from runtime import Runtime
from conftest import pure, random_images, write_image


def normalize_only():
    return A.Compose([A.Normalize(), ToTensorV2()])


def random_crop_flip():
    return A.Compose([A.RandomResizedCrop(size=(16, 16)), A.HorizontalFlip(), A.Normalize(), ToTensorV2()])


def test_transform_dataset():
    base = D.load_splits("synthetic", subset=20).pretrain
    single = L.TransformDataset(base, normalize_only())
    tensor, label = single[0]
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == (3, 32, 32)
    assert label == base.labels[0] and len(single) == 20
    views, label = L.TransformDataset(base, random_crop_flip(), n_views=2)[0]
    assert isinstance(views, list) and len(views) == 2 and all(v.shape == (3, 16, 16) for v in views)


def batches(loader, epochs=1):
    return [(views, labels) for _ in range(epochs) for views, labels in loader]


class FakeRuntime:
    def __init__(self, rank=0, world_size=1):
        self.rank, self.world_size, self.device = rank, world_size, torch.device("cpu")


def train_batches(dataset, workers, seed=7, epoch=0, rank=0, world_size=1, batch_size=16):
    loader = L.make_train_loader(FakeRuntime(rank, world_size), dataset, batch_size, workers, seed)
    loader.sampler.set_epoch(epoch)
    return batches(loader)


@pytest.mark.parametrize("workers", [0, 1])
def test_make_train_loader(workers):
    base = D.load_splits("synthetic", subset=40).pretrain
    dataset = L.TransformDataset(base, random_crop_flip(), n_views=2)
    loader = L.make_train_loader(FakeRuntime(), dataset, 16, workers, seed=7)
    assert loader.persistent_workers == (workers > 0) and not loader.pin_memory and loader.drop_last
    first = train_batches(dataset, workers)
    assert len(first) == 2
    for views, labels in first:
        assert len(views) == 2 and views[0].shape == (16, 3, 16, 16) and labels.shape == (16,)
        assert not torch.equal(views[0], views[1])
    again = train_batches(dataset, workers)  # same seed and epoch: same order and same augmentations
    for (v1, l1), (v2, l2) in zip(first, again):
        assert torch.equal(l1, l2) and torch.equal(v1[0], v2[0]) and torch.equal(v1[1], v2[1])
    for other in (train_batches(dataset, workers, seed=8), train_batches(dataset, workers, epoch=1)):
        assert not all(torch.equal(a[0][1], b[0][1]) for a, b in zip(first, other))


def test_augmentations_do_not_depend_on_the_number_of_workers():
    """Each image's augmentations are fixed by (seed, epoch, index): what makes --resume exact."""
    base = D.load_splits("synthetic", subset=32).pretrain
    dataset = L.TransformDataset(base, random_crop_flip(), n_views=2)
    runs = [train_batches(dataset, workers, epoch=3, batch_size=8) for workers in (0, 2)]
    for (v1, l1), (v2, l2) in zip(*runs):
        assert torch.equal(l1, l2) and torch.equal(v1[0], v2[0]) and torch.equal(v1[1], v2[1])


def test_same_image_gets_different_augmentations_at_different_indices():
    same_image = D.ImageDataset(np.repeat(random_images(1, 32), 4, axis=0), [0, 1, 2, 3])
    (views, _), = train_batches(L.TransformDataset(same_image, random_crop_flip()), workers=2, batch_size=4)
    assert len({tuple(v.flatten()[:64].tolist()) for v in views}) == 4


def test_processes_share_the_permutation_without_overlap():
    base = D.load_splits("synthetic", subset=20).pretrain
    dataset = L.TransformDataset(base, normalize_only())
    seen = [torch.cat([y for _, y in train_batches(dataset, 0, rank=r, world_size=2, batch_size=5)]) for r in (0, 1)]
    assert all(len(s) == 10 for s in seen)
    order = [list(L.EpochSampler(dataset, r, 2, seed=7)) for r in (0, 1)]
    indices = [i for part in order for i, _ in part]
    assert sorted(indices) == list(range(20))


def test_eval_loader_shards_in_order():
    base = D.load_splits("synthetic", subset=20).test
    dataset = L.TransformDataset(base, normalize_only())
    labels = [torch.cat([y for _, y in L.make_eval_loader(FakeRuntime(r, 2), dataset, 4, 0)]) for r in (0, 1)]
    assert torch.equal(labels[0], torch.as_tensor(base.labels[0::2])) and torch.equal(labels[1], torch.as_tensor(base.labels[1::2]))


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_batches_are_read_once_and_replayed(workers, monkeypatch):
    base = D.load_splits("synthetic", subset=20).memory
    dataset = L.TransformDataset(base, normalize_only())
    reads = []
    monkeypatch.setattr(L.TransformDataset, "__getitem__",
                        lambda self, i, read=L.TransformDataset.__getitem__: reads.append(i) or read(self, i))
    replayed = L.make_eval_loader(FakeRuntime(), dataset, 8, workers)
    assert isinstance(replayed, L.ReplayedBatches) and len(replayed) == 3
    first, again = list(replayed), list(replayed)
    direct = list(L.make_loader(dataset, 8, 0))
    assert len(first) == len(again) == len(direct) == 3 and len(replayed) == 3
    for (x1, y1), (x2, y2), (x3, y3) in zip(first, again, direct):
        assert x2 is x1 and torch.equal(x1, x3) and torch.equal(y1, y3)
    if workers == 0:  # the size probe, one pass, then the direct loader; the replay reads nothing
        assert reads == [0] + list(range(20)) * 2


def test_eval_sets_larger_than_the_cache_are_read_each_pass(monkeypatch):
    dataset = L.TransformDataset(D.load_splits("synthetic", subset=20).memory, normalize_only())
    monkeypatch.setattr(L, "EVAL_CACHE_BYTES", 20 * 3 * 32 * 32 * 4 - 1)  # one byte short of the 20 float32 images
    assert isinstance(L.make_eval_loader(FakeRuntime(), dataset, 8, 0), torch.utils.data.DataLoader)
    monkeypatch.setattr(L, "EVAL_CACHE_BYTES", 20 * 3 * 32 * 32 * 4)
    assert isinstance(L.make_eval_loader(FakeRuntime(), dataset, 8, 0), L.ReplayedBatches)


@pytest.mark.parametrize("cores,local_world,expected", [(2, None, 2), (16, None, 16), (64, None, 16), (16, "4", 4),
                                                        (2, "4", 1)])
def test_default_workers_share_the_cores_among_local_processes(cores, local_world, expected, monkeypatch):
    monkeypatch.setattr(L, "usable_cores", lambda: cores)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert L.default_workers() == expected




def test_a_corrupt_image_in_a_worker_ends_in_one_line_naming_the_file(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / split / "n01" / "0", pure((255, 0, 0)))
    corrupt = tmp_path / "train" / "n01" / "1.JPEG"
    corrupt.write_bytes(b"GIF89a not really an image")  # a JPEG start without its end is a truncated JPEG instead
    dataset = L.TransformDataset(D.load_splits("imagefolder", tmp_path).pretrain, normalize_only())
    with pytest.raises(cli.UserError) as error:
        list(L.make_loader(dataset, batch_size=2, workers=1, persistent=False))
    assert "DataLoader worker" in str(error.value)  # torch re-raised it with the worker's traceback
    assert cli.one_line(error.value) == f"cannot decode image {corrupt} (corrupt or not an image): replace or delete it"


def test_multicrop_gives_the_asked_sizes_and_counts_through_the_loader():
    base = D.load_splits("synthetic", subset=16).pretrain
    dataset = L.TransformDataset(base, build_multicrop("simclr", 32, 18, (0.05, 0.3), None, n_global=2, n_local=3))
    loader = L.make_train_loader(Runtime(torch.device("cpu"), "fp32"), dataset, 8, 0, seed=1)
    loader.sampler.set_epoch(0)
    first = [views for views, _ in loader]
    assert len(first) == 2
    for views in first:
        assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 18, 18)] * 3
        assert all(v.dtype == torch.uint8 for v in views)
    again = [views for views, _ in loader]  # the same epoch draws the same views (seed, epoch, index)
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
    assert not torch.equal(first[0][2], first[0][3])  # the local crops are independent draws
