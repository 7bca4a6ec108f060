"""MoCo-v1 with the augmentation pipeline as the experiment (facebookresearch/moco CIFAR-10 demo recipe).

    python moco_augmented.py --dataset cifar10 --aug ours          # the seed study's 7-transform run
    torchrun --nproc_per_node=4 moco_augmented.py --dataset imagenet100 --data-dir /data/imagenet100
"""
import argparse
import math
import time

import torch
import torch.nn as nn

import evaluation
import results
from augmentations import build_transform
from datasets import (TransformDataset, dataset_info, default_workers, load_splits, make_eval_loader,
                      make_train_loader)
from models import ARCHS, MoCo
from training import (ArgumentParser, UserError, curve_rows, fit, lr_at, rounded, run_main, run_record, setup_runtime,
                      start_run, training_state)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("-a", "--arch", default="resnet18", choices=ARCHS)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="data", help="torchvision root (or ImageFolder root) of the dataset")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=512, help="total over all processes, as in facebookresearch/moco")
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--cos", action=argparse.BooleanOptionalAction, default=True, help="cosine schedule (default)")
    p.add_argument("--schedule", type=int, nargs="*", default=[], help="epochs at which lr drops 10x (step schedule)")
    p.add_argument("--moco-dim", type=int, default=128)
    p.add_argument("--moco-k", type=int, default=4096)
    p.add_argument("--moco-m", type=float, default=0.99)
    p.add_argument("--moco-t", type=float, default=0.1)
    p.add_argument("--mlp", type=int, default=0, metavar="HIDDEN", help="2-layer MLP head of this width (MoCo-v2); 0 = linear")
    p.add_argument("--bn-splits", type=int, default=8, help="SplitBatchNorm on one device (ignored under DDP)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes under DDP")
    p.add_argument("--symmetric", action="store_true", help="symmetric loss (default asymmetric, as the seed study)")
    p.add_argument("--aug", default="ours", help="augmentation preset or ablation spec, e.g. original, ours, ours-clahe")
    p.add_argument("--crops", type=int, default=2, help="views per image: 2, or 3 for triple crop")
    p.add_argument("--crop-size", type=int, default=None, help="training crop size (downcrop); default: native size")
    p.add_argument("--stem", choices=["auto", "cifar", "imagenet"], default="auto")
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--knn-t", type=float, default=0.1)
    p.add_argument("--knn-every", type=int, default=1, help="kNN monitor every N epochs (0 = only at the end)")
    p.add_argument("--linear-epochs", type=int, default=100, help="linear evaluation epochs after pretraining (0 = off)")
    p.add_argument("--linear-aug", action="store_true",
                   help="main_lincls protocol (augmented images, SGD lr 30, wd 0) instead of the cached-feature probe")
    p.add_argument("--subset", type=int, default=None, help="keep N training images (seeded)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="loader workers per process (default: usable cores / processes on this node, at most 16)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the first step compiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="checkpoint_last.pth of the run to continue")
    p.add_argument("--results-dir", default=None, help="run directory (default runs/<time>-<dataset>-<aug>)")
    p.add_argument("--results", default=str(results.default_path()), help="workbook every run appends to")
    return p.parse_args(argv)


def check_args(args):
    for name in ("epochs", "batch_size", "lr", "moco_k", "moco_dim", "knn_k"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.subset is not None and args.subset <= 0:
        raise UserError(f"--subset must be > 0, got {args.subset}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if args.crops < 2:
        raise UserError(f"--crops must be 2 or more (MoCo needs a query and a key view), got {args.crops}")
    if args.crop_size is not None and args.crop_size < 8:
        raise UserError(f"--crop-size must be at least 8 pixels, got {args.crop_size}")
    if not 0 <= args.moco_m < 1:
        raise UserError(f"--moco-m must be in [0, 1), got {args.moco_m}")
    if args.moco_t <= 0 or args.knn_t <= 0:
        raise UserError("--moco-t and --knn-t must be > 0")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    started = time.time()
    info = dataset_info(args.dataset)
    crop_size = args.crop_size or info.image_size
    train_transform = build_transform(args.aug, crop_size)
    eval_transform = build_transform("eval", crop_size)
    rt = setup_runtime(args.precision, args.seed, args.channels_last, normalize=(info.mean, info.std))
    if rt.is_main:
        results.check_writable(args.results)
    if args.batch_size % rt.world_size:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {rt.world_size} processes")
    batch = args.batch_size // rt.world_size
    bn_splits = args.bn_splits if not rt.distributed else 1
    if rt.distributed and args.bn_splits > 1 and rt.is_main:
        print(f"note: --bn-splits {args.bn_splits} simulates multi-GPU BN on one device; under DDP each process's "
              "BatchNorm already sees its own sub-batch, so it is ignored")
    if batch % bn_splits:
        raise UserError(f"the batch of {batch} per process does not split into --bn-splits {bn_splits} equal parts")

    splits = load_splits(args.dataset, args.data_dir, download=args.download, subset=args.subset, seed=args.seed)
    info = splits.info
    if args.batch_size > len(splits.pretrain):
        raise UserError(f"--batch-size {args.batch_size} is larger than the {len(splits.pretrain)} training images")
    train_loader = make_train_loader(rt, TransformDataset(splits.pretrain, train_transform, n_views=args.crops),
                                     batch, args.workers, args.seed)
    memory_loader = make_eval_loader(rt, TransformDataset(splits.memory, eval_transform), batch, args.workers)
    test_loader = make_eval_loader(rt, TransformDataset(splits.test, eval_transform), batch, args.workers)

    cifar_stem = {"auto": not info.imagenet_stem, "cifar": True, "imagenet": False}[args.stem]
    model = MoCo(args.arch, args.moco_dim, args.moco_k, args.moco_m, args.moco_t, cifar_stem, bn_splits,
                 args.symmetric, args.mlp or None).to(rt.device)
    if rt.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd,
                                foreach=rt.device.type == "cuda" or None)

    signature = dict(script="moco", arch=args.arch, dataset=args.dataset, moco_dim=args.moco_dim, moco_k=args.moco_k,
                     mlp=args.mlp, cifar_stem=cifar_stem)
    start_epoch, log, run_dir, train_model = start_run(rt, args, model, optimizer, signature,
                                                     f"moco-{args.dataset}-{args.aug}")
    if rt.is_main:
        print(f"MoCo {args.arch} on {args.dataset} ({len(splits.pretrain)} images, {crop_size}px, aug {args.aug}, "
              f"{args.crops} crops) | {rt.device} {rt.precision} x{rt.world_size} | run dir {run_dir}")
    query_encoder = model.encoder_q  # the demo's kNN monitor uses the query encoder's (normalised) output

    def monitor():
        query_encoder.eval()
        return evaluation.knn_top1(rt, query_encoder, memory_loader, test_loader, info.num_classes,
                                   args.knn_k, args.knn_t)

    milestones = args.schedule
    schedule = "step" if milestones else "cos"
    fit(rt, train_model, optimizer, train_loader,
        loss_fn=lambda views, labels: train_model(views),
        lr_fn=lambda t: lr_at(math.floor(t), args.lr, args.epochs, schedule, milestones),  # per epoch, as the demo
        epochs=args.epochs, start_epoch=start_epoch, log=log, monitor=monitor, monitor_every=args.knn_every,
        checkpoint_state=lambda done: training_state(rt, model, optimizer, done, log, signature, run_dir, args),
        run_dir=run_dir)

    linear_top1 = linear_top5 = None
    if args.linear_epochs:
        linear_top1, linear_top5 = linear_evaluation(rt, args, model.encoder_q.backbone, splits, info, crop_size, batch,
                                                     memory_loader, test_loader)
        if rt.is_main:
            top5 = f", top-5 {linear_top5:.2f}%" if linear_top5 is not None and info.num_classes > 10 else ""
            print(f"linear evaluation top-1 {linear_top1:.2f}%{top5}")
    if rt.is_main:
        record = run_record(rt, args, log, run_dir, started, script="moco_augmented.py", method="moco",
                            dataset=args.dataset, arch=args.arch, aug=args.aug, crops=args.crops, crop_size=crop_size,
                            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer="sgd",
                            linear_top1=rounded(linear_top1),
                            linear_top5=rounded(linear_top5) if info.num_classes > 10 else None,
                            data=f"{args.dataset}: {len(splits.pretrain)} train / {len(splits.test)} test images")
        run_id = results.append_run(args.results, record, curve_rows(log))
        print(f"kNN top-1 final {record['knn_top1_final']}, best {record['knn_top1_best']} | "
              f"results: {args.results} (run {run_id}) | run dir: {run_dir}")


def linear_evaluation(rt, args, backbone, splits, info, crop_size, batch, memory_loader, test_loader):
    """Frozen-backbone linear evaluation: a fast probe on cached features of the memory split (the kNN monitor's
    eval-transform batches), or main_lincls with --linear-aug."""
    if not args.linear_aug:
        return evaluation.linear_probe(rt, backbone, memory_loader, test_loader, info.num_classes,
                                       epochs=args.linear_epochs, seed=args.seed)
    # main_lincls: crop + flip ('supervised' preset), SGD lr 30 momentum 0.9 wd 0, lr x0.1 at 60% and 80% of the epochs
    train_transform = build_transform("supervised", crop_size)
    train_loader = make_train_loader(rt, TransformDataset(splits.memory, train_transform), batch, args.workers,
                                     args.seed)
    head = nn.Linear(backbone.feat_dim, info.num_classes).to(rt.device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    head_ddp = nn.parallel.DistributedDataParallel(head) if rt.distributed else head
    optimizer = torch.optim.SGD(head.parameters(), lr=30.0, momentum=0.9, weight_decay=0.0)
    milestones = (0.6 * args.linear_epochs, 0.8 * args.linear_epochs)
    evaluation.train_linear_head(rt, backbone, head_ddp, train_loader, args.linear_epochs, optimizer,
                                 lambda t: lr_at(math.floor(t), 30.0, args.linear_epochs, "step", milestones))
    backbone.eval()
    return evaluation.classification_accuracy(rt, lambda x: head(backbone(x)), test_loader)


if __name__ == "__main__":
    run_main(main)
