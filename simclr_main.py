"""SimCLR (Chen et al. 2020): contrastive pretraining, then an output head fine-tuned on the frozen backbone;
or, with -contrastive False, the same ResNet trained on labels (the supervised baseline). The seed's flags.

    python simclr_main.py                                  # SimCLR on CIFAR-10, Adam
    python simclr_main.py -contrastive False -epoch 50     # supervised baseline
"""
from pathlib import Path

import training
from augmentations import SPEC_HELP
from cli import ArgumentParser, parse_with_given, run_main, str2bool
from methods import SimCLR, Supervised
from run_options import add_run_options, default_options

SCRIPT = Path(__file__).name  # recorded in the workbook row


def resnet_depth(value):
    return value if value.startswith("resnet") else f"resnet{value}"


SEED_FLAGS = {  # the seed's flag (single dash, with a -- alias) -> the run option it sets, whose type, choices,
    # default and help it takes (SimCLR's recipe), except where SEED_STYLE says how the seed's flag differs
    "base_model": "arch", "width": "width", "lr": "lr", "wd": "wd", "epoch": "epochs", "batch_size": "batch_size",
    "optimizer": "optimizer", "temperature": "temperature", "projection_dim": "projection_dim",
    "finetune_epochs": "linear_epochs", "dataset": "dataset", "data_dir": "data_dir", "download": "download",
    "aug": "aug", "crop_size": "crop_size", "knn_every": "knn_every", "subset": "subset", "workers": "workers",
    "precision": "precision", "channels_last": "channels_last", "compile": "compile", "seed": "seed",
    "resume": "resume", "results_dir": "results_dir", "results": "results",
}
SEED_STYLE = {
    "arch": dict(type=resnet_depth, choices=["resnet18", "resnet50"], default="18", metavar="{18,50}",
                 help="ResNet depth"),
    "aug": dict(default=None, help=f"pretraining augmentation (None: simclr; supervised mode: supervised): {SPEC_HELP}"),
    "linear_epochs": dict(help="epochs of output-head training on the frozen backbone"),
    "lr": dict(help="default per optimizer: adam 3e-4, sgd 0.1, lars 0.3 × batch/256"),
    "wd": dict(help="weight decay; default per optimizer: adam 1e-6, sgd 5e-4, lars 1e-6"),
}


def parse_args(argv=None):
    p = ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("-contrastive", "--contrastive", type=str2bool, default=True,
                   help="True: SimCLR; False: supervised baseline")
    run = {action.dest: action for action in reversed(add_run_options(ArgumentParser(), SimCLR)._actions)}
    for flag, dest in SEED_FLAGS.items():
        action = run[dest]  # the first declaration of the dest (--download, not --no-download)
        style = dict(type=action.type, choices=action.choices, default=action.default, help=action.help,
                     metavar=action.metavar)
        if action.nargs == 0:  # a switch of the run options is a True/False value here, as in the seed
            style.update(type=str2bool, choices=None)
        p.add_argument(f"-{flag}", f"--{flag}", dest=dest, **{**style, **SEED_STYLE.get(dest, {})})
    return parse_with_given(p, argv)


def main(argv=None):
    args, given = parse_args(argv)
    method = SimCLR if args.contrastive else Supervised
    options = default_options(method, linear_protocol="finetune")
    options.__dict__.update({k: v for k, v in vars(args).items() if k != "contrastive"})
    options.aug = args.aug or method.recipe["aug"]
    if not args.contrastive:
        options.linear_epochs = 0  # the supervised baseline reports its own classifier's top-1
    return training.run(method, options, given=given, script=SCRIPT)


if __name__ == "__main__":
    run_main(main)
