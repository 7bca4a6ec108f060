"""datasets.py against small files written in the real on-disk formats (offline, CPU)."""
import gzip
import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torchvision
from albumentations.pytorch import ToTensorV2

import datasets as D
from training import UserError

RNG = np.random.default_rng(1234)


def random_images(n, size):
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def trust_checksums(monkeypatch):
    """Our fake archives have other md5s than the real ones: accept any file that exists (tests only)."""
    exists = lambda fpath, md5=None: os.path.isfile(fpath)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", exists)


# --- CIFAR: Python-2 pickles like the real archives (keys are py2 str: bytes under encoding="bytes") ---------


class Py2Str(bytes):
    pass


class Py2Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))

    dispatch[Py2Str] = save_py2_str


def write_py2_pickle(path, entry):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump({Py2Str(key): value for key, value in entry.items()})


def cifar_batch(images, labels, label_key, batch_label):
    return {
        b"batch_label": Py2Str(batch_label),
        label_key: [int(x) for x in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),  # row-major CHW
        b"filenames": [Py2Str(b"img_%d.png" % i) for i in range(len(images))],
    }


def write_cifar10(root, per_batch=2, n_test=3):
    folder = root / "cifar-10-batches-py"
    train_images, train_labels = random_images(5 * per_batch, 32), RNG.integers(0, 10, 5 * per_batch)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        batch = cifar_batch(train_images[part], train_labels[part], b"labels", b"training batch %d of 5" % (b + 1))
        write_py2_pickle(folder / f"data_batch_{b + 1}", batch)
    test_images, test_labels = random_images(n_test, 32), RNG.integers(0, 10, n_test)
    write_py2_pickle(folder / "test_batch", cifar_batch(test_images, test_labels, b"labels", b"testing batch 1 of 1"))
    names = [Py2Str(b"class%d" % i) for i in range(10)]
    write_py2_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return train_images, train_labels, test_images, test_labels


def write_cifar100(root, n_train=6, n_test=3):
    folder = root / "cifar-100-python"
    train_images, train_labels = random_images(n_train, 32), RNG.integers(0, 100, n_train)
    test_images, test_labels = random_images(n_test, 32), RNG.integers(0, 100, n_test)
    for name, images, labels in [("train", train_images, train_labels), ("test", test_images, test_labels)]:
        batch = cifar_batch(images, labels, b"fine_labels", name.encode())
        batch[b"coarse_labels"] = [int(x) // 5 for x in labels]
        write_py2_pickle(folder / name, batch)
    write_py2_pickle(folder / "meta", {b"fine_label_names": [Py2Str(b"f%d" % i) for i in range(100)],
                                       b"coarse_label_names": [Py2Str(b"c%d" % i) for i in range(20)]})
    return train_images, train_labels, test_images, test_labels


def test_cifar_pickles_look_like_the_real_ones(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].shape == (2, 3072) and entry[b"data"].dtype == np.uint8


@pytest.mark.parametrize("name, writer", [("cifar10", write_cifar10), ("cifar100", write_cifar100)])
def test_cifar_round_trip(tmp_path, trust_checksums, name, writer):
    train_images, train_labels, test_images, test_labels = writer(tmp_path)
    splits = D.load_splits(name, tmp_path, download=True)
    assert splits.info == D.DATASETS[name] and splits.pretrain is splits.memory
    assert len(splits.pretrain) == len(train_images) and len(splits.test) == len(test_images)
    np.testing.assert_array_equal(splits.memory.labels, train_labels)
    np.testing.assert_array_equal(splits.test.labels, test_labels)
    image, label = splits.pretrain[3]
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and label == train_labels[3]
    np.testing.assert_array_equal(image, train_images[3])
    np.testing.assert_array_equal(splits.test[2][0], test_images[2])


# --- STL-10 binary ----------------------------------------------------------------------------------------


def write_stl10(root, n_train=4, n_unlabeled=6, n_test=3):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    as_bin = lambda images: images.transpose(0, 3, 2, 1).tobytes()  # per image: channel, then column-major
    data = {}
    for split, n in [("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)]:
        images = random_images(n, 96)
        (folder / f"{split}_X.bin").write_bytes(as_bin(images))
        labels = RNG.integers(0, 10, n)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())  # 1-based on disk
        data[split] = images, labels
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    (folder / "fold_indices.txt").write_text(" ".join(map(str, range(n_train))) + "\n")
    return data


def test_stl10_round_trip(tmp_path, trust_checksums):
    data = write_stl10(tmp_path)
    splits = D.load_splits("stl10", tmp_path, download=False)
    assert splits.info.image_size == 96
    assert len(splits.pretrain) == 4 + 6 and len(splits.memory) == 4 and len(splits.test) == 3
    np.testing.assert_array_equal(splits.pretrain.labels, np.concatenate([data["train"][1], [-1] * 6]))
    np.testing.assert_array_equal(splits.memory.labels, data["train"][1])
    np.testing.assert_array_equal(splits.test.labels, data["test"][1])
    np.testing.assert_array_equal(splits.memory[1][0], data["train"][0][1])
    np.testing.assert_array_equal(splits.pretrain[4 + 2][0], data["unlabeled"][0][2])
    image, label = splits.test[0]
    assert image.shape == (96, 96, 3) and image.flags.c_contiguous and label == data["test"][1][0]
    np.testing.assert_array_equal(image, data["test"][0][0])
    assert splits.pretrain[5][1] == -1


# --- ImageFolder / TinyImageNet ----------------------------------------------------------------------------


def write_image(path, rgb, ext=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path.with_suffix(ext)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def pure(colour, size=20):
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


def write_image_folder(root, classes=("n01", "n02")):
    for split, count in [("train", 3), ("val", 2)]:
        for label, wnid in enumerate(classes):
            for i in range(count):
                write_image(root / split / wnid / f"{i}", pure((255, 0, 0) if label == 0 else (0, 0, 255)),
                            ".png" if i % 2 == 0 else ".JPEG")


@pytest.mark.parametrize("name", ["imagenet100", "imagefolder"])
def test_image_folder(tmp_path, name):
    write_image_folder(tmp_path)
    splits = D.load_splits(name, tmp_path)
    assert splits.info.num_classes == 2 and splits.info.imagenet_stem and splits.info.image_size == 224
    assert len(splits.pretrain) == 6 and len(splits.test) == 4 and splits.pretrain is splits.memory
    np.testing.assert_array_equal(splits.memory.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(splits.test.labels, [0, 0, 1, 1])
    red, label = splits.pretrain[0]
    assert label == 0 and red.shape == (20, 20, 3) and red.dtype == np.uint8
    np.testing.assert_array_equal(red[0, 0], [255, 0, 0])  # PNG: exact, RGB order
    jpeg_red = splits.pretrain[1][0].astype(int)
    assert jpeg_red[..., 0].min() > 240 and jpeg_red[..., 1:].max() < 15
    assert splits.test[3][0][5, 5, 2] > 240  # blue


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="build-imagenet100"):
        D.load_splits("imagenet100", tmp_path)
    write_image_folder(tmp_path)
    write_image(tmp_path / "val" / "n03" / "0", pure((0, 255, 0)))
    with pytest.raises(UserError, match="different class folders"):
        D.load_splits("imagefolder", tmp_path)
    (tmp_path / "train" / "n04").mkdir()
    with pytest.raises(UserError, match="n04"):
        D.load_splits("imagefolder", tmp_path)


def write_tinyimagenet(root):
    folder = root / "tiny-imagenet-200"
    wnids = ["n09", "n01", "n05"]  # sorted: n01 -> 0, n05 -> 1, n09 -> 2
    (folder).mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        for i in range(2):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{i}", pure((int(wnid[1:]) * 20, 0, 0), 64), ".JPEG")
    val = [("val_0.JPEG", "n05"), ("val_1.JPEG", "n09"), ("val_2.JPEG", "n01"), ("val_3.JPEG", "n05")]
    for filename, wnid in val:
        write_image(folder / "val" / "images" / Path(filename).stem, pure((0, int(wnid[1:]) * 20, 0), 64), ".JPEG")
    (folder / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))
    return folder


def test_tinyimagenet(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    for data_dir in (tmp_path, folder):  # the folder holding tiny-imagenet-200/, or that folder itself
        splits = D.load_splits("tinyimagenet", data_dir)
        assert splits.info.num_classes == 3 and splits.info.image_size == 64 and not splits.info.imagenet_stem
        np.testing.assert_array_equal(splits.memory.labels, [0, 0, 1, 1, 2, 2])
        np.testing.assert_array_equal(splits.test.labels, [1, 2, 0, 1])
        image, label = splits.test[1]  # n09: green 180
        assert label == 2 and image.shape == (64, 64, 3) and abs(int(image[30, 30, 1]) - 180) < 6
        assert splits.pretrain[2][0][30, 30, 0] > 90  # n05 train image: red 100


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(UserError, match="tiny-imagenet-200.zip") as error:
        D.load_splits("tinyimagenet", tmp_path)
    assert str(tmp_path.resolve()) in str(error.value)


# --- Fashion-MNIST idx ---------------------------------------------------------------------------------------


def idx_bytes(array):
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def fake_fashion(n_train=5, n_test=3):
    return {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test).astype(np.uint8),
    }


def check_fashion(splits, arrays):
    assert len(splits.pretrain) == 5 and len(splits.test) == 3 and splits.pretrain is splits.memory
    np.testing.assert_array_equal(splits.memory.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(splits.test.labels, arrays["t10k-labels-idx1-ubyte"])
    image, _ = splits.pretrain[4]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(image[2:30, 2:30, c], arrays["train-images-idx3-ubyte"][4])
    assert image[:2].max() == 0 and image[:, 30:].max() == 0


def test_fashionmnist_idx_folder(tmp_path):
    arrays = fake_fashion()
    for name, array in arrays.items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    check_fashion(D.load_splits("fashionmnist", tmp_path, download=False), arrays)


def test_fashionmnist_torchvision_root(tmp_path):
    arrays = fake_fashion()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        (raw / name).write_bytes(idx_bytes(array))  # as torchvision leaves them after extracting
    check_fashion(D.load_splits("fashionmnist", tmp_path, download=True), arrays)


@pytest.mark.skipif(not Path(D.DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashionmnist_debian_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: the default data dir falls back to the Debian files
    splits = D.load_splits("fashionmnist")
    assert len(splits.pretrain) == 60000 and len(splits.test) == 10000
    image, label = splits.pretrain[0]
    assert image.shape == (32, 32, 3) and 0 <= label < 10
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10
    mean = splits.pretrain.images[:, :, :, 0].mean() / 255
    assert abs(mean - D.DATASETS["fashionmnist"].mean[0]) < 1e-3


# --- synthetic and subsets -------------------------------------------------------------------------------------


def test_synthetic():
    a, b = D.load_splits("synthetic", seed=0), D.load_splits("synthetic", seed=5)
    np.testing.assert_array_equal(a.pretrain.images, b.pretrain.images)  # `seed` doesn't change the data
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.pretrain.images.shape == (1000, 32, 32, 3) and a.test.images.shape == (500, 32, 32, 3)
    assert a.pretrain.images.dtype == np.uint8 and a.info.num_classes == 10
    assert np.bincount(a.pretrain.labels).tolist() == [100] * 10 and np.bincount(a.test.labels).tolist() == [50] * 10
    assert not np.array_equal(a.pretrain.images[:500], a.test.images)
    other = D.load_splits("synthetic", synthetic_seed=1)
    assert not np.array_equal(other.pretrain.images, a.pretrain.images)
    bigger = D.load_splits("synthetic", synthetic_size=(3000, 500))
    assert len(bigger.pretrain) == 3000 and np.bincount(bigger.pretrain.labels).min() == 300
    np.testing.assert_array_equal(bigger.test.images, a.test.images)  # test set independent of train size
    mean = a.pretrain.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, a.info.mean, atol=1e-3)


def test_synthetic_colour_alone_does_not_solve_it():
    splits = D.load_splits("synthetic")
    per_class_mean = np.stack([splits.pretrain.images[splits.pretrain.labels == c].mean((0, 1, 2)) for c in range(10)])
    assert per_class_mean.std(0).max() < 10  # average colour is the same for every class


def test_subset():
    full = D.load_splits("synthetic")
    splits = D.load_splits("synthetic", subset=100, seed=3)
    assert len(splits.pretrain) == 100 and splits.memory is splits.pretrain and len(splits.test) == 500
    again, other = D.load_splits("synthetic", subset=100, seed=3), D.load_splits("synthetic", subset=100, seed=4)
    np.testing.assert_array_equal(splits.pretrain.images, again.pretrain.images)
    assert not np.array_equal(splits.pretrain.labels, other.pretrain.labels) or not np.array_equal(
        splits.pretrain.images, other.pretrain.images)
    rows = {full.pretrain.images[i].tobytes(): full.pretrain.labels[i] for i in range(1000)}
    assert all(rows[img.tobytes()] == lab for img, lab in zip(splits.pretrain.images, splits.pretrain.labels))
    for bad in (0, -1, 1001):
        with pytest.raises(UserError, match="subset"):
            D.load_splits("synthetic", subset=bad)


def test_subset_stl10(tmp_path, trust_checksums):
    write_stl10(tmp_path)
    splits = D.load_splits("stl10", tmp_path, download=False, subset=3, seed=1)
    assert len(splits.pretrain) == 3 and len(splits.memory) == 3 and len(splits.test) == 3
    assert (splits.memory.labels >= 0).all()
    with pytest.raises(UserError, match="memory split 4"):
        D.load_splits("stl10", tmp_path, download=False, subset=5)


# --- errors ------------------------------------------------------------------------------------------------------


def refuse_network(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_failed_download_names_archive_and_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse_network)
    with pytest.raises(UserError) as error:
        D.load_splits("cifar10", tmp_path / "data", download=True)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and torchvision.datasets.CIFAR10.url in message
    assert f"{(tmp_path / 'data').resolve()}/" in message and "\n" not in message

    monkeypatch.setattr(torchvision.datasets.stl10, "download_and_extract_archive", refuse_network)
    with pytest.raises(UserError, match="stl10_binary.tar.gz"):
        D.load_splits("stl10", tmp_path, download=True)

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse_network)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz") as error:
        D.load_splits("fashionmnist", tmp_path / "fm", download=True)
    assert str((tmp_path / "fm" / "FashionMNIST" / "raw").resolve()) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, archive", [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
                                           ("stl10", "stl10_binary.tar.gz"), ("fashionmnist", "t10k-labels-idx1-ubyte.gz")])
def test_missing_data_without_download(tmp_path, name, archive):
    with pytest.raises(UserError, match=archive) as error:
        D.load_splits(name, tmp_path, download=False)
    assert str(tmp_path.resolve()) in str(error.value)


def test_bad_names_and_dirs(tmp_path):
    with pytest.raises(UserError, match="cifar10, cifar100, stl10, imagenet100, tinyimagenet, imagefolder"):
        D.load_splits("mnist", tmp_path)
    with pytest.raises(UserError, match="synthetic"):
        D.dataset_info("imagenet")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(UserError, match="is a file"):
        D.load_splits("cifar10", a_file)
    assert set(D.DATASETS) == {"cifar10", "cifar100", "stl10", "imagenet100", "tinyimagenet", "imagefolder",
                               "fashionmnist", "synthetic"}
    assert D.dataset_info("imagenet100").imagenet_stem and not D.dataset_info("cifar10").imagenet_stem


# --- transforms and loaders -----------------------------------------------------------------------------------


def normalize_only():
    return A.Compose([A.Normalize(), ToTensorV2()])


def random_crop_flip():
    return A.Compose([A.RandomResizedCrop(size=(16, 16)), A.HorizontalFlip(), A.Normalize(), ToTensorV2()])


def test_transform_dataset():
    base = D.load_splits("synthetic", subset=20).pretrain
    single = D.TransformDataset(base, normalize_only())
    tensor, label = single[0]
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == (3, 32, 32)
    assert label == base.labels[0] and len(single) == 20
    views, label = D.TransformDataset(base, random_crop_flip(), n_views=2)[0]
    assert isinstance(views, list) and len(views) == 2 and all(v.shape == (3, 16, 16) for v in views)


def batches(loader, epochs=1):
    return [(views, labels) for _ in range(epochs) for views, labels in loader]


class FakeRuntime:
    def __init__(self, rank=0, world_size=1):
        self.rank, self.world_size, self.device = rank, world_size, torch.device("cpu")


def train_batches(dataset, workers, seed=7, epoch=0, rank=0, world_size=1, batch_size=16):
    loader = D.make_train_loader(FakeRuntime(rank, world_size), dataset, batch_size, workers, seed)
    loader.sampler.set_epoch(epoch)
    return batches(loader)


@pytest.mark.parametrize("workers", [0, 1])
def test_make_train_loader(workers):
    base = D.load_splits("synthetic", subset=40).pretrain
    dataset = D.TransformDataset(base, random_crop_flip(), n_views=2)
    loader = D.make_train_loader(FakeRuntime(), dataset, 16, workers, seed=7)
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
    dataset = D.TransformDataset(base, random_crop_flip(), n_views=2)
    runs = [train_batches(dataset, workers, epoch=3, batch_size=8) for workers in (0, 2)]
    for (v1, l1), (v2, l2) in zip(*runs):
        assert torch.equal(l1, l2) and torch.equal(v1[0], v2[0]) and torch.equal(v1[1], v2[1])


def test_same_image_gets_different_augmentations_at_different_indices():
    same_image = D.ImageDataset(np.repeat(random_images(1, 32), 4, axis=0), [0, 1, 2, 3])
    (views, _), = train_batches(D.TransformDataset(same_image, random_crop_flip()), workers=2, batch_size=4)
    assert len({tuple(v.flatten()[:64].tolist()) for v in views}) == 4


def test_processes_share_the_permutation_without_overlap():
    base = D.load_splits("synthetic", subset=20).pretrain
    dataset = D.TransformDataset(base, normalize_only())
    seen = [torch.cat([y for _, y in train_batches(dataset, 0, rank=r, world_size=2, batch_size=5)]) for r in (0, 1)]
    assert all(len(s) == 10 for s in seen)
    order = [list(D.EpochSampler(dataset, r, 2, seed=7)) for r in (0, 1)]
    indices = [i for part in order for i, _ in part]
    assert sorted(indices) == list(range(20))


def test_eval_loader_shards_in_order():
    base = D.load_splits("synthetic", subset=20).test
    dataset = D.TransformDataset(base, normalize_only())
    labels = [torch.cat([y for _, y in D.make_eval_loader(FakeRuntime(r, 2), dataset, 4, 0)]) for r in (0, 1)]
    assert torch.equal(labels[0], torch.as_tensor(base.labels[0::2])) and torch.equal(labels[1], torch.as_tensor(base.labels[1::2]))


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_batches_are_read_once_and_replayed(workers, monkeypatch):
    base = D.load_splits("synthetic", subset=20).memory
    dataset = D.TransformDataset(base, normalize_only())
    reads = []
    monkeypatch.setattr(D.TransformDataset, "__getitem__",
                        lambda self, i, read=D.TransformDataset.__getitem__: reads.append(i) or read(self, i))
    replayed = D.make_eval_loader(FakeRuntime(), dataset, 8, workers)
    assert isinstance(replayed, D.ReplayedBatches) and len(replayed) == 3
    first, again = list(replayed), list(replayed)
    direct = list(D.make_loader(dataset, 8, 0))
    assert len(first) == len(again) == len(direct) == 3 and len(replayed) == 3
    for (x1, y1), (x2, y2), (x3, y3) in zip(first, again, direct):
        assert x2 is x1 and torch.equal(x1, x3) and torch.equal(y1, y3)
    if workers == 0:  # the size probe, one pass, then the direct loader; the replay reads nothing
        assert reads == [0] + list(range(20)) * 2


def test_eval_sets_larger_than_the_cache_are_read_each_pass(monkeypatch):
    dataset = D.TransformDataset(D.load_splits("synthetic", subset=20).memory, normalize_only())
    monkeypatch.setattr(D, "EVAL_CACHE_BYTES", 20 * 3 * 32 * 32 * 4 - 1)  # one byte short of the 20 float32 images
    assert isinstance(D.make_eval_loader(FakeRuntime(), dataset, 8, 0), torch.utils.data.DataLoader)
    monkeypatch.setattr(D, "EVAL_CACHE_BYTES", 20 * 3 * 32 * 32 * 4)
    assert isinstance(D.make_eval_loader(FakeRuntime(), dataset, 8, 0), D.ReplayedBatches)


@pytest.mark.parametrize("cores,local_world,expected", [(2, None, 2), (16, None, 16), (64, None, 16), (16, "4", 4),
                                                        (2, "4", 1)])
def test_default_workers_share_the_cores_among_local_processes(cores, local_world, expected, monkeypatch):
    monkeypatch.setattr(D, "usable_cores", lambda: cores)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert D.default_workers() == expected


# --- ImageNet-100 builder ---------------------------------------------------------------------------------------


def test_imagenet100_class_list():
    assert len(D.IMAGENET100_CLASSES) == 100 and len(set(D.IMAGENET100_CLASSES)) == 100
    assert D.IMAGENET100_CLASSES[:2] == ["n02869837", "n01749939"] and D.IMAGENET100_CLASSES[-1] == "n02090622"
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in D.IMAGENET100_CLASSES)


def test_build_imagenet100(tmp_path, capsys):
    imagenet = tmp_path / "imagenet"
    listed, unlisted = D.IMAGENET100_CLASSES[5:8], "n99999999"
    for split in ("train", "val"):
        for wnid in listed + [unlisted]:
            write_image(imagenet / split / wnid / "0", pure((255, 0, 0)), ".JPEG")
    out = tmp_path / "imagenet100"
    D.main(["build-imagenet100", str(imagenet), str(out)])
    assert "3 of 100" in capsys.readouterr().out
    for split in ("train", "val"):
        assert sorted(os.listdir(out / split)) == sorted(listed)
        assert all((out / split / w).is_symlink() for w in listed)
        assert (out / split / listed[0]).resolve() == (imagenet / split / listed[0]).resolve()
    D.build_imagenet100(imagenet, out)  # idempotent
    splits = D.load_splits("imagenet100", out)
    assert splits.info.num_classes == 3 and len(splits.pretrain) == 3 and len(splits.test) == 3
    with pytest.raises(UserError, match="none of the class folders"):
        D.build_imagenet100(tmp_path / "nothing", tmp_path / "out2")
