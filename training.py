"""The run path: training.run(method, options) does a whole run in four phases that read top to bottom: prepare
(options, runtime, data, model, optimizer, run dir, resume), fit (the epoch loop with its kNN monitor, checkpoints
and callback), evaluate (linear evaluation, a supervised method's classifier) and record (the workbook row).
Every door parses its own options (run_options.add_run_options declares the shared ones once) and calls run()."""
import argparse
import copy
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import evaluation
import results
from augmentations import MultiView, build_multicrop, build_transform, describe_policy, policy_to_json, resolve_policy
from checkpoints import (CHECKPOINT_FORMAT, RECORDED, check_unfinished, load_checkpoint, make_run_dir, record_start,
                         resumed_options, save_checkpoint)
from cli import UserError
from datasets import check_crop_size, dataset_info, load_splits
from loading import TransformDataset, make_eval_loader, make_train_loader
from methods import get_method
from optim import amp_step, build_optimizer, set_lr
from run_options import check_options
from runtime import (Runtime, git_commit, hardware_name, peak_gpu_memory_gb, rng_states, set_rng_states,
                     setup_runtime)


class NonFiniteLoss(UserError):
    pass


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
        method.start_step(epoch, step, len(loader), epochs)
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
        if enabled and self.history:  # a resume: log.csv as the checkpoint has it, without an epoch logged after it
            self._write(self.history, "w")

    def add(self, **row):
        self.history.append(row)
        if not self.enabled:
            return
        knn = "" if row["knn_top1"] is None else f" | kNN top-1 {row['knn_top1']:.2f}%"
        tqdm.write(f"epoch {row['epoch']:>4} | loss {row['loss']:.4f}{knn} | lr {row['lr']:.4g} | "
                   f"{row['epoch_s']:.1f}s | {row['images_per_s']:.0f} img/s")
        self._write([row], "a")

    def _write(self, rows, mode):
        new = mode == "w" or not self.path.exists()
        with open(self.path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

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


@dataclass
class Run:
    """A run between its phases: what prepare() builds, and what fit() and evaluate() add."""
    method: type
    opts: argparse.Namespace
    rt: Runtime
    splits: object  # datasets.Splits
    crop_size: int
    policy: list
    views: object  # per image, as recorded: 2, or "2+6" with local crops
    batch: int  # per process
    pretrain: object  # the images it trains on
    scored: object  # what the monitor and linear evaluation score: the test split, or the validation split
    loaders: tuple  # train, memory bank, scored
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model as trained: under DDP and torch.compile when asked
    optimizer: object
    optimizer_name: str
    lr: float
    lr_fn: object  # fractional epoch -> lr
    run_dir: Path
    log: "EpochLog"
    started: float
    start_epoch: int = 0  # epochs done before this start (a resume)
    linear: tuple = (None, None)
    supervised: tuple = (None, None)

    @property
    def info(self):
        return self.splits.info

    def knn(self):
        memory_loader, test_loader = self.loaders[1:]
        return evaluation.knn_top1(self.rt, self.model.monitor_encoder, memory_loader, test_loader,
                                   self.info.num_classes, self.opts.knn_k, self.opts.knn_t)


def run(method, options, on_epoch=None, given=None, quiet=False, script=None):
    """One whole run of `method` (a class of methods.py, or its name) with `options` (as add_run_options parses them).

    on_epoch(epoch, metrics) is called after every epoch (1-based epoch; metrics: loss, knn_top1, lr, epoch_s,
    images_per_s); a true return value stops the run there (it is still evaluated and recorded), and an exception
    it raises (e.g. optuna.TrialPruned) ends the run without a workbook row. given: the options set explicitly on
    the command line, for --resume (None: all). script: the door, recorded in the row. Returns the run's record: the
    workbook row, with its run_id."""
    method = get_method(method) if isinstance(method, str) else method
    started = time.time()
    opts, state = copy.copy(options), None
    if opts.resume:
        state = load_checkpoint(opts.resume)
        opts = resumed_options(method, opts, given, state, opts.resume)
        check_unfinished(state, opts)
    job = prepare(method, opts, state, started, quiet)
    fit(job, on_epoch)
    evaluate(job, quiet)
    return record(job, script, quiet)


def prepare(method, opts, state=None, started=None, quiet=True):
    """Everything before the first step: checked options, runtime, data and loaders, model and optimizer (restored
    from a checkpoint's state when resuming), the run directory, DDP and torch.compile."""
    check_options(method, opts)
    optimizer_name, lr, wd, warmup = method.optimizer_recipe(opts)
    info = dataset_info(opts.dataset)
    crop_size = check_crop_size(info, opts.crop_size)
    policy = resolve_policy(opts.aug, crop_size)
    train_images, views = train_views(method, opts, policy, crop_size)
    rt = setup_runtime(opts.precision, opts.seed, opts.channels_last, normalize=(info.mean, info.std))
    if rt.is_main:
        results.check_writable(opts.results)
    batch, bn_splits = check_batch(rt, opts)
    splits, pretrain, scored = load_data(rt, method, opts)
    loaders = build_loaders(rt, opts, train_images, build_transform("eval", crop_size), pretrain, splits.memory,
                            scored, batch)
    cifar_stem = {"auto": not splits.info.imagenet_stem, "cifar": True, "imagenet": False}[opts.stem]
    model, optimizer = build_model(rt, method, opts, splits.info.num_classes, cifar_stem, bn_splits, optimizer_name,
                                   lr, wd)
    start_epoch, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rt.load_scaler(state["scaler"])
        set_rng_states(rt, state["rng"])
        start_epoch, history = state["epoch"], state["history"]
        opts.results_dir = opts.results_dir or state["run_dir"]
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{method.name}-{opts.dataset}-{Path(opts.aug).stem}"
    run_dir = make_run_dir(opts.results_dir, name, resuming=state is not None)
    if rt.is_main:
        record_start(run_dir, opts)
    train_model = model
    if rt.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    if opts.compile:
        train_model = torch.compile(train_model)
    if rt.is_main and not quiet:
        print(f"{method.name} {opts.arch} on {opts.dataset} ({len(pretrain)} images, {crop_size}px, aug {opts.aug}, "
              f"{views} views) | {optimizer_name} lr {lr or 0:.4g} | {rt.device} {rt.precision} x{rt.world_size} | "
              f"run dir {run_dir}")
        print(describe_policy(policy))
    return Run(method=method, opts=opts, rt=rt, splits=splits, crop_size=crop_size, policy=policy, views=views,
               batch=batch, pretrain=pretrain, scored=scored, loaders=loaders, model=model, train_model=train_model,
               optimizer=optimizer, optimizer_name=optimizer_name, lr=lr, lr_fn=method.lr_schedule(opts, lr, warmup),
               run_dir=run_dir, log=EpochLog(run_dir, history, enabled=rt.is_main), started=started or time.time(),
               start_epoch=start_epoch)


def check_batch(rt, opts):
    """(batch per process, BatchNorm splits): the batch must divide over the processes and the splits, and leave
    BatchNorm at least 2 images."""
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
    return batch, bn_splits


def load_data(rt, method, opts):
    """(splits, the images it trains on, the split it scores), with a note for settings that work against it."""
    splits = load_splits(opts.dataset, opts.data_dir, download=opts.download, subset=opts.subset, seed=opts.seed,
                         val_size=opts.val_size)
    scored = splits.val if opts.val_size else splits.test
    pretrain = splits.memory if method.needs_labels else splits.pretrain  # STL-10: train+unlabeled vs train
    if opts.batch_size > len(pretrain):
        raise UserError(f"--batch-size {opts.batch_size} is larger than the {len(pretrain)} training images")
    if not rt.is_main:
        return splits, pretrain, scored
    if opts.subset and not opts.val_size:
        print(f"note: --subset keeps {len(pretrain)} training images; the kNN monitor and linear evaluation still "
              f"score the full {len(scored)}-image test set")
    for note in method.notes(opts, len(pretrain)):
        print(f"note: {note}")
    per_class = len(splits.memory) / splits.info.num_classes
    if opts.knn_k > per_class:
        smaller = max(1, min(20, int(per_class) // 2))
        print(f"note: --knn-k {opts.knn_k} is more than the kNN memory bank's {per_class:.0f} images per class, so "
              f"every query's vote leans to the bank's class counts; a smaller --knn-k (e.g. {smaller}) separates "
              "features")
    return splits, pretrain, scored


def fit(job, on_epoch=None):
    """The epoch loop from where the run stands: train, monitor when due, log, checkpoint, ask on_epoch; a run of
    --epochs 0 evaluates the network at initialisation instead."""
    opts, rt, log = job.opts, job.rt, job.log
    train_loader = job.loaders[0]
    for epoch in range(job.start_epoch, opts.epochs):
        train_loader.sampler.set_epoch(epoch)
        loss, n_images, seconds, last_lr = train_epoch(rt, job.train_model, job.model, train_loader, job.optimizer,
                                                       job.lr_fn, epoch, opts.epochs)
        knn = job.knn() if monitor_due(epoch, opts.epochs, opts.knn_every) else None
        best_before = log.best_knn
        metrics = dict(epoch=epoch + 1, loss=loss, knn_top1=knn, lr=last_lr, epoch_s=seconds,
                       images_per_s=n_images / seconds)
        log.add(**metrics)
        rng = rng_states(rt)  # every rank's, gathered by all of them
        if rt.is_main:
            save_checkpoint(job.run_dir / "checkpoint_last.pth", checkpoint(job, epoch + 1, rng))
            if knn is not None and (best_before is None or knn > best_before):
                save_checkpoint(job.run_dir / "checkpoint_best.pth", checkpoint(job, epoch + 1, rng))
        if on_epoch is not None and on_epoch(epoch + 1, metrics):
            if knn is None:  # a run stopped early still ends with a monitor reading
                metrics["knn_top1"] = log.history[-1]["knn_top1"] = job.knn()
            break
    if opts.epochs == 0 and not log.history:  # the network at initialisation, on the same protocol
        log.add(epoch=0, loss=float("nan"), lr=0.0, epoch_s=0.0, images_per_s=0.0, knn_top1=job.knn())


def checkpoint(job, epochs_done, rng):
    return dict(format=CHECKPOINT_FORMAT, method=job.method.name, options=vars(job.opts), model=job.model.state_dict(),
                optimizer=job.optimizer.state_dict(), scaler=job.rt.scaler.state_dict(), rng=rng,
                epoch=epochs_done, history=job.log.history, run_dir=str(job.run_dir))


def evaluate(job, quiet=True):
    """Linear evaluation of the frozen backbone (--linear-epochs) and a supervised method's own classifier."""
    opts, rt = job.opts, job.rt
    if opts.linear_epochs:
        job.linear = evaluation.linear_evaluation(rt, opts, job.model.backbone, job.splits, job.info.num_classes,
                                                  job.crop_size, job.batch, *job.loaders[1:])
        if rt.is_main and not quiet:
            top5 = f", top-5 {job.linear[1]:.2f}%" if job.linear[1] is not None and job.info.num_classes > 10 else ""
            print(f"linear evaluation ({opts.linear_protocol}) top-1 {job.linear[0]:.2f}%{top5}")
    classifier = job.model.supervised_classifier
    if classifier is not None:
        job.supervised = evaluation.classification_accuracy(rt, classifier, job.loaders[2])
        if rt.is_main and not quiet:
            print(f"test top-1 {job.supervised[0]:.2f}% (supervised baseline)")


def record(job, script=None, quiet=True):
    """The run's workbook row, appended by the main process (which also marks the run dir as recorded)."""
    opts, rt = job.opts, job.rt
    scored = (f"{len(job.scored)} validation images (scored instead of test)" if opts.val_size
              else f"{len(job.scored)} test images")
    row = results.run_row(
        script=script or Path(sys.argv[0]).name, method=job.method.name, options=opts, dataset_info=job.info,
        crop_size=job.crop_size, views=job.views, optimizer=job.optimizer_name, lr=job.lr, precision=rt.precision,
        world_size=rt.world_size, history=job.log.history, linear=job.linear, supervised=job.supervised,
        started=job.started, peak_gpu_mem_gb=peak_gpu_memory_gb(rt), hardware=hardware_name(rt),
        run_dir=job.run_dir, git_commit=git_commit(), data=f"{opts.dataset}: {len(job.pretrain)} train / {scored}",
        policy=policy_to_json(job.policy), **job.model.record_fields())
    if rt.is_main:
        row["run_id"] = results.append_run(opts.results, row, results.curve_rows(job.log.history))
        recorded = {key: row.get(key) for key in ("run_id", "epochs", "policy", "knn_top1_final", "knn_top1_best",
                                                  "linear_top1", "wall_time_s")}
        (job.run_dir / RECORDED).write_text(json.dumps(dict(recorded, results=str(opts.results))))
        if not quiet:
            print(f"kNN top-1 final {row['knn_top1_final']}, best {row['knn_top1_best']} | "
                  f"results: {opts.results} (run {row['run_id']}) | run dir: {job.run_dir}")
    return row
