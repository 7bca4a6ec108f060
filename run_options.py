"""The options every run shares: declared once (add_run_options, with a method's own options and its recipe's
defaults), built without a command line (default_options), and checked in one line each before anything runs."""
from argparse import ArgumentTypeError

import results
from augmentations import SPEC_HELP
from cli import UserError, seed
from datasets import DATASETS
from loading import default_workers
from methods import METHODS
from mixing import add_mix_options
from models import ARCHS


def count_or_fraction(text):
    """--val-size: a number of images (250) or, below 1, a fraction of the labelled training images (0.1)."""
    value = float(text)
    if value >= 1 and not value.is_integer():
        raise ArgumentTypeError(f"{text} is neither a whole number of images nor a fraction below 1")
    return int(value) if value >= 1 or value == 0 else value


def add_run_options(parser, method):
    """Declare the options every method shares (kebab-case, the MoCo demo's names) and `method`'s own, with the
    defaults of its published recipe."""
    p = parser
    p.add_argument("-a", "--arch", default="resnet18", choices=ARCHS)
    p.add_argument("--width", type=float, default=1.0,
                   help="channels of every ResNet stage x this (0.25: 16-32-64-128 for resnet18; a CPU-sized net)")
    p.add_argument("--dataset", default="cifar10", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default="data", help="torchvision root (or ImageFolder root) of the dataset")
    p.add_argument("--download", action="store_true", default=True, help="download torchvision datasets if absent")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--subset", type=int, default=None, help="keep N training images (seeded)")
    p.add_argument("--val-size", type=count_or_fraction, default=0,
                   help="hold out N labelled training images, or a fraction of them (0.1: a tenth; seeded, "
                        "stratified): the kNN monitor and linear evaluation then score on them, never on the test set "
                        "(what a search optimises)")
    p.add_argument("--epochs", type=int, default=200, help="0 evaluates the network at initialisation (a baseline)")
    p.add_argument("--batch-size", type=int, default=512, help="total over all processes, as in facebookresearch/moco")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (None: the recipe's)")
    p.add_argument("--wd", type=float, default=None, help="weight decay (None: the recipe's)")
    p.add_argument("--aug", default="ours", help=f"augmentation: {SPEC_HELP}")
    p.add_argument("--crops", "--global-crops", dest="crops", type=int, default=2,
                   help="views per image: 2, or 3 for triple crop (the global crops with --local-crops)")
    p.add_argument("--local-crops", type=int, default=0, metavar="M",
                   help="multi-crop: M smaller local crops per image after the global ones, for the methods that "
                        "train on them (swav); default 0: none")
    p.add_argument("--local-size", type=int, default=None,
                   help="local crop size in px; None: 9/16 of the crop size (18 at 32 px)")
    p.add_argument("--local-scale", type=float, nargs=2, default=[0.05, 0.3], metavar=("LOW", "HIGH"),
                   help="crop area range of the local crops (the global crops keep the policy's)")
    add_mix_options(p)
    p.add_argument("--crop-size", type=int, default=None, help="training crop size (downcrop); None: the native size")
    p.add_argument("--stem", choices=["auto", "cifar", "imagenet"], default="auto")
    p.add_argument("--bn-splits", type=int, default=1, help="SplitBatchNorm on one device (ignored under DDP)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes under DDP")
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--knn-t", type=float, default=0.1)
    p.add_argument("--knn-every", type=int, default=1, help="kNN monitor every N epochs (0 = only at the end)")
    p.add_argument("--linear-epochs", type=int, default=100, help="linear evaluation epochs after pretraining (0 = off)")
    p.add_argument("--linear-protocol", choices=["probe", "lincls", "finetune"], default="probe",
                   help="probe: cached features, Adam; lincls: main_lincls (augmented images, SGD lr 30, wd 0); "
                        "finetune: augmented images, Adam 1e-3 cosine (simclr_main's output head)")
    p.add_argument("--linear-aug", dest="linear_protocol", action="store_const", const="lincls",
                   help="same as --linear-protocol lincls")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="loader workers per process: usable cores / processes on this node, at most 16")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--channels-last", action="store_true", default=True, help="channels_last on CUDA")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the first step compiles)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--study", default=None,
                   help="study name, recorded in the workbook row; the summary sheet never mixes two studies")
    p.add_argument("--resume", default=None, help="checkpoint_last.pth of the run to continue (its options are kept)")
    p.add_argument("--results-dir", default=None, help="run directory; None: runs/<time>-<method>-<dataset>-<aug>")
    p.add_argument("--results", default=str(results.default_path()), help="workbook every run appends to")
    method.add_options(p)
    p.set_defaults(**method.recipe)
    return p


def default_options(method, **overrides):
    """The full options of `method` with its recipe's defaults, as a door without arguments would parse them."""
    import argparse  # only to build the throw-away parser
    options = add_run_options(argparse.ArgumentParser(add_help=False), method).parse_args([])
    for name, value in overrides.items():
        if not hasattr(options, name):
            raise ValueError(f"{method.name} has no option {name!r}")
        setattr(options, name, value)
    return options


def check_options(method, opts):
    """One clear line for every impossible value, before anything is built or read."""
    if opts.epochs < 0:
        raise UserError(f"--epochs must be >= 0 (0 = evaluate the network at initialisation), got {opts.epochs}")
    for name in ("batch_size", "knn_k"):
        if getattr(opts, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(opts, name)}")
    for name in ("lr", "knn_t", "width"):
        if getattr(opts, name) is not None and getattr(opts, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(opts, name)}")
    for name in ("wd", "linear_epochs", "workers", "knn_every"):
        if getattr(opts, name) is not None and getattr(opts, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(opts, name)}")
    if opts.val_size < 0:
        raise UserError(f"--val-size must be >= 0, got {opts.val_size}")
    if opts.subset is not None and opts.subset <= 0:
        raise UserError(f"--subset must be > 0, got {opts.subset}")
    if opts.bn_splits < 1:
        raise UserError(f"--bn-splits must be >= 1 (1 = plain BatchNorm), got {opts.bn_splits}")
    if method.views is None and opts.crops < 2:
        raise UserError(f"--crops must be 2 or more ({method.name} needs a query and a key view), got {opts.crops}")
    if method.views is not None and method.views > 1 and opts.crops != method.views:
        raise UserError(f"--crops {opts.crops}: {method.name} trains on exactly {method.views} views of each image")
    check_local_crops(method, opts)
    check_mix(method, opts)
    method.check_options(opts)


def check_mix(method, opts):
    if getattr(opts, "mix", None) is None:
        return
    if opts.mix_alpha <= 0:
        raise UserError(f"--mix-alpha must be > 0, got {opts.mix_alpha}")
    if not method.mixes:
        takers = ", ".join(name for name, m in METHODS.items() if m.mixes)
        raise UserError(f"--mix {opts.mix}: {method.name} has no views to mix between (methods that mix: {takers})")


def check_local_crops(method, opts):
    local = getattr(opts, "local_crops", 0)
    if local < 0:
        raise UserError(f"--local-crops must be >= 0, got {local}")
    if local and not method.local_crops_ok:
        users = ", ".join(name for name, m in METHODS.items() if m.local_crops_ok)
        raise UserError(f"--local-crops {local}: {method.name} does not train on local crops (multi-crop methods: "
                        f"{users})")
    if local and opts.local_size is not None and opts.local_size < 1:
        raise UserError(f"--local-size must be >= 1, got {opts.local_size}")
    if local and not 0 < opts.local_scale[0] <= opts.local_scale[1] <= 1:
        raise UserError(f"--local-scale LOW HIGH must satisfy 0 < LOW <= HIGH <= 1, got "
                        f"{' '.join(map(str, opts.local_scale))}")
