"""SimCLR (Chen et al. 2020): contrastive pretraining, then an output head fine-tuned on the frozen backbone;
or, with -contrastive False, the same ResNet trained on labels (the supervised baseline). The seed's flags.

    python simclr_main.py                                  # SimCLR on CIFAR-10, Adam
    python simclr_main.py -contrastive False -epoch 50     # supervised baseline
"""
import training
from augmentations import SPEC_HELP
from cli import ArgumentParser, parse_with_given, run_main, str2bool
from datasets import DATASETS
from loading import default_workers
from methods import SimCLR, Supervised
from optim import OPTIMIZERS


def resnet_depth(value):
    return value if value.startswith("resnet") else f"resnet{value}"


def parse_args(argv=None):
    p = ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))

    def option(name, dest=None, **kwargs):  # the seed's single-dash name, its -- alias, the run option it sets
        p.add_argument(f"-{name}", f"--{name}", dest=dest or name, **kwargs)

    option("contrastive", type=str2bool, default=True, help="True: SimCLR; False: supervised baseline")
    option("base_model", dest="arch", type=resnet_depth, choices=["resnet18", "resnet50"],
           default="18", metavar="{18,50}", help="ResNet depth")
    option("width", type=float, default=1.0, help="ResNet channels x this (0.25: a CPU-sized net)")
    option("lr", type=float, default=None, help="default per optimizer: adam 3e-4, sgd 0.1, lars 0.3 × batch/256")
    option("wd", type=float, default=None, help="weight decay; default per optimizer: adam 1e-6, sgd 5e-4, lars 1e-6")
    option("epoch", dest="epochs", type=int, default=100)
    option("batch_size", type=int, default=256, help="total over all processes")
    option("optimizer", choices=OPTIMIZERS, default="adam")
    option("temperature", type=float, default=0.5)
    option("projection_dim", type=int, default=128)
    option("finetune_epochs", dest="linear_epochs", type=int, default=20,
           help="epochs of output-head training on the frozen backbone")
    option("dataset", default="cifar10", help=f"one of: {', '.join(DATASETS)}")
    option("data_dir", default="data")
    option("download", type=str2bool, default=True)
    option("aug", default=None, help=f"pretraining augmentation (None: simclr; supervised mode: supervised): {SPEC_HELP}")
    option("crop_size", type=int, default=None)
    option("knn_every", type=int, default=1, help="kNN monitor of the backbone every N epochs (0 = only at the end)")
    option("subset", type=int, default=None)
    option("workers", type=int, default=default_workers(),
           help="loader workers per process: usable cores / processes on this node, at most 16")
    option("precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    option("channels_last", type=str2bool, default=True)
    option("compile", type=str2bool, default=False, help="torch.compile the model (the first step compiles)")
    option("seed", type=int, default=0)
    option("resume", default=None)
    option("results_dir", default=None)
    option("results", default=training.default_options(SimCLR).results)
    return parse_with_given(p, argv)


def main(argv=None):
    args, given = parse_args(argv)
    method = SimCLR if args.contrastive else Supervised
    options = training.default_options(method, linear_protocol="finetune")
    options.__dict__.update({k: v for k, v in vars(args).items() if k != "contrastive"})
    options.aug = args.aug or method.recipe["aug"]
    if not args.contrastive:
        options.linear_epochs = 0  # the supervised baseline reports its own classifier's top-1
    return training.run(method, options, given=given)


if __name__ == "__main__":
    run_main(main)
