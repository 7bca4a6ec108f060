"""End-to-end runs of simclr_main.py (contrastive and supervised) on synthetic data (CPU)."""
import pytest
import torch
from conftest import error_of, sheet_rows

import simclr_main

TINY = ["-width", "0.25", "-dataset", "synthetic", "-subset", "64", "-batch_size", "32", "-workers", "0",
        "-finetune_epochs", "1"]


def test_both_modes_land_side_by_side_in_the_workbook(tmp_path, capsys):
    results = str(tmp_path / "results.xlsx")
    simclr_main.main([*TINY, "-epoch", "2", "-results", results, "-results_dir", str(tmp_path / "simclr")])
    out = capsys.readouterr().out
    assert "linear evaluation (finetune) top-1" in out
    simclr_main.main([*TINY, "--contrastive", "False", "--epoch", "1", "--results", results,
                      "--results_dir", str(tmp_path / "supervised")])
    assert "test top-1" in capsys.readouterr().out
    contrastive, supervised = sheet_rows(results)
    assert contrastive["method"] == "simclr" and contrastive["aug"] == "simclr" and contrastive["optimizer"] == "adam"
    assert contrastive["linear_top1"] is not None and contrastive["supervised_top1"] is None
    assert supervised["method"] == "supervised" and supervised["aug"] == "supervised"
    assert supervised["supervised_top1"] is not None and supervised["linear_top1"] is None
    assert [r["run_id"] for r in sheet_rows(results, "curves")] == [contrastive["run_id"]] * 2 + [supervised["run_id"]]
    assert (tmp_path / "simclr" / "checkpoint_last.pth").exists()


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_each_optimizer_runs(tmp_path, optimizer):
    simclr_main.main([*TINY, "-epoch", "1", "-optimizer", optimizer, "-base_model", "18", "-finetune_epochs", "0",
                      "-results", str(tmp_path / "r.xlsx"), "-results_dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["optimizer"] == optimizer
    if optimizer == "lars":
        assert row["lr"] == pytest.approx(0.3 * 32 / 256)  # lr = 0.3 × batch / 256


def test_lars_recipe_scales_lr_with_batch_and_warms_up():
    from methods import simclr_optimizer_recipe
    args, _ = simclr_main.parse_args(["-optimizer", "lars", "-batch_size", "512", "-epoch", "100"])
    assert simclr_optimizer_recipe(args) == ("lars", pytest.approx(0.6), 1e-6, 10.0)
    args, _ = simclr_main.parse_args(["-optimizer", "lars", "-batch_size", "512", "-epoch", "20"])
    assert simclr_optimizer_recipe(args)[3] == 2.0  # a tenth of a run shorter than 100 epochs
    args, _ = simclr_main.parse_args(["-optimizer", "adam", "-lr", "0.01", "-wd", "0"])
    assert simclr_optimizer_recipe(args) == ("adam", 0.01, 0.0, 0.0)


@pytest.mark.parametrize("value,expected", [("True", True), ("false", False), ("1", True), ("0", False),
                                            ("yes", True), ("no", False)])
def test_contrastive_flag_spellings(value, expected):
    assert simclr_main.parse_args(["-contrastive", value])[0].contrastive is expected


@pytest.mark.parametrize("extra,message", [
    (["-dataset", "mnist"], "unknown dataset"),
    (["-base_model", "34"], "invalid choice"),
    (["-contrastive", "maybe"], "expected True/False"),
    (["-epoch", "-1"], "--epochs must be >= 0"),
    (["-lr", "0"], "--lr must be > 0"),
    (["-wd", "-1"], "--wd must be >= 0"),
    (["-workers", "-1"], "--workers must be >= 0"),
    (["-finetune_epochs", "-1"], "--linear-epochs must be >= 0"),
    (["-subset", "16"], "larger than the 16 training images"),
    (["-results", "/nonexistent-dir/r.xlsx"], "r.xlsx"),
    (["-batch_size", "1"], "--batch-size 1 leaves 1 image per BatchNorm batch"),  # was BatchNorm1d's traceback
    (["-temperature", "nan"], "expected a finite number"),
    (["-width", "0"], "--width must be > 0"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, message):
    argv = [*TINY, "-epoch", "1", "-results", str(tmp_path / "r.xlsx"), "-results_dir", str(tmp_path / "x"), *extra]
    assert message in error_of(argv, capsys, simclr_main.main)


def test_resume_refuses_a_moco_checkpoint(tmp_path, capsys):
    import moco_augmented
    moco_augmented.main(["--dataset", "synthetic", "--subset", "32", "--batch-size", "32", "--moco-k", "64",
                         "--bn-splits", "2", "--workers", "0", "--linear-epochs", "0", "--epochs", "1", "--knn-every",
                         "0", "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "moco")])
    line = error_of([*TINY, "-resume", str(tmp_path / "moco" / "checkpoint_last.pth")], capsys, simclr_main.main)
    assert "is a moco run, not simclr" in line


def test_logged_lr_is_the_lr_of_each_epochs_last_step(tmp_path):
    """SimCLR sets the lr every step (cosine); the log, as MoCo's, holds the lr of the epoch's last step."""
    import csv
    import math
    simclr_main.main([*TINY, "-epoch", "2", "-finetune_epochs", "0", "-knn_every", "0", "-results",
                      str(tmp_path / "r.xlsx"), "-results_dir", str(tmp_path / "run")])
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "run" / "log.csv"))]
    steps = 2  # 64 images in batches of 32; the last step of epoch e starts at e + 1/2
    assert lrs == pytest.approx([3e-4 * 0.5 * (1 + math.cos(math.pi * (e + (steps - 1) / steps) / 2)) for e in (0, 1)])


def test_supervised_baseline_beats_chance_by_a_wide_margin(tmp_path):
    """The door's supervised mode learns and records its classifier's top-1: 3 epochs of a --width 0.25 ResNet-18 on
    synthetic (10 classes, chance 10%) reach 48.2 / 49.6 / 45.6 on seeds 0 / 1 / 2 (2-core AMD EPYC, 2026-12-02)."""
    simclr_main.main(["-dataset", "synthetic", "-contrastive", "False", "-epoch", "3", "-batch_size", "32", "-lr",
                      "3e-3", "-width", "0.25", "-workers", "0", "-knn_every", "0", "-results", str(tmp_path / "r.xlsx"),
                      "-results_dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["supervised_top1"] > 20, row["supervised_top1"]


@pytest.mark.parametrize("script", ["simclr", "moco"])
def test_compile_flag_compiles_the_trained_model(tmp_path, monkeypatch, script):
    """The wiring only: a real torch.compile takes minutes on CPU (BENCHMARKS.md has the measured run)."""
    import moco_augmented
    from methods import MoCo, SimCLR

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    if script == "simclr":
        simclr_main.main([*TINY, "-epoch", "1", "-finetune_epochs", "0", "-compile", "True",
                          "-results", str(tmp_path / "r.xlsx"), "-results_dir", str(tmp_path / "run")])
    else:
        moco_augmented.main(["--dataset", "synthetic", "--subset", "64", "--batch-size", "32", "--moco-k", "64",
                             "--workers", "0", "--epochs", "1", "--linear-epochs", "0", "--compile",
                             "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "run")])
    assert [type(m) for m in compiled] == [SimCLR if script == "simclr" else MoCo]
