"""datasets.py against small files written in the real on-disk formats (offline, CPU)."""
import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
import torchvision

import datasets as D
from cli import UserError
from conftest import RNG, Py2Str, pure, write_image, write_image_folder, cifar_batch, error_of, random_images, write_cifar10, write_cifar100, write_py2_pickle  # noqa: F401

@pytest.fixture
def no_debian_fashion(tmp_path, monkeypatch):
    """As on a machine without Debian's dataset-fashion-mnist."""
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian-package"))



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


def test_corrupt_cifar_files_are_named_with_how_to_replace_them(tmp_path, monkeypatch):
    write_cifar10(tmp_path)  # real layout, but not the real bytes: every checksum fails
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse_network)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    for download in (False, True):
        with pytest.raises(UserError) as error:
            D.load_splits("cifar10", tmp_path, download=download)
        message = str(error.value)
        assert "present but corrupt (checksum mismatch)" in message and "\n" not in message
        assert "no network" not in message and "not found" not in message
        assert "cifar-10-batches-py/data_batch_1" in message and "cifar-10-batches-py/batches.meta" in message
        assert f"cifar-10-python.tar.gz in {tmp_path.resolve()}/ are present" in message  # the archive too
        assert "delete them" in message and "fresh copy of cifar-10-python.tar.gz" in message


@pytest.mark.parametrize("name, writer, victim", [("cifar10", write_cifar10, "data_batch_3"),
                                                  ("cifar100", write_cifar100, "test")])
def test_cifar_pickle_torchvision_cannot_read_is_named(tmp_path, trust_checksums, name, writer, victim):
    writer(tmp_path)
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    write_py2_pickle(folder / victim, {b"batch_label": Py2Str(b"oops"), b"labels": [0]})
    with pytest.raises(UserError) as error:
        D.load_splits(name, tmp_path, download=False)
    assert str(error.value).startswith(f"{folder.resolve() / victim} is not a ") and "no 'data' key" in str(error.value)
    assert "\n" not in str(error.value)
    (folder / victim).write_bytes(b"garbage")
    with pytest.raises(UserError, match=f"{victim} is not a .* file \\(cannot unpickle"):
        D.load_splits(name, tmp_path, download=False)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    write_py2_pickle(folder / victim, cifar_batch(random_images(2, 32), [1], label_key, b"one label short"))
    with pytest.raises(UserError, match=f"{victim} is not a .* file \\(data of shape \\(2, 3072\\) with 1 labels"):
        D.load_splits(name, tmp_path, download=False)


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


def test_tinyimagenet_without_val_annotations_names_the_file(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    for data_dir in (tmp_path, folder):
        with pytest.raises(UserError) as error:
            D.load_splits("tinyimagenet", data_dir)
        assert str(folder.resolve() / "val" / "val_annotations.txt") in str(error.value)
        assert "missing" in str(error.value)


def test_read_rgb_names_a_corrupt_or_missing_file(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    with pytest.raises(UserError, match=f"cannot decode image {corrupt} \\(corrupt"):
        D.read_rgb(corrupt)
    with pytest.raises(UserError, match=f"image {tmp_path / 'gone.png'} is missing"):
        D.read_rgb(tmp_path / "gone.png")


def test_a_truncated_jpeg_is_named_not_trained_on(tmp_path):
    """It used to decode with a grey tail, with only libjpeg's "Premature end of JPEG file" and no name."""
    whole = tmp_path / "whole.JPEG"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert cv2.imwrite(str(whole), noise)
    np.testing.assert_array_equal(D.read_rgb(whole), cv2.cvtColor(cv2.imread(str(whole)), cv2.COLOR_BGR2RGB))
    cut = tmp_path / "cut.JPEG"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert cv2.imread(str(cut)) is not None  # what made it silent: OpenCV decodes it
    with pytest.raises(UserError, match=f"image {cut} is a truncated JPEG"):
        D.read_rgb(cut)


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


def write_fashion(folder, arrays, gzipped=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))  # as torchvision leaves them after extracting


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashionmnist_idx_folder(tmp_path, gzipped):
    arrays = fake_fashion()
    write_fashion(tmp_path, arrays, gzipped)
    check_fashion(D.load_splits("fashionmnist", tmp_path, download=False), arrays)


def test_fashionmnist_torchvision_root(tmp_path):
    arrays = fake_fashion()
    write_fashion(tmp_path / "FashionMNIST" / "raw", arrays, gzipped=False)
    check_fashion(D.load_splits("fashionmnist", tmp_path, download=True), arrays)


def test_fashionmnist_search_order_given_dir_then_torchvision_raw_then_debian(tmp_path, monkeypatch):
    data_dir, raw, debian = tmp_path / "data", tmp_path / "data" / "FashionMNIST" / "raw", tmp_path / "debian"
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", str(debian))
    in_data_dir, in_raw, in_debian = fake_fashion(), fake_fashion(), fake_fashion()
    write_fashion(data_dir, in_data_dir, gzipped=False)
    write_fashion(raw, in_raw)
    write_fashion(debian, in_debian)
    check_fashion(D.load_splits("fashionmnist", data_dir, download=False), in_data_dir)
    for name in in_data_dir:
        (data_dir / name).unlink()
    check_fashion(D.load_splits("fashionmnist", data_dir, download=False), in_raw)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four files are not enough
    check_fashion(D.load_splits("fashionmnist", data_dir, download=False), in_debian)  # a --data-dir of ours too


def test_fashionmnist_missing_names_the_files_and_folders(tmp_path, monkeypatch, no_debian_fashion):
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse_network)
    data_dir = tmp_path / "data"
    for download in (False, True):
        with pytest.raises(UserError) as error:
            D.load_splits("fashionmnist", data_dir, download=download)
        message = str(error.value)
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz"):
            assert name in message
        for folder in (data_dir.resolve(), data_dir.resolve() / "FashionMNIST" / "raw", D.DEBIAN_FASHION_MNIST):
            assert f"{folder}," in message or f"{folder}:" in message or f"{folder};" in message
        assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message
        assert ("Temporary failure in name resolution" in message) == download


def test_fashionmnist_unreadable_idx_file_is_named(tmp_path):
    arrays = fake_fashion()
    write_fashion(tmp_path, arrays)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(arrays["t10k-images-idx3-ubyte"]))[:40])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz is not a readable uint8 idx file"):
        D.load_splits("fashionmnist", tmp_path, download=False)
    # damaged inside the deflate stream: zlib.error, which used to escape as a traceback
    gzip_header, reserved_block_type = gzip.compress(b"")[:10], b"\x07"
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip_header + reserved_block_type + bytes(20))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz is not a readable uint8 idx file .*invalid block"):
        D.load_splits("fashionmnist", tmp_path, download=False)
    write_fashion(tmp_path, arrays)
    write_fashion(tmp_path, dict(arrays, **{"train-labels-idx1-ubyte": arrays["train-labels-idx1-ubyte"][:4]}))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz .* one label each"):
        D.load_splits("fashionmnist", tmp_path, download=False)


@pytest.mark.skipif(not Path(D.DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashionmnist_debian_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: the default data dir falls back to the Debian files
    splits = D.load_splits("fashionmnist", download=False)
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


def image_rows(dataset):
    return {image.tobytes() for image in dataset.images}


SMALL = (300, 50)  # synthetic train / test sizes


@pytest.mark.parametrize("val_size", [1, 37, 120])
def test_val_split_is_held_out_stratified_and_seeded(val_size):
    full = D.load_splits("synthetic", synthetic_size=SMALL)
    splits = D.load_splits("synthetic", synthetic_size=SMALL, val_size=val_size, seed=3)
    val = splits.val
    assert len(val) == val_size and splits.pretrain is splits.memory and len(splits.memory) == 300 - val_size
    assert not image_rows(val) & image_rows(splits.pretrain) and not image_rows(val) & image_rows(splits.test)
    assert image_rows(val) | image_rows(splits.memory) == image_rows(full.memory)
    counts, total = np.bincount(val.labels, minlength=10), np.bincount(full.memory.labels, minlength=10)
    assert np.abs(counts - val_size * total / total.sum()).max() < 1
    again, other = (D.load_splits("synthetic", synthetic_size=SMALL, val_size=val_size, seed=s) for s in (3, 4))
    assert image_rows(again.val) == image_rows(val) and image_rows(again.memory) == image_rows(splits.memory)
    assert val_size == 1 or image_rows(other.val) != image_rows(val)
    assert full.val is None


def test_stratified_choice_of_unbalanced_classes():
    labels = np.repeat(np.arange(4), [700, 200, 90, 10])
    for n in (1, 3, 10, 99, 500):
        chosen = D.stratified_choice(labels, n, np.random.default_rng(n))
        assert len(set(chosen)) == n and (np.diff(chosen) > 0).all()
        assert np.abs(np.bincount(labels[chosen], minlength=4) - n * np.array([0.7, 0.2, 0.09, 0.01])).max() < 1


def test_val_split_as_a_fraction_is_that_share_of_the_labelled_images():
    tenth = D.load_splits("synthetic", synthetic_size=SMALL, val_size=0.1, seed=3)
    thirty = D.load_splits("synthetic", synthetic_size=SMALL, val_size=30, seed=3)  # round(0.1 x 300)
    assert len(tenth.val) == 30 and image_rows(tenth.val) == image_rows(thirty.val)
    with pytest.raises(UserError, match="validation split of 0.001 is impossible"):  # round(0.3) = 0 images
        D.load_splits("synthetic", synthetic_size=SMALL, val_size=0.001)


def test_val_split_with_subset_keeps_subset_semantics():
    splits = D.load_splits("synthetic", synthetic_size=SMALL, val_size=100, subset=150, seed=1)
    assert len(splits.val) == 100 and len(splits.pretrain) == 150 and splits.memory is splits.pretrain
    assert len(splits.test) == 50 and not image_rows(splits.val) & image_rows(splits.pretrain)
    with pytest.raises(UserError, match="choose 1..200"):
        D.load_splits("synthetic", synthetic_size=SMALL, val_size=100, subset=201)
    for bad in (-1, 300):
        with pytest.raises(UserError, match="validation split of .* choose 1..299"):
            D.load_splits("synthetic", synthetic_size=SMALL, val_size=bad)


def test_val_split_stl10_keeps_the_unlabelled_images_in_pretrain(tmp_path, trust_checksums):
    data = write_stl10(tmp_path, n_train=10, n_unlabeled=6)
    splits = D.load_splits("stl10", tmp_path, download=False, val_size=4, seed=2)
    assert len(splits.val) == 4 and len(splits.memory) == 6 and len(splits.pretrain) == 6 + 6
    assert (splits.val.labels >= 0).all() and (splits.pretrain.labels == -1).sum() == 6
    assert image_rows(splits.pretrain) == image_rows(splits.memory) | {image.tobytes() for image in data["unlabeled"][0]}
    assert not image_rows(splits.val) & image_rows(splits.pretrain) and not image_rows(splits.val) & image_rows(splits.test)
    np.testing.assert_array_equal(splits.pretrain.labels[:6], splits.memory.labels)  # memory first, as documented
    assert image_rows(splits.val) | image_rows(splits.memory) == {image.tobytes() for image in data["train"][0]}


@pytest.mark.parametrize("name, crop_size, expected", [("cifar10", None, 32), ("cifar10", 8, 8), ("cifar10", 224, 224),
                                                       ("cifar10", 512, 512), ("stl10", 50, 50), ("imagenet100", 896, 896)])
def test_check_crop_size_allows_downcrop_and_modest_upscaling(name, crop_size, expected):
    assert D.check_crop_size(D.dataset_info(name), crop_size) == expected


@pytest.mark.parametrize("name, crop_size, largest", [("cifar10", 7, 512), ("cifar10", 0, 512), ("cifar10", -32, 512),
                                                      ("cifar10", 513, 512), ("stl10", 100000, 512),
                                                      ("imagenet100", 897, 896)])
def test_check_crop_size_refuses_impossible_sizes(name, crop_size, largest):
    info = D.dataset_info(name)
    with pytest.raises(UserError) as error:
        D.check_crop_size(info, crop_size)
    assert str(error.value) == (f"crop size {crop_size} is out of range for {name} (native {info.image_size} px): "
                                f"choose 8..{largest}")


# --- errors ------------------------------------------------------------------------------------------------------


def refuse_network(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_failed_download_names_archive_and_dir(tmp_path, monkeypatch, no_debian_fashion):
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
def test_missing_data_without_download(tmp_path, name, archive, no_debian_fashion):
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


@pytest.mark.parametrize("argv, expected", [(["build-imagenet100", "/nonexistent", "/tmp/x"], "none of the class folders"),
                                            (["build-imagenet100"], "required: imagenet_root, out_root"),
                                            ([], "required: command")])
def test_datasets_cli_errors_are_one_line(argv, expected, capsys):
    assert expected in error_of(argv, capsys, D.main)


UNREADABLE_CASES = """
import sys
from pathlib import Path
import datasets
from cli import UserError
for case in sys.argv[1:]:
    name, folder = case.split("=")
    try:
        datasets.load_splits(name, folder, download=False)
        print(case, "-> loaded")
    except UserError as error:
        print(case, "->", error)
"""


def test_unreadable_files_and_folders_are_one_line_each(tmp_path):
    """As a user without read access: root keeps access through CAP_DAC_OVERRIDE, so the readers run in a process
    that drops it (setpriv), as a non-root user would be."""
    cases = {}
    for reader, unreadable in [("cifar10", "cifar-10-batches-py/data_batch_1"), ("cifar10", "cifar-10-batches-py"),
                               ("fashionmnist", "train-labels-idx1-ubyte.gz"), ("fashionmnist", ".")]:
        root = tmp_path / f"{reader}-{len(cases)}"
        write_cifar10(root) if reader == "cifar10" else write_fashion(root, fake_fashion())
        (root / unreadable).chmod(0)
        cases[f"{reader}={root}"] = (root / unreadable).resolve()
    drop_root_access = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    out = subprocess.run([*drop_root_access, sys.executable, "-c", UNREADABLE_CASES, *cases], capture_output=True,
                         text=True, cwd=Path(D.__file__).parent, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr  # the CIFAR cases used to end in one
    lines = out.stdout.splitlines()
    assert len(lines) == len(cases), out.stdout
    for line, (case, unreadable) in zip(lines, cases.items()):
        assert line.startswith(f"{case} -> {unreadable}") and "cannot be read (Permission denied)" in line, line
