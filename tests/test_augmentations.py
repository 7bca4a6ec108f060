import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import augmentations as aug
from training import Runtime, UserError

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
MOCO_JITTER = dict(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.1, 0.1))


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def check(transform, cls, p=None, **attributes):
    assert type(transform) is cls
    if p is not None:
        assert transform.p == pytest.approx(p)
    for name, value in attributes.items():
        assert getattr(transform, name) == pytest.approx(value), name


def check_moco_four(ops, size):
    check(ops[0], A.RandomResizedCrop, 1.0, size=(size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    check(ops[1], A.ColorJitter, 0.8, **MOCO_JITTER)
    check(ops[2], A.HorizontalFlip, 0.5)
    check(ops[3], A.ToGray, 0.2, num_output_channels=3, method="weighted_average")


def check_tail(transform, mean=MEAN, std=STD):
    *_, normalize, to_tensor = transform.transforms
    check(normalize, A.Normalize, 1.0, mean=mean, std=std, max_pixel_value=255)
    assert type(to_tensor) is ToTensorV2


def test_original_preset():
    transform = aug.build_transform("original", 32, MEAN, STD)
    assert len(transform.transforms) == 6 and aug.op_names("original") == ["crop", "jitter", "flip", "gray"]
    check_moco_four(transform.transforms, 32)
    check_tail(transform)


def test_ours_preset():
    transform = aug.build_transform("ours", 32, MEAN, STD)
    ops = transform.transforms
    assert len(ops) == 9
    check_moco_four(ops, 32)
    check(ops[4], A.Solarize, 0.2, threshold_range=(0.5, 0.5))
    check(ops[5], A.CLAHE, 0.2, clip_limit=(1.0, 4.0), tile_grid_size=(8, 8))
    check(ops[6], A.RandomBrightnessContrast, 0.2, brightness_limit=(-0.2, 0.2), contrast_limit=(-0.2, 0.2))
    check_tail(transform)
    assert aug.op_names("ours") == ["crop", "jitter", "flip", "gray", "solarize", "clahe", "brightness_contrast"]


@pytest.mark.parametrize("size, strength, kernel", [(32, 0.5, None), (96, 1.0, 9), (224, 1.0, 23)])
def test_simclr_preset(size, strength, kernel):
    ops = aug.build_transform("simclr", size, MEAN, STD).transforms
    check(ops[0], A.RandomResizedCrop, 1.0, size=(size, size), scale=(0.08, 1.0))
    check(ops[1], A.HorizontalFlip, 0.5)
    s = 0.8 * strength
    check(ops[2], A.ColorJitter, 0.8, brightness=(1 - s, 1 + s), contrast=(1 - s, 1 + s), saturation=(1 - s, 1 + s))
    check(ops[2], A.ColorJitter, hue=(-0.2 * strength, 0.2 * strength))
    check(ops[3], A.ToGray, 0.2, num_output_channels=3)
    if kernel is None:  # CIFAR setup: no blur
        assert len(ops) == 6
    else:
        check(ops[4], A.GaussianBlur, 0.5, blur_limit=(kernel, kernel), sigma_limit=(0.1, 2.0))
        assert len(ops) == 7


def test_supervised_and_eval_presets():
    ops = aug.build_transform("supervised", 32, MEAN, STD).transforms
    check(ops[0], aug.SupervisedCrop, 1.0, size=32, padding=4)
    check(ops[1], A.HorizontalFlip, 0.5)
    ops = aug.build_transform("eval", 50, MEAN, STD).transforms
    check(ops[0], A.SmallestMaxSize, 1.0, max_size=50)
    check(ops[1], A.CenterCrop, 1.0, height=50, width=50)
    assert len(ops) == 4


def applied_counts(transform, image, draws):
    transform.save_applied_params = True
    counts, together = {}, {}
    for _ in range(draws):
        names = {name for name, _ in transform(image=image)["applied_transforms"]}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        together["HorizontalFlip+ToGray"] = together.get("HorizontalFlip+ToGray", 0) + ({"HorizontalFlip", "ToGray"} <= names)
    return counts, together


def within(count, draws, p, sigmas=4.0):
    return abs(count / draws - p) <= sigmas * np.sqrt(p * (1 - p) / draws)


@pytest.mark.parametrize("spec, size, expected", [
    ("ours", 32, {"RandomResizedCrop": 1, "ColorJitter": 0.8, "HorizontalFlip": 0.5, "ToGray": 0.2,
                  "Solarize": 0.2, "CLAHE": 0.2, "RandomBrightnessContrast": 0.2, "Normalize": 1}),
    ("simclr", 40, {"ColorJitter": 0.8, "HorizontalFlip": 0.5, "ToGray": 0.2, "GaussianBlur": 0.5}),
])
def test_probabilities_after_reseed(spec, size, expected):
    transform = aug.build_transform(spec, size, MEAN, STD)
    transform.set_random_seed(0)  # albumentations' own seeding would make every op fire together
    draws = 2000
    counts, together = applied_counts(transform, random_image(size, size), draws)
    for name, p in expected.items():
        assert within(counts.get(name, 0), draws, p), (name, counts.get(name, 0) / draws, p)
    assert within(together["HorizontalFlip+ToGray"], draws, 0.5 * 0.2)  # independent draws


def test_same_seed_same_views():
    image = random_image(32, 32)
    first, second = (aug.build_transform("ours", 32, MEAN, STD) for _ in range(2))
    first.set_random_seed(7), second.set_random_seed(7)
    for _ in range(5):
        assert torch.equal(first(image=image)["image"], second(image=image)["image"])


@pytest.mark.parametrize("spec", ["original", "ours", "simclr", "supervised", "eval", "ours-crop+blur"])
def test_output_shapes(spec):
    for shape in [(32, 32), (96, 96), (80, 60)]:
        image = random_image(*shape)
        for size in (32, 50, 96):
            out = aug.build_transform(spec, size, MEAN, STD)(image=image)["image"]
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, size, size)


@pytest.mark.parametrize("spec, size", [("eval", 50), ("ours", 32), ("simclr", 96)])
def test_uint8_views_normalised_on_the_device_equal_albumentations_normalize(spec, size):
    """The scripts' path (uint8 views, Runtime.to_device normalises) gives the values A.Normalize gives."""
    images = [random_image(96, 96, seed) for seed in range(4)]
    on_cpu, in_workers = aug.build_transform(spec, size), aug.build_transform(spec, size, MEAN, STD)
    on_cpu.set_random_seed(7)
    in_workers.set_random_seed(7)
    raw = torch.stack([on_cpu(image=image)["image"] for image in images])
    expected = torch.stack([in_workers(image=image)["image"] for image in images])
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, size, size)
    for channels_last in (False, True):
        rt = Runtime(torch.device("cpu"), "fp32", channels_last=channels_last, normalize=(MEAN, STD))
        first, second = rt.to_device([raw, raw.clone()])
        assert first.dtype == torch.float32 and torch.equal(first, second)
        assert first.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert (first - expected).abs().max() < 1e-5
    assert torch.equal(rt.to_device(expected), expected)  # a normalised float batch is only moved


def test_uint8_batch_without_stats_and_half_stats_are_refused():
    with pytest.raises(ValueError, match="normalize"):
        Runtime(torch.device("cpu"), "fp32").to_device(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mean and std"):
        aug.build_transform("eval", 32, MEAN)


def test_eval_normalises_with_given_stats_and_downcrops():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    out = aug.build_transform("eval", 50, mean, std)(image=np.full((96, 96, 3), 100, np.uint8))["image"]
    expected = (100 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out, expected.view(3, 1, 1).expand(3, 50, 50), atol=1e-5)
    image = random_image(96, 96)  # square downcrop: an antialiased resize of the whole image
    resized = aug.Pipeline([t for _, t in aug.build_ops("eval", 50)])(image=image)["image"]
    assert np.array_equal(resized, cv2.resize(image, (50, 50), interpolation=cv2.INTER_AREA))


def test_supervised_crop_is_a_window_of_the_zero_padded_image():
    image = random_image(32, 32) | 1  # no zero pixels inside, so padding is recognisable
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    crop = aug.SupervisedCrop(32)
    offsets = set()
    for _ in range(200):
        out = crop(image=image)["image"]
        hits = [(y, x) for y in range(9) for x in range(9) if np.array_equal(out, padded[y : y + 32, x : x + 32])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 40  # offsets 0..8 in both directions
    assert crop(image=random_image(96, 96))["image"].shape == (32, 32, 3)  # larger input: random resized crop


def test_ablation_specs():
    assert aug.op_names("ours-clahe") == ["crop", "jitter", "flip", "gray", "solarize", "brightness_contrast"]
    assert len(aug.build_transform("ours-clahe", 32, MEAN, STD).transforms) == 8
    assert aug.op_names("ours-clahe-solarize") == ["crop", "jitter", "flip", "gray", "brightness_contrast"]
    assert aug.op_names("original+solarize") == ["crop", "jitter", "flip", "gray", "solarize"]
    check(aug.build_ops("original+solarize", 32)[-1][1], A.Solarize, 0.2, threshold_range=(0.5, 0.5))
    blur = dict(aug.build_ops("original+blur", 96))["blur"]
    check(blur, A.GaussianBlur, 0.5, blur_limit=(9, 9), sigma_limit=(0.1, 2.0))
    assert aug.op_names("ours+blur")[4] == "blur"
    assert aug.op_names("original-crop") == ["resize", "center_crop", "jitter", "flip", "gray"]
    assert aug.op_names("eval+crop") == ["crop"]


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "original, ours, simclr, supervised, eval"),
    ("ours-sharpen", "crop, jitter, flip, gray, blur, solarize, clahe, brightness_contrast"),
    ("original-solarize", "not there"),
    ("ours+clahe", "already there"),
    ("ours+", "original, ours"),
    ("eval-resize", "brightness_contrast"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        aug.build_transform(spec, 32, MEAN, STD)


def test_multiview():
    image = random_image(32, 32)
    for n in (2, 3):
        views = aug.MultiView(aug.build_transform("ours", 32, MEAN, STD), n)(image)
        assert len(views) == n and all(v.shape == (3, 32, 32) for v in views)
        assert all(not torch.equal(views[i], views[j]) for i in range(n) for j in range(i + 1, n))
    with pytest.raises(UserError):
        aug.MultiView(aug.build_transform("ours", 32, MEAN, STD), 0)
    for spec in ("ours", "supervised"):  # DataLoader workers started by spawn receive a pickled copy
        views = pickle.loads(pickle.dumps(aug.MultiView(aug.build_transform(spec, 32, MEAN, STD), 2)))(image)
        assert [v.shape for v in views] == [(3, 32, 32)] * 2


def test_solarize_inverts_pixels_from_128():
    solarize = copy.deepcopy(dict(aug.build_ops("ours", 32))["solarize"])
    solarize.p = 1.0
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(solarize(image=values)["image"], np.where(values >= 128, 255 - values, values))


def test_preview_cli(tmp_path):
    source = np.zeros((40, 30, 3), np.uint8)
    source[..., 0] = np.linspace(0, 255, 30, dtype=np.uint8)
    cv2.circle(source, (15, 20), 8, (0, 200, 255), -1)
    cv2.imwrite(str(tmp_path / "in.png"), source)
    out = tmp_path / "grid.png"
    aug.main(["--image", str(tmp_path / "in.png"), "--preset", "original", "ours-clahe", "simclr",
              "--n", "3", "--tile", "64", "--out", str(out)])
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape == (3 * 64, aug.LABEL_WIDTH + (1 + 3) * 64, 3)
    with pytest.raises(UserError, match="cannot read"):
        aug.main(["--image", str(tmp_path / "missing.png"), "--out", str(out)])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="cannot read image .*not an image"):
        aug.main(["--image", str(tmp_path / "text.png"), "--out", str(out)])
    with pytest.raises(UserError, match="unknown augmentation"):
        aug.main(["--image", str(tmp_path / "in.png"), "--preset", "nope", "--out", str(out)])


def test_cli_user_error_exits_2(tmp_path):
    script = Path(aug.__file__)
    result = subprocess.run([sys.executable, str(script), "--image", str(tmp_path / "missing.png"),
                             "--out", str(tmp_path / "v.png")], capture_output=True, text=True,
                            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: cannot read image {tmp_path / 'missing.png'}: no such file"]
