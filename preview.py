"""A PNG grid of augmented views, one row per augmentation (preset, spec or policy .json): its name, the source
image resized to the crop size, then the views; with --local-crops, SwAV-style local crops after them, shown at
their size relative to the global views.

    python preview.py --preset original ours --n 8 --out views.png [--image FILE | --dataset NAME --data-dir DIR]
    python preview.py --preset simclr ours:solarize.p=0.6 --size 32 --local-crops 6 --local-size 14
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise checks PyPI for updates at import

import re
from pathlib import Path

import cv2
import numpy as np

from augmentations import SPEC_HELP, MultiView, build_multicrop, build_transform, describe_policy, resolve_policy
from cli import ArgumentParser, UserError, make_dirs, run_main, seed

LABEL_WIDTH = 160
FONT = cv2.FONT_HERSHEY_SIMPLEX


def fit(line, scale):  # the font scale, at most `scale`, at which line fits in the label
    return min(scale, (LABEL_WIDTH - 10) / cv2.getTextSize(line, FONT, 1.0, 1)[0][0])


def label_tile(text, height):
    """White tile with the row's name in black; long specs wrap after ':' and ','."""
    tile = np.full((height, LABEL_WIDTH, 3), 255, np.uint8)
    lines = [text]
    if fit(text, 0.6) < 0.4:
        lines = []
        for part in re.split(r"(?<=[:,])", text):
            if lines and fit(lines[-1] + part, 0.4) == 0.4:
                lines[-1] += part
            else:
                lines.append(part)
    line_height = 14 if len(lines) > 1 else 0
    top = height // 2 + 5 - line_height * (len(lines) - 1) // 2
    for i, line in enumerate(lines):
        scale = fit(line, 0.6 if len(lines) == 1 else 0.4)
        cv2.putText(tile, line, (5, top + i * line_height), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def preview_grid(image, presets, n, size, seed=0, tile=96, local_crops=0, local_size=None,
                 local_scale=(0.05, 0.3), global_scale=(0.14, 1.0)):
    """RGB uint8 grid, one row per spec: its name, the source resized to size, then n views. With local_crops > 0,
    the n views are multi-crop global views (crop scale global_scale), followed by local_crops local views of
    local_size px (crop scale local_scale), each shown local_size / size as wide as a global view."""

    def show(view, side=tile):  # uint8 CHW tensor -> HWC, nearest-neighbour enlargement keeps 32-px pixels visible
        view = view.permute(1, 2, 0).numpy()
        interpolation = cv2.INTER_NEAREST if view.shape[0] <= side else cv2.INTER_AREA
        return cv2.resize(view, (side, side), interpolation=interpolation)

    source = show(build_transform("eval", size)(image=image)["image"])
    local_side = max(1, round(tile * local_size / size)) if local_crops else 0
    rows = []
    for spec in presets:
        if local_crops:
            views = build_multicrop(spec, size, local_size, local_scale, global_scale, n_global=n, n_local=local_crops)
        else:
            views = MultiView(build_transform(spec, size), n)
        views.set_random_seed(seed)
        drawn = views(image)
        shown = [show(view) for view in drawn[:n]]
        for view in drawn[n:]:  # a local view, at the top of a tile-high white column
            column = np.full((tile, local_side, 3), 255, np.uint8)
            column[: min(tile, local_side)] = show(view, local_side)[:tile]
            shown.append(column)
        name = Path(spec).name if str(spec).endswith(".json") else str(spec)
        row = np.hstack([label_tile(name, tile), source] + shown)
        row[:, LABEL_WIDTH + tile - 1 : LABEL_WIDTH + tile + 1] = 255  # separates the source from the views
        if local_crops:
            start = LABEL_WIDTH + (n + 1) * tile
            row[:, start - 1 : start + 1] = 255  # and the global views from the local ones
        row[-1] = 255
        rows.append(row)
    return np.vstack(rows)


def read_image(args):
    if args.image:
        if not Path(args.image).is_file():  # checked first: cv2.imread would also print its own warning
            raise UserError(f"cannot read image {args.image}: no such file")
        data = np.fromfile(args.image, np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # cv2 asserts on an empty buffer
        if image is None:
            raise UserError(f"cannot read image {args.image}: not an image file OpenCV can decode")
        if min(image.shape[:2]) < 8:  # the crops of a smaller image are not defined (Albumentations raises)
            raise UserError(f"image {args.image} is {image.shape[1]}x{image.shape[0]} px; the preview needs at least "
                            "8 px on each side")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    from datasets import load_splits  # only when a dataset is asked for: reading an image file needs no torchvision

    default = "fashionmnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "synthetic"
    test = load_splits(args.dataset or default, args.data_dir, download=False).test
    if not 0 <= args.index < len(test):
        raise UserError(f"--index {args.index} is outside the test split (0..{len(test) - 1})")
    return test[args.index][0]


def main(argv=None):
    parser = ArgumentParser(description="Write a PNG grid of augmented views, one row per augmentation.")
    parser.add_argument("--preset", nargs="+", default=["original", "ours"], help=SPEC_HELP)
    parser.add_argument("--n", type=int, default=8, help="views per row (global views with --local-crops)")
    parser.add_argument("--out", default="views.png", help="PNG file to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", help="an image file; none: test[--index] of --dataset")
    source.add_argument("--dataset", help="a dataset of datasets.py; none: fashionmnist if installed, else synthetic")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--size", type=int, default=None, help="crop size; none: the image's shorter side")
    parser.add_argument("--local-crops", type=int, default=0, help="multi-crop: local views per row after the n views")
    parser.add_argument("--local-size", type=int, default=None,
                        help="local crop size; none: SwAV's 96/224 of the crop size")
    parser.add_argument("--local-scale", type=float, nargs=2, default=(0.05, 0.3), metavar=("LOW", "HIGH"),
                        help="crop area range of the local views")
    parser.add_argument("--global-scale", type=float, nargs=2, default=(0.14, 1.0), metavar=("LOW", "HIGH"),
                        help="crop area range of the global views, with --local-crops")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--tile", type=int, default=96, help="display size of each view in pixels")
    args = parser.parse_args(argv)
    if args.n < 1 or args.tile < 8 or args.local_crops < 0:
        raise UserError("--n must be at least 1, --tile at least 8 and --local-crops at least 0")
    for name in ("size", "local_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 px, got {getattr(args, name)}")
    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {args.out}")
    image = read_image(args)
    make_dirs(Path(args.out).parent, "--out's directory")  # after the image: a bad --image leaves no empty folder
    size = args.size if args.size is not None else min(image.shape[:2])
    local_size = args.local_size or max(1, round(size * 96 / 224))
    grid = preview_grid(image, args.preset, args.n, size, args.seed, args.tile, args.local_crops, local_size,
                        tuple(args.local_scale), tuple(args.global_scale))
    if not cv2.imwrite(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise UserError(f"cannot write {args.out}")
    for spec in args.preset:
        described = describe_policy(resolve_policy(spec, size))
        print(f"{spec}:\n" + "\n".join("  " + line for line in described.splitlines()))
    local = f" + {args.local_crops} local crops at {local_size} px" if args.local_crops else ""
    print(f"wrote {args.out}: {len(args.preset)} rows x {args.n} views at {size} px{local}")


if __name__ == "__main__":
    run_main(main)
