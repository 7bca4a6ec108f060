"""Throughput of this repo's pipeline. Each mode is measured in one process, so the ratios within it are fair.

    python bench.py --aug      # augmentation images/s on one core: this repo (Albumentations) vs torchvision v2
    python bench.py --loader   # views/s of the two-view training loader for 0, 1, ... workers
    python bench.py --step     # MoCo / SimCLR training-step images/s: fp32 vs mixed precision, channels_last
    python bench.py --widths   # MoCo training-step images/s by backbone width (--width) at 28 and 32 px: CPU-sized nets
    python bench.py --epoch    # one epoch of the default MoCo recipe (real loader + kNN monitor); 200-epoch projection
    python bench.py --knn      # seconds and peak memory of the kNN monitor, 50,000-image bank x 10,000 queries
    python bench.py --peak     # the matmul peak (a large GEMM, fp32 and bf16) and the share of it MoCo steps reach
    python bench.py --levers   # the CPU recipe's MoCo step by precision, channels_last, threads, compile; end to end
    python bench.py --all      # every mode (aug last, so its headline is the last line)

--quick shrinks every size so a run takes seconds (the test). Tables print as markdown rows, each headed by the
machine, so they paste into BENCHMARKS.md.
"""
import gc
import itertools
import math
import os
import platform
import re
import time
from functools import partial

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise checks PyPI for updates at import

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2

from augmentations import MultiView, build_ops, build_transform
from cli import ArgumentParser, run_main
from datasets import dataset_info, load_splits, synthetic_images
from evaluation import knn_predict, knn_top1
from loading import TransformDataset, default_workers, make_train_loader, usable_cores
from methods import MoCo, SimCLR
from models import stage_channels
from run_options import default_options
from runtime import Runtime, auto_precision, setup_runtime
from training import build_loaders, build_model, train_epoch

DEMO = default_options(MoCo)  # the default MoCo recipe (the CIFAR demo's): aug, crops, batch, workers, model
SIMCLR = default_options(SimCLR)  # simclr_main.py's defaults: ResNet-18, Adam, NT-Xent
PRESETS = ("original", "ours", "simclr")
# torchvision v2 counterpart of each op of augmentations.OPS, built from the Albumentations op's own parameters
TORCHVISION_OPS = {
    "crop": lambda op: v2.RandomResizedCrop(op.size, scale=op.scale, ratio=op.ratio, antialias=True),
    "jitter": lambda op: v2.RandomApply([v2.ColorJitter(op.brightness, op.contrast, op.saturation, op.hue)], p=op.p),
    "flip": lambda op: v2.RandomHorizontalFlip(op.p),
    "gray": lambda op: v2.RandomGrayscale(op.p),
    "solarize": lambda op: v2.RandomSolarize(math.ceil(255 * op.threshold_range[0]), p=op.p),  # uint8 >= 128 inverted
    "clahe": lambda op: v2.RandomEqualize(op.p),  # torchvision has no CLAHE: plain equalisation is the nearest op
    "brightness_contrast": lambda op: v2.RandomApply(  # multiplicative brightness, where Albumentations adds
        [v2.ColorJitter(brightness=op.brightness_limit[1], contrast=op.contrast_limit[1])], p=op.p),
    "blur": lambda op: v2.RandomApply([v2.GaussianBlur(op.blur_limit[0], op.sigma_limit)], p=op.p),
}
SUBSTITUTES = "RandomEqualize for CLAHE, ColorJitter(brightness, contrast) for RandomBrightnessContrast"


def machine(device):
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (f"Machine: {cpu}, {usable_cores()} cores, {gpu}; torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, albumentations {A.__version__}, opencv {cv2.__version__}")


def table(title, device, *columns):
    print(f"\n### {title}\n\n{machine(device)}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))


def row(*cells):
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


def free_memory(device):  # and restart the peak-memory count
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "n/a (CPU)"


def timed(device, work):
    """Seconds `work()` takes, the GPU's queue drained before and after."""
    drain = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    drain(device)
    start = time.perf_counter()
    work()
    drain(device)
    return time.perf_counter() - start


def calls_per_second(augment, images, seconds):
    """One image per call, as a DataLoader worker calls its dataset, cycling over `images` for `seconds`."""
    for image in images[:16]:  # warm-up: first calls pay for lazy initialisation
        augment(image)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        augment(images[calls % len(images)])
        calls += 1
    return calls / elapsed


def torchvision_pipeline(preset, size):
    """The same ops in torchvision v2; like the repo's pipeline, it returns a uint8 CHW tensor (normalised later,
    on the device)."""
    return v2.Compose([TORCHVISION_OPS[name](op) for name, op in build_ops(preset, size)])


def bench_aug(args, device):
    small, _ = synthetic_images(256, np.random.default_rng(0))
    images = {32: small, 96: np.stack([cv2.resize(image, (96, 96), interpolation=cv2.INTER_LINEAR) for image in small])}
    candidates = {}
    for preset, size in itertools.product(PRESETS, images):
        repo = build_transform(preset, size)
        tv = torchvision_pipeline(preset, size)
        candidates[preset, size, "repo"] = lambda image, t=repo: t(image=image)["image"]
        # torchvision gets what a dataset would hand it: the HWC numpy image as a CHW tensor view
        candidates[preset, size, "tv"] = lambda image, t=tv: t(torch.from_numpy(image).permute(2, 0, 1))
    threads = torch.get_num_threads(), cv2.getNumThreads()
    # One core: torch's OpenMP pool (OMP_NUM_THREADS is only read at start-up) and OpenCV's pool, both set to 1.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        best = dict.fromkeys(candidates, 0.0)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for _ in range(args.rounds):  # best of rounds, libraries alternating, so a burst of load hits both alike
            for key, augment in candidates.items():
                best[key] = max(best[key], calls_per_second(augment, images[key[1]], args.seconds))
        cpu_share = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    table("Augmentation throughput, one core", device, "preset", "size", "this repo (Albumentations) img/s",
          "torchvision v2 img/s", "speedup")
    for preset, size in itertools.product(PRESETS, images):
        repo, tv = best[preset, size, "repo"], best[preset, size, "tv"]
        row(preset, f"{size} px", f"{repo:,.0f}", f"{tv:,.0f}", f"{repo / tv:.1f}x")
    print(f"\nBest of {args.rounds} x {args.seconds:g} s per pipeline; torch and OpenCV at 1 thread (process CPU "
          f"time / wall time {cpu_share:.2f}). 'ours' torchvision stand-ins: {SUBSTITUTES}.")
    speedup = best["original", 32, "repo"] / best["original", 32, "tv"]
    print(f"augmentation speedup vs torchvision v2 (original preset, 32 px, 1 core): {speedup:.1f}x")


def endless(loader):
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def bench_loader(args, device):
    splits = load_splits("synthetic", synthetic_size=(args.loader_images, 100))
    size = args.loader_size
    if size != 32:  # as a dataset of size-px images would hold them
        splits.pretrain.images = np.stack([cv2.resize(image, (size, size)) for image in splits.pretrain.images])
    transform = build_transform(DEMO.aug, size)
    dataset = TransformDataset(splits.pretrain, transform, n_views=DEMO.crops)
    rt = Runtime(torch.device("cpu"), "fp32")
    table(f"Training loader ('{DEMO.aug}', {DEMO.crops} views, batch {args.loader_batch}, "
          f"{args.loader_images:,} images {size} px, uint8 batches)", device, "workers", "views/s", "images/s",
          "ms/batch")
    views_per_s = {}
    for workers in args.workers:
        loader = make_train_loader(rt, dataset, args.loader_batch, workers)
        batches = endless(loader)
        for _ in range(workers + 1):  # warm-up: every worker has started and delivered
            next(batches)
        start = time.perf_counter()
        for _ in range(args.loader_batches):
            next(batches)
        seconds = time.perf_counter() - start
        views_per_s[workers] = args.loader_batches * args.loader_batch * DEMO.crops / seconds
        row(workers, f"{views_per_s[workers]:,.0f}", f"{views_per_s[workers] / DEMO.crops:,.0f}",
            f"{1000 * seconds / args.loader_batches:.0f}")
        batches.close()
        del batches, loader  # shuts the persistent workers down before the next count starts
        gc.collect()
    direct = calls_per_second(lambda image: transform(image=image)["image"], splits.pretrain.images[:256], args.seconds)
    print(f"\nFor reference, the same transform called directly in this process: {direct:,.0f} views/s.")
    return views_per_s.get(DEMO.workers)


def method_step(rt, method, options, compiled=False, bn_splits=1):
    """A method with its recipe's optimizer, built as training.run builds it (compiled: as --compile); returns
    (the method, its optimizer, the module the step calls)."""
    optimizer_name, lr, wd, _ = method.optimizer_recipe(options)
    model, optimizer = build_model(rt, method, options, 10, True, bn_splits, optimizer_name, lr, wd)
    return model, optimizer, torch.compile(model) if compiled else model


def moco_demo(rt, compiled=False, bn_splits=DEMO.bn_splits):
    return method_step(rt, MoCo, DEMO, compiled, bn_splits)


def simclr_default(rt, compiled=False):
    return method_step(rt, SimCLR, SIMCLR, compiled)


def two_view_batch(batch, size, pin=False):
    """One loader batch of two random uint8 views (and labels), as training.train_epoch takes them."""
    views = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8) for _ in range(2)]
    return [([v.pin_memory() for v in views] if pin else views, torch.zeros(batch, dtype=torch.long))]


def steps_per_second(rt, model, net, optimizer, batch, warmup, steps, size=32):
    """training.train_epoch (the scripts' own step, normalisation on the device included) over one pinned two-view
    uint8 batch of size x size images repeated."""
    batches = two_view_batch(batch, size, pin=rt.device.type == "cuda")  # pinned as the loader's pin_memory
    train = lambda n: train_epoch(rt, net, model, batches * n, optimizer, lambda t: optimizer.param_groups[0]["lr"],
                                  0, 1)
    if warmup:
        train(warmup)  # cudnn.benchmark picks its kernels here
    return steps / timed(rt.device, lambda: train(steps))


def mixed_precision(device):
    """The mixed precision the scripts' --precision auto picks on this device (bf16 on a CPU with AMX); None where it
    picks fp32."""
    return None if auto_precision(device) == "fp32" else auto_precision(device)


def bench_step(args, device):
    info = dataset_info("synthetic")
    cuda = device.type == "cuda"
    mixed = mixed_precision(device)
    default = mixed or "fp32"  # the scripts' precision on this device
    grid = [(precision, channels_last, False) for precision, channels_last
            in itertools.product(["fp32", mixed] if mixed else ["fp32"], [False, True])]
    grid += [(default, cuda, True)] if args.compile else []  # the scripts' default setting, compiled
    runs = [("MoCo", moco_demo, DEMO.bn_splits, setting) for setting in grid]
    # SplitBatchNorm's cost: MoCo with plain BatchNorm, as each process has under DDP
    runs += [("MoCo", partial(moco_demo, bn_splits=1), 1, (default, channels_last, False))
             for channels_last in (False, True)]
    runs += [("SimCLR", simclr_default, 1, setting) for setting in grid]
    table(f"Training step (ResNet-18 CIFAR stem, batch {args.batch_size} x 2 views at 32 px, {args.warmup} warm-up + "
          f"{args.steps} timed steps)", device, "model", "BatchNorm", "precision", "channels_last", "torch.compile",
          "images/s", "ms/step", "peak GPU memory GiB")
    moco_best = 0.0
    for name, build, bn_splits, (precision, channels_last, compiled) in runs:
        free_memory(device)
        rt = setup_runtime(precision, 0, channels_last, normalize=(info.mean, info.std))
        rt.channels_last = channels_last  # timed on CPU too, where the scripts leave it off
        model, optimizer, net = build(rt, compiled)
        if compiled:  # the first step compiles
            compile_s = timed(device, lambda: steps_per_second(rt, model, net, optimizer, args.batch_size, 0, 1))
        rate = steps_per_second(rt, model, net, optimizer, args.batch_size, args.warmup, args.steps)
        row(name, f"{bn_splits} splits" if bn_splits > 1 else "plain", precision, "on" if channels_last else "off",
            f"on (first step {compile_s:.0f} s)" if compiled else "off", f"{rate * args.batch_size:,.0f}",
            f"{1000 / rate:.0f}", peak_memory(device))
        if name == "MoCo" and bn_splits == DEMO.bn_splits:
            moco_best = max(moco_best, rate * args.batch_size)
        del model, optimizer, net
    if not mixed:
        print("\nfp32 only: --precision auto picks fp32 here (bf16 needs a CUDA GPU or a CPU with AMX).")
    elif cuda and torch.backends.cudnn.allow_tf32:
        print("\nfp32 rows run convolutions and matmuls in TF32, as runtime.setup_runtime sets for the scripts.")
    free_memory(device)
    return moco_best


def bench_widths(args, device):
    """The default MoCo recipe (SplitBatchNorm 8, K 4096) at each backbone width and crop size, in the scripts'
    precision on this device: what a CPU can train in minutes."""
    info = dataset_info("synthetic")
    cuda = device.type == "cuda"
    precision = mixed_precision(device) or "fp32"  # the scripts' precision on this device
    table(f"MoCo training step by backbone width (ResNet-18 CIFAR stem, SplitBatchNorm {DEMO.bn_splits}, batch "
          f"{args.batch_size} x 2 views, {precision}, {args.warmup} warm-up + {args.steps} timed steps)", device,
          "width", "stage channels", "backbone parameters", "crop px", "images/s", "ms/step")
    for width, size in itertools.product(args.width, args.sizes):
        rt = setup_runtime(precision, 0, cuda, normalize=(info.mean, info.std))
        options = default_options(MoCo, width=width)
        model, optimizer, net = method_step(rt, MoCo, options, bn_splits=DEMO.bn_splits)
        rate = steps_per_second(rt, model, net, optimizer, args.batch_size, args.warmup, args.steps, size)
        parameters = sum(p.numel() for p in model.backbone.parameters())
        row(f"{width:g}", "-".join(map(str, stage_channels(width))), f"{parameters / 1e6:.2f} M", size,
            f"{rate * args.batch_size:,.0f}", f"{1000 / rate:.0f}")
        del model, optimizer, net



def step_flops(rt, model, net, optimizer, batch, size):
    """FLOPs of one training step (forward and backward: convolutions and matmuls), as torch's FlopCounterMode counts
    them over training.train_epoch's step on a two-view batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_epoch(rt, net, model, two_view_batch(batch, size), optimizer, lambda t: optimizer.param_groups[0]["lr"],
                    0, 1)
    return counter.get_total_flops()


def gemm_peaks(args, device):
    """GFLOP/s of a large square GEMM in fp32 and in bf16, best of args.rounds: the practical ceiling of each."""
    n, peak = args.gemm_size, {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b  # the first call picks the kernel (oneDNN / AMX on CPU, cuBLAS on GPU)
        seconds = min(timed(device, lambda: [a @ b for _ in range(args.gemm_reps)]) for _ in range(args.rounds))
        peak[dtype] = 2 * n ** 3 * args.gemm_reps / seconds / 1e9
    return peak


def bench_peak(args, device):
    """The practical ceiling of this device's matmul units, a large square GEMM in fp32 and bf16, and the share of
    the fp32 one that the MoCo training step reaches (its counted FLOPs x its measured steps/s) at the demo's
    full-width ResNet-18 and at the CPU recipe's width-0.25 net."""
    n, info = args.gemm_size, dataset_info("synthetic")
    table(f"Matmul peak ({n} x {n} GEMM, best of {args.rounds}) and the MoCo step's share of it (batch "
          f"{args.batch_size} x 2 views, SplitBatchNorm {DEMO.bn_splits}, fp32)", device, "what", "precision",
          "GFLOP per step", "GFLOP/s", "share of the fp32 GEMM")
    peak = gemm_peaks(args, device)
    for dtype in (torch.float32, torch.bfloat16):
        row("GEMM", str(dtype).removeprefix("torch."), "", f"{peak[dtype]:,.0f}",
            f"{peak[dtype] / peak[torch.float32]:.2f}")
    for width, size in args.peak_nets:
        rt = setup_runtime("fp32", 0, False, normalize=(info.mean, info.std))
        model, optimizer, net = method_step(rt, MoCo, default_options(MoCo, width=width), bn_splits=DEMO.bn_splits)
        flops = step_flops(rt, model, net, optimizer, args.batch_size, size)
        rate = steps_per_second(rt, model, net, optimizer, args.batch_size, args.warmup, args.steps, size)
        row(f"MoCo step, ResNet-18 width {width:g}, {size} px", "fp32", f"{flops / 1e9:,.2f}",
            f"{flops * rate / 1e9:,.1f}", f"{flops * rate / 1e9 / peak[torch.float32]:.3f}")
        del model, optimizer, net


def cpu_recipe(rt, compiled=False, bn_splits=2):
    """README's CPU recipe for MoCo: ResNet-18 at width 0.25, SplitBatchNorm 2, K 4096, lr 0.06 (28 px, batch 64)."""
    return method_step(rt, MoCo, default_options(MoCo, width=0.25, moco_k=4096, lr=0.06), compiled, bn_splits)


def bench_levers(args, device):
    """The CPU recipe's MoCo step under each lever: precision (bf16 where the device has it), channels_last, the step's
    torch threads, torch.compile and SplitBatchNorm (against plain BatchNorm), on a fixed batch, with the share of its
    precision's GEMM peak; then end to end through the real two-view loader, for each split of the cores between the
    step's threads and the loader's workers."""
    info, size, batch, cores = dataset_info("synthetic"), 28, args.batch_size, usable_cores()
    auto = auto_precision(device)
    precisions = ["fp32", *([auto] if auto != "fp32" else [])]
    # --quick (the test) and a GPU: the process's own thread count only
    threads = sorted({1, cores}, reverse=True) if device.type == "cpu" and not args.quick else [torch.get_num_threads()]
    default_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads[0])
        peak = gemm_peaks(args, device)
        levers_step(args, device, info, size, batch, precisions, threads, peak)
        levers_end_to_end(args, device, precisions, threads, size, batch, cores)
    finally:
        torch.set_num_threads(default_threads)


def levers_step(args, device, info, size, batch, precisions, threads, peak):
    auto = precisions[-1]
    settings = [(precision, channels_last, n, False, 2) for precision, channels_last, n
                in itertools.product(precisions, [False, True], threads)]
    settings += [(auto, False, max(threads), False, 1)]  # what SplitBatchNorm's reshapes and stat copies cost
    settings += [(auto, False, max(threads), True, 2)] if args.compile and device.type == "cpu" else []  # GPU: --step
    table(f"The CPU recipe's MoCo step (ResNet-18 width 0.25, {size} px, batch {batch} x 2 views, SplitBatchNorm 2, "
          f"K 4096; {args.warmup} warm-up + {args.steps} timed steps on one batch; the GEMM peaks at {threads[0]} "
          "threads)", device, "precision", "channels_last", "torch threads", "torch.compile", "BatchNorm", "images/s",
          "ms/step", "GFLOP/s", "share of its precision's GEMM peak", "vs the first row")
    flops, base = None, None
    for precision, channels_last, n, compiled, bn_splits in settings:
        torch.set_num_threads(n)
        rt = Runtime(device, precision, channels_last=channels_last, normalize=(info.mean, info.std))
        model, optimizer, net = cpu_recipe(rt, compiled, bn_splits)
        flops = flops or step_flops(rt, model, net, optimizer, batch, size)  # the same FLOPs in every precision
        if compiled:  # the first step compiles
            compile_s = timed(device, lambda: steps_per_second(rt, model, net, optimizer, batch, 0, 1, size))
        rate = steps_per_second(rt, model, net, optimizer, batch, args.warmup, args.steps, size)
        base = base or rate
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        row(precision, "on" if channels_last else "off", n, f"on (first step {compile_s:.0f} s)" if compiled else "off",
            f"{bn_splits} splits" if bn_splits > 1 else "plain", f"{rate * batch:,.0f}", f"{1000 / rate:.0f}",
            f"{flops * rate / 1e9:,.1f}", f"{flops * rate / 1e9 / peak[dtype]:.3f}", f"{rate / base:.2f}x")
        del model, optimizer, net
        free_memory(device)
    print(f"\nThe GEMM peaks at {threads[0]} threads: fp32 {peak[torch.float32]:,.0f}, "
          f"bf16 {peak[torch.bfloat16]:,.0f} GFLOP/s.")


def levers_end_to_end(args, device, precisions, threads, size, batch, cores):
    n = args.levers_images
    splits = load_splits("synthetic", synthetic_size=(n, batch))
    info = splits.info
    views = MultiView(build_transform("ours", size), 2)
    table(f"The CPU recipe end to end: its MoCo step fed by the real two-view loader (aug 'ours', {size} px, batch "
          f"{batch}; {n:,} synthetic images an epoch, the 2nd of 2 epochs timed)", device, "precision",
          "torch threads", "loader workers", "train images/s", "epoch s")
    # every split of a CPU's cores; --quick: one worker; a GPU node: its default
    workers_list = [1] if args.quick else range(1, cores + 1) if device.type == "cpu" else [default_workers()]
    for precision, n_threads, workers in itertools.product(precisions, threads, workers_list):
        torch.set_num_threads(n_threads)
        rt = Runtime(device, precision, normalize=(info.mean, info.std))
        model, optimizer, net = cpu_recipe(rt)
        loader = make_train_loader(rt, TransformDataset(splits.pretrain, views), batch, workers)
        epoch = lambda e: train_epoch(rt, net, model, loader, optimizer, lambda t: 0.06, e, 2)
        epoch(0)  # starts the persistent workers
        seconds = timed(device, lambda: epoch(1))
        row(precision, n_threads, workers, f"{n / seconds:,.0f}", f"{seconds:.1f}")
        del model, optimizer, net, loader
        free_memory(device)  # gc.collect: the loader's persistent workers end before the next row


def bench_epoch(args, device):
    d = DEMO
    n, batch = args.epoch_images, args.batch_size
    splits = load_splits("synthetic", synthetic_size=(n, max(n // 5, batch)))
    info = splits.info
    rt = setup_runtime(d.precision, d.seed, d.channels_last, normalize=(info.mean, info.std))
    train_loader, memory_loader, test_loader = build_loaders(
        rt, d, MultiView(build_transform(d.aug, info.image_size), d.crops), build_transform("eval", info.image_size),
        splits.pretrain, splits.memory, splits.test, batch)
    free_memory(device)
    model, optimizer, net = moco_demo(rt)
    monitor = lambda: knn_top1(rt, model.monitor_encoder, memory_loader, test_loader, info.num_classes,
                               d.knn_k, d.knn_t)
    monitor_s = []
    for epoch in range(2):  # the first pays for worker start-up, cudnn.benchmark's kernel search, reading the eval set
        train_loader.sampler.set_epoch(epoch)
        train_s = timed(device, lambda: train_epoch(rt, net, model, train_loader, optimizer, lambda t: d.lr,
                                                    epoch, 2))
        monitor_s.append(timed(device, monitor))
    table(f"Default MoCo recipe, one epoch (2nd of 2) on synthetic: aug '{d.aug}', {d.crops} crops, batch {batch}, "
          f"{d.workers} workers, kNN monitor every epoch", device, "train images", "precision", "train s",
          "kNN monitor s", "epoch s", "train images/s", f"{d.epochs} epochs (min)", "peak GPU memory GiB")
    epoch_s = train_s + monitor_s[1]
    row(f"{n:,}", rt.precision, f"{train_s:.1f}", f"{monitor_s[1]:.1f}", f"{epoch_s:.1f}",
        f"{(n // batch) * batch / train_s:,.0f}", f"{d.epochs * epoch_s / 60:.1f}", peak_memory(device))
    print(f"\nThe first epoch's monitor, which also read the eval images through the loader: {monitor_s[0]:.1f} s.")
    del model, optimizer, train_loader, memory_loader, test_loader
    free_memory(device)


def bench_knn(args, device):
    bank_size, queries = args.knn_size
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(bank_size, 128, generator=generator), dim=1).to(device)
    bank_labels = torch.randint(0, 10, (bank_size,), generator=generator).to(device)
    features = F.normalize(torch.randn(queries, 128, generator=generator), dim=1).to(device)
    knn_predict(features[:256], bank, bank_labels, 10, k=200, t=0.1)  # warm-up: CUDA context and kernels
    free_memory(device)
    seconds = timed(device, lambda: knn_predict(features, bank, bank_labels, 10, k=200, t=0.1))
    table("kNN monitor (evaluation.knn_predict, k=200, t=0.1, 10 classes, D=128, default chunk)", device,
          "bank", "queries", "seconds", "peak GPU memory GiB")
    row(f"{bank_size:,}", f"{queries:,}", f"{seconds:.3f}", peak_memory(device))


MODES = {"loader": bench_loader, "step": bench_step, "widths": bench_widths, "epoch": bench_epoch, "knn": bench_knn,
         "peak": bench_peak, "levers": bench_levers, "aug": bench_aug}


def parse_args(argv, cuda):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    for mode, what in re.findall(r"--(\w+) +# (.*)", __doc__):  # the modes, as the docstring lists them
        p.add_argument(f"--{mode}", action="store_true", help=what)
    p.add_argument("--quick", action="store_true", help="tiny sizes: every mode in seconds (for the test)")
    p.add_argument("--seconds", type=float, help="aug: timed seconds per pipeline in each of 3 rounds (1)")
    p.add_argument("--workers", type=int, nargs="+", help="loader: worker counts (0 1 ... cores)")
    p.add_argument("--loader-images", type=int, help="loader: synthetic images (10,000)")
    p.add_argument("--loader-size", type=int, default=32, help="loader: image side in pixels (32; STL-10 is 96)")
    p.add_argument("--batch-size", type=int, help="step, epoch: batch (512 on GPU, 64 on CPU)")
    p.add_argument("--steps", type=int, help="step: timed steps (20 on GPU, 3 on CPU)")
    p.add_argument("--width", type=float, nargs="+", help="widths: backbone widths (1 0.5 0.25)")
    p.add_argument("--sizes", type=int, nargs="+", help="widths: crop sizes in px (28 32)")
    p.add_argument("--compile", action="store_true",
                   help="step, levers: also time torch.compile at the scripts' default setting (it takes minutes)")
    p.add_argument("--epoch-images", type=int, help="epoch: synthetic images (50,000 on GPU, 4 batches on CPU)")
    p.add_argument("--knn-size", type=int, nargs=2, metavar=("BANK", "QUERIES"), help="knn: (50000 10000)")
    p.add_argument("--gemm-size", type=int, help="peak: the square GEMM's side (4096 on GPU, 2048 on CPU)")
    args = p.parse_args(argv)
    args.modes = [mode for mode in MODES if args.all or getattr(args, mode)]
    if not args.modes:
        p.error("choose at least one mode: --aug, --loader, --step, --widths, --epoch, --knn, --peak, --levers or "
                "--all")
    quick, cpu = args.quick, not cuda  # an explicit option wins over --quick, --quick over the CPU default
    or_default = lambda given, default: default if given is None else given  # an explicit 0 is refused below
    args.seconds = or_default(args.seconds, 0.02 if quick else 1.0)
    args.rounds = 1 if quick else 3
    args.workers = args.workers if args.workers is not None else list(range((2 if quick else usable_cores()) + 1))
    args.loader_images = or_default(args.loader_images, 256 if quick else 10_000)
    args.loader_batch, args.loader_batches = (32, 2) if quick else (DEMO.batch_size, 20)
    args.batch_size = or_default(args.batch_size, 16 if quick else 64 if cpu else 512)
    args.steps = or_default(args.steps, 1 if quick else 3 if cpu else 20)
    args.warmup = 0 if quick else 1 if cpu else 5
    args.epoch_images = or_default(args.epoch_images, args.batch_size if quick else 4 * args.batch_size if cpu else 50_000)
    args.levers_images = args.batch_size * (2 if quick else 60)
    args.knn_size = or_default(args.knn_size, [2_000, 500] if quick else [50_000, 10_000])
    args.width = or_default(args.width, [0.25] if quick else [1.0, 0.5, 0.25])
    args.sizes = or_default(args.sizes, [16] if quick else [28, 32])
    args.gemm_size = or_default(args.gemm_size, 128 if quick else 2048 if cpu else 4096)
    args.gemm_reps = 1 if quick else 5 if cpu else 50
    args.peak_nets = [(0.25, 16)] if quick else [(1.0, 32), (0.25, 28)]  # the demo's net; the CPU recipe's
    if min([args.seconds, args.loader_images, args.loader_size, args.batch_size, args.steps, args.epoch_images,
            *args.knn_size, *args.width, *args.sizes, args.gemm_size]) <= 0:
        p.error("sizes, counts and seconds must be positive")
    if min(args.workers) < 0 or args.epoch_images < args.batch_size or args.loader_images < args.loader_batch:
        p.error("worker counts must be >= 0, and --epoch-images / --loader-images at least one batch")
    if args.batch_size % DEMO.bn_splits:
        p.error(f"--batch-size must divide into the MoCo demo's {DEMO.bn_splits} BatchNorm splits")
    return args


def main(argv=None):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = parse_args(argv, device.type == "cuda")
    results = {mode: MODES[mode](args, device) for mode in args.modes if mode != "aug"}
    if results.get("loader") and results.get("step"):
        consumed = results["step"] * DEMO.crops
        print(f"\nLoader at the default {DEMO.workers} workers: {results['loader']:,.0f} views/s = "
              f"{results['loader'] / consumed:.1f}x the {consumed:,.0f} views/s the fastest MoCo step of the demo "
              f"recipe ({DEMO.bn_splits} BatchNorm splits) consumes.")
    if "aug" in args.modes:  # last, so its headline is the last line printed
        bench_aug(args, device)


if __name__ == "__main__":
    run_main(main)
