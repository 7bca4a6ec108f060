"""Augmentation presets (Albumentations 2.x), ablation specs such as 'ours-clahe' or 'original+blur', the multi-view
wrapper, and a preview grid: python augmentations.py --preset original ours --n 8 --out views.png"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise checks PyPI for updates at import

import argparse
import random
import re
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from cli import UserError


class Pipeline(A.Compose):
    """A.Compose whose transforms draw from one shared RNG. Albumentations 2.0.8's own set_random_seed(s) seeds every
    transform with the same s, so their streams coincide and e.g. flip (p=.5) fires whenever gray (p=.2) does."""

    def set_random_seed(self, seed):
        self.seed = seed
        self.set_random_state(np.random.default_rng(seed), random.Random(seed))


class SupervisedCrop(A.ImageOnlyTransform):
    """torchvision's RandomCrop(size, padding=4) (zero padding) for inputs no larger than `size`, the CIFAR recipe;
    RandomResizedCrop(size) for larger inputs (ImageNet, or a downcrop such as STL-10 96 -> 50)."""

    def __init__(self, size, padding=4):
        super().__init__(p=1.0)
        self.size, self.padding = size, padding
        self.resized_crop = random_resized_crop(size)

    def apply(self, img, **params):
        height, width = img.shape[:2]
        if max(height, width) > self.size:
            self.resized_crop.set_random_state(self.random_generator, self.py_random)
            return self.resized_crop(image=img)["image"]
        pad_y = self.padding + (self.size - height + 1) // 2  # inputs smaller than size are padded up to it
        pad_x = self.padding + (self.size - width + 1) // 2
        padded = cv2.copyMakeBorder(img, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=0)
        y = self.py_random.randint(0, padded.shape[0] - self.size)
        x = self.py_random.randint(0, padded.shape[1] - self.size)
        return np.ascontiguousarray(padded[y : y + self.size, x : x + self.size])


# INTER_AREA when a resize shrinks: torchvision resizes PIL images with antialiasing, plain cv2 bilinear aliases
# (matters for downcrop, STL-10 96 -> 50, and ImageNet); enlarging (most CIFAR crops) stays bilinear.
def random_resized_crop(size):
    return A.RandomResizedCrop(size=(size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), area_for_downscale="image")


def blur_kernel(size):  # SimCLR: kernel 10% of the image side, odd
    kernel = int(0.1 * size)
    return max(3, kernel + 1 - kernel % 2)


OPS = {  # what '+op' adds (the seed pipeline's parameters); this order decides where an added op goes
    "crop": random_resized_crop,
    "jitter": lambda size: A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
    "flip": lambda size: A.HorizontalFlip(p=0.5),
    "gray": lambda size: A.ToGray(num_output_channels=3, method="weighted_average", p=0.2),
    "blur": lambda size: A.GaussianBlur(blur_limit=(blur_kernel(size),) * 2, sigma_limit=(0.1, 2.0), p=0.5),
    # 2.x takes the threshold as a fraction of 255: uint8 pixels >= 127.5, i.e. >= 128, invert, the seed's threshold=128
    "solarize": lambda size: A.Solarize(threshold_range=(0.5, 0.5), p=0.2),
    "clahe": lambda size: A.CLAHE(clip_limit=4.0, tile_grid_size=(8, 8), p=0.2),
    "brightness_contrast": lambda size: A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.2),
}


def named(size, *names):
    return [(name, OPS[name](size)) for name in names]


def resize_ops(size):
    return [("resize", A.SmallestMaxSize(max_size=size, area_for_downscale="image")), ("center_crop", A.CenterCrop(size, size))]


def simclr_ops(size):
    # SimCLR paper, Appendix A: colour strength s=1.0 on ImageNet, s=0.5 and no blur on CIFAR-10 (32x32)
    s = 0.5 if size <= 32 else 1.0
    jitter = A.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, p=0.8)
    ops = named(size, "crop", "flip") + [("jitter", jitter)] + named(size, "gray")
    return ops + named(size, "blur") if size > 32 else ops


PRESETS = {
    "original": lambda size: named(size, "crop", "jitter", "flip", "gray"),  # facebookresearch/moco CIFAR demo
    "ours": lambda size: named(size, "crop", "jitter", "flip", "gray", "solarize", "clahe", "brightness_contrast"),
    "simclr": simclr_ops,
    "supervised": lambda size: [("crop", SupervisedCrop(size))] + named(size, "flip"),
    "eval": resize_ops,
}
SPEC_HELP = (
    f"an augmentation is a preset ({', '.join(PRESETS)}) followed by any +op/-op terms with ops "
    f"{', '.join(OPS)}, e.g. 'ours-clahe' or 'original+solarize'"
)


def build_ops(name, size):
    """[(op name, transform)] of a preset or ablation spec, without Normalize/ToTensorV2."""
    spec = re.fullmatch(r"([a-z]+)((?:[+-][a-z_]+)*)", str(name))
    if spec is None or spec.group(1) not in PRESETS:
        raise UserError(f"unknown augmentation {name!r}: {SPEC_HELP}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise UserError(f"augmentation size must be a positive integer, got {size!r}")
    ops = PRESETS[spec.group(1)](int(size))
    for sign, op in re.findall(r"([+-])([a-z_]+)", spec.group(2)):
        present = [n for n, _ in ops]
        if op not in OPS:
            raise UserError(f"unknown op {op!r} in {name!r}: {SPEC_HELP}")
        if sign == "-":
            if op not in present:
                raise UserError(f"{name!r} removes {op!r}, which is not there (it holds {', '.join(present)})")
            at = present.index(op)
            ops[at : at + 1] = resize_ops(size) if op == "crop" else []  # without a random crop, still resize to size
        else:
            if op in present:
                raise UserError(f"{name!r} adds {op!r}, which is already there (it holds {', '.join(present)})")
            if op == "crop":  # a random crop replaces the plain resize
                ops = [(n, t) for n, t in ops if n not in ("resize", "center_crop")]
            rank = list(OPS).index
            at = max((i + 1 for i, (n, _) in enumerate(ops) if n in OPS and rank(n) < rank(op)), default=0)
            ops.insert(at, (op, OPS[op](size)))
    return ops


def build_transform(name, size, mean=None, std=None) -> A.Compose:
    """uint8 HWC RGB image of any size -> tensor (3, size, size): float32 normalised with mean/std (in [0, 1] units),
    or, without mean/std, uint8 for a loader whose batches are normalised on the device (training.Runtime.to_device),
    which is what the scripts do."""
    ops = [t for _, t in build_ops(name, size)]
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    normalize = [] if mean is None else [A.Normalize(mean=mean, std=std, max_pixel_value=255)]
    return Pipeline(ops + normalize + [ToTensorV2()])


def op_names(name, size=32):
    return [n for n, _ in build_ops(name, size)]


class MultiView:
    """n independent draws of `transform` on one uint8 HWC image: the views of a contrastive pair (or triple)."""

    def __init__(self, transform, n_views: int = 2):
        if n_views < 1:
            raise UserError(f"the number of views must be at least 1, got {n_views}")
        self.transform, self.n_views = transform, n_views

    def __call__(self, image):
        return [self.transform(image=image)["image"] for _ in range(self.n_views)]

    def set_random_seed(self, seed):
        self.transform.set_random_seed(seed)


LABEL_WIDTH = 160


def preview_grid(image, presets, n, size, seed=0, tile=96):
    """RGB uint8 grid, one row per preset: its name, the source resized to size, then n augmented views."""

    def show(view):  # nearest-neighbour enlargement keeps 32-px pixels visible
        interpolation = cv2.INTER_NEAREST if view.shape[0] <= tile else cv2.INTER_AREA
        return cv2.resize(view, (tile, tile), interpolation=interpolation)

    source = show(Pipeline([t for _, t in resize_ops(size)])(image=image)["image"])
    rows = []
    for name in presets:
        augment = Pipeline([t for _, t in build_ops(name, size)], seed=seed)
        label = np.full((tile, LABEL_WIDTH, 3), 255, np.uint8)
        text_width = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0]
        scale = min(0.6, (LABEL_WIDTH - 10) / text_width)
        cv2.putText(label, name, (5, tile // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        row = np.hstack([label, source] + [show(augment(image=image)["image"]) for _ in range(n)])
        row[:, LABEL_WIDTH + tile - 1 : LABEL_WIDTH + tile + 1] = 255  # separates the source from the views
        row[-1] = 255
        rows.append(row)
    return np.vstack(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a PNG grid of augmented views, one row per augmentation.")
    parser.add_argument("--preset", nargs="+", default=["original", "ours"], help=SPEC_HELP)
    parser.add_argument("--n", type=int, default=8, help="views per row")
    parser.add_argument("--out", default="views.png", help="PNG file to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", help="an image file (default: --dataset fashionmnist if installed, else synthetic)")
    source.add_argument("--dataset", help="a dataset name of datasets.py; the image is test[--index]")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--size", type=int, default=None, help="crop size (default: the image's shorter side)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=96, help="display size of each view in pixels")
    args = parser.parse_args(argv)
    if args.n < 1 or args.tile < 8:
        raise UserError("--n must be at least 1 and --tile at least 8")
    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {args.out}")
    if args.image:
        if not Path(args.image).is_file():  # checked first: cv2.imread would also print its own warning
            raise UserError(f"cannot read image {args.image}: no such file")
        image = cv2.imdecode(np.fromfile(args.image, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"cannot read image {args.image}: not an image file OpenCV can decode")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        from datasets import load_splits  # only the CLI needs datasets.py

        default = "fashionmnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "synthetic"
        test = load_splits(args.dataset or default, args.data_dir, download=False).test
        if not 0 <= args.index < len(test):
            raise UserError(f"--index {args.index} is outside the test split (0..{len(test) - 1})")
        image = test[args.index][0]
    size = args.size or min(image.shape[:2])
    grid = preview_grid(image, args.preset, args.n, size, args.seed, args.tile)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise UserError(f"cannot write {args.out}")
    print(f"wrote {args.out}: {len(args.preset)} rows x {args.n} views at {size} px")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
