"""SimCLR (Chen et al. 2020): contrastive pretraining, then an output head fine-tuned on the frozen backbone;
or, with -contrastive False, the same ResNet trained on labels (the supervised baseline).

    python simclr_main.py                                  # SimCLR on CIFAR-10, Adam
    python simclr_main.py -contrastive False -epoch 50     # supervised baseline
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluation
import results
from augmentations import build_transform
from datasets import (TransformDataset, dataset_info, default_workers, load_splits, make_eval_loader,
                      make_train_loader)
from lars import LARS
from losses import nt_xent
from models import SimCLR, gather_all
from training import (ArgumentParser, UserError, curve_rows, fit, lr_at, rounded, run_main, run_record, setup_runtime,
                      start_run, str2bool, training_state)

OPTIMIZER_DEFAULTS = {  # lr (for batch 256) and weight decay
    "adam": (3e-4, 1e-6),
    "sgd": (0.1, 5e-4),
    "lars": (0.3, 1e-6),  # SimCLR: lr = 0.3 × batch/256, 10 warm-up epochs, cosine
}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)

    def option(name, **kwargs):
        p.add_argument(f"-{name}", f"--{name}", **kwargs)

    option("contrastive", type=str2bool, default=True, help="True: SimCLR; False: supervised baseline")
    option("base_model", type=int, choices=[18, 50], default=18, help="ResNet depth")
    option("lr", type=float, default=None, help="default per optimizer: adam 3e-4, sgd 0.1, lars 0.3 × batch/256")
    option("wd", type=float, default=None, help="weight decay; default per optimizer: adam 1e-6, sgd 5e-4, lars 1e-6")
    option("epoch", type=int, default=100)
    option("batch_size", type=int, default=256, help="total over all processes")
    option("optimizer", choices=sorted(OPTIMIZER_DEFAULTS), default="adam")
    option("temperature", type=float, default=0.5)
    option("projection_dim", type=int, default=128)
    option("finetune_epochs", type=int, default=20, help="epochs of output-head training on the frozen backbone")
    option("dataset", default="cifar10")
    option("data_dir", default="data")
    option("download", type=str2bool, default=True)
    option("aug", default=None, help="pretraining preset or ablation spec (default simclr; supervised mode: supervised)")
    option("crop_size", type=int, default=None)
    option("knn_every", type=int, default=1, help="kNN monitor of the backbone every N epochs (0 = only at the end)")
    option("subset", type=int, default=None)
    option("workers", type=int, default=default_workers(),
           help="loader workers per process (default: usable cores / processes on this node, at most 16)")
    option("precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    option("channels_last", type=str2bool, default=True)
    option("compile", type=str2bool, default=False, help="torch.compile the model (the first step compiles)")
    option("seed", type=int, default=0)
    option("resume", default=None)
    option("results_dir", default=None)
    option("results", default=str(results.default_path()))
    return p.parse_args(argv)


def check_args(args):
    for name in ("epoch", "batch_size", "temperature", "projection_dim"):
        if getattr(args, name) <= 0:
            raise UserError(f"-{name} must be > 0, got {getattr(args, name)}")
    if args.lr is not None and args.lr <= 0:
        raise UserError(f"-lr must be > 0, got {args.lr}")
    if args.subset is not None and args.subset <= 0:
        raise UserError(f"-subset must be > 0, got {args.subset}")
    if args.workers < 0:
        raise UserError(f"-workers must be >= 0, got {args.workers}")
    if args.finetune_epochs < 0:
        raise UserError(f"-finetune_epochs must be >= 0, got {args.finetune_epochs}")


def build_optimizer(args, model):
    base_lr, wd = OPTIMIZER_DEFAULTS[args.optimizer]
    lr = args.lr or (base_lr * args.batch_size / 256 if args.optimizer == "lars" else base_lr)
    wd = wd if args.wd is None else args.wd
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd), lr
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd), lr
    return LARS(params, lr=lr, momentum=0.9, weight_decay=wd), lr


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    started = time.time()
    method = "simclr" if args.contrastive else "supervised"
    args.aug = args.aug or ("simclr" if args.contrastive else "supervised")
    info = dataset_info(args.dataset)
    crop_size = args.crop_size or info.image_size
    train_transform = build_transform(args.aug, crop_size)
    eval_transform = build_transform("eval", crop_size)
    rt = setup_runtime(args.precision, args.seed, args.channels_last, normalize=(info.mean, info.std))
    if rt.is_main:
        results.check_writable(args.results)
    if args.batch_size % rt.world_size:
        raise UserError(f"-batch_size {args.batch_size} is not divisible by the {rt.world_size} processes")
    batch = args.batch_size // rt.world_size

    splits = load_splits(args.dataset, args.data_dir, download=args.download, subset=args.subset, seed=args.seed)
    info = splits.info
    pretrain = splits.pretrain if args.contrastive else splits.memory  # supervised needs labels (STL-10: no unlabeled)
    if args.batch_size > len(pretrain):
        raise UserError(f"-batch_size {args.batch_size} is larger than the {len(pretrain)} training images")
    train_loader = make_train_loader(rt, TransformDataset(pretrain, train_transform, n_views=2 if args.contrastive else 1),
                                     batch, args.workers, args.seed)
    memory_loader = make_eval_loader(rt, TransformDataset(splits.memory, eval_transform), batch, args.workers)
    test_loader = make_eval_loader(rt, TransformDataset(splits.test, eval_transform), batch, args.workers)

    arch = f"resnet{args.base_model}"
    model = SimCLR(arch, info.num_classes, args.projection_dim, cifar_stem=not info.imagenet_stem).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The head this mode does not train is frozen, so the optimizer and DDP see exactly the trained parameters.
    (model.output_head if args.contrastive else model.projection).requires_grad_(False)
    optimizer, lr = build_optimizer(args, model)
    warmup = min(10.0, args.epoch / 10) if args.optimizer == "lars" else 0.0

    signature = dict(script="simclr", method=method, arch=arch, dataset=args.dataset, projection_dim=args.projection_dim)
    start_epoch, log, run_dir, train_model = start_run(rt, args, model, optimizer, signature,
                                                     f"{method}-{args.dataset}-{args.aug}")
    if rt.is_main:
        print(f"{method} {arch} on {args.dataset} ({len(pretrain)} images, {crop_size}px, aug {args.aug}) | "
              f"{args.optimizer} lr {lr:.4g} | {rt.device} {rt.precision} x{rt.world_size} | run dir {run_dir}")

    def contrastive_loss(views, labels):
        z1, z2 = train_model(views[0]), train_model(views[1])
        return nt_xent(gather_all(z1, with_grad=True), gather_all(z2, with_grad=True), args.temperature)

    def supervised_loss(images, labels):
        return F.cross_entropy(train_model(images, classify=True), labels)

    def monitor():
        model.backbone.eval()
        return evaluation.knn_top1(rt, model.backbone, memory_loader, test_loader, info.num_classes)

    fit(rt, train_model, optimizer, train_loader, contrastive_loss if args.contrastive else supervised_loss,
        lr_fn=lambda t: lr_at(t, lr, args.epoch, "cos", warmup_epochs=warmup),
        epochs=args.epoch, start_epoch=start_epoch, log=log, monitor=monitor, monitor_every=args.knn_every,
        checkpoint_state=lambda done: training_state(rt, model, optimizer, done, log, signature, run_dir, args),
        run_dir=run_dir)

    if args.contrastive and args.finetune_epochs:
        finetune_output_head(rt, args, model, splits, info, crop_size, batch)
    model.eval()
    top1, top5 = evaluation.classification_accuracy(rt, lambda x: model(x, classify=True), test_loader)
    if rt.is_main:
        what = "supervised baseline" if not args.contrastive else "output head on the SimCLR backbone"
        print(f"test top-1 {top1:.2f}% ({what}){'' if top5 is None else f', top-5 {top5:.2f}%'}")
        finetuned = args.contrastive and args.finetune_epochs
        record = run_record(rt, args, log, run_dir, started, script="simclr_main.py", method=method,
                            dataset=args.dataset, arch=arch, aug=args.aug, crops=2 if args.contrastive else 1,
                            crop_size=crop_size, epochs=args.epoch, batch_size=args.batch_size, lr=lr,
                            optimizer=args.optimizer, linear_top1=rounded(top1) if finetuned else None,
                            linear_top5=rounded(top5) if finetuned and info.num_classes > 10 else None,
                            supervised_top1=None if args.contrastive else rounded(top1),
                            data=f"{args.dataset}: {len(pretrain)} train / {len(splits.test)} test images")
        run_id = results.append_run(args.results, record, curve_rows(log))
        print(f"kNN top-1 final {record['knn_top1_final']}, best {record['knn_top1_best']} | "
              f"results: {args.results} (run {run_id}) | run dir: {run_dir}")


def finetune_output_head(rt, args, model, splits, info, crop_size, batch):
    """Train the output head with cross-entropy on the frozen backbone (augmented labelled images, Adam, cosine)."""
    transform = build_transform("supervised", crop_size)
    model.output_head.requires_grad_(True)
    loader = make_train_loader(rt, TransformDataset(splits.memory, transform), batch, args.workers, args.seed + 1)
    head = nn.parallel.DistributedDataParallel(model.output_head) if rt.distributed else model.output_head
    optimizer = torch.optim.Adam(model.output_head.parameters(), lr=1e-3)
    evaluation.train_linear_head(rt, model.backbone, head, loader, args.finetune_epochs, optimizer,
                                 lambda t: lr_at(t, 1e-3, args.finetune_epochs), desc="fine-tune")


if __name__ == "__main__":
    run_main(main)
