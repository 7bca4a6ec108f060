#!/usr/bin/env bash
# The methods table on Fashion-MNIST at the CPU recipe (README "No GPU? ..."): every method at the same backbone
# (ResNet-18 at width 0.25, CIFAR stem), 28-px crops (SwAV: no local crops, BENCHMARKS.md), batch 64, 5 epochs of the
# full 60,000 training images (SimSiam and BYOL 8: at 5 they end still climbing, under the bar; SwAV without a queue
# at --sinkhorn-eps 0.03: with its queue of 1,920 from step 0 it stayed at init's kNN, its earlier rows in swav/ and
# swav-8epochs/, probes.sh and BENCHMARKS.md), aug `ours`, kNN
# (k 200, t 0.1, full training set as bank, full test set) every epoch, a 100-epoch linear probe, with the network at
# init and raw pixels. Seed 0 of every method first, then seed 1: rerunning skips finished runs (grid.json), and a
# killed run continues from its checkpoint. A method at other than 5 epochs has its own out dir (METHOD-Nepochs), as
# has a recipe that changed at the same epochs (METHOD-NAME).
# Usage: bash study-fashionmnist-cpu/methods.sh [SEEDS] [METHODS] (SEEDS: how many, from 0; default 1, then 2)
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--dataset fashionmnist --width 0.25 --crop-size 28 --batch-size 64 --knn-every 1
        --linear-epochs 100 --linear-protocol probe --grid ours --baselines --study fashionmnist-cpu
        --precision fp32)  # the table's numeric setting: auto is bf16 on AMX (bf16.sh)
declare -A recipe=(
  [moco]="--bn-splits 2 --lr 0.06 --no-cos --moco-k 4096"
  [swav]="--proj-hidden 512 --prototypes 512 --freeze-prototypes-steps 0 --queue-length 0 --optimizer adam
          --sinkhorn-eps 0.03"
  [simsiam]="--proj-dim 512 --pred-hidden 128 --lr 0.06"
  [byol]="--proj-hidden 512 --pred-hidden 512 --optimizer sgd --wd 5e-4"
  [simclr]="--lr 3e-3"
  [supervised]="--lr 3e-3"
)
declare -A epochs=([simsiam]=8 [byol]=8)  # 5 for the others
declare -A recipe_name=([swav]=noqueue)  # a method whose recipe changed at the same epochs: its own out dir
for seeds in ${1:-1 2}; do
  for method in ${2:-moco swav simsiam byol simclr supervised}; do
    n=${epochs[$method]:-5}
    out=study-fashionmnist-cpu/$method
    [ "$n" = 5 ] || out+="-${n}epochs"
    [ -z "${recipe_name[$method]:-}" ] || out+="-${recipe_name[$method]}"
    # shellcheck disable=SC2086
    python search_augment.py --method "$method" "${common[@]}" --epochs "$n" ${recipe[$method]} --seeds "$seeds" \
        --out "$out" || echo "methods.sh: $method seeds $seeds failed, going on"
  done
done
