#!/usr/bin/env bash
# Issue #24: the seed's augmentation comparison redone at the CPU recipe, where MoCo learns (methods.sh's moco line):
# its five specs, 3 seeds each, every spec paired seed by seed with `original` (grid.md and the summary sheet: mean
# difference and Student-t 95% interval), with the network at init and raw pixels. The out dir is methods.sh's moco
# dir, so the runs of `ours` and the baselines already there are reused, not rerun. Rerunning skips finished runs;
# a killed run continues from its checkpoint. Usage: bash study-fashionmnist-cpu/augmentations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python search_augment.py --method moco --dataset fashionmnist --width 0.25 --crop-size 28 --batch-size 64 --epochs 5 \
    --knn-every 1 --linear-epochs 100 --linear-protocol probe --seeds 3 --baselines --study fashionmnist-cpu \
    --bn-splits 2 --lr 0.06 --no-cos --moco-k 4096 \
    --grid original ours ours-solarize ours-clahe ours-brightness_contrast --reference original \
    --out study-fashionmnist-cpu/moco
