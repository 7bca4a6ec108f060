"""Runtime shared by both entry points: errors, device/precision/DDP setup, LR schedules, checkpoints, the epoch loop."""
import csv
import json
import math
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

from cli import ArgumentParser, UserError, run_main, str2bool  # noqa: F401  (re-exported until the doors move)


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


# ---------------------------------------------------------------- learning-rate schedules

def lr_at(t, base_lr, epochs, schedule="cos", milestones=(), warmup_epochs=0):
    """Learning rate at (fractional) epoch t: linear warm-up, then cosine to 0 or ×0.1 at each milestone."""
    if t < warmup_epochs:
        return base_lr * t / warmup_epochs
    if schedule == "cos":
        progress = (t - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return base_lr * 0.1 ** sum(t >= m for m in milestones)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------- run directory, checkpoints

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
    return run_dir


def save_checkpoint(path, state):
    """Atomic: a crash mid-write never leaves a truncated checkpoint in place of a good one."""
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, signature):
    """Load a checkpoint written by save_checkpoint and check it was made for the same model/data (`signature`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}): is it corrupt?") from None
    if not isinstance(state, dict) or "signature" not in state:
        raise UserError(f"{path} is not a checkpoint written by this repo")
    diffs = [f"{k}={state['signature'].get(k)!r} (now {v!r})" for k, v in signature.items()
             if state["signature"].get(k) != v]
    if diffs:
        raise UserError(f"checkpoint {path} does not match this run: " + ", ".join(diffs))
    return state


def training_state(rt, model, optimizer, epochs_done, log, signature, run_dir, args):
    """Everything --resume needs to continue exactly: weights (and MoCo's queue), optimizer, loss scaler, RNGs."""
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=rt.scaler.state_dict(),
                rng=rng_state(), epoch=epochs_done, history=log.history, signature=signature, run_dir=str(run_dir),
                args=vars(args))


def resume(rt, path, signature, model, optimizer):
    """Restore a training_state; returns (epochs done, history, run dir)."""
    state = load_checkpoint(path, signature)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rt.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"], state["history"], state["run_dir"]


def start_run(rt, args, model, optimizer, signature, run_name):
    """Resume from args.resume when given, create the run directory (with args.json), wrap the model in DDP under
    torchrun and torch.compile it with args.compile. Returns (first epoch, EpochLog, run dir, the model the training
    step calls)."""
    start_epoch, history = 0, []
    if args.resume:
        start_epoch, history, previous_dir = resume(rt, args.resume, signature, model, optimizer)
        args.results_dir = args.results_dir or previous_dir
    run_dir = make_run_dir(args.results_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{run_name}", resuming=bool(args.resume))
    if rt.is_main:
        write_json(run_dir / "args.json", vars(args))
    if rt.distributed:
        device_ids = [rt.device] if rt.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        model = torch.compile(model)
    return start_epoch, EpochLog(run_dir, history, enabled=rt.is_main), run_dir, model


# ---------------------------------------------------------------- the epoch loop

def train_epoch(rt, model, loader, optimizer, loss_fn, lr_fn, epoch, epochs):
    """One pass over `loader`. loss_fn(images, labels) -> scalar loss. Returns (mean loss, images, seconds)."""
    model.train()
    start, total, n_images = time.perf_counter(), torch.zeros((), device=rt.device), 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not rt.is_main, dynamic_ncols=True)
    previous = None
    for step, (images, labels) in enumerate(bar):
        lr = lr_fn(epoch + step / len(loader))
        set_lr(optimizer, lr)
        images, labels = rt.to_device(images), labels.to(rt.device, non_blocking=True)
        with rt.autocast():
            loss = loss_fn(images, labels)
        optimizer.zero_grad(set_to_none=True)
        rt.scaler.scale(loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
        # Read the previous step's loss: the GPU has finished it, so the check costs no pipeline stall.
        if previous is not None:
            check_finite(previous, epoch, step - 1)
            if step % 10 == 1:
                bar.set_postfix(loss=f"{previous.item():.4f}", lr=f"{lr:.4g}")
        previous = loss.detach().float()
        total += previous
        n_images += labels.shape[0]
    if previous is None:
        raise UserError("the training loader yielded no batch: is the batch size larger than the training set?")
    check_finite(previous, epoch, len(loader) - 1)
    if rt.distributed:
        dist.all_reduce(total)
        total /= rt.world_size
    return total.item() / len(loader), n_images * rt.world_size, time.perf_counter() - start


def check_finite(loss, epoch, step):
    if not torch.isfinite(loss).item():
        raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; training stopped, "
                            f"the last good checkpoint (end of epoch {epoch}) is kept")


class EpochLog:
    """Per-epoch history: printed as one line, appended to log.csv, kept in the checkpoint for the workbook."""

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


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, default=str))


def fit(rt, model, optimizer, loader, loss_fn, lr_fn, epochs, start_epoch, log, monitor, monitor_every,
        checkpoint_state, run_dir):
    """The training loop both scripts share: train, monitor, log, checkpoint (last + best) every epoch.

    model: the (possibly DDP-wrapped) module loss_fn runs; monitor() -> kNN top-1 (or None);
    checkpoint_state(epochs_done) -> the dict to save.
    """
    for epoch in range(start_epoch, epochs):
        loader.sampler.set_epoch(epoch)
        loss, n_images, seconds = train_epoch(rt, model, loader, optimizer, loss_fn, lr_fn, epoch, epochs)
        last = epoch + 1 == epochs
        knn = monitor() if monitor_every and ((epoch + 1) % monitor_every == 0 or last) else None
        best_before = log.best_knn
        log.add(epoch=epoch + 1, loss=loss, knn_top1=knn, lr=optimizer.param_groups[0]["lr"], epoch_s=seconds,
                images_per_s=n_images / seconds)
        if rt.is_main:
            state = checkpoint_state(epoch + 1)
            save_checkpoint(run_dir / "checkpoint_last.pth", state)
            if knn is not None and (best_before is None or knn > best_before):
                save_checkpoint(run_dir / "checkpoint_best.pth", state)


def run_record(rt, args, log, run_dir, started, **fields):
    """The workbook `runs` row fields every script shares; script-specific fields come in **fields."""
    trained = log.history
    knn_final = next((r["knn_top1"] for r in reversed(trained) if r["knn_top1"] is not None), None)
    return dict(precision=rt.precision, world_size=rt.world_size, knn_top1_final=rounded(knn_final),
                knn_top1_best=rounded(log.best_knn), wall_time_s=round(time.time() - started, 1),
                images_per_s=round(sum(r["images_per_s"] for r in trained) / len(trained), 1) if trained else None,
                peak_gpu_mem_gb=peak_gpu_memory_gb(rt), hardware=hardware_name(rt), run_dir=str(run_dir),
                git_commit=git_commit(), args=json.dumps(vars(args), default=str), **fields)


def curve_rows(log):
    return [dict(epoch=r["epoch"], loss=r["loss"], knn_top1=rounded(r["knn_top1"]), lr=r["lr"],
                 epoch_s=round(r["epoch_s"], 2)) for r in log.history]


def rounded(accuracy):
    return None if accuracy is None else round(accuracy, 2)
