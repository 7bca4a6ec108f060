#!/usr/bin/env bash
# Issue #25's learning check of bf16 on the CPU: MoCo at the CPU recipe (methods.sh's moco line, aug `ours`) trained
# in bf16 autocast, seeds 0 and 1, paired seed by seed with the fp32 runs of study-fashionmnist-cpu/moco. Its own
# study name keeps the workbook's summary from averaging the two precisions. Rerunning skips the finished runs; a
# killed run continues from its checkpoint.
# Usage: bash study-fashionmnist-cpu/bf16.sh      then: python study-fashionmnist-cpu/methods_table.py --precision
set -euo pipefail
cd "$(dirname "$0")/.."
python search_augment.py --method moco --dataset fashionmnist --width 0.25 --crop-size 28 --batch-size 64 --epochs 5 \
    --knn-every 1 --linear-epochs 100 --linear-protocol probe --grid ours --seeds 2 --study fashionmnist-cpu-bf16 \
    --bn-splits 2 --lr 0.06 --no-cos --moco-k 4096 --precision bf16 --out study-fashionmnist-cpu/moco-bf16
