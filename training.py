"""The run path: training.run(method, options) does a whole run (runtime/precision/DDP, data, model, optimizer,
resume, the epoch loop with its kNN monitor and callback, checkpoints, linear evaluation, the workbook row).
Every door parses its own options (add_run_options declares the shared ones once) and calls run()."""
import copy
import csv
import json
import sys
import os
import random
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import evaluation
import results
from augmentations import (SPEC_HELP, MultiView, build_multicrop, build_transform, describe_policy, policy_to_json,
                           resolve_policy)
from cli import UserError
from datasets import DATASETS, check_crop_size, dataset_info, load_splits
from loading import TransformDataset, default_workers, make_eval_loader, make_train_loader
from methods import METHODS, get_method
from models import ARCHS
from optim import amp_step, build_optimizer, demo_lr, lr_at, set_lr


class NonFiniteLoss(UserError):
    pass


# ---------------------------------------------------------------- device, precision, processes

@dataclass
class Runtime:
    device: torch.device
    precision: str          # fp32 | fp16 | bf16
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    normalize: tuple = None  # (mean, std) in [0, 1] units: what to_device applies to uint8 image batches

    def __post_init__(self):
        # Loss scaling only for fp16: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.normalize is not None:  # as albumentations' Normalize(max_pixel_value=255): (x - 255·mean) / (255·std)
            mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) * 255 for v in self.normalize)
            self._shift, self._scale = mean.float().to(self.device), (1 / std).float().to(self.device)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def to_device(self, images):
        """Move a batch (or a list of view batches) to the device, in channels_last when enabled.

        The loaders deliver uint8 images: they become normalised float32 here, on the device, so the workers skip
        the per-image float work and the batch is 4x fewer bytes through shared memory, pinning and the copy.
        Float batches (a transform that normalised already) are moved as they are.
        """
        if isinstance(images, (list, tuple)):
            return [self.to_device(x) for x in images]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        if images.dtype != torch.uint8:
            return images
        if self.normalize is None:
            raise ValueError("a uint8 image batch needs Runtime.normalize = (mean, std)")
        return images.float().sub_(self._shift).mul_(self._scale)


def setup_runtime(precision="auto", seed=0, channels_last=True, normalize=None):
    """Device and precision for this process; joins the torchrun process group when launched by torchrun.
    normalize: the dataset's (mean, std), applied on the device to the loaders' uint8 batches."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if precision == "auto":
        precision = "fp32" if device.type == "cpu" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    elif precision != "fp32" and device.type == "cpu":
        raise UserError(f"--precision {precision} needs a CUDA GPU; on CPU use fp32 (or auto)")
    seed_everything(seed + rank)
    return Runtime(device, precision, rank, world_size, channels_last and device.type == "cuda", normalize)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_gpu_memory_gb(rt):
    return torch.cuda.max_memory_allocated(rt.device) / 2**30 if rt.device.type == "cuda" else None


def hardware_name(rt):
    if rt.device.type == "cuda":
        return f"{rt.world_size}x {torch.cuda.get_device_name(rt.device)}"
    return f"CPU ({os.cpu_count()} cores)" + (f" x{rt.world_size} processes" if rt.distributed else "")


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- the options every method shares

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
    p.add_argument("--val-size", type=int, default=0,
                   help="hold out N labelled training images (seeded, stratified): the kNN monitor and linear "
                        "evaluation then score on them, never on the test set (what a search optimises)")
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
    p.add_argument("--seed", type=int, default=0)
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
    method.check_options(opts)


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


def train_views(method, opts, policy, crop_size):
    """(what TransformDataset applies, views per image as recorded): the policy's transform (one view), --crops draws
    of it, or with --local-crops, multi-crop: the global crops, then local crops of --local-size px and --local-scale
    of the area, all drawn from one RNG stream per image."""
    views, local = method.views or opts.crops, getattr(opts, "local_crops", 0)
    if not local:
        transform = build_transform(policy, crop_size)
        return (MultiView(transform, views) if views > 1 else transform), views
    local_size = opts.local_size or max(1, round(crop_size * 9 / 16))
    return (build_multicrop(policy, crop_size, local_size, tuple(opts.local_scale), global_scale=None, n_global=views,
                            n_local=local), f"{views}+{local}")


# ---------------------------------------------------------------- run directory, checkpoints, resume

CHECKPOINT_FORMAT = 2
# What a resume may change: where and how it runs. --epochs may only grow. Anything else would be another run.
RESUME_MAY_CHANGE = {"workers", "results", "results_dir", "precision", "channels_last", "compile", "data_dir",
                     "download", "resume", "study"}


def make_run_dir(results_dir, default_name, resuming):
    run_dir = Path(results_dir) if results_dir else Path("runs") / default_name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a directory")
    if (run_dir / "checkpoint_last.pth").exists() and not resuming:
        raise UserError(f"{run_dir} already holds a run; resume it with --resume {run_dir / 'checkpoint_last.pth'} "
                        f"or choose another --results-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    stale = [run_dir / name for name in ("log.csv", "checkpoint_last.pth.tmp", "checkpoint_best.pth.tmp")]
    stale = [path for path in stale if path.exists()] if not resuming else []
    if stale:  # a start killed before its first checkpoint: its epochs would be logged twice
        print(f"note: {run_dir} holds a start that ended before its first checkpoint; starting it afresh "
              f"(removed {', '.join(path.name for path in stale)})")
        for path in stale:
            path.unlink()
    return run_dir


def save_checkpoint(path, state):
    """Atomic: a crash mid-write never leaves a truncated checkpoint in place of a good one."""
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}): is it corrupt?") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint written by this repo")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} was written by an earlier version of this repo and cannot be resumed; "
                        "start a new run")
    return state


def resumed_options(method, options, given, state, path):
    """The options of the checkpoint's run, with what this start may change taken from `options`.

    given: names set explicitly on this command line (None: every option counts as given)."""
    saved = state["options"]
    if state["method"] != method.name:
        raise UserError(f"checkpoint {path} is a {state['method']} run, not {method.name}")
    merged = copy.copy(options)
    for name, saved_value in saved.items():
        if not hasattr(options, name):
            continue
        value = getattr(options, name)
        if (given is not None and name not in given) or value == saved_value:
            setattr(merged, name, saved_value)
        elif not (name in RESUME_MAY_CHANGE or (name == "epochs" and value > saved_value)):
            flag = "--" + name.replace("_", "-")
            allowed = " (a resume may only raise it)" if name == "epochs" else ""
            raise UserError(f"{flag} {value} differs from the run's {saved_value}{allowed}; a resumed run keeps the "
                            f"options it was started with (see {Path(state['run_dir']) / 'args.json'})")
    merged.resume = options.resume
    return merged


RECORDED = "recorded.json"  # written after the run's row: a bare --resume of a finished run then adds nothing


def check_unfinished(state, opts):
    """A bare --resume of a run that trained all its epochs and wrote its row would count it twice in the summary."""
    recorded = Path(state["run_dir"]) / RECORDED
    if state["epoch"] >= opts.epochs and recorded.exists():
        row = json.loads(recorded.read_text())
        raise UserError(f"the run in {state['run_dir']} finished its {state['epoch']} epochs and is run "
                        f"{row['run_id']} of {row['results']}; nothing to do (raise --epochs to train it further)")


def record_start(run_dir, options):
    """args.json: every start of the run (the first and each resume), with its command line and options."""
    path = Path(run_dir) / "args.json"
    try:
        starts = json.loads(path.read_text())["starts"]
    except (OSError, ValueError, KeyError, TypeError):
        starts = []
    starts.append(dict(time=time.strftime("%Y-%m-%d %H:%M:%S"), argv=sys.argv, options=vars(options)))
    path.write_text(json.dumps({"starts": starts}, indent=2, default=str))


# ---------------------------------------------------------------- the epoch loop

def train_epoch(rt, model, method, loader, optimizer, lr_fn, epoch, epochs):
    """One pass over `loader` calling model(views, labels) -> loss. Returns (mean loss, images, seconds, last lr)."""
    model.train()
    start, total, n_images = time.perf_counter(), torch.zeros((), device=rt.device), 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not rt.is_main, dynamic_ncols=True)
    previous, lr = None, None
    for step, (images, labels) in enumerate(bar):
        lr = lr_fn(epoch + step / len(loader))
        set_lr(optimizer, lr)
        method.before_step(epoch, step, len(loader), epochs)
        images, labels = rt.to_device(images), labels.to(rt.device, non_blocking=True)
        with rt.autocast():
            loss = model(images, labels)
        amp_step(rt, optimizer, loss)
        # Read the previous step's loss: the GPU has finished it, so the check costs no pipeline stall.
        if previous is not None:
            check_finite(previous, epoch, step - 1)
            if step % 10 == 1:  # the epoch's mean so far, the number its line will end with
                bar.set_postfix(loss=f"{total.item() / step:.4f}", lr=f"{lr:.4g}")
        previous = loss.detach().float()
        total += previous
        n_images += labels.shape[0]
    if previous is None:
        raise UserError("the training loader yielded no batch: is the batch size larger than the training set?")
    check_finite(previous, epoch, len(loader) - 1)
    if rt.distributed:
        dist.all_reduce(total)
        total /= rt.world_size
    return total.item() / len(loader), n_images * rt.world_size, time.perf_counter() - start, lr


def check_finite(loss, epoch, step):
    if not torch.isfinite(loss).item():
        raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; training stopped, "
                            f"the last good checkpoint (end of epoch {epoch}) is kept")


class EpochLog:
    """Per-epoch history: printed as one line, appended to log.csv, kept in the checkpoint for the workbook.
    lr is the learning rate of the epoch's last step."""

    FIELDS = ["epoch", "loss", "knn_top1", "lr", "epoch_s", "images_per_s"]

    def __init__(self, run_dir, history=(), enabled=True):
        self.path, self.history, self.enabled = Path(run_dir) / "log.csv", list(history), enabled

    def add(self, **row):
        self.history.append(row)
        if not self.enabled:
            return
        knn = "" if row["knn_top1"] is None else f" | kNN top-1 {row['knn_top1']:.2f}%"
        tqdm.write(f"epoch {row['epoch']:>4} | loss {row['loss']:.4f}{knn} | lr {row['lr']:.4g} | "
                   f"{row['epoch_s']:.1f}s | {row['images_per_s']:.0f} img/s")
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    @property
    def best_knn(self):
        return max((r["knn_top1"] for r in self.history if r["knn_top1"] is not None), default=None)

    @property
    def final_knn(self):
        return next((r["knn_top1"] for r in reversed(self.history) if r["knn_top1"] is not None), None)


def monitor_due(epoch, epochs, every):
    """After 0-based `epoch`: every `every` epochs and at the end; --knn-every 0 means at the end only."""
    last = epoch + 1 == epochs
    return last or (every > 0 and (epoch + 1) % every == 0)


# ---------------------------------------------------------------- linear evaluation

def linear_evaluation(rt, opts, backbone, splits, num_classes, crop_size, batch, memory_loader, test_loader):
    """Frozen-backbone linear evaluation -> (top1, top5): `probe` on cached features of the memory split (the kNN
    monitor's batches), `lincls` as facebookresearch/moco's main_lincls, `finetune` as simclr_main's output head."""
    if opts.linear_protocol == "probe":
        return evaluation.linear_probe(rt, backbone, memory_loader, test_loader, num_classes,
                                       epochs=opts.linear_epochs, seed=opts.seed)
    epochs = opts.linear_epochs
    loader = make_train_loader(rt, TransformDataset(splits.memory, build_transform("supervised", crop_size)), batch,
                               opts.workers, opts.seed + 1)
    head = torch.nn.Linear(backbone.feat_dim, num_classes).to(rt.device)
    if opts.linear_protocol == "lincls":  # SGD lr 30 momentum 0.9 wd 0, lr x0.1 at 60% and 80% of the epochs
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
        optimizer = torch.optim.SGD(head.parameters(), lr=30.0, momentum=0.9, weight_decay=0.0)
        lr_fn = lambda t: lr_at(int(t), 30.0, epochs, "step", (0.6 * epochs, 0.8 * epochs))  # noqa: E731
    else:
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
        lr_fn = lambda t: lr_at(t, 1e-3, epochs)  # noqa: E731
    trained = torch.nn.parallel.DistributedDataParallel(head) if rt.distributed else head
    evaluation.train_linear_head(rt, backbone, trained, loader, epochs, optimizer, lr_fn, desc=opts.linear_protocol)
    return evaluation.classification_accuracy(rt, torch.nn.Sequential(backbone, head), test_loader)


# ---------------------------------------------------------------- the run

def build_loaders(rt, opts, train_images, eval_transform, pretrain, memory, scored, batch):
    """The training loader (train_images: a transform or a views object; seeded augmentations) and the eval loaders
    of the memory bank and the scored split (replayed from memory when they fit)."""
    train_loader = make_train_loader(rt, TransformDataset(pretrain, train_images), batch, opts.workers, opts.seed)
    memory_loader = make_eval_loader(rt, TransformDataset(memory, eval_transform), batch, opts.workers)
    test_loader = make_eval_loader(rt, TransformDataset(scored, eval_transform), batch, opts.workers)
    return train_loader, memory_loader, test_loader


def build_model(rt, method, opts, num_classes, cifar_stem, bn_splits, optimizer_name, lr, wd):
    """The method on the device (SyncBatchNorm and channels_last as set) and the optimizer of what it trains (None
    when it trains nothing)."""
    model = method(opts, num_classes, cifar_stem, bn_splits).to(rt.device)
    if rt.distributed and opts.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not model.trainable_parameters():
        return model, None
    return model, build_optimizer(optimizer_name, model.param_groups(), lr, wd, foreach=rt.device.type == "cuda" or None)


def run(method, options, on_epoch=None, given=None, quiet=False):
    """One whole run of `method` (a class of methods.py, or its name) with `options` (as add_run_options parses them).

    on_epoch(epoch, metrics) is called after every epoch (1-based epoch; metrics: loss, knn_top1, lr, epoch_s,
    images_per_s); a true return value stops the run there (it is still evaluated and recorded), and an exception
    it raises (e.g. optuna.TrialPruned) ends the run without a workbook row. given: the options set explicitly on
    the command line, for --resume (None: all). Returns the run's record: the workbook row, with its run_id."""
    method = get_method(method) if isinstance(method, str) else method
    started = time.time()
    opts, state = copy.copy(options), None
    if opts.resume:
        state = load_checkpoint(opts.resume)
        opts = resumed_options(method, opts, given, state, opts.resume)
        check_unfinished(state, opts)
    check_options(method, opts)
    optimizer_name, lr, wd, warmup = method.optimizer_recipe(opts)
    info = dataset_info(opts.dataset)
    crop_size = check_crop_size(info, opts.crop_size)
    policy = resolve_policy(opts.aug, crop_size)
    train_images, views = train_views(method, opts, policy, crop_size)
    eval_transform = build_transform("eval", crop_size)
    rt = setup_runtime(opts.precision, opts.seed, opts.channels_last, normalize=(info.mean, info.std))
    if rt.is_main:
        results.check_writable(opts.results)
    if opts.batch_size % rt.world_size:
        raise UserError(f"--batch-size {opts.batch_size} is not divisible by the {rt.world_size} processes")
    batch = opts.batch_size // rt.world_size
    bn_splits = opts.bn_splits if not rt.distributed else 1
    if rt.distributed and opts.bn_splits > 1 and rt.is_main:
        print(f"note: --bn-splits {opts.bn_splits} simulates multi-GPU BN on one device; under DDP each process's "
              "BatchNorm already sees its own sub-batch, so it is ignored")
    if batch % bn_splits:
        raise UserError(f"the batch of {batch} per process does not split into --bn-splits {bn_splits} equal parts")
    if opts.epochs and batch // bn_splits < 2:  # BatchNorm1d in a head cannot normalise over one image
        raise UserError(f"--batch-size {opts.batch_size} leaves {batch // bn_splits} image per BatchNorm batch "
                        f"(per process{' and split' if bn_splits > 1 else ''}); training needs at least 2")

    splits = load_splits(opts.dataset, opts.data_dir, download=opts.download, subset=opts.subset, seed=opts.seed,
                         val_size=opts.val_size)
    info = splits.info
    scored = splits.val if opts.val_size else splits.test  # what the monitor and linear evaluation score on
    pretrain = splits.memory if method.needs_labels else splits.pretrain  # STL-10: train+unlabeled vs train
    if opts.batch_size > len(pretrain):
        raise UserError(f"--batch-size {opts.batch_size} is larger than the {len(pretrain)} training images")
    if rt.is_main and opts.subset and not opts.val_size:
        print(f"note: --subset keeps {len(pretrain)} training images; the kNN monitor and linear evaluation still "
              f"score the full {len(scored)}-image test set")
    for note in method.notes(opts, len(pretrain)) if rt.is_main else ():
        print(f"note: {note}")
    per_class = len(splits.memory) / info.num_classes
    if rt.is_main and opts.knn_k > per_class:
        smaller = max(1, min(20, int(per_class) // 2))
        print(f"note: --knn-k {opts.knn_k} is more than the kNN memory bank's {per_class:.0f} images per class, so "
              f"every query's vote leans to the bank's class counts; a smaller --knn-k (e.g. {smaller}) separates "
              "features")
    train_loader, memory_loader, test_loader = build_loaders(rt, opts, train_images, eval_transform, pretrain,
                                                             splits.memory, scored, batch)

    cifar_stem = {"auto": not info.imagenet_stem, "cifar": True, "imagenet": False}[opts.stem]
    model, optimizer = build_model(rt, method, opts, info.num_classes, cifar_stem, bn_splits, optimizer_name, lr, wd)
    if method.lr_per_epoch:
        lr_fn = lambda t: demo_lr(int(t), lr, opts.epochs, opts.cos, opts.schedule)  # noqa: E731
    else:
        lr_fn = lambda t: lr_at(t, lr, opts.epochs, "cos", warmup_epochs=warmup)  # noqa: E731

    start_epoch, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rt.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, history = state["epoch"], state["history"]
        opts.results_dir = opts.results_dir or state["run_dir"]
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{method.name}-{opts.dataset}-{Path(opts.aug).stem}"
    run_dir = make_run_dir(opts.results_dir, name, resuming=state is not None)
    log = EpochLog(run_dir, history, enabled=rt.is_main)
    if rt.is_main:
        record_start(run_dir, opts)
    train_model = model
    if rt.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    if opts.compile:
        train_model = torch.compile(train_model)
    if rt.is_main and not quiet:
        print(f"{method.name} {opts.arch} on {opts.dataset} ({len(pretrain)} images, {crop_size}px, aug {opts.aug}, "
              f"{views} views) | {optimizer_name} lr {lr or 0:.4g} | {rt.device} {rt.precision} x{rt.world_size} | "
              f"run dir {run_dir}")
        print(describe_policy(policy))

    def checkpoint(epochs_done):
        return dict(format=CHECKPOINT_FORMAT, method=method.name, options=vars(opts), model=model.state_dict(),
                    optimizer=optimizer.state_dict(), scaler=rt.scaler.state_dict(), rng=rng_state(),
                    epoch=epochs_done, history=log.history, run_dir=str(run_dir))

    for epoch in range(start_epoch, opts.epochs):
        train_loader.sampler.set_epoch(epoch)
        loss, n_images, seconds, last_lr = train_epoch(rt, train_model, model, train_loader, optimizer, lr_fn, epoch,
                                                       opts.epochs)
        knn = None
        if monitor_due(epoch, opts.epochs, opts.knn_every):
            knn = evaluation.knn_top1(rt, model.monitor_encoder, memory_loader, test_loader, info.num_classes,
                                      opts.knn_k, opts.knn_t)
        best_before = log.best_knn
        metrics = dict(epoch=epoch + 1, loss=loss, knn_top1=knn, lr=last_lr, epoch_s=seconds,
                       images_per_s=n_images / seconds)
        log.add(**metrics)
        if rt.is_main:
            save_checkpoint(run_dir / "checkpoint_last.pth", checkpoint(epoch + 1))
            if knn is not None and (best_before is None or knn > best_before):
                save_checkpoint(run_dir / "checkpoint_best.pth", checkpoint(epoch + 1))
        if on_epoch is not None and on_epoch(epoch + 1, metrics):
            if knn is None:  # a run stopped early still ends with a monitor reading
                metrics["knn_top1"] = evaluation.knn_top1(rt, model.monitor_encoder, memory_loader, test_loader,
                                                          info.num_classes, opts.knn_k, opts.knn_t)
                log.history[-1]["knn_top1"] = metrics["knn_top1"]
            break

    if opts.epochs == 0 and not log.history:  # the network at initialisation, on the same protocol
        log.add(epoch=0, loss=float("nan"), lr=0.0, epoch_s=0.0, images_per_s=0.0,
                knn_top1=evaluation.knn_top1(rt, model.monitor_encoder, memory_loader, test_loader, info.num_classes,
                                             opts.knn_k, opts.knn_t))
    linear = (None, None)
    if opts.linear_epochs:
        linear = linear_evaluation(rt, opts, model.backbone, splits, info.num_classes, crop_size, batch,
                                   memory_loader, test_loader)
        if rt.is_main and not quiet:
            top5 = f", top-5 {linear[1]:.2f}%" if linear[1] is not None and info.num_classes > 10 else ""
            print(f"linear evaluation ({opts.linear_protocol}) top-1 {linear[0]:.2f}%{top5}")
    supervised = (None, None)
    if hasattr(model, "predictor"):
        supervised = evaluation.classification_accuracy(rt, model.predictor, test_loader)
        if rt.is_main and not quiet:
            print(f"test top-1 {supervised[0]:.2f}% (supervised baseline)")
    record = results.run_row(
        script=Path(sys.argv[0]).name, method=method.name, options=opts, dataset_info=info, crop_size=crop_size,
        views=views, optimizer=optimizer_name, lr=lr, precision=rt.precision, world_size=rt.world_size,
        history=log.history, linear=linear, supervised=supervised, started=started,
        peak_gpu_mem_gb=peak_gpu_memory_gb(rt), hardware=hardware_name(rt), run_dir=run_dir, git_commit=git_commit(),
        data=f"{opts.dataset}: {len(pretrain)} train / " + (f"{len(scored)} validation images (scored instead of test)"
                                                             if opts.val_size else f"{len(scored)} test images"), policy=policy_to_json(policy),
        **model.record_fields())
    if rt.is_main:
        record["run_id"] = results.append_run(opts.results, record, results.curve_rows(log.history))
        (run_dir / RECORDED).write_text(json.dumps(dict(run_id=record["run_id"], results=str(opts.results),
                                                        epochs=record["epochs"])))
        if not quiet:
            print(f"kNN top-1 final {record['knn_top1_final']}, best {record['knn_top1_best']} | "
                  f"results: {opts.results} (run {record['run_id']}) | run dir: {run_dir}")
    return record

