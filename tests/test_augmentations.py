import copy
import os
import pickle
import random
import re
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
from cli import UserError
from runtime import Runtime

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
    assert aug.op_names("original-crop") == ["resize", "jitter", "flip", "gray"]
    assert [name for name, _ in aug.build_ops("original-crop", 32)][:2] == ["resize", "center_crop"]
    assert aug.op_names("eval+crop") == ["crop"]
    assert aug.op_names("eval+solarize") == ["resize", "solarize"]  # after the op that sets the size
    assert aug.op_names("supervised") == ["pad_crop", "flip"]
    assert aug.op_names("supervised-pad_crop+crop") == ["crop", "flip"]


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "original, ours, simclr, supervised, eval"),
    ("ours-sharpen", "crop, pad_crop, resize, jitter, flip, gray, blur, solarize, clahe, brightness_contrast"),
    ("original-solarize", "not there"),
    ("ours+clahe", "already there"),
    ("ours+", "original, ours"),
    ("eval-resize", "sets the output size"),
    ("supervised+crop", "remove it first"),
    ("ours+resize", "unknown op 'resize'"),
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


def seed_pipeline(preset, size):
    """The presets as they were written before policies existed, op for op: the policies must keep building these."""
    crop = A.RandomResizedCrop(size=(size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), area_for_downscale="image")
    flip = A.HorizontalFlip(p=0.5)
    gray = A.ToGray(num_output_channels=3, method="weighted_average", p=0.2)
    moco = [crop, A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8), flip, gray]
    s = 0.5 if size <= 32 else 1.0
    simclr = [crop, flip, A.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, p=0.8),
              gray]
    kernel = max(3, int(0.1 * size) + 1 - int(0.1 * size) % 2)
    return {
        "original": moco,
        "ours": moco + [A.Solarize(threshold_range=(0.5, 0.5), p=0.2),
                        A.CLAHE(clip_limit=4.0, tile_grid_size=(8, 8), p=0.2),
                        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.2)],
        "simclr": simclr + ([A.GaussianBlur(blur_limit=(kernel, kernel), sigma_limit=(0.1, 2.0), p=0.5)]
                            if size > 32 else []),
        "supervised": [aug.SupervisedCrop(size), flip],
        "eval": [A.SmallestMaxSize(max_size=size, area_for_downscale="image"), A.CenterCrop(size, size)],
    }[preset]


def same_views(first, second, images, seed=3):
    first.set_random_seed(seed), second.set_random_seed(seed)
    return all(torch.equal(first(image=image)["image"], second(image=image)["image"]) for image in images)


@pytest.mark.parametrize("preset", ["original", "ours", "simclr", "supervised", "eval"])
@pytest.mark.parametrize("size", [32, 96])
def test_preset_policies_build_the_seed_pipelines(preset, size):
    reference = aug.Pipeline(seed_pipeline(preset, size) + [ToTensorV2()])
    built = aug.build_transform(aug.resolve_policy(preset, size), size)
    assert [repr(t) for t in built.transforms] == [repr(t) for t in reference.transforms]
    images = [random_image(28 + 8 * seed, 40, seed) for seed in range(12)]
    assert same_views(built, reference, images)
    assert same_views(aug.build_transform(preset, size), reference, images)


def test_settings_set_p_and_magnitudes():
    ops = dict(aug.build_ops("ours:solarize.p=0.4, jitter.strength=0.6,clahe.clip=2,crop.scale_min=0.2", 32))
    check(ops["solarize"], A.Solarize, 0.4, threshold_range=(0.5, 0.5))
    check(ops["jitter"], A.ColorJitter, 0.8, brightness=(0.52, 1.48), saturation=(0.52, 1.48), hue=(-0.1, 0.1))
    check(ops["clahe"], A.CLAHE, 0.2, clip_limit=(1.0, 2.0))
    check(ops["crop"], A.RandomResizedCrop, 1.0, scale=(0.2, 1.0))
    ops = dict(aug.build_ops("original+blur-gray:blur.sigma_max=3,blur.p=1,flip.p=0", 64))
    check(ops["blur"], A.GaussianBlur, 1.0, blur_limit=(7, 7), sigma_limit=(0.1, 3.0))
    assert "gray" not in ops and ops["flip"].p == 0
    ops = dict(aug.build_ops("ours:brightness_contrast.limit=0.1,solarize.threshold=0.25,gray.p=1", 32))
    check(ops["brightness_contrast"], A.RandomBrightnessContrast, 0.2, brightness_limit=(-0.1, 0.1),
          contrast_limit=(-0.1, 0.1))
    check(ops["solarize"], A.Solarize, threshold_range=(0.25, 0.25))
    check(ops["gray"], A.ToGray, 1.0)
    check(dict(aug.build_ops("supervised:pad_crop.padding=2", 32))["pad_crop"], aug.SupervisedCrop, padding=2)


@pytest.mark.parametrize("spec, message", [
    ("ours:solarize.p=1.5", r"'solarize.p=1.5': a probability must be in \[0, 1\]"),
    ("ours:gray.p=-0.1", r"'gray.p=-0.1': a probability"),
    ("ours:clahe.clip=-2", r"'clahe.clip=-2': clahe.clip must be at least 1"),
    ("ours:brightness_contrast.limit=-0.1", r"'brightness_contrast.limit=-0.1': .* must be in \[0, 1\]"),
    ("simclr:jitter.hue=0.7", r"'jitter.hue=0.7'"),
    ("ours:sharpen.p=0.3", "unknown op 'sharpen' in 'sharpen.p=0.3'"),
    ("ours:solarize.strength=1", "unknown parameter 'strength' of solarize in 'solarize.strength=1': "
                                 "solarize has p, threshold"),
    ("ours:flip.strength=1", "flip has p$"),
    ("ours:solarize", "malformed setting 'solarize' in"),
    ("ours:solarize.p", "malformed setting"),
    ("ours:solarize.p=0.1,", "malformed setting ''"),
    ("ours:", "malformed setting ''"),
    ("ours:solarize.p=abc", "'solarize.p=abc': 'abc' is not a finite number"),
    ("ours:solarize.p=nan", "not a finite number"),
    ("ours:crop.p=0.5", "'crop.p=0.5': crop always applies"),
    ("original:solarize.p=0.1", r"'solarize.p=0.1' sets solarize, which 'original' does not hold .* with \+solarize"),
    ("ours:solarize.p=0.1,solarize.p=0.2", "sets solarize.p twice"),
    ("ours:crop.scale_min=0.9,crop.scale_max=0.5", "crop.scale_min 0.9 is above crop.scale_max 0.5"),
    ("simclr:blur.sigma_min=3", "blur.sigma_min 3 is above blur.sigma_max 2"),
    ("supervised:pad_crop.padding=2.5", "must be a whole number"),
])
def test_bad_settings_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as error:
        aug.resolve_policy(spec, 96)
    assert "\n" not in str(error.value)


ROUND_TRIP_SPECS = ["original", "ours", "simclr", "supervised", "eval", "original-crop:jitter.hue=0.05",
                    "ours-clahe+blur:blur.sigma_max=1.5,solarize.p=0.35", "supervised:pad_crop.padding=6,flip.p=0.25"]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS)
@pytest.mark.parametrize("size", [32, 96])
def test_spec_policy_json_round_trip(spec, size, tmp_path):
    policy = aug.resolve_policy(spec, size)
    text = aug.policy_to_json(policy)
    assert aug.policy_from_json(text) == policy
    path = tmp_path / "policy.json"
    path.write_text(text)
    assert aug.policy_from_json(path) == policy == aug.resolve_policy(str(path), size)
    from_spec, from_file = aug.build_transform(spec, size), aug.build_transform(str(path), size)
    assert [repr(t) for t in from_spec.transforms] == [repr(t) for t in from_file.transforms]
    assert same_views(from_spec, from_file, [random_image(40, 40, seed) for seed in range(6)])


def test_json_policy_fills_defaults_and_rejects_bad_input(tmp_path):
    policy = aug.policy_from_json('{"ops": [{"op": "crop", "scale_min": 0.2}, {"op": "solarize", "threshold": 0.7}]}')
    assert policy == [aug.Op("crop", 1.0, {"scale_min": 0.2, "scale_max": 1.0}),
                      aug.Op("solarize", 0.2, {"threshold": 0.7})]
    bad = {
        "not json": "is not valid JSON",
        '[{"op": "crop"}]': r'expected \{"ops"',
        '{"ops": [{"op": "crop"}], "size": 32}': r'expected \{"ops"',
        '{"ops": [{"op": "sharpen"}]}': 'not an op; ops are crop',
        '{"ops": [{"op": "crop"}, {"op": "gray", "p": 2}]}': r"'gray.p=2': a probability must be in \[0, 1\]",
        '{"ops": [{"op": "crop"}, {"op": "gray", "p": "x"}]}': "'gray.p=\"x\"': 'x' is not a finite number",
        '{"ops": [{"op": "crop"}, {"op": "gray", "p": true}]}': "not a finite number",
        '{"ops": [{"op": "crop"}, {"op": "gray", "level": 1}]}': "unknown parameter 'level' of gray",
        '{"ops": [{"op": "flip"}]}': "starts with exactly one of crop, pad_crop, resize",
        '{"ops": [{"op": "crop"}, {"op": "resize"}]}': "starts with exactly one of",
        '{"ops": [{"op": "crop"}, {"op": "flip"}, {"op": "flip"}]}': "appears twice",
        '{"ops": [{"op": "crop", "p": 0.5}]}': "crop always applies",
    }
    for text, message in bad.items():
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            aug.build_transform(str(path), 32)
    with pytest.raises(UserError, match="cannot read policy .*missing.json"):
        aug.resolve_policy(str(tmp_path / "missing.json"), 32)


def test_policies_are_accepted_where_specs_are():
    policy = aug.resolve_policy("ours:solarize.p=0.5", 32)
    assert aug.op_names(policy) == aug.op_names("ours")
    assert aug.resolve_policy(policy, 32) == policy and aug.resolve_policy(policy, 32) is not policy
    policy[0].params["scale_min"] = 2.0
    with pytest.raises(UserError, match="policy: crop.scale_min 2 is above"):
        aug.build_transform(policy, 32)


def test_describe_policy():
    text = aug.describe_policy(aug.resolve_policy("ours:solarize.p=0.4,jitter.strength=0.6,clahe.clip=2", 32))
    lines = text.splitlines()
    assert len(lines) == 7 and lines[0].split() == ["crop", "always", "scale_min=0.08", "scale_max=1"]
    assert lines[1].split() == ["jitter", "p=0.8", "strength=0.6", "hue=0.1"]
    assert lines[2].split() == ["flip", "p=0.5"] and lines[4].split() == ["solarize", "p=0.4", "threshold=0.5"]
    assert lines[5].split() == ["clahe", "p=0.2", "clip=2"]


def test_module_docstring_documents_every_op_and_parameter():
    for name, (_, params) in aug.OPS.items():
        assert re.search(rf"^    {name} ", aug.__doc__, re.MULTILINE), name
        for param, (default, _, _) in params.items():
            assert f"{param} {default}" in aug.__doc__, (name, param)


def test_multicrop_sizes_counts_and_scales():
    image = random_image(96, 96)
    crops = aug.build_multicrop("ours", 64, 24, mean=MEAN, std=STD)
    views = crops(image)
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 24, 24)] * 6
    assert all(v.dtype == torch.float32 for v in views)
    check(crops.global_transform.transforms[0], A.RandomResizedCrop, size=(64, 64), scale=(0.14, 1.0))
    check(crops.local_transform.transforms[0], A.RandomResizedCrop, size=(24, 24), scale=(0.05, 0.3))
    global_ops, local_ops = crops.global_transform.transforms[1:], crops.local_transform.transforms[1:]
    assert [repr(t) for t in global_ops] == [repr(t) for t in local_ops]
    crops = aug.build_multicrop("simclr:crop.scale_min=0.3", 96, 40, (0.1, 0.2), None, n_global=1, n_local=3)
    views = crops(image)
    assert [tuple(v.shape) for v in views] == [(3, 96, 96)] + [(3, 40, 40)] * 3 and views[0].dtype == torch.uint8
    check(crops.global_transform.transforms[0], A.RandomResizedCrop, scale=(0.3, 1.0))
    blur = {type(t): t for t in crops.local_transform.transforms}[A.GaussianBlur]
    check(blur, A.GaussianBlur, blur_limit=(5, 5))  # the kernel follows the local size
    assert len(aug.build_multicrop("original", 32, 16, n_local=0)(image)) == 2
    with pytest.raises(UserError, match="needs the random resized crop"):
        aug.build_multicrop("supervised", 32, 16)
    with pytest.raises(UserError, match="scale_min 0.5 is above"):
        aug.build_multicrop("ours", 32, 16, local_scale=(0.5, 0.2))
    with pytest.raises(UserError, match="at least 1 global"):
        aug.MultiCrop(crops.global_transform, 0, crops.local_transform, 2)


def test_multicrop_seeding_matches_multiview_interface():
    image = random_image(48, 48)
    first, second = (aug.build_multicrop("ours", 32, 16) for _ in range(2))
    first.set_random_seed(5), second.set_random_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(first(image), second(image)))
    for wrapper in (first, second):  # how loading.TransformDataset seeds a draw: one generator pair per image
        rng = np.random.default_rng((1, 2, 3))
        wrapper.set_random_state(rng, random.Random(int(rng.bit_generator.random_raw())))
    views = first(image)
    assert all(torch.equal(a, b) for a, b in zip(views, second(image)))
    assert not torch.equal(views[2], views[3])  # local crops are independent draws
    views = pickle.loads(pickle.dumps(first))(image)
    assert len(views) == 8
    multiview = aug.MultiView(aug.build_transform("ours", 32), 2)
    rng = np.random.default_rng(0)
    multiview.set_random_state(rng, random.Random(0))
    assert multiview.transform.transforms[0].random_generator is rng


