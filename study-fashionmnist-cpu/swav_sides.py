"""What each side of SwAV's loss does in its first steps at the methods table's setting (issue #23; BENCHMARKS.md).

    python study-fashionmnist-cpu/swav_sides.py OUT_DIR [OPTION=VALUE ...]     e.g. lr=2.5e-4, sinkhorn_eps=0.02

The table's SwAV setting (no local crops, 512 prototypes trained from step 0, queue 1,920 from step 0, Adam, fp32,
seed 0) on a 9,600-image subset of Fashion-MNIST (150 steps an epoch) for 3 epochs of a 31-epoch lr schedule, the
full run's (4,650 steps against 4,685). Every 50 steps, on the first global crop's batch: the loss, the mean entropy
of the predictions softmax(scores/T) and of the Sinkhorn codes (ln K is uniform), the scores' spread across the
prototypes (per image, mean) and across the images (per prototype, mean), and the prototypes' effective rank. The
run's row goes to OUT_DIR/results.xlsx, not to the lab notebook."""
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import methods  # noqa: E402
import training  # noqa: E402
from run_options import default_options  # noqa: E402

EVERY = 50


def traced_loss(model, steps, real_loss=methods.swav_loss):
    def swav_loss(scores_list, codes_list, temperature=0.1):
        loss = real_loss(scores_list, codes_list, temperature)
        if steps[0] % EVERY == 0:
            with torch.no_grad():
                scores, codes = scores_list[0].float(), codes_list[0].float()
                predictions = torch.softmax(scores / temperature, dim=1)
                entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(1).mean().item()
                singular = torch.linalg.svdvals(model[0].prototypes.weight.float())
                print(f"step {steps[0]:4d} loss {loss.item():.4f} H(pred) {entropy(predictions):.4f} "
                      f"H(codes) {entropy(codes):.4f} (ln K {math.log(scores.shape[1]):.4f}) spread across "
                      f"prototypes {scores.std(1).mean().item():.4f} across images {scores.std(0).mean().item():.4f} "
                      f"prototypes' effective rank {(singular.sum() ** 2 / (singular ** 2).sum()).item():.1f}",
                      flush=True)
        steps[0] += 1
        return loss
    return swav_loss


def main(out, *changes):
    Path(out).mkdir(parents=True, exist_ok=True)
    model, real_init = [None], methods.SwAV.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        model[0] = self
    methods.SwAV.__init__ = init
    methods.swav_loss = traced_loss(model, [0])
    opts = default_options(methods.SwAV, dataset="fashionmnist", width=0.25, crop_size=28, batch_size=64, epochs=31,
                           knn_every=0, linear_epochs=0, aug="ours", precision="fp32", proj_hidden=512,
                           prototypes=512, freeze_prototypes_steps=0, queue_length=1920, queue_start=0,
                           optimizer="adam", subset=9600, seed=0, results=str(Path(out) / "results.xlsx"),
                           results_dir=str(Path(out) / "run"))
    for change in changes:
        name, value = change.split("=", 1)
        current = getattr(opts, name)
        setattr(opts, name, value if isinstance(current, str) else int(value) if isinstance(current, int) else
                float(value))
    training.run(methods.SwAV, opts, on_epoch=lambda epoch, metrics: epoch >= 3, quiet=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
