"""Side by side with a peer: lightly's CIFAR-10 MoCo tutorial against this repo's default MoCo recipe, on the same
images, network size, batch, queue, threads and workers, timed in interleaved rounds (issue #25).

    pip install --no-deps --target .peer lightly==1.6.0 lightning-utilities   # for this benchmark only
    PYTHONPATH=.peer NO_ALBUMENTATIONS_UPDATE=1 python benchmarks/peer_lightly.py [--rounds 5] [--images 1280]

lightly's side is its tutorial's MoCo (tutorial_moco_memory_bank.py): ResNetGenerator('resnet-18', num_splits=8)
(CIFAR stem, SplitBatchNorm 8), MoCoProjectionHead 512-512-128, momentum 0.99, batch shuffle, NTXentLoss with a 4,096
memory bank at t 0.1, SGD lr 0.06 momentum 0.9 wd 5e-4, MoCoV2Transform at 32 px without blur on PIL images, a
DataLoader with the same workers. The tutorial's pytorch-lightning Trainer is left out, so lightly's figure is its
best case. This repo's side is moco_augmented.py's default recipe (ResNet-18 CIFAR stem, SplitBatchNorm 8, K 4096,
training.train_epoch and its loader) with aug 'original', the demo's four ops, as lightly's transform has, in fp32
and at --precision auto. Each round times one epoch of every side in a rotated order; the ratios are per round.
"""
import copy
import statistics
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from augmentations import MultiView, build_transform  # noqa: E402
from bench import machine, moco_demo, row, table, timed  # noqa: E402
from cli import ArgumentParser, UserError, run_main  # noqa: E402
from datasets import load_splits  # noqa: E402
from loading import TransformDataset, make_train_loader  # noqa: E402
from runtime import Runtime, auto_precision  # noqa: E402
from training import train_epoch  # noqa: E402

BATCH, QUEUE, WORKERS = 64, 4096, 2


class LightlyMoCo(nn.Module):
    def __init__(self, lightly):
        super().__init__()
        resnet = lightly.models.ResNetGenerator("resnet-18", 1, num_splits=8)
        self.backbone = nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1))
        self.projection_head = lightly.models.modules.heads.MoCoProjectionHead(512, 512, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone).requires_grad_(False)
        self.projection_head_momentum = copy.deepcopy(self.projection_head).requires_grad_(False)
        self.criterion = lightly.loss.NTXentLoss(temperature=0.1, memory_bank_size=(QUEUE, 128))
        self.utils = lightly.models.utils

    def step(self, views, optimizer):
        """The tutorial's training_step and optimizer step."""
        self.utils.update_momentum(self.backbone, self.backbone_momentum, m=0.99)
        self.utils.update_momentum(self.projection_head, self.projection_head_momentum, m=0.99)
        query = self.projection_head(self.backbone(views[0]).flatten(start_dim=1))
        keys, shuffle = self.utils.batch_shuffle(views[1])
        keys = self.projection_head_momentum(self.backbone_momentum(keys).flatten(start_dim=1)).detach()
        loss = self.criterion(query, self.utils.batch_unshuffle(keys, shuffle))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


class PILImages(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), 0


def lightly_side(lightly, images):
    model = LightlyMoCo(lightly).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    dataset = PILImages(images, lightly.transforms.MoCoV2Transform(input_size=32, gaussian_blur=0.0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=WORKERS)
    epoch = lambda: [model.step(views, optimizer) for views, _ in loader]
    fixed = next(iter(loader))[0]
    return epoch, lambda steps: [model.step(fixed, optimizer) for _ in range(steps)]


def our_side(precision, splits):
    rt = Runtime(torch.device("cpu"), precision, normalize=(splits.info.mean, splits.info.std))
    model, optimizer, net = moco_demo(rt)
    views = MultiView(build_transform("original", 32), 2)
    loader = make_train_loader(rt, TransformDataset(splits.pretrain, views), BATCH, WORKERS)
    epoch = lambda: train_epoch(rt, net, model, loader, optimizer, lambda t: 0.06, 0, 1)
    fixed = [next(iter(loader))]
    return epoch, lambda steps: train_epoch(rt, net, model, fixed * steps, optimizer, lambda t: 0.06, 0, 1)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    p.add_argument("--images", type=int, default=1280, help="synthetic 32-px images an epoch (1,280: 20 steps)")
    p.add_argument("--steps", type=int, default=10, help="timed steps of the step-only comparison (10)")
    args = p.parse_args(argv)
    try:
        import lightly.loss
        import lightly.models.modules.heads
        import lightly.models.utils
        import lightly.transforms
    except ImportError as missing:
        raise UserError(f"lightly is not importable ({missing}): pip install --no-deps --target .peer lightly==1.6.0 "
                        "lightning-utilities, then run with PYTHONPATH=.peer") from None
    if min(args.rounds, args.steps) < 1 or args.images < BATCH:
        raise UserError(f"--rounds and --steps must be >= 1 and --images at least one batch ({BATCH})")
    splits = load_splits("synthetic", synthetic_size=(args.images, BATCH))
    cpu = torch.device("cpu")
    sides = {f"lightly {lightly.__version__}, fp32": lightly_side(lightly, splits.pretrain.images),
             "this repo, fp32": our_side("fp32", splits)}
    if auto_precision(cpu) != "fp32":
        sides[f"this repo, {auto_precision(cpu)} (--precision auto)"] = our_side(auto_precision(cpu), splits)
    names = list(sides)
    for epoch, steps in sides.values():  # warm-up: workers, allocator, oneDNN's kernel choice
        epoch(), steps(1)
    epoch_s = {name: [] for name in names}
    step_s = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            epoch, steps = sides[name]
            epoch_s[name].append(timed(cpu, epoch))
            step_s[name].append(timed(cpu, lambda: steps(args.steps)))
    images = args.images // BATCH * BATCH
    table(f"MoCo side by side with lightly (ResNet-18 CIFAR stem, SplitBatchNorm 8, batch {BATCH}, 32 px, K {QUEUE}, "
          f"{torch.get_num_threads()} threads, {WORKERS} workers; {args.rounds} interleaved rounds of one "
          f"{images:,}-image epoch and {args.steps} steps on one batch; medians)", cpu, "side", "end to end images/s",
          "step images/s", "end to end vs lightly (per round: median, range)", "step vs lightly (median, range)")
    for name in names:
        cells = []
        for times, n in ((epoch_s, images), (step_s, args.steps * BATCH)):
            ratios = [peer / ours for peer, ours in zip(times[names[0]], times[name])]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        row(name, f"{n_per_s(epoch_s[name], images):,.0f}", f"{n_per_s(step_s[name], args.steps * BATCH):,.0f}", *cells)
    print(f"\n{machine(cpu)}")


def n_per_s(seconds, n):
    return n / statistics.median(seconds)


if __name__ == "__main__":
    run_main(main)
