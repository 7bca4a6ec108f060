"""Pretrain any method on the shared augmentation pipeline, then kNN and linear evaluation; one row in results.xlsx.

    python pretrain.py --method moco --dataset cifar10            # the MoCo CIFAR demo recipe, 7-transform pipeline
    python pretrain.py --method simclr --dataset cifar10 --aug ours
    python pretrain.py --method supervised --dataset cifar10
    python pretrain.py --method moco --help                       # the shared options and that method's own
"""
import sys
from pathlib import Path

import training
from cli import ArgumentParser, parse_with_given, run_main
from methods import METHODS, get_method
from run_options import add_run_options

SCRIPT = Path(__file__).name  # recorded in the workbook row


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    choose = ArgumentParser(add_help=False)
    choose.add_argument("--method", default="moco", choices=list(METHODS))
    method = get_method(choose.parse_known_args(argv)[0].method)
    parser = ArgumentParser(description=__doc__.split("\n")[0], parents=[choose])
    options, given = parse_with_given(add_run_options(parser, method), argv)
    return method, options, given


def main(argv=None):
    method, options, given = parse_args(argv)
    return training.run(method, options, given=given, script=SCRIPT)


if __name__ == "__main__":
    run_main(main)
