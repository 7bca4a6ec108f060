"""One class per method, all with the same interface (DESIGN.md, "The method interface and the run path").

A method is an nn.Module built from its options that
- declares its own command-line options (`add_options`) and its published recipe for the shared ones (`recipe`);
- gives the loss of a batch of views from `forward(views, labels)`, with any per-step work inside (MoCo's momentum
  update and queue);
- names the encoder its kNN monitor reads (`monitor_encoder`) and the backbone linear evaluation freezes (`backbone`);
- says which parameters its optimizer trains (`trainable_parameters`).
training.run(method, options) does everything else. Adding a method means adding a class here and to METHODS.
"""
import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cli import UserError
from losses import debiased_infonce, mochi_negatives, moco_infonce, nt_xent
from models import build_backbone, gather_all, projection_head
from optim import OPTIMIZERS


class Method(nn.Module):
    name = None
    recipe = {}  # defaults of the shared options in this method's published recipe
    views = None  # views per training image; None: the --crops option
    needs_labels = False  # trains on the labelled split (STL-10's unlabelled images are skipped)

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

    lr_per_epoch = False  # the lr is set once per epoch (MoCo demo) instead of every step

    def before_step(self, epoch, step, steps_per_epoch, epochs):
        """Called before every training step with the position in the run (e.g. for a warm-up of a loss term)."""

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def record_fields(self):
        """This method's own columns of the workbook row (head, debias, mochi, ...) and its options."""
        return {}


def add_optimizer_option(parser, default):
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=default,
                        help="lr default per optimizer (batch 256): adam 3e-4, sgd 0.1, lars 0.3 x batch/256")


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
    recipe = dict(epochs=200, batch_size=512, lr=0.06, wd=5e-4, aug="ours", bn_splits=8)
    lr_per_epoch = True

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
    def check_options(opts):
        for name in ("moco_k", "moco_dim"):
            if getattr(opts, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(opts, name)}")
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

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.K, self.m, self.T, self.symmetric = opts.moco_k, opts.moco_m, opts.moco_t, opts.symmetric
        self.debias, self.mochi, self.mochi_start = opts.debias, opts.mochi, opts.mochi_start
        self.mix_hard_negatives = False
        backbone = build_backbone(opts.arch, cifar_stem, bn_splits)
        self.encoder_q = nn.Sequential(backbone, projection_head(backbone.feat_dim, opts.moco_dim, opts.mlp or None))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.encoder_k.requires_grad_(False)
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
        return dict(head=self.head, debias=self.debias, mochi=" ".join(map(str, self.mochi)) if self.mochi else None)

    def before_step(self, epoch, step, steps_per_epoch, epochs):
        self.mix_hard_negatives = self.mochi is not None and epoch >= self.mochi_start

    @torch.no_grad()
    def momentum_update(self):
        k_params = list(self.encoder_k.parameters())
        torch._foreach_mul_(k_params, self.m)
        torch._foreach_add_(k_params, list(self.encoder_q.parameters()), alpha=1.0 - self.m)

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
        for i in query_views:
            q = F.normalize(self.encoder_q(views[i]), dim=1)
            extra = mochi_negatives(q, queue, *self.mochi) if self.mix_hard_negatives else None
            pair_losses = [self.pair_loss(q, keys[j], queue, extra) for j in range(len(views)) if j != i]
            loss = loss + sum(pair_losses) / len(pair_losses)
        self.enqueue(torch.cat([keys[j] for j in key_views]))
        return loss


class SimCLR(Method):
    """SimCLR (Chen et al. 2020): backbone + projection head (hidden layer as wide as the features, as in the paper),
    NT-Xent over the projections of two views, with the negatives of every process under DDP."""
    name = "simclr"
    recipe = dict(epochs=100, batch_size=256, aug="simclr", linear_epochs=20, linear_protocol="finetune")
    views = 2

    @staticmethod
    def add_options(p):
        add_optimizer_option(p, "adam")
        p.add_argument("--temperature", type=float, default=0.5)
        p.add_argument("--projection-dim", type=int, default=128)

    @staticmethod
    def check_options(opts):
        for name in ("temperature", "projection_dim"):
            if getattr(opts, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(opts, name)}")

    optimizer_recipe = staticmethod(simclr_optimizer_recipe)

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.temperature = opts.temperature
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits)
        width = self.backbone.feat_dim  # 512 for ResNet-18, 2048 for ResNet-50
        self.projection = projection_head(width, opts.projection_dim, width)
        self.head = f"mlp {width}-{opts.projection_dim}"

    @property
    def monitor_encoder(self):
        return self.backbone

    def record_fields(self):
        return dict(head=self.head)

    def forward(self, views, labels=None):
        z1, z2 = self.projection(self.backbone(views[0])), self.projection(self.backbone(views[1]))
        return nt_xent(gather_all(z1, with_grad=True), gather_all(z2, with_grad=True), self.temperature)


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
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits)
        self.classifier = nn.Linear(self.backbone.feat_dim, num_classes)

    @property
    def monitor_encoder(self):
        return self.backbone

    @property
    def predictor(self):
        """The trained classifier whose test accuracy is the run's supervised top-1."""
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

    @property
    def monitor_encoder(self):
        return self.backbone


METHODS = {method.name: method for method in (MoCo, SimCLR, Supervised, RawPixels)}


def get_method(name):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
