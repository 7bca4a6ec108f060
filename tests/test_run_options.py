"""run_options.py: the options every run shares, each method's recipe as its defaults, and the checks that refuse
impossible values in one line before anything runs."""
import pytest
import torch
from conftest import TINY_RUN, error_of

import pretrain
import run_options
import training
from cli import UserError
from methods import BYOL, METHODS, MoCo, SimCLR, SwAV

TINY = [*TINY_RUN, "--crop-size", "16"]


@pytest.mark.parametrize("method", ["moco", "simclr", "byol", "simsiam"])
def test_local_crops_are_refused_by_methods_that_do_not_train_on_them(method, capsys):
    line = error_of(["--method", method, "--local-crops", "2", *TINY], capsys, pretrain.main)
    assert f"--local-crops 2: {method} does not train on local crops" in line and "swav" in line


def test_val_size_takes_a_number_of_images_or_a_fraction_below_1(capsys):
    parse = lambda value: pretrain.parse_args(["--val-size", value])[1].val_size  # noqa: E731
    assert (parse("250"), parse("0.1"), parse("0"), parse("2e3")) == (250, 0.1, 0, 2000)
    assert isinstance(parse("250"), int) and isinstance(parse("2e3"), int)
    assert "--val-size: 1.5 is neither a whole number" in error_of(["--val-size", "1.5", *TINY], capsys, pretrain.main)


@pytest.mark.parametrize("name", list(METHODS))
def test_default_options_refuse_an_option_the_method_does_not_have(name):
    with pytest.raises(ValueError, match="no option"):
        run_options.default_options(METHODS[name], no_such_option=1)


def test_moco_recipe_is_the_demo():
    o = run_options.default_options(MoCo)
    assert (o.epochs, o.batch_size, o.lr, o.wd, o.moco_k, o.moco_m, o.moco_t, o.bn_splits, o.aug) == \
           (200, 512, 0.06, 5e-4, 4096, 0.99, 0.1, 8, "ours")
    assert MoCo.optimizer_recipe(o) == ("sgd", 0.06, 5e-4, 0.0) and MoCo.lr_per_epoch


def test_byol_and_swav_optimizers_are_solo_learns_lars_or_lightlys():
    """BYOL: LARS 1.0 x batch/256 with wd 1e-5 and a tenth of the run as warm-up (solo-learn's byol.yaml), or SGD
    0.06 x batch/128 without warm-up (lightly's cifar10_benchmark.py), --lr and --wd overriding either. SwAV: LARS 0.6
    x batch/256 (solo-learn's swav.yaml) or Adam 1e-3 x batch/128 without warm-up (lightly's), both at wd 1e-6, or
    SGD as BYOL's."""
    o = run_options.default_options(BYOL, batch_size=64, epochs=5)
    assert BYOL.optimizer_recipe(o) == ("lars", 1.0 * 64 / 256, 1e-5, 0.5)
    o = run_options.default_options(BYOL, batch_size=64, epochs=5, optimizer="sgd", wd=5e-4)
    assert BYOL.optimizer_recipe(o) == ("sgd", 0.06 * 64 / 128, 5e-4, 0.0)
    o = run_options.default_options(BYOL, batch_size=64, optimizer="sgd", lr=0.1)
    assert BYOL.optimizer_recipe(o)[:2] == ("sgd", 0.1)
    o = run_options.default_options(SwAV, batch_size=64, epochs=5)
    assert SwAV.optimizer_recipe(o) == ("lars", 0.6 * 64 / 256, 1e-6, 0.5)
    o = run_options.default_options(SwAV, batch_size=64, epochs=5, optimizer="adam")
    assert SwAV.optimizer_recipe(o) == ("adam", 1e-3 * 64 / 128, 1e-6, 0.0)
    o = run_options.default_options(SwAV, batch_size=64, epochs=5, optimizer="sgd", wd=5e-4)
    assert SwAV.optimizer_recipe(o) == ("sgd", 0.06 * 64 / 128, 5e-4, 0.0)


def test_check_options_refuses_impossible_values():
    with pytest.raises(UserError, match="--crops 1: simclr trains on exactly 2 views"):
        run_options.check_options(SimCLR, run_options.default_options(SimCLR, crops=1))  # it used to train 2 silently
    with pytest.raises(UserError, match="crop size 0 is out of range"):
        training.run(MoCo, run_options.default_options(MoCo, crop_size=0))  # it used to mean the native size
    for change, message in [(dict(width=0.0), "--width must be > 0"), (dict(bn_splits=0), "--bn-splits must be >= 1"), (dict(knn_every=-1), "--knn-every"),
                            (dict(val_size=-1), "--val-size"), (dict(batch_size=0), "--batch-size must be > 0")]:
        with pytest.raises(UserError, match=message):
            run_options.check_options(MoCo, run_options.default_options(MoCo, **change))
    assert torch.__version__  # the check itself builds nothing
