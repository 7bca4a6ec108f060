#!/usr/bin/env bash
# Issue #26's measurement: MoCo at the CPU recipe (methods.sh's moco line, aug `ours`) with --mix imix and with
# --mix unmix (α 1, both papers' CIFAR setting), 3 seeds each, paired seed by seed with the plain runs of
# study-fashionmnist-cpu/moco (whose third seed, and its network at init, this script adds). Rerunning skips the
# finished runs (each out dir's grid.json); a killed run continues from its checkpoint.
# Usage: bash study-fashionmnist-cpu/mixing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
moco=(--method moco --dataset fashionmnist --width 0.25 --crop-size 28 --batch-size 64 --epochs 5 --knn-every 1
      --linear-epochs 100 --linear-protocol probe --grid ours --seeds 3 --study fashionmnist-cpu
      --bn-splits 2 --lr 0.06 --no-cos --moco-k 4096 --precision fp32)  # as the plain runs
python search_augment.py "${moco[@]}" --mix imix --out study-fashionmnist-cpu/moco-imix
python search_augment.py "${moco[@]}" --baselines --out study-fashionmnist-cpu/moco
python search_augment.py "${moco[@]}" --mix unmix --out study-fashionmnist-cpu/moco-unmix
