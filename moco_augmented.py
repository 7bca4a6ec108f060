"""MoCo-v1 with the augmentation pipeline as the experiment (facebookresearch/moco CIFAR-10 demo recipe).

    python moco_augmented.py --dataset cifar10 --aug ours          # the seed study's 7-transform run
    python moco_augmented.py --dataset cifar10 --mlp 2048 --aug original+blur --moco-t 0.2   # MoCo-v2
    torchrun --nproc_per_node=4 moco_augmented.py --dataset imagenet100 --data-dir /data/imagenet100
"""
from pathlib import Path

import training
from cli import ArgumentParser, parse_with_given, run_main
from methods import MoCo
from run_options import add_run_options

SCRIPT = Path(__file__).name  # recorded in the workbook row


def parse_args(argv=None):
    parser = add_run_options(ArgumentParser(description=__doc__.split("\n")[0]), MoCo)
    return parse_with_given(parser, argv)


def main(argv=None):
    options, given = parse_args(argv)
    return training.run(MoCo, options, given=given, script=SCRIPT)


if __name__ == "__main__":
    run_main(main)
