"""cli.py: one-line errors (also from a DataLoader worker), explicit-option detection, defaults in --help."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cli import ArgumentParser, UserError, one_line, parse_with_given, run_main


class Broken(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError("cannot decode image /data/x.png (corrupt or not an image): replace or delete it")


def test_a_user_error_raised_in_a_loader_worker_becomes_its_own_line(capsys):
    with pytest.raises(UserError) as wrapped:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "DataLoader worker" in str(wrapped.value)  # what torch hands back: the worker's whole traceback
    assert one_line(wrapped.value) == "cannot decode image /data/x.png (corrupt or not an image): replace or delete it"

    def main():
        next(iter(DataLoader(Broken(), num_workers=1)))

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == "error: cannot decode image /data/x.png (corrupt or not an image): " \
                                               "replace or delete it\n"


def parser():
    p = ArgumentParser()
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--subset", type=int, default=None, help="keep N images")
    p.add_argument("--fast", action="store_true")
    p.set_defaults(epochs=100)
    return p


def test_parse_with_given_tells_explicit_options_from_defaults():
    options, given = parse_with_given(parser(), ["--subset", "5"])
    assert (options.epochs, options.subset, options.fast) == (100, 5, False) and given == {"subset"}
    options, given = parse_with_given(parser(), ["--epochs", "100", "--fast"])
    assert given == {"epochs", "fast"}  # given, even when equal to the default
    assert parse_with_given(parser(), [])[1] == set()


def test_help_shows_every_default_and_bad_options_are_user_errors(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "default: 100" in out and "keep N images" in out
    with pytest.raises(UserError, match="invalid int value"):
        parser().parse_args(["--epochs", "x"])
    with pytest.raises(UserError, match="unrecognized arguments"):
        parser().parse_args(["--epoch", "3"])  # no abbreviations
    assert torch.__version__


@pytest.mark.parametrize("door,argv", [
    ("moco_augmented", ["--moco-t", "inf"]), ("moco_augmented", ["--knn-t", "nan"]),
    ("moco_augmented", ["--lr", "nan"]), ("moco_augmented", ["--wd", "inf"]), ("pretrain", ["--method", "byol",
                                                                                             "--tau-base", "nan"]),
    ("simclr_main", ["-temperature", "nan"]), ("simclr_main", ["-lr", "inf"]), ("search_augment", ["--lr", "nan"])])
def test_every_float_option_refuses_nan_and_inf_when_parsed(door, argv, capsys, monkeypatch):
    """Before the fix `--moco-t inf` trained at a constant loss ln(K+1) and wrote a row; `--knn-t nan` scored 9.2%."""
    import importlib

    from conftest import error_of
    main = importlib.import_module(door).main
    monkeypatch.setattr("training.run", lambda *a, **k: pytest.fail("trained on a non-finite option"))
    line = error_of(argv, capsys, main)
    assert "expected a finite number" in line and argv[-1] in line


def test_a_float_option_that_is_not_a_number_is_one_line():
    parser = ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    assert parser.parse_args(["--lr", "1e-3"]).lr == 1e-3
    with pytest.raises(UserError, match="argument --lr: expected a number, got 'fast'"):
        parser.parse_args(["--lr", "fast"])


def test_help_texts_say_what_each_door_does(capsys):
    """--help as a user reads it: the search's mode-dependent defaults, simclr_main's whole description and its
    -base_model default as the flag takes it, and no '(default: True)' on a --no-... switch."""
    import moco_augmented
    import search_augment
    import simclr_main

    def help_of(main):
        with pytest.raises(SystemExit):
            main(["--help"])
        return " ".join(capsys.readouterr().out.split())

    search = help_of(search_augment.main)
    assert "default: 20 for a search's proxy, 200 with --grid" in search and "default: 0.1 for a search" in search
    simclr = help_of(simclr_main.main)
    assert "the supervised baseline). The seed's flags." in simclr and "ResNet depth (default: 18)" in simclr
    assert simclr_main.parse_args([])[0].arch == "resnet18"
    moco = help_of(moco_augmented.main)
    no_cos = moco[moco.index("--no-cos constant lr"):]
    assert no_cos.startswith("--no-cos constant lr, or steps with --schedule --schedule")  # no "(default: True)"
    assert "--cos cosine schedule (the demo's default)" in moco
