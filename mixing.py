"""Mixing between views (the seed's research item 6): i-Mix and Un-Mix, for every self-supervised method, on the
device inside the training step.

Both mix a batch x with a permutation of itself and train the mixed images toward both sources' targets:
    mixed loss = mean_i [ λ_i · ℓ(x̃_i, target i) + (1 − λ_i) · ℓ(x̃_i, target π(i)) ]
with ℓ the method's own per-image loss (methods.py says what its target is).

- i-Mix (Lee et al., "i-Mix: A Domain-Agnostic Strategy for Contrastive Representation Learning", ICLR 2021;
  kibok90/imix): the query view is replaced by its mix: π a random permutation, λ_i = max(b, 1 − b) with
  b ~ Beta(α, α) drawn per image, α = 1 (the paper's CIFAR setting and the repository's example); Mixup.
- Un-Mix (Shen et al., "Un-Mix: Rethinking Image Mixtures for Unsupervised Visual Representation Learning", AAAI
  2022; arXiv 2003.05438): the mixed branch is added to the plain loss: π the reverse order of the batch, one
  λ ~ Beta(α, α) per batch, α = 1 (the paper's); Mixup on even steps and CutMix on odd ones (the paper alternates
  them), CutMix's λ set to the share of the image the box leaves, as CutMix (Yun et al. 2019) does.

The draws come from torch's global CPU generator, which a checkpoint saves and --resume restores, so a resumed run
mixes as the uninterrupted one would. Under DDP each process mixes within its own batch.
"""
from dataclasses import dataclass

import torch

MIX_KINDS = ("imix", "unmix")


def add_mix_options(parser):
    parser.add_argument("--mix", choices=MIX_KINDS, default=None,
                        help="mixing between views: imix (i-Mix, Lee et al. 2021) or unmix (Un-Mix, Shen et al. 2022)")
    parser.add_argument("--mix-alpha", type=float, default=1.0, metavar="A",
                        help="--mix: λ ~ Beta(A, A) (default 1, both papers' CIFAR setting)")


@dataclass
class Draw:
    """One step's mixing: each image i is mixed with image perm[i]; lam[i] is the weight of image i's own target."""
    perm: torch.Tensor
    lam: torch.Tensor  # (N,) on the images' device
    cutmix: bool = False
    box: tuple = None  # CutMix: (top, left, height, width) as fractions of the image side, the same for every size

    def images(self, x):
        """The mixed batch, and the λ per image that goes with it (CutMix: the exact share its box leaves)."""
        if not self.cutmix:
            lam = self.lam.to(x.dtype).view(-1, *[1] * (x.dim() - 1))
            return lam * x + (1 - lam) * x[self.perm], self.lam
        side_h, side_w = x.shape[-2:]
        top, left, height, width = self.box
        y0, x0 = round(top * side_h), round(left * side_w)
        y1, x1 = min(side_h, y0 + round(height * side_h)), min(side_w, x0 + round(width * side_w))
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1][self.perm]  # only the box is gathered
        lam = 1 - (y1 - y0) * (x1 - x0) / (side_h * side_w)
        return mixed, torch.full_like(self.lam, lam)

    def loss(self, per_image, lam=None):
        """mean_i [λ_i·ℓ(i, i) + (1 − λ_i)·ℓ(i, perm[i])], with per_image(targets) the (N,) losses of the mixed images
        toward the targets of those image indices."""
        lam = self.lam if lam is None else lam
        own = per_image(torch.arange(len(self.perm), device=self.perm.device))
        return (lam * own + (1 - lam) * per_image(self.perm)).mean()


class Mixer:
    """Draws each step's mixing for --mix KIND with --mix-alpha; None when the run does not mix."""

    def __init__(self, kind, alpha):
        self.kind, self.alpha = kind, alpha

    @staticmethod
    def from_options(opts):
        kind = getattr(opts, "mix", None)
        return None if kind is None else Mixer(kind, opts.mix_alpha)

    @property
    def replaces(self):
        """i-Mix trains the mixed query view instead of the plain one; Un-Mix adds its branch to the plain loss."""
        return self.kind == "imix"

    def draw(self, n, device, step):
        beta = torch.distributions.Beta(torch.tensor(float(self.alpha)), torch.tensor(float(self.alpha)))
        if self.kind == "imix":
            perm, lam = torch.randperm(n), beta.sample((n,))
            return Draw(perm.to(device), torch.maximum(lam, 1 - lam).to(device))
        perm, lam = torch.arange(n - 1, -1, -1), beta.sample()
        if step % 2 == 0:
            return Draw(perm.to(device), lam.expand(n).to(device))
        side = (1 - lam).sqrt().item()  # CutMix's box: sides √(1−λ) of the image's, centre uniform, clipped to it
        cy, cx = torch.rand(2).tolist()
        top, left = max(0.0, cy - side / 2), max(0.0, cx - side / 2)
        box = (top, left, min(1.0, cy + side / 2) - top, min(1.0, cx + side / 2) - left)
        return Draw(perm.to(device), lam.expand(n).to(device), cutmix=True, box=box)

    def record(self):
        return f"{self.kind} {self.alpha:g}"
