"""Augmentation policies (Albumentations 2.x): presets, ablation specs with magnitudes, JSON policies, and the
multi-view and multi-crop wrappers. No data imports; the preview grid is preview.py.

A spec is  PRESET[+OP|-OP ...][:OP.PARAM=VALUE,OP.PARAM=VALUE,...]  or a policy file (a path ending in .json):
    ours-clahe, original+solarize    +op inserts the op with its defaults, in the order of OPS; -crop leaves a resize
    ours:solarize.p=0.4,jitter.strength=0.6,clahe.clip=2     then set any op's p or magnitude
A policy is the resolved list of ops, each with its p and every magnitude. Ops, p and magnitudes (defaults):
    crop                 always   scale_min 0.08, scale_max 1.0: RandomResizedCrop area range (aspect 3/4..4/3)
    pad_crop             always   padding 4: a crop of the zero-padded image (CIFAR's supervised recipe); a
                                  RandomResizedCrop for inputs larger than the size
    resize               always   shorter side to the size, centre crop
    jitter               p 0.8    strength 0.5: brightness, contrast, saturation factors from [1-0.8s, 1+0.8s]
                                  (SimCLR's colour strength s; the MoCo demo's 0.4 is s=0.5); hue 0.1: at most 0.5
    flip                 p 0.5    horizontal
    gray                 p 0.2
    blur                 p 0.5    sigma_min 0.1, sigma_max 2.0: Gaussian sigma range; kernel 10% of the side, odd
    solarize             p 0.2    threshold 0.5: pixels >= threshold*255 are inverted (0.5: >= 128, the seed's)
    clahe                p 0.2    clip 4.0: CLAHE clip limit drawn from [1, clip], 8x8 tiles
    brightness_contrast  p 0.2    limit 0.2: pixel x (1 + a) + b x 255, contrast a, brightness b from [-limit, limit]
Presets may change these defaults (simclr: jitter strength 0.5 and hue 0.1 at 32 px and below, else 1.0 and 0.2).
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise checks PyPI for updates at import

import json
import math
import random
import re
from dataclasses import dataclass, field
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


# INTER_AREA when a resize shrinks: torchvision resizes PIL images with antialiasing, plain cv2 bilinear aliases
# (matters for downcrop, STL-10 96 -> 50, and ImageNet); enlarging (most CIFAR crops) stays bilinear.
def random_resized_crop(size, scale=(0.08, 1.0)):
    return A.RandomResizedCrop(size=(size, size), scale=scale, ratio=(3 / 4, 4 / 3), area_for_downscale="image")


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


def blur_kernel(size):  # SimCLR: kernel 10% of the image side, odd
    kernel = int(0.1 * size)
    return max(3, kernel + 1 - kernel % 2)


@dataclass
class Op:
    """One step of a policy: the op's name, the probability it applies and its magnitudes (see OPS)."""

    name: str
    p: float = 1.0
    params: dict = field(default_factory=dict)


Policy = list  # of Op, in the order they apply

# name: (default p, or None for an op that always applies; {magnitude: (default, low, high or None)}).
# The order is where +op inserts an op; the first three set the output size, and a policy starts with one of them.
OPS = {
    "crop": (None, {"scale_min": (0.08, 0.0, 1.0), "scale_max": (1.0, 0.0, 1.0)}),
    "pad_crop": (None, {"padding": (4, 0, None)}),
    "resize": (None, {}),
    "jitter": (0.8, {"strength": (0.5, 0.0, 1.25), "hue": (0.1, 0.0, 0.5)}),  # strength 1.25: factors reach 0
    "flip": (0.5, {}),
    "gray": (0.2, {}),
    "blur": (0.5, {"sigma_min": (0.1, 0.0, None), "sigma_max": (2.0, 0.0, None)}),
    "solarize": (0.2, {"threshold": (0.5, 0.0, 1.0)}),
    "clahe": (0.2, {"clip": (4.0, 1.0, None)}),
    "brightness_contrast": (0.2, {"limit": (0.2, 0.0, 1.0)}),
}
GEOMETRY = ("crop", "pad_crop", "resize")
ORDERED_PAIRS = {"crop": ("scale_min", "scale_max"), "blur": ("sigma_min", "sigma_max")}

MAKERS = {  # (size, p, **magnitudes) -> Albumentations transform; resize is two transforms, see build_ops
    "crop": lambda size, p, scale_min, scale_max: random_resized_crop(size, scale=(scale_min, scale_max)),
    "pad_crop": lambda size, p, padding: SupervisedCrop(size, padding),
    "jitter": lambda size, p, strength, hue: A.ColorJitter(
        brightness=0.8 * strength, contrast=0.8 * strength, saturation=0.8 * strength, hue=hue, p=p),
    "flip": lambda size, p: A.HorizontalFlip(p=p),
    "gray": lambda size, p: A.ToGray(num_output_channels=3, method="weighted_average", p=p),
    "blur": lambda size, p, sigma_min, sigma_max: A.GaussianBlur(
        blur_limit=(blur_kernel(size),) * 2, sigma_limit=(sigma_min, sigma_max), p=p),
    # 2.x takes the threshold as a fraction of 255: uint8 pixels >= 127.5, i.e. >= 128, invert, the seed's threshold=128
    "solarize": lambda size, p, threshold: A.Solarize(threshold_range=(threshold, threshold), p=p),
    "clahe": lambda size, p, clip: A.CLAHE(clip_limit=clip, tile_grid_size=(8, 8), p=p),
    "brightness_contrast": lambda size, p, limit: A.RandomBrightnessContrast(
        brightness_limit=limit, contrast_limit=limit, p=p),
}


def default_op(name, **values) -> Op:
    """The op with its defaults, but for `values` (p or magnitudes)."""
    default_p, params = OPS[name]
    defaults = {"p": 1.0 if default_p is None else default_p} | {param: d for param, (d, _, _) in params.items()}
    values = defaults | values
    return Op(name, values.pop("p"), values)


def simclr_policy(size):
    # SimCLR paper, Appendix A: colour strength s=1.0 on ImageNet, s=0.5 and no blur on CIFAR-10 (32x32)
    s = 0.5 if size <= 32 else 1.0
    policy = [default_op("crop"), default_op("flip"), default_op("jitter", strength=s, hue=0.2 * s), default_op("gray")]
    return policy + [default_op("blur")] if size > 32 else policy


SEED_OPS = ("crop", "jitter", "flip", "gray", "solarize", "clahe", "brightness_contrast")
PRESETS = {  # name -> size -> Policy
    "original": lambda size: [default_op(name) for name in SEED_OPS[:4]],  # facebookresearch/moco CIFAR demo
    "ours": lambda size: [default_op(name) for name in SEED_OPS],
    "simclr": simclr_policy,
    "supervised": lambda size: [default_op("pad_crop"), default_op("flip")],
    "eval": lambda size: [default_op("resize")],
}
SPEC_HELP = (
    f"a preset ({', '.join(PRESETS)}), then any +op/-op ({', '.join(OPS)}), then optionally "
    f":op.param=value,... (p or a magnitude, see augmentations.py), e.g. ours-clahe, original+solarize, "
    f"ours:solarize.p=0.4,jitter.strength=0.6; or a policy .json file"
)


def names_of(policy):
    return [op.name for op in policy]


def rank(name):  # where +op goes: the size-setting ops share the first place
    return 0 if name in GEOMETRY else list(OPS).index(name)


def add_op(policy, name, where):
    names = names_of(policy)
    if name not in OPS or name == "resize":
        raise UserError(f"unknown op {name!r} to add in {where!r}: {SPEC_HELP}")
    if name in names:
        raise UserError(f"{where!r} adds {name!r}, which is already there (it holds {', '.join(names)})")
    if name in GEOMETRY:
        if names[0] != "resize":
            raise UserError(f"{where!r} adds {name!r}, but {names[0]!r} already sets the size; remove it first "
                            f"(-{names[0]}+{name})")
        policy[0] = default_op(name)
        return
    at = max((i + 1 for i, n in enumerate(names) if rank(n) < rank(name)), default=0)
    policy.insert(at, default_op(name))


def remove_op(policy, name, where):
    names = names_of(policy)
    if name not in OPS:
        raise UserError(f"unknown op {name!r} to remove in {where!r}: {SPEC_HELP}")
    if name not in names:
        raise UserError(f"{where!r} removes {name!r}, which is not there (it holds {', '.join(names)})")
    if name == "resize":
        raise UserError(f"{where!r} removes the resize, which sets the output size; add a crop instead (eval+crop)")
    at = names.index(name)
    policy[at : at + 1] = [default_op("resize")] if name in GEOMETRY else []  # without a crop, still resize to size


def set_value(op, param, value, token):
    """Set op's p or magnitude `param` from a spec token, a JSON entry or a search parameter, checking its range."""
    default_p, params = OPS[op.name]
    if param != "p" and param not in params:
        raise UserError(f"unknown parameter {param!r} of {op.name} in {token!r}: "
                        f"{op.name} has {', '.join((['p'] if default_p is not None else []) + list(params))}")
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"{token!r}: {value!r} is not a finite number")
    value = number
    if param == "p":
        if default_p is None:
            raise UserError(f"{token!r}: {op.name} always applies (it sets the output size); its p cannot be set")
        if not 0 <= value <= 1:
            raise UserError(f"{token!r}: a probability must be in [0, 1]")
        op.p = float(value)
        return
    default, low, high = params[param]
    if isinstance(default, int) and value != int(value):
        raise UserError(f"{token!r}: {op.name}.{param} must be a whole number")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"in [{low:g}, {high:g}]"
        raise UserError(f"{token!r}: {op.name}.{param} must be {bounds}")
    op.params[param] = type(default)(value)


def check_policy(policy, where):
    names = names_of(policy)
    if not names or names[0] not in GEOMETRY or sum(n in GEOMETRY for n in names) != 1:
        raise UserError(f"{where}: a policy starts with exactly one of {', '.join(GEOMETRY)} (it sets the output "
                        f"size) and has no other; it holds {', '.join(names) or 'nothing'}")
    if len(set(names)) != len(names):
        raise UserError(f"{where}: an op appears twice ({', '.join(names)})")
    for op in policy:
        low, high = ORDERED_PAIRS.get(op.name, (None, None))
        if low and op.params[low] > op.params[high]:
            raise UserError(f"{where}: {op.name}.{low} {op.params[low]:g} is above "
                            f"{op.name}.{high} {op.params[high]:g}")


def copy_policy(policy) -> Policy:
    return [Op(op.name, op.p, dict(op.params)) for op in policy]


def check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise UserError(f"augmentation size must be a positive integer, got {size!r}")
    return int(size)


def resolve_policy(spec, size) -> Policy:
    """The policy of a spec (see the module docstring), of a .json file, or a checked copy of a Policy."""
    size = check_size(size)
    if isinstance(spec, list):
        policy = copy_policy(spec)
        check_policy(policy, "policy")
        return policy
    if str(spec).endswith(".json"):
        return policy_from_json(spec)
    match = re.fullmatch(r"([a-z]+)((?:[+-][a-z_]+)*)(?::(.*))?", str(spec).strip(), re.DOTALL)
    if match is None or match.group(1) not in PRESETS:
        raise UserError(f"unknown augmentation {spec!r}: {SPEC_HELP}")
    policy = PRESETS[match.group(1)](size)
    for sign, name in re.findall(r"([+-])([a-z_]+)", match.group(2)):
        (add_op if sign == "+" else remove_op)(policy, name, spec)
    seen = set()
    for token in (match.group(3).split(",") if match.group(3) is not None else []):
        setting = re.fullmatch(r"\s*([a-z_]+)\.([a-z_]+)\s*=\s*(\S+)\s*", token)
        if setting is None:
            raise UserError(f"malformed setting {token!r} in {spec!r}: expected op.param=value, e.g. solarize.p=0.4")
        name, param, value = setting.groups()
        if name not in OPS:
            raise UserError(f"unknown op {name!r} in {token!r}: ops are {', '.join(OPS)}")
        if name not in names_of(policy):
            raise UserError(f"{token!r} sets {name}, which {spec.split(':')[0]!r} does not hold (it holds "
                            f"{', '.join(names_of(policy))}); add it with +{name}")
        if (name, param) in seen:
            raise UserError(f"{spec!r} sets {name}.{param} twice")
        seen.add((name, param))
        set_value(policy[names_of(policy).index(name)], param, value, token.strip())
    check_policy(policy, repr(spec))
    return policy


def policy_to_json(policy) -> str:
    ops = [{"op": op.name, **({} if OPS[op.name][0] is None else {"p": op.p}), **op.params} for op in policy]
    return json.dumps({"ops": ops}, indent=2) + "\n"


def policy_from_json(text_or_path) -> Policy:
    """A policy from JSON text ({"ops": [{"op": "crop", "scale_min": 0.08, ...}, ...]}) or a file holding it;
    values left out take the op's defaults."""
    text, source = str(text_or_path), "policy JSON"
    if not text.lstrip().startswith("{"):
        try:
            text, source = Path(text).read_text(), text
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read policy {text}: {getattr(error, 'strerror', None) or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or set(data) != {"ops"} or not isinstance(data["ops"], list):
        raise UserError(f'{source}: expected {{"ops": [{{"op": "crop", "scale_min": 0.08, ...}}, ...]}}')
    policy = []
    for entry in data["ops"]:
        if not isinstance(entry, dict) or entry.get("op") not in OPS:
            raise UserError(f"{source}: {json.dumps(entry)} is not an op; ops are {', '.join(OPS)}")
        policy.append(default_op(entry["op"]))
        for param, value in entry.items():
            if param != "op":
                set_value(policy[-1], param, value, f"{entry['op']}.{param}={json.dumps(value)}")
    check_policy(policy, source)
    return policy


def describe_policy(policy) -> str:
    """One line per op: name, p ('always' for the size-setting ops) and magnitudes."""
    lines = []
    for op in policy:
        p = "always" if OPS[op.name][0] is None else f"p={op.p:g}"
        lines.append(f"{op.name:<20} {p:<8} " + " ".join(f"{k}={v:g}" for k, v in op.params.items()))
    return "\n".join(line.rstrip() for line in lines)


def build_ops(spec, size):
    """[(op name, transform)] of a spec or Policy, without Normalize/ToTensorV2 (resize is resize + center_crop)."""
    size = check_size(size)
    ops = []
    for op in resolve_policy(spec, size):
        if op.name == "resize":
            ops += [("resize", A.SmallestMaxSize(max_size=size, area_for_downscale="image")),
                    ("center_crop", A.CenterCrop(size, size))]
        else:
            ops.append((op.name, MAKERS[op.name](size, op.p, **op.params)))
    return ops


def build_transform(spec, size, mean=None, std=None) -> A.Compose:
    """uint8 HWC RGB image of any size -> tensor (3, size, size) under a spec or Policy: float32 normalised with
    mean/std (in [0, 1] units), or, without mean/std, uint8 for a loader whose batches are normalised on the device
    (runtime.Runtime.to_device), which is what the scripts do."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    normalize = [] if mean is None else [A.Normalize(mean=mean, std=std, max_pixel_value=255)]
    return Pipeline([t for _, t in build_ops(spec, size)] + normalize + [ToTensorV2()])


def op_names(spec, size=32):
    return names_of(resolve_policy(spec, size))


class MultiView:
    """n independent draws of `transform` on one uint8 HWC image: the views of a contrastive pair (or triple)."""

    def __init__(self, transform, n_views: int = 2):
        if n_views < 1:
            raise UserError(f"the number of views must be at least 1, got {n_views}")
        self.transform, self.n_views = transform, n_views

    def __call__(self, image):
        return [self.transform(image=image)["image"] for _ in range(self.n_views)]

    def set_random_state(self, generator, py_random):
        self.transform.set_random_state(generator, py_random)

    def set_random_seed(self, seed):
        self.transform.set_random_seed(seed)


class MultiCrop:
    """SwAV's multi-crop: n_global draws of global_transform, then n_local of local_transform, on one uint8 HWC
    image. Both draw from one RNG stream, so the local crops are independent of the global ones."""

    def __init__(self, global_transform, n_global: int, local_transform, n_local: int):
        if n_global < 1 or n_local < 0:
            raise UserError(f"multi-crop needs at least 1 global and 0 local crops, got {n_global} and {n_local}")
        self.global_transform, self.n_global = global_transform, n_global
        self.local_transform, self.n_local = local_transform, n_local

    def __call__(self, image):
        return ([self.global_transform(image=image)["image"] for _ in range(self.n_global)]
                + [self.local_transform(image=image)["image"] for _ in range(self.n_local)])

    def set_random_state(self, generator, py_random):
        self.global_transform.set_random_state(generator, py_random)
        self.local_transform.set_random_state(generator, py_random)

    def set_random_seed(self, seed):
        self.set_random_state(np.random.default_rng(seed), random.Random(seed))


def build_multicrop(spec, global_size, local_size, local_scale=(0.05, 0.3), global_scale=(0.14, 1.0),
                    n_global=2, n_local=6, mean=None, std=None) -> MultiCrop:
    """Multi-crop views from one spec or Policy (resolved at global_size): every op is shared, the crop differs.
    Global views: global_size px, crop area range global_scale (SwAV's (0.14, 1); None keeps the policy's). Local
    views: local_size px, crop area range local_scale."""
    policy = resolve_policy(spec, global_size)
    if "crop" not in names_of(policy):
        raise UserError(f"multi-crop needs the random resized crop 'crop'; the policy holds "
                        f"{', '.join(names_of(policy))}")

    def with_crop_scale(scale):
        scaled = copy_policy(policy)  # crop comes first: check_policy saw to it
        for param, value in zip(("scale_min", "scale_max"), scale or ()):
            set_value(scaled[0], param, value, f"crop scale {scale}")
        check_policy(scaled, f"crop scale {scale}")
        return scaled

    return MultiCrop(build_transform(with_crop_scale(global_scale), global_size, mean, std), n_global,
                     build_transform(with_crop_scale(local_scale), check_size(local_size), mean, std), n_local)
