"""One class per method, all with the same interface: everything the run path (training.run) asks of a method.

A method is an nn.Module built from its options that
- declares its own command-line options (`add_options`, checked by `check_options`) and its published recipe for the
  shared ones (`recipe`), with its optimizer (`optimizer_recipe`) and lr schedule (`lr_schedule`);
- gives the loss of a batch of views from `forward(views, labels)`, with any per-step work inside (MoCo's momentum
  update and queue) or in `before_step`;
- names the encoder its kNN monitor reads (`monitor_encoder`), the backbone linear evaluation freezes (`backbone`),
  and a classifier trained on labels whose accuracy is recorded (`supervised_classifier`, None for the others);
- says which parameters its optimizer trains (`trainable_parameters`, grouped by `param_groups` where a group needs its
  own optimizer settings) and what its workbook row records of it (`record_fields`: head, debias, mochi, options);
- says whether it can train on multi-crop's local crops (`local_crops_ok`), whether it mixes between views under
  --mix (`mixes`; mixing.py, used inside `forward`) and warns of settings that work against it (`notes`).
Adding a method means adding a class here and to METHODS.
"""
import itertools
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cli import UserError
from losses import (byol_loss, code_cross_entropy, contrast_cross_entropy, debiased_infonce, full_precision,
                    mochi_negatives, moco_infonce, negative_cosine, nt_xent, sinkhorn, swav_loss, upcast)
from mixing import Mixer
from models import build_backbone, ema_update, gather_all, momentum_copy, projection_head
from optim import OPTIMIZERS, demo_lr, lr_at


class Method(nn.Module):
    name = None
    recipe = {}  # defaults of the shared options in this method's published recipe
    views = None  # views per training image; None: the --crops option
    needs_labels = False  # trains on the labelled split (STL-10's unlabelled images are skipped)
    local_crops_ok = False  # trains on multi-crop's local crops (--local-crops) besides the --crops global views
    mixes = False  # takes --mix (i-Mix / Un-Mix between its views)
    mixer = None  # the run's mixing.Mixer, set by a method that mixes from its options
    global_step = 0  # optimizer steps before this one, set by start_step

    @staticmethod
    def add_options(parser):
        pass

    @staticmethod
    def check_options(opts):
        pass

    @staticmethod
    def optimizer_recipe(opts):
        """(optimizer name, lr, weight decay, warm-up epochs) for these options."""
        return "sgd", opts.lr, opts.wd, 0.0

    @staticmethod
    def notes(opts, n_train):
        """`note:` lines the run prints before training: settings that work against the method on this data."""
        return []

    lr_per_epoch = False  # the lr is set once per epoch (MoCo demo) instead of every step

    @staticmethod
    def lr_schedule(opts, lr, warmup):
        """The lr at a fractional epoch t: linear warm-up, then cosine to 0 over the run, set every step."""
        return lambda t: lr_at(t, lr, opts.epochs, "cos", warmup_epochs=warmup)

    def start_step(self, epoch, step, steps_per_epoch, epochs):
        """What the run path calls before every training step."""
        self.global_step = epoch * steps_per_epoch + step
        self.before_step(epoch, step, steps_per_epoch, epochs)

    def before_step(self, epoch, step, steps_per_epoch, epochs):
        """Called before every training step with the position in the run (e.g. for a warm-up of a loss term)."""

    def draw_mix(self, images):
        """This step's mixing (mixing.Draw) of a batch of images, or None when the run does not mix."""
        return None if self.mixer is None else self.mixer.draw(images.shape[0], images.device, self.global_step)

    @property
    def mixed_only(self):
        """i-Mix: the mixed query view replaces the plain one in the loss (Un-Mix adds its branch to it)."""
        return self.mixer is not None and self.mixer.replaces

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self):
        """The optimizer's parameter groups: all trainable parameters in one, with the optimizer's settings."""
        return [dict(params=self.trainable_parameters())]

    head = None  # the head's description for the workbook row, e.g. "mlp 2048-128"

    @property
    def monitor_encoder(self):
        """The encoder the kNN monitor reads."""
        return self.backbone

    @property
    def supervised_classifier(self):
        """A classifier trained on labels, whose test top-1 is the run's supervised_top1; None for self-supervision."""
        return None

    def record_fields(self):
        """This method's own columns of the workbook row (head, debias, mochi, mix, method_options) and its options."""
        return {"head": self.head, "mix": self.mixer and self.mixer.record()}


def check_positive(opts, *names):
    for name in names:
        if getattr(opts, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(opts, name)}")


def add_optimizer_option(parser, default, choices=OPTIMIZERS,
                         help="lr default per optimizer (batch 256): adam 3e-4, sgd 0.1, lars 0.3 x batch/256"):
    parser.add_argument("--optimizer", choices=choices, default=default, help=help)


SIMCLR_OPTIMIZERS = {"adam": (3e-4, 1e-6), "sgd": (0.1, 5e-4), "lars": (0.3, 1e-6)}  # lr (batch 256), weight decay


def simclr_optimizer_recipe(opts):
    """The seed's simclr_main: adam 3e-4 / sgd 0.1 / lars 0.3 x batch/256 with 10 warm-up epochs (a tenth of a
    shorter run), cosine per step."""
    base_lr, wd = SIMCLR_OPTIMIZERS[opts.optimizer]
    lr = opts.lr or (base_lr * opts.batch_size / 256 if opts.optimizer == "lars" else base_lr)
    warmup = min(10.0, opts.epochs / 10) if opts.optimizer == "lars" else 0.0
    return opts.optimizer, lr, wd if opts.wd is None else opts.wd, warmup


class MoCo(Method):
    """MoCo-v1 (He et al. 2020) following facebookresearch/moco and its CIFAR demo.

    Query encoder trained by SGD, key encoder its momentum average, a queue of K L2-normalised keys as negatives,
    and shuffle-BN: keys are encoded in a shuffled batch order (across processes under DDP), so BatchNorm cannot
    leak which query/key pair belongs together.

    With n views: the asymmetric loss uses view 0 as the query against each other view as key and averages over
    those n-1 pairs; the symmetric loss does this for every view as query and SUMS over the n query views, which for
    two views is the demo's loss_12 + loss_21. Every key used in the loss is enqueued.

    Queue-loss options: --debias TAU_PLUS (Chuang et al. 2020) and --mochi N S S' (Kalantidis et al. 2020): S
    mixes of pairs of each query's N hardest negatives and S' mixes of the query with one of them, appended to its
    negatives from --mochi-start on.
    """
    name = "moco"
    mixes = True
    recipe = dict(epochs=200, batch_size=512, lr=0.06, wd=5e-4, aug="ours", bn_splits=8)
    lr_per_epoch = True

    @staticmethod
    def lr_schedule(opts, lr, warmup):
        """The demo's: set once per epoch, from the cosine (--cos) or the 10x drops at --schedule."""
        return lambda t: demo_lr(int(t), lr, opts.epochs, opts.cos, opts.schedule)

    @staticmethod
    def add_options(p):
        p.add_argument("--cos", action="store_true", default=True, help="cosine schedule (the demo's default)")
        p.add_argument("--no-cos", dest="cos", action="store_false", help="constant lr, or steps with --schedule")
        p.add_argument("--schedule", type=int, nargs="*", default=[],
                       help="epochs at which lr drops 10x, as the demo counts them (step schedule)")
        p.add_argument("--moco-dim", type=int, default=128)
        p.add_argument("--moco-k", type=int, default=4096)
        p.add_argument("--moco-m", type=float, default=0.99)
        p.add_argument("--moco-t", type=float, default=0.1)
        p.add_argument("--mlp", type=int, default=0, metavar="HIDDEN",
                       help="2-layer MLP head of this width (MoCo-v2); 0 = linear")
        p.add_argument("--symmetric", action="store_true", help="symmetric loss (default asymmetric, as the seed)")
        p.add_argument("--debias", type=float, default=0.0, metavar="TAU_PLUS",
                       help="debiased InfoNCE with class prior tau+ (0.1 for CIFAR-10); 0 = off")
        p.add_argument("--mochi", type=int, nargs=3, default=None, metavar=("N", "S", "S_PRIME"),
                       help="MoCHi hard-negative mixing: from each query's N hardest negatives, S mixed pairs and "
                            "S' query mixes")
        p.add_argument("--mochi-start", type=int, default=0, help="first epoch (0-based) that mixes hard negatives")

    @staticmethod
    def notes(opts, n_train):
        notes = []
        if opts.moco_k >= n_train:
            notes.append(f"--moco-k {opts.moco_k} is at least the {n_train} training images: the queue will hold each "
                         "image's own earlier key as a negative when it comes back, so it is pushed away from itself; "
                         "a --moco-k below the training set size avoids it")
        if opts.cos and 0 < opts.epochs <= 10:
            notes.append(f"the demo's cosine schedule sets each epoch's lr from the next epoch's value, so the last of "
                         f"these {opts.epochs} epochs trains at lr 0 ({100 / opts.epochs:.0f}% of the run); for a short "
                         "run use --no-cos (constant lr) or more epochs")
        return notes

    @staticmethod
    def check_options(opts):
        check_positive(opts, "moco_k", "moco_dim")
        if opts.mlp < 0:
            raise UserError(f"--mlp must be >= 0 (0 = linear head), got {opts.mlp}")
        if not 0 <= opts.moco_m < 1:
            raise UserError(f"--moco-m must be in [0, 1), got {opts.moco_m}")
        if opts.moco_t <= 0:
            raise UserError(f"--moco-t must be > 0, got {opts.moco_t}")
        if not 0 <= opts.debias < 1:
            raise UserError(f"--debias must be in [0, 1), got {opts.debias}")
        if opts.mochi is not None:
            n, s, s_prime = opts.mochi
            if not 1 <= n <= opts.moco_k:
                raise UserError(f"--mochi N must be in [1, --moco-k {opts.moco_k}], got {n}")
            if s < 0 or s_prime < 0:
                raise UserError(f"--mochi S and S' must be >= 0, got {s} and {s_prime}")
        if opts.mochi_start < 0:
            raise UserError(f"--mochi-start must be >= 0, got {opts.mochi_start}")
        if opts.sync_bn:
            raise UserError("--sync-bn pools BatchNorm statistics over every process, which undoes MoCo's shuffle-BN "
                            "(each key normalised apart from its query); MoCo-v1/v2 train without it")
        if opts.mix and (opts.symmetric or opts.crops != 2 or opts.debias or opts.mochi):
            raise UserError(f"--mix {opts.mix} mixes MoCo's query view against its key view, as both papers: it needs "
                            "2 crops and the asymmetric loss, without --debias or --mochi")

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.K, self.m, self.T, self.symmetric = opts.moco_k, opts.moco_m, opts.moco_t, opts.symmetric
        self.debias, self.mochi, self.mochi_start = opts.debias, opts.mochi, opts.mochi_start
        self.mix_hard_negatives = False
        self.mixer = Mixer.from_options(opts)
        backbone = build_backbone(opts.arch, cifar_stem, bn_splits, opts.width)
        # MoCo-v2's MLP head has no BatchNorm: one over the whole batch would give each query and its key the same
        # batch statistics, the shortcut that shuffle-BN (SplitBatchNorm here) exists to close.
        self.encoder_q = nn.Sequential(backbone, projection_head(backbone.feat_dim, opts.moco_dim, opts.mlp or None,
                                                                 batch_norm=False))
        self.encoder_k = momentum_copy(self.encoder_q)
        self.register_buffer("queue", F.normalize(torch.randn(self.K, opts.moco_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.head = f"mlp {opts.mlp}-{opts.moco_dim}" if opts.mlp else f"linear {opts.moco_dim}"

    @property
    def backbone(self):
        return self.encoder_q[0]

    @property
    def monitor_encoder(self):
        return self.encoder_q  # the demo's kNN monitor reads the query encoder's (normalised) output

    def record_fields(self):
        return dict(super().record_fields(), debias=self.debias,
                    mochi=" ".join(map(str, self.mochi)) if self.mochi else None)

    def before_step(self, epoch, step, steps_per_epoch, epochs):
        self.mix_hard_negatives = self.mochi is not None and epoch >= self.mochi_start

    def momentum_update(self):
        ema_update(self.encoder_k, self.encoder_q, self.m)

    @torch.no_grad()
    def enqueue(self, keys):
        """Write keys at the pointer, wrapping around the end of the queue (K need not divide the batch)."""
        keys = gather_all(keys)[-self.K:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.K)

    @torch.no_grad()
    def shuffled_keys(self, images):
        """Encode keys under a random batch permutation (shared across processes), returned in input order."""
        all_images = gather_all(images)
        perm = torch.randperm(all_images.shape[0], device=images.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(perm, src=0)
            rank, n = dist.get_rank(), images.shape[0]
        else:
            rank, n = 0, all_images.shape[0]
        local = perm[rank * n:(rank + 1) * n]
        keys = F.normalize(self.encoder_k(all_images[local]), dim=1)
        all_keys = torch.empty((all_images.shape[0], keys.shape[1]), dtype=keys.dtype, device=keys.device)
        all_keys[perm] = gather_all(keys)
        return all_keys[rank * n:(rank + 1) * n]

    def pair_loss(self, q, k, queue, extra_negatives):
        if self.debias:
            return debiased_infonce(q, k, queue, self.T, self.debias, extra_negatives)
        return moco_infonce(q, k, queue, self.T, extra_negatives)

    def forward(self, views, labels=None):
        """views: list of n >= 2 image batches of the same images. Returns the loss."""
        self.momentum_update()
        query_views = range(len(views)) if self.symmetric else [0]
        key_views = sorted({j for i in query_views for j in range(len(views)) if j != i})
        keys = {j: self.shuffled_keys(views[j]) for j in key_views}
        queue = self.queue.clone().detach()
        loss = 0.0
        for i in [] if self.mixed_only else query_views:
            q = F.normalize(self.encoder_q(views[i]), dim=1)
            extra = mochi_negatives(q, queue, *self.mochi) if self.mix_hard_negatives else None
            pair_losses = [self.pair_loss(q, keys[j], queue, extra) for j in range(len(views)) if j != i]
            loss = loss + sum(pair_losses) / len(pair_losses)
        draw = self.draw_mix(views[0])
        if draw is not None:  # the mixed query toward the keys of both its sources
            mixed, lam = draw.images(views[0])
            q, k = F.normalize(self.encoder_q(mixed), dim=1), keys[1]
            if self.mixed_only:  # i-Mix: virtual labels over the batch's keys, then the queue
                contrast = torch.cat([k, queue])
                loss = loss + draw.loss(lambda t: contrast_cross_entropy(q, contrast, self.T, t), lam)
            else:  # Un-Mix: InfoNCE with each source's key as the positive, the queue as negatives
                loss = loss + draw.loss(lambda t: moco_infonce(q, k[t], queue, self.T, reduction="none"), lam)
        self.enqueue(torch.cat([keys[j] for j in key_views]))
        return loss


class SimCLR(Method):
    """SimCLR (Chen et al. 2020): backbone + projection head (hidden layer as wide as the features, as in the paper),
    NT-Xent over the projections of two views, with the negatives of every process under DDP."""
    name = "simclr"
    recipe = dict(epochs=100, batch_size=256, aug="simclr", linear_epochs=20, linear_protocol="finetune")
    views = 2
    mixes = True

    @staticmethod
    def add_options(p):
        add_optimizer_option(p, "adam")
        p.add_argument("--temperature", type=float, default=0.5)
        p.add_argument("--projection-dim", type=int, default=128)

    @staticmethod
    def check_options(opts):
        check_positive(opts, "temperature", "projection_dim")

    optimizer_recipe = staticmethod(simclr_optimizer_recipe)

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.temperature = opts.temperature
        self.mixer = Mixer.from_options(opts)
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits, opts.width)
        width = self.backbone.feat_dim  # 512 for ResNet-18, 2048 for ResNet-50
        self.projection = projection_head(width, opts.projection_dim, width)
        self.head = f"mlp {width}-{opts.projection_dim}"

    def forward(self, views, labels=None):
        # the plain path in its earlier order of operations: a run without --mix stays bit-for-bit what it was
        z1 = None if self.mixed_only else self.projection(self.backbone(views[0]))
        z2 = self.projection(self.backbone(views[1]))
        z1, z2 = (None if z1 is None else gather_all(z1, with_grad=True)), gather_all(z2, with_grad=True)
        loss = 0.0 if z1 is None else nt_xent(z1, z2, self.temperature)
        draw = self.draw_mix(views[0])
        if draw is not None:  # i-Mix's N-pair form: the mixed view against the other view's projections (every process's)
            mixed, lam = draw.images(views[0])
            z = self.projection(self.backbone(mixed))
            offset = dist.get_rank() * z.shape[0] if z2.shape[0] > z.shape[0] else 0
            loss = loss + draw.loss(lambda t: contrast_cross_entropy(z, z2, self.temperature, t + offset), lam)
        return loss


class Supervised(Method):
    """The supervised baseline: the same ResNet trained with cross-entropy on labels (simclr_main -contrastive False)."""
    name = "supervised"
    recipe = dict(epochs=100, batch_size=256, aug="supervised", linear_epochs=0)
    views = 1
    needs_labels = True

    @staticmethod
    def add_options(p):
        add_optimizer_option(p, "adam")

    optimizer_recipe = staticmethod(simclr_optimizer_recipe)

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits, opts.width)
        self.classifier = nn.Linear(self.backbone.feat_dim, num_classes)

    @property
    def supervised_classifier(self):
        return nn.Sequential(self.backbone, self.classifier)

    def forward(self, views, labels=None):
        images = views[0] if isinstance(views, (list, tuple)) else views
        return F.cross_entropy(self.classifier(self.backbone(images)), labels)


class RawPixels(Method):
    """Not a learner: the eval-transformed pixels themselves as features, the floor any method must clear on the same
    kNN / linear-probe protocol. Only with --epochs 0."""
    name = "pixels"
    recipe = dict(epochs=0, aug="eval", linear_protocol="probe")
    views = 1

    @staticmethod
    def check_options(opts):
        if opts.epochs != 0:
            raise UserError(f"--method pixels has nothing to train: it needs --epochs 0, got {opts.epochs}")
        if opts.linear_protocol != "probe":
            raise UserError("--method pixels is evaluated with --linear-protocol probe only")

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.backbone = nn.Flatten()


# ---------------------------------------------------------------- BYOL, SimSiam, SwAV

LARS_ETA = 0.02  # solo-learn's CIFAR recipes (scripts/pretrain/cifar/byol.yaml, swav.yaml); lars.LARS defaults to 0.001


def lars_recipe(opts, base_lr):
    """LARS at base_lr x batch/256 (--lr sets the lr itself) with the recipe's weight decay, 10 warm-up epochs (a tenth
    of a run shorter than 100 epochs, as SimCLR's LARS recipe here), cosine per step."""
    return "lars", opts.lr or base_lr * opts.batch_size / 256, opts.wd, min(10.0, opts.epochs / 10)


def lightly_recipe(opts, optimizer, base_lr):
    """lightly's CIFAR-10 benchmark (benchmarks/cifar10_benchmark.py): base_lr x lr_factor (batch / 128), no warm-up,
    cosine (per step here); --lr sets the lr itself."""
    return optimizer, opts.lr or base_lr * opts.batch_size / 128, opts.wd, 0.0


class BYOL(Method):
    """BYOL (Grill et al. 2020): the online network (backbone, projector, predictor) predicts the target network's
    projection of the other view; the target (backbone, projector) is the online network's exponential moving average
    and gets no gradient. loss = 2 - 2·cos(p1, sg(z'2)) + 2 - 2·cos(p2, sg(z'1))  (losses.byol_loss).

    tau rises from --tau-base to 1 on a cosine of the global step k of the run's K steps:
    tau = 1 - (1 - tau_base)·(cos(πk/K) + 1)/2. The update that follows optimizer step k-1 runs at the start of step k,
    with tau_k (as MoCo's momentum update). tau is a buffer, so a compiled forward is not recompiled for every value.

    CIFAR recipe of solo-learn (vturrisi/solo-learn, scripts/pretrain/cifar/byol.yaml): ResNet-18; projector 4096-256
    and predictor 4096-256 (Linear-BN-ReLU-Linear); tau 0.99 -> 1; LARS lr 1.0 x batch/256, wd 1e-5, eta 0.02, biases
    and BN excluded from decay and adaptation; warm-up (10 epochs) then cosine; batch 256; 1000 epochs. At ImageNet
    scale (the ImageNet stem) tau starts at the paper's 0.996.
    """
    name = "byol"
    recipe = dict(epochs=1000, batch_size=256, wd=1e-5, aug="simclr")
    views = 2
    mixes = True

    @staticmethod
    def add_options(p):
        p.add_argument("--proj-hidden", type=int, default=4096, help="projector hidden width")
        p.add_argument("--proj-dim", type=int, default=256, help="projection (and prediction) width")
        p.add_argument("--pred-hidden", type=int, default=4096, help="predictor hidden width")
        p.add_argument("--tau-base", type=float, default=None,
                       help="target EMA rate at the first step; rises to 1 (default: 0.99 with the CIFAR stem, 0.996 "
                            "with the ImageNet stem, the paper's)")
        add_optimizer_option(p, "lars", ("lars", "sgd"),
                             "lars: the recipe's, lr 1.0 x batch/256; sgd: lightly's CIFAR-10 benchmark, lr 0.06 x "
                             "batch/128, momentum 0.9, no warm-up (its weight decay is 5e-4: pass --wd 5e-4)")

    @staticmethod
    def check_options(opts):
        check_positive(opts, "proj_hidden", "proj_dim", "pred_hidden")
        if opts.tau_base is not None and not 0 <= opts.tau_base <= 1:
            raise UserError(f"--tau-base must be in [0, 1], got {opts.tau_base}")

    @staticmethod
    def optimizer_recipe(opts):
        return lightly_recipe(opts, "sgd", 0.06) if opts.optimizer == "sgd" else lars_recipe(opts, 1.0)

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        backbone = build_backbone(opts.arch, cifar_stem, bn_splits, opts.width)
        self.online = nn.Sequential(backbone, projection_head(backbone.feat_dim, opts.proj_dim, opts.proj_hidden))
        self.prediction_mlp = projection_head(opts.proj_dim, opts.proj_dim, opts.pred_hidden)
        self.target = momentum_copy(self.online)
        self.tau_base = opts.tau_base if opts.tau_base is not None else 0.99 if cifar_stem else 0.996
        self.register_buffer("tau", torch.tensor(self.tau_base))
        self.mixer = Mixer.from_options(opts)
        self.head = f"mlp {opts.proj_hidden}-{opts.proj_dim}, predictor {opts.pred_hidden}-{opts.proj_dim}"

    @property
    def backbone(self):
        return self.online[0]

    def param_groups(self):
        return [dict(params=self.trainable_parameters(), eta=LARS_ETA)]

    def record_fields(self):
        return dict(super().record_fields(), method_options=dict(tau_base=self.tau_base))

    def before_step(self, epoch, step, steps_per_epoch, epochs):
        k, total = epoch * steps_per_epoch + step, epochs * steps_per_epoch
        self.tau.fill_(1 - (1 - self.tau_base) * (math.cos(math.pi * k / total) + 1) / 2)

    def update_target(self):
        ema_update(self.target, self.online, self.tau)

    def forward(self, views, labels=None):
        self.update_target()
        predict = lambda images: self.prediction_mlp(self.online(images))
        p1 = None if self.mixed_only else predict(views[0])  # the plain path in its earlier order of operations
        p2 = predict(views[1])
        with torch.no_grad():
            z1, z2 = (self.target(v) for v in views)
        loss = byol_loss(p2, z1) if p1 is None else byol_loss(p1, z2) + byol_loss(p2, z1)
        draw = self.draw_mix(views[0])
        if draw is not None:  # the mixed view's prediction toward both sources' target projections
            mixed, lam = draw.images(views[0])
            p = predict(mixed)
            loss = loss + draw.loss(lambda t: byol_loss(p, z2[t], reduction="none"), lam)
        return loss


class SimSiam(Method):
    """SimSiam (Chen & He 2021): one encoder (backbone + projector) and a predictor; each view's prediction is pulled
    towards the other view's projection under a stop-gradient: loss = -cos(p1, sg(z2))/2 - cos(p2, sg(z1))/2
    (losses.negative_cosine detaches z). No momentum encoder and no negatives: the stop-gradient prevents collapse.

    The paper's CIFAR-10 variant (Appendix D): ResNet-18 with the CIFAR stem; projector of 2 layers of 2048
    (Linear-BN-ReLU, then Linear-BN without ReLU); predictor 2048-512-2048 (BN + ReLU in its hidden layer); SGD lr
    0.03 x batch/256, momentum 0.9, wd 5e-4, cosine per step; batch 512; 800 epochs. The predictor's lr follows the
    same schedule (the paper's optional fixed predictor lr is not implemented).
    """
    name = "simsiam"
    recipe = dict(epochs=800, batch_size=512, wd=5e-4, aug="simclr")
    views = 2
    mixes = True

    @staticmethod
    def add_options(p):
        p.add_argument("--proj-dim", type=int, default=2048, help="projector width (both layers)")
        p.add_argument("--pred-hidden", type=int, default=512, help="predictor bottleneck width")

    @staticmethod
    def check_options(opts):
        check_positive(opts, "proj_dim", "pred_hidden")

    @staticmethod
    def optimizer_recipe(opts):
        return "sgd", opts.lr or 0.03 * opts.batch_size / 256, opts.wd, 0.0

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits, opts.width)
        width, hidden = opts.proj_dim, opts.pred_hidden
        # No bias before a BatchNorm (it would be cancelled); the output BN has no affine parameters, as the
        # official code's.
        self.projector = nn.Sequential(
            nn.Linear(self.backbone.feat_dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
            nn.Linear(width, width, bias=False), nn.BatchNorm1d(width, affine=False))
        self.prediction_mlp = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden),
                                            nn.ReLU(inplace=True), nn.Linear(hidden, width))
        self.mixer = Mixer.from_options(opts)
        self.head = f"mlp {width}-{width}, predictor {hidden}-{width}"

    def forward(self, views, labels=None):
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        if self.mixed_only:  # i-Mix: view 0's direction is the mixed view's, below
            loss = negative_cosine(self.prediction_mlp(z2), z1) / 2
        else:  # the plain path in its earlier order of operations
            p1, p2 = self.prediction_mlp(z1), self.prediction_mlp(z2)
            loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        draw = self.draw_mix(views[0])
        if draw is not None:  # the mixed view's prediction toward both sources' projections
            mixed, lam = draw.images(views[0])
            p = self.prediction_mlp(self.projector(self.backbone(mixed)))
            loss = loss + draw.loss(lambda t: negative_cosine(p, z2[t], reduction="none"), lam) / 2
        return loss


def prototype_scores(z, prototypes):
    """Cosine scores of projections against the prototypes, in fp32 under autocast: divided by T 0.1 for the loss and by
    eps 0.05 inside Sinkhorn's exponent, a bf16 score's rounding (about 4e-3) would move each code by about 8 %."""
    with full_precision(z):
        return F.linear(upcast(z), upcast(prototypes))


class SwAV(Method):
    """SwAV (Caron et al. 2020): the normalised projections of all crops are scored against K prototypes (unit
    vectors, renormalised before every step as main_swav.py does); the Sinkhorn-Knopp codes of each global crop
    (losses.sinkhorn: fp32, summed over every process's batch under DDP) are predicted from every other crop's scores
    (losses.swav_loss, swapped prediction). Local crops (--local-crops) are predicted from, never assigned codes.

    Queue (--queue-length > 0): for small batches, the global crops' projections of earlier batches (of every
    process) join the Sinkhorn batch from epoch --queue-start on, once the queue is full; their codes are dropped.
    Under DDP each process takes its 1/world share of the queue, so together they use each entry once (main_swav.py
    keeps a queue of queue_length/world per process).

    The prototypes are frozen for the first --freeze-prototypes-steps steps (default: the first epoch's): they take part
    in the loss with a gradient of exactly 0 (DDP expects a gradient for every parameter) and have no weight decay,
    so neither SGD nor LARS moves them, and they keep their unit-length initial values. (Decay on vectors renormalised
    every step only shrinks them; main_swav.py decays them at 1e-6.)

    CIFAR recipe of solo-learn (scripts/pretrain/cifar/swav.yaml): ResNet-18; projector 2048-128 with BN; 3000
    prototypes; temperature 0.1; queue 3840 from epoch 50; LARS lr 0.6 x batch/256, wd 1e-6, eta 0.02, biases and BN
    excluded; warm-up (10 epochs) then cosine; batch 256; 1000 epochs; two 32-px crops. Sinkhorn: 3 iterations,
    eps 0.05 (main_swav.py). solo-learn freezes the prototypes for 2 epochs, main_swav.py for 313 iterations (one
    ImageNet epoch at batch 4096); the default here is one epoch.
    """
    name = "swav"
    recipe = dict(epochs=1000, batch_size=256, wd=1e-6, aug="simclr")
    local_crops_ok = True
    mixes = True

    @staticmethod
    def add_options(p):
        p.add_argument("--proj-hidden", type=int, default=2048, help="projector hidden width")
        p.add_argument("--proj-dim", type=int, default=128, help="projection width")
        p.add_argument("--prototypes", type=int, default=3000, help="number of prototypes K")
        p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature of the swapped prediction")
        p.add_argument("--sinkhorn-eps", type=float, default=0.05)
        p.add_argument("--sinkhorn-iterations", type=int, default=3)
        p.add_argument("--queue-length", type=int, default=3840,
                       help="projections of earlier batches (all processes) in the Sinkhorn batch; 0 = no queue")
        p.add_argument("--queue-start", type=int, default=50, metavar="EPOCH",
                       help="first epoch (0-based) that fills the queue; it is used once full")
        p.add_argument("--freeze-prototypes-steps", type=int, default=None,
                       help="steps from the start during which the prototypes are not trained (default: the first "
                            "epoch's)")
        add_optimizer_option(p, "lars", ("lars", "adam", "sgd"),
                             "lars: the recipe's, lr 0.6 x batch/256; adam: lightly's CIFAR-10 benchmark, lr 1e-3 x "
                             "batch/128, no warm-up (weight decay 1e-6 in both); sgd: lightly's for its other methods, "
                             "lr 0.06 x batch/128, momentum 0.9, no warm-up (its weight decay is 5e-4: pass --wd 5e-4)")

    @staticmethod
    def check_options(opts):
        check_positive(opts, "proj_hidden", "proj_dim", "prototypes", "temperature", "sinkhorn_eps",
                       "sinkhorn_iterations")
        for name in ("queue_length", "queue_start", "freeze_prototypes_steps"):
            if (getattr(opts, name) or 0) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(opts, name)}")

    @staticmethod
    def notes(opts, n_train):
        if opts.prototypes > opts.proj_dim:
            return []
        return [f"--prototypes {opts.prototypes} is at most --proj-dim {opts.proj_dim}: some projection scores alike "
                "against every prototype (with fewer prototypes than dimensions, one orthogonal to all of them), "
                "predicts the uniform distribution whatever the codes and gives loss ln K, a fixed point where "
                "learning stops (BENCHMARKS.md); more prototypes than dimensions rule it out while they are frozen"]

    @staticmethod
    def optimizer_recipe(opts):
        if opts.optimizer == "lars":
            return lars_recipe(opts, 0.6)
        return lightly_recipe(opts, opts.optimizer, {"adam": 1e-3, "sgd": 0.06}[opts.optimizer])

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits, opts.width)
        self.projector = projection_head(self.backbone.feat_dim, opts.proj_dim, opts.proj_hidden)
        self.prototypes = nn.Linear(opts.proj_dim, opts.prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.n_global, self.temperature = opts.crops, opts.temperature
        self.eps, self.iterations = opts.sinkhorn_eps, opts.sinkhorn_iterations
        self.freeze_steps, self.queue_start = opts.freeze_prototypes_steps, opts.queue_start
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world, self.rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        self.register_buffer("queue", torch.zeros(self.n_global, opts.queue_length, opts.proj_dim))
        self.frozen, self.queue_steps = False, -1  # set by before_step: queue_steps < 0 while the queue is off
        self.mixer = Mixer.from_options(opts)
        self.head = f"mlp {opts.proj_hidden}-{opts.proj_dim}, {opts.prototypes} prototypes"
        self.options = {name: getattr(opts, name) for name in (
            "prototypes", "temperature", "sinkhorn_eps", "sinkhorn_iterations", "queue_length", "queue_start",
            "freeze_prototypes_steps")}

    def param_groups(self):
        prototypes = self.prototypes.weight
        rest = [p for p in self.trainable_parameters() if p is not prototypes]
        return [dict(params=rest, eta=LARS_ETA), dict(params=[prototypes], eta=LARS_ETA, weight_decay=0.0)]

    def record_fields(self):
        return dict(super().record_fields(), method_options=self.options)

    def before_step(self, epoch, step, steps_per_epoch, epochs):
        k = epoch * steps_per_epoch + step
        self.frozen = k < (steps_per_epoch if self.freeze_steps is None else self.freeze_steps)
        self.queue_steps = (epoch - self.queue_start) * steps_per_epoch + step  # steps that filled the queue so far

    def forward(self, views, labels=None):
        """views: the --crops global crops, then the local crops. Returns the loss.

        Mixing: every crop, local ones included, is mixed with the same draw and predicts the mixed codes of the
        other global crops (Un-Mix: added to the plain loss; i-Mix: instead of it, the codes from the plain global
        crops without gradient)."""
        weight = self.prototypes.weight
        if self.frozen:
            weight = weight.detach() + 0 * weight  # still in the graph, with a gradient of exactly 0
        else:
            with torch.no_grad():
                weight.copy_(F.normalize(weight, dim=1))
        coded = views[:self.n_global] if self.mixed_only else views
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.mixed_only):
            z = self.embed(coded)
            scores = prototype_scores(z, weight).chunk(len(coded))
        codes = self.codes(scores[:self.n_global], z.detach().chunk(len(coded))[:self.n_global], weight.detach())
        loss = 0.0 if self.mixed_only else swav_loss(list(scores), codes, self.temperature)
        draw = self.draw_mix(views[0])
        if draw is not None:
            mixed = [draw.images(v) for v in views]
            mixed_scores = prototype_scores(self.embed([images for images, _ in mixed]), weight).chunk(len(views))
            with full_precision(weight):
                log_probs = [F.log_softmax(s / self.temperature, dim=1) for s in mixed_scores]
            pairs = [(c, v) for c in range(len(codes)) for v in range(len(views)) if v != c]
            loss = loss + sum(draw.loss(lambda t: code_cross_entropy(log_probs[v], codes[c][t]), mixed[v][1])
                              for c, v in pairs) / len(pairs)
        return loss

    def embed(self, views):
        """Normalised projections of every crop, in order; one backbone pass per crop size, as main_swav.py: BatchNorm
        sees all crops of a size together."""
        z = torch.cat([self.projector(self.backbone(torch.cat(list(same_size))))
                       for _, same_size in itertools.groupby(views, key=lambda v: v.shape[-2:])])
        return F.normalize(z, dim=1)

    @torch.compiler.disable  # runs eagerly under --compile: its queue position changes every step
    @torch.no_grad()
    def codes(self, scores, embeddings, weight):
        """Sinkhorn codes of the global crops' scores, with this process's share of a full queue in the batch; then
        every process's newest projections are enqueued (newest first)."""
        batch, length = scores[0].shape[0], self.queue.shape[1]
        filling = length > 0 and self.queue_steps >= 0
        per_process = length // self.world  # equal shares: Sinkhorn's column sums assume one batch size everywhere
        share = slice(self.rank * per_process, (self.rank + 1) * per_process)
        full = filling and self.queue_steps * batch * self.world >= length
        codes = []
        for i, s in enumerate(scores):
            if full:
                s = torch.cat([prototype_scores(self.queue[i, share], weight), s])
            codes.append(sinkhorn(s, self.eps, self.iterations, distributed=self.world > 1)[-batch:])
        if filling:
            newest = gather_all(torch.stack(embeddings, dim=1)).transpose(0, 1).to(self.queue.dtype)
            self.queue.copy_(torch.cat([newest, self.queue], dim=1)[:, :length])
        return codes


METHODS = {method.name: method for method in (MoCo, SimCLR, Supervised, RawPixels, BYOL, SimSiam, SwAV)}


def get_method(name):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
