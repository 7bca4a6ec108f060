"""Dataset registry: the standard on-disk formats (through torchvision where it reads them) served as uint8 HWC RGB
arrays, so Albumentations works on them directly; synthetic data, subsets, validation splits, ImageNet-100 builder.
CLI: python datasets.py build-imagenet100 IMAGENET_ROOT OUT_ROOT"""
import dataclasses
import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torchvision
from torch.utils.data import Dataset
from torchvision.datasets.utils import check_integrity

from cli import ArgumentParser, UserError, make_dirs, run_main

DEFAULT_DATA_DIR = "./data"
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_CROP_SIZE = 8  # the CIFAR-stem ResNet's last stage is 1/8 of its input: 1x1 at 8 px

# The ImageNet-100 subset of CMC (HobbitLong/CMC imagenet100.txt), also used by solo-learn.
IMAGENET100_CLASSES = """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int  # native side length, the default training crop size
    mean: tuple  # per-channel normalisation, in [0, 1]
    std: tuple
    imagenet_stem: bool  # models use the 7x7 stem + maxpool


DATASETS = {
    info.name: info
    for info in [
        DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), False),
        DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False),
        DatasetInfo("stl10", 10, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), False),
        DatasetInfo("imagenet100", 100, 224, IMAGENET_MEAN, IMAGENET_STD, True),
        DatasetInfo("tinyimagenet", 200, 64, IMAGENET_MEAN, IMAGENET_STD, False),
        DatasetInfo("imagefolder", 0, 224, IMAGENET_MEAN, IMAGENET_STD, True),  # num_classes read from the tree
        # computed once on the 60,000 real training images after zero-padding to 32x32
        DatasetInfo("fashionmnist", 10, 32, (0.2190,) * 3, (0.3318,) * 3, False),
        # computed once on the default synthetic train set (1,000 images, synthetic_seed 0)
        DatasetInfo("synthetic", 10, 32, (0.5723, 0.5203, 0.3843), (0.3565, 0.2436, 0.2764), False),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def check_crop_size(info: DatasetInfo, crop_size: Optional[int]) -> int:
    """The training crop size: `crop_size`, or the dataset's native size when None. Downcrops down to MIN_CROP_SIZE
    and upscaling up to max(4x native, 512) px pass; anything larger would only exhaust memory in cv2 or the model."""
    if crop_size is None:
        return info.image_size
    largest = max(4 * info.image_size, 512)
    if not MIN_CROP_SIZE <= crop_size <= largest:
        raise UserError(f"crop size {crop_size} is out of range for {info.name} (native {info.image_size} px): "
                        f"choose {MIN_CROP_SIZE}..{largest}")
    return crop_size


def read_rgb(path) -> np.ndarray:
    if not os.path.isfile(path):
        raise UserError(f"image {path} is missing")
    data = np.fromfile(path, np.uint8)
    if data[:2].tobytes() == JPEG_START and JPEG_END not in data[-1024:].tobytes():
        # cv2.imread decodes a truncated file with a grey tail and only prints "Premature end of JPEG file"
        raise UserError(f"image {path} is a truncated JPEG (no end-of-image marker): replace or delete it")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UserError(f"cannot decode image {path} (corrupt or not an image): replace or delete it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"  # SOI / EOI markers; FF D9 cannot occur inside stuffed scan data


class ImageDataset(Dataset):
    """(uint8 HWC RGB image, int label); label -1 = unlabelled. `images` is an (N, H, W, 3) uint8 array or an
    array of file paths (a numpy str array, not a list, so forked workers don't copy it through refcounts)."""

    def __init__(self, images: np.ndarray, labels):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        assert len(images) == len(self.labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        image = read_rgb(image) if self.images.dtype.kind == "U" else np.ascontiguousarray(image)
        return image, int(self.labels[index])

    def subset(self, indices) -> "ImageDataset":
        return ImageDataset(self.images[indices], self.labels[indices])


@dataclass
class Splits:
    info: DatasetInfo
    pretrain: ImageDataset  # STL-10: train+unlabeled; others: train
    memory: ImageDataset  # labelled train split: kNN memory bank / linear-probe train set
    test: ImageDataset
    val: Optional[ImageDataset] = None  # labelled images held out of pretrain and memory (load_splits' val_size)


# --- torchvision's CIFAR and STL-10 -------------------------------------------------------------------------------


def _checked_files(cls, root: Path):
    """(path, md5) of every file torchvision's integrity check covers, and of the archive they come from."""
    files = [(root / cls.base_folder / name, md5) for name, md5 in cls.train_list + cls.test_list]
    if hasattr(cls, "meta"):
        files.append((root / cls.base_folder / cls.meta["filename"], cls.meta["md5"]))
    return files + [(root / cls.filename, cls.tgz_md5)]


def _unreadable_pickle(cls, root: Path):
    """(path, reason) of the first CIFAR pickle that does not hold what torchvision reads from it, or None."""
    folder = root / cls.base_folder
    for name in [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]:
        try:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
        except Exception as error:  # noqa: BLE001 -- whatever unpickling raises, this file is the culprit
            return folder / name, f"cannot unpickle it: {type(error).__name__}"
        if name == cls.meta["filename"]:
            needed = [cls.meta["key"]]
        else:
            needed = ["data", "labels" if isinstance(entry, dict) and "labels" in entry else "fine_labels"]
        missing = [key for key in needed if not isinstance(entry, dict) or key not in entry]
        if missing:
            return folder / name, f"no {missing[0]!r} key"
        if name != cls.meta["filename"]:
            data, labels = np.asarray(entry["data"]), entry[needed[1]]
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
                return folder / name, f"data of shape {data.shape} with {len(labels)} labels"
    return None


def _torchvision(cls, root: Path, download: bool, **kwargs):
    """torchvision's CIFAR10/CIFAR100/STL10; missing, corrupt or unreadable files and a failed download end in one
    UserError that says which file to place where."""
    fresh_copy = f"{cls.filename} (from {cls.url}) in {root}/"
    try:
        for path, _ in _checked_files(cls, root):  # pathlib raises for a folder this user may not search, where
            path.is_file()  # torchvision's os.path.isfile would call its files missing
        dataset = cls(root=str(root), download=download, **kwargs)
    except PermissionError as error:  # before OSError: an unreadable file is neither missing nor corrupt
        raise UserError(f"{error.filename} cannot be read ({error.strerror}): give your user read access to it"
                        ) from None
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a failed checksum is a RuntimeError
        corrupt = [str(path.relative_to(root)) for path, md5 in _checked_files(cls, root)
                   if path.is_file() and not check_integrity(str(path), md5)]
        if corrupt:
            them = "them" if len(corrupt) > 1 else "it"
            raise UserError(
                f"{', '.join(corrupt)} in {root}/ {'are' if len(corrupt) > 1 else 'is'} present but corrupt (checksum "
                f"mismatch): delete {them} and run with download on to re-download, "
                f"or place a fresh copy of {fresh_copy} and run with download on to extract it"
            ) from error
        if download:
            reason = str(error).strip().splitlines()[0][:150] if str(error).strip() else type(error).__name__
            raise UserError(f"could not download {cls.filename} ({reason}; no network?): download it by hand from "
                            f"{cls.url} and place it in {root}/") from error
        raise UserError(f"{cls.__name__} data not found in {root}: place {fresh_copy} and run with download on"
                        ) from error
    except (KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as error:
        raise _unreadable(cls, root) from error  # the checksums passed (or were bypassed), yet the files are wrong
    if len(dataset.data) != len(getattr(dataset, "targets", getattr(dataset, "labels", None))):
        raise _unreadable(cls, root)
    return dataset


def _unreadable(cls, root: Path) -> UserError:
    """The error for files that passed the integrity check but do not hold what torchvision reads from them."""
    culprit = _unreadable_pickle(cls, root) if hasattr(cls, "meta") else None
    what = (f"{culprit[0]} is not a {cls.__name__} file ({culprit[1]})" if culprit else
            f"the {cls.__name__} files in {root / cls.base_folder} do not hold one label per image")
    return UserError(f"{what}: delete {root / cls.base_folder} and place a fresh copy of {cls.filename} "
                     f"(from {cls.url}) in {root}/")


def _cifar(cls, root, download):
    train, test = (_torchvision(cls, root, download, train=train) for train in (True, False))
    train_set = ImageDataset(train.data, train.targets)
    return train_set, train_set, ImageDataset(test.data, test.targets)


def _stl10(root, download):
    def load(split):
        data = _torchvision(torchvision.datasets.STL10, root, download, split=split)
        return ImageDataset(data.data.transpose(0, 2, 3, 1), data.labels)  # (N,3,96,96) -> HWC view

    pretrain = load("train+unlabeled")
    # torchvision puts the labelled train images first; slicing them avoids a second md5 pass over 2.6 GB
    n_labelled = int((pretrain.labels >= 0).sum())
    memory = ImageDataset(pretrain.images[:n_labelled], pretrain.labels[:n_labelled])
    return pretrain, memory, load("test")


# --- Fashion-MNIST idx files --------------------------------------------------------------------------------------

FASHION_FILES = [name for name, _ in torchvision.datasets.FashionMNIST.resources]  # train images, labels; test ...


def _read_idx(path) -> np.ndarray:
    """An idx file (uint8 payload, big-endian dims), gzipped or not."""
    try:
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
        if data[:3] != b"\x00\x00\x08":
            raise ValueError("no uint8 idx header")
        dims = np.frombuffer(data, ">u4", count=data[3], offset=4).astype(int)
        return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)
    except PermissionError as error:
        raise UserError(f"{path} cannot be read ({error.strerror}): give your user read access to it") from None
    except (OSError, EOFError, ValueError, zlib.error) as error:  # BadGzipFile is an OSError; a damaged stream zlib's
        raise UserError(f"{path} is not a readable uint8 idx file ({error}): replace it") from error


def _fashion_files(folder: Path):
    """The four idx files directly in folder (gzipped or not), or None."""
    files = []
    for archive in FASHION_FILES:
        found = [path for path in (folder / archive, folder / archive[: -len(".gz")]) if path.is_file()]
        if not found:
            return None
        files.append(found[0])
    return files


def _fashionmnist(root: Path, download: bool):
    cls = torchvision.datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"  # where torchvision downloads them
    folders = [root, raw, Path(DEBIAN_FASHION_MNIST)]
    try:
        files = next(filter(None, map(_fashion_files, folders)), None)
    except PermissionError as error:  # a folder on the search path that this user may not list
        raise UserError(f"{error.filename} cannot be read ({error.strerror}): give your user access to it, or "
                        "choose another --data-dir") from None
    failure = ""
    if files is None and download:
        try:
            cls(root=str(root), train=True, download=True)
            files = _fashion_files(raw)
        except (OSError, RuntimeError) as error:  # torchvision's RuntimeError lists every mirror's URLError
            failure = f"; the download from {cls.mirrors[0]} failed ({str(error).strip().splitlines()[-1][:150]})"
    if files is None:
        raise UserError(f"fashionmnist needs {', '.join(FASHION_FILES)} (or un-gzipped), found in none of "
                        f"{', '.join(map(str, folders))}{failure}: place them in {root}/, "
                        f"or apt-get install dataset-fashion-mnist")
    train_images, train_labels, test_images, test_labels = map(_read_idx, files)
    for images, labels, names in [(train_images, train_labels, files[:2]), (test_images, test_labels, files[2:])]:
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{names[0]} ({images.shape}) and {names[1]} ({labels.shape}) are not 28x28 images with "
                            "one label each: replace them")

    def padded_rgb(gray):  # 28x28 -> 32x32 by a zero border (pixels stay exact), replicated to 3 channels
        out = np.zeros((len(gray), 32, 32, 3), np.uint8)
        out[:, 2:30, 2:30, :] = gray[..., None]
        return out

    train_set = ImageDataset(padded_rgb(train_images), train_labels)
    return train_set, train_set, ImageDataset(padded_rgb(test_images), test_labels)


# --- image files: TinyImageNet, ImageFolder ------------------------------------------------------------------------


def _tinyimagenet(root: Path):
    folder = root if (root / "train").is_dir() else root / "tiny-imagenet-200"
    if not (folder / "train").is_dir():
        raise UserError(
            f"tinyimagenet not found in {root}: download tiny-imagenet-200.zip "
            f"(http://cs231n.stanford.edu/tiny-imagenet-200.zip) and unzip it in {root}/ (giving {folder}/train, val)"
        )
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"tinyimagenet: {annotations} (the validation labels) is missing: "
                        f"unzip tiny-imagenet-200.zip in {folder.parent}/ again")
    classes = sorted(entry.name for entry in os.scandir(folder / "train") if entry.is_dir())
    class_index = {wnid: i for i, wnid in enumerate(classes)}
    train_files, train_labels = [], []
    for wnid in classes:
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise UserError(f"tinyimagenet: {images_dir} is missing")
        names = sorted(name for name in os.listdir(images_dir) if name.lower().endswith((".jpeg", ".jpg", ".png")))
        train_files += [str(images_dir / name) for name in names]
        train_labels += [class_index[wnid]] * len(names)
    val_files, val_labels = [], []
    for line in annotations.read_text().splitlines():
        if line.strip():
            filename, wnid = line.split("\t")[:2]
            if wnid not in class_index:
                raise UserError(f"{annotations} names class {wnid}, which has no folder in {folder / 'train'}")
            val_files.append(str(folder / "val" / "images" / filename))
            val_labels.append(class_index[wnid])
    train_set = ImageDataset(np.array(train_files), train_labels)
    return train_set, train_set, ImageDataset(np.array(val_files), val_labels), len(classes)


def _image_folder(root: Path, name: str):
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        hint = "; build one with: python datasets.py build-imagenet100 IMAGENET_ROOT OUT_ROOT" if name == "imagenet100" else ""
        raise UserError(f"{name} needs an ImageFolder root with train/ and val/ class folders, not found in {root}{hint}")
    try:
        train, val = (torchvision.datasets.ImageFolder(str(root / split)) for split in ("train", "val"))
    except FileNotFoundError as error:  # a class folder without images
        raise UserError(f"{name}: {error}") from error
    if val.classes != train.classes:
        raise UserError(f"{name}: {root}/val and {root}/train hold different class folders")
    as_dataset = lambda folder: ImageDataset(np.array([path for path, _ in folder.samples]), folder.targets)
    train_set = as_dataset(train)
    return train_set, train_set, as_dataset(val), len(train.classes)


# --- synthetic ------------------------------------------------------------------------------------------------------


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Class `label`'s shape in shape-centred coordinates (u, v in units of the shape's radius)."""
    box = np.maximum(abs(u), abs(v)) < 1
    r = np.hypot(u, v)
    d1, d2 = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
    bar = lambda a, b: (abs(a) < 0.3) & (abs(b) < 1) | (abs(b) < 0.3) & (abs(a) < 1)
    return [
        lambda: r < 1,  # disk
        lambda: (r < 1) & (r > 0.55),  # ring
        lambda: np.maximum(abs(u), abs(v)) < 0.8,  # square
        lambda: abs(u) + abs(v) < 1,  # diamond
        lambda: (v < 0.7) & (v > 2 * abs(u) - 1.1),  # triangle
        lambda: bar(u, v),  # plus
        lambda: bar(d1, d2),  # cross
        lambda: box & (np.sin(v * 2.5 * np.pi) > 0),  # horizontal stripes
        lambda: box & (np.sin(u * 2.5 * np.pi) > 0),  # vertical stripes
        lambda: box & (np.sin(u * 2 * np.pi) * np.sin(v * 2 * np.pi) > 0),  # checkerboard
    ][label]()


PALETTE = np.array([[230, 60, 50], [50, 170, 70], [60, 90, 220], [240, 210, 60]], np.float32)


def synthetic_images(n: int, rng: np.random.Generator, size: int = 32, chunk: int = 2048):
    """n balanced 10-class images: the class is the shape, tiled as a wallpaper; the palette colours, scale, phase,
    rotation and noise are random and class-independent."""
    labels = rng.permutation(np.arange(n) % 10)
    # Colours come from a small palette (+ jitter), so colour cannot tell one image from its neighbours: instance
    # discrimination (MoCo, SimCLR) then has to use the shape, as on natural images, instead of a colour shortcut.
    pair = rng.choice([(b, f) for b in range(len(PALETTE)) for f in range(len(PALETTE)) if b != f], n)
    jitter = rng.uniform(-12, 12, (2, n, 1, 1, 3))
    background = PALETTE[pair[:, 0], None, None] + jitter[0]
    foreground = PALETTE[pair[:, 1], None, None] + jitter[1]
    centre = (size / 2 + rng.uniform(-6, 6, (n, 2, 1, 1))).astype(np.float32)
    radius = rng.uniform(3, 5, (n, 1, 1)).astype(np.float32)
    angle = rng.uniform(-0.35, 0.35, (n, 1, 1)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
    images = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, chunk):  # chunks keep the float temporaries small for large n
        part = slice(start, start + chunk)
        dx, dy = xx - centre[part, 0], yy - centre[part, 1]
        cos, sin = np.cos(angle[part]), np.sin(angle[part])
        # a wallpaper of the class's shape (period = 2.4 radii): every crop of the image still shows the class
        a, b = (dx * cos + dy * sin) / (2.4 * radius[part]), (dy * cos - dx * sin) / (2.4 * radius[part])
        u, v = (a - np.round(a)) * 2.4, (b - np.round(b)) * 2.4
        mask = np.zeros(u.shape, bool)
        for label in range(10):
            chosen = labels[part] == label
            mask[chosen] = _shape_mask(label, u[chosen], v[chosen])
        noise = rng.standard_normal(mask.shape + (3,), dtype=np.float32) * 12
        image = np.where(mask[..., None], foreground[part], background[part]) + noise
        images[part] = np.clip(image, 0, 255)
    return images, labels


def _synthetic(synthetic_size, synthetic_seed):
    n_train, n_test = synthetic_size
    # separate streams: the test set does not change with the train-set size
    train_set = ImageDataset(*synthetic_images(n_train, np.random.default_rng([synthetic_seed, 0])))
    return train_set, train_set, ImageDataset(*synthetic_images(n_test, np.random.default_rng([synthetic_seed, 1])))


# --- subsets and validation splits ----------------------------------------------------------------------------------


def _take_subset(pretrain, memory, n, seed):
    if n <= 0 or n > min(len(pretrain), len(memory)):
        raise UserError(
            f"subset {n} is impossible: choose 1..{min(len(pretrain), len(memory))} "
            f"(the pretrain split holds {len(pretrain)} images, the memory split {len(memory)})"
        )
    rng = np.random.default_rng(seed)
    choose = lambda dataset: dataset.subset(np.sort(rng.choice(len(dataset), n, replace=False)))
    chosen = choose(pretrain)
    return chosen, chosen if memory is pretrain else choose(memory)


def stratified_choice(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of n of `labels`, each class's count within 1 of its proportional share n * count / total
    (largest remainders get the extra ones, ties broken at random)."""
    classes, counts = np.unique(labels, return_counts=True)
    share = n * counts / len(labels)
    per_class = np.floor(share).astype(int)
    extra = np.lexsort((rng.random(len(classes)), per_class - share))[: n - per_class.sum()]
    per_class[extra] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(chosen))


def _hold_out_val(pretrain, memory, val_size, seed):
    """(pretrain, memory, val) with a stratified choice of val_size labelled images (below 1: that fraction of them)
    moved out of pretrain and memory."""
    count = round(val_size * len(memory)) if val_size < 1 else val_size
    if not 0 < count < len(memory):
        raise UserError(f"a validation split of {val_size} is impossible: choose 1..{len(memory) - 1} images or a "
                        f"fraction that holds at least one (the labelled training split holds {len(memory)} images)")
    val = stratified_choice(memory.labels, count, np.random.default_rng([seed, 1]))  # a stream apart from subsets
    keep = np.setdiff1d(np.arange(len(memory)), val)
    kept = memory.subset(keep)
    if pretrain is memory:
        return kept, kept, memory.subset(val)
    unlabelled = np.arange(len(memory), len(pretrain))  # every reader puts memory's images first in pretrain
    return pretrain.subset(np.concatenate([keep, unlabelled])), kept, memory.subset(val)


def load_splits(name, data_dir=None, download=True, subset=None, seed=0, synthetic_size=(1000, 500), synthetic_seed=0,
                val_size=0) -> Splits:
    """Pretrain / memory / test splits of dataset `name`, and a validation split when val_size > 0.

    `val_size` holds out a seeded, stratified choice of that many labelled training images (below 1: that fraction
    of them) as `val` (STL-10's unlabelled images stay in pretrain). `subset` then keeps a seeded choice of that many
    of the remaining pretrain images, and as many memory images (the same ones where pretrain is memory); the test
    split stays whole. `seed` drives only these choices: synthetic data is fixed by `synthetic_seed`."""
    info = dataset_info(name)
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser().resolve()
    if root.is_file() and name != "synthetic":
        raise UserError(f"data dir {root} is a file, not a directory")
    num_classes = info.num_classes
    if name == "synthetic":
        pretrain, memory, test = _synthetic(synthetic_size, synthetic_seed)
    elif name in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        pretrain, memory, test = _cifar(cls, root, download)
    elif name == "stl10":
        pretrain, memory, test = _stl10(root, download)
    elif name == "fashionmnist":
        pretrain, memory, test = _fashionmnist(root, download)
    elif name == "tinyimagenet":
        pretrain, memory, test, num_classes = _tinyimagenet(root)
    else:
        pretrain, memory, test, num_classes = _image_folder(root, name)
    val = None
    if val_size:
        pretrain, memory, val = _hold_out_val(pretrain, memory, val_size, seed)
    if subset is not None:
        pretrain, memory = _take_subset(pretrain, memory, subset, seed)
    return Splits(dataclasses.replace(info, num_classes=num_classes), pretrain, memory, test, val)


# --- ImageNet-100 builder -------------------------------------------------------------------------------------------


def build_imagenet100(imagenet_root, out_root, classes=IMAGENET100_CLASSES) -> None:
    """out_root/{train,val}/<wnid> symlinks to the listed class folders of a full ImageNet root; absent ones are skipped."""
    imagenet_root, out_root = Path(imagenet_root).expanduser().resolve(), Path(out_root).expanduser()
    for split in ("train", "val"):
        present = [wnid for wnid in classes if (imagenet_root / split / wnid).is_dir()]
        if not present:
            raise UserError(f"{imagenet_root / split} holds none of the class folders (expected <wnid>/ folders)")
        make_dirs(out_root / split, "ImageNet-100 directory")
        for wnid in present:
            link, target = out_root / split / wnid, imagenet_root / split / wnid
            if link.is_symlink() and link.resolve() == target.resolve():
                continue
            if link.exists() or link.is_symlink():
                raise UserError(f"{link} already exists and is not a link to {target}")
            link.symlink_to(target, target_is_directory=True)


def main(argv=None):
    parser = ArgumentParser(description="Dataset utilities.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-imagenet100", help="symlink the ImageNet-100 classes into an ImageFolder root")
    build.add_argument("imagenet_root", help="full ImageNet root with train/<wnid>/ and val/<wnid>/")
    build.add_argument("out_root", help="where to create train/ and val/")
    args = parser.parse_args(argv)
    build_imagenet100(args.imagenet_root, args.out_root)
    linked = len(os.listdir(Path(args.out_root) / "train"))
    print(f"{args.out_root}: {linked} of {len(IMAGENET100_CLASSES)} ImageNet-100 classes linked")


if __name__ == "__main__":
    run_main(main)
