"""training.py: the run path's options, resume rules, monitor schedule, epoch callback and evaluation at init."""
import argparse
import json
import re

import pytest
import torch
from conftest import sheet_rows

import training
import runtime
import run_options
import checkpoints
from cli import UserError
from methods import METHODS, Method, MoCo, SimCLR, Supervised

TINY = dict(width=0.25, dataset="synthetic", subset=64, batch_size=32, moco_k=64, bn_splits=2, workers=0,
            linear_epochs=0)


def tiny_options(tmp_path, method=MoCo, **overrides):
    options = dict(TINY, results=str(tmp_path / "r.xlsx"), results_dir=str(tmp_path / "run"), **overrides)
    return run_options.default_options(method, **{k: v for k, v in options.items() if k != "moco_k" or method is MoCo})


@pytest.mark.parametrize("name", list(METHODS))
def test_default_options_hold_each_methods_recipe(name):
    method = METHODS[name]
    options = run_options.default_options(method)
    assert {key: getattr(options, key) for key in method.recipe} == method.recipe
    with pytest.raises(ValueError, match="no option"):
        run_options.default_options(method, no_such_option=1)


def test_moco_recipe_is_the_demo():
    o = run_options.default_options(MoCo)
    assert (o.epochs, o.batch_size, o.lr, o.wd, o.moco_k, o.moco_m, o.moco_t, o.bn_splits, o.aug) == \
           (200, 512, 0.06, 5e-4, 4096, 0.99, 0.1, 8, "ours")
    assert MoCo.optimizer_recipe(o) == ("sgd", 0.06, 5e-4, 0.0) and MoCo.lr_per_epoch


@pytest.mark.parametrize("epochs,every,due", [(5, 1, [1, 2, 3, 4, 5]), (5, 2, [2, 4, 5]), (5, 0, [5]), (1, 0, [1])])
def test_monitor_schedule(epochs, every, due):
    assert [e + 1 for e in range(epochs) if training.monitor_due(e, epochs, every)] == due


def resume_state(**saved):
    options = dict(vars(run_options.default_options(MoCo)), **saved)
    return dict(method="moco", options=options, run_dir="runs/x")


def test_resumed_options_keep_the_runs_own_and_allow_only_where_and_how():
    state = resume_state(subset=256, epochs=10, workers=4)
    now = run_options.default_options(MoCo, resume="ckpt", epochs=20, workers=0)
    merged = checkpoints.resumed_options(MoCo, now, {"resume", "epochs", "workers"}, state, "ckpt")
    assert (merged.subset, merged.epochs, merged.workers, merged.resume) == (256, 20, 0, "ckpt")
    not_given = checkpoints.resumed_options(MoCo, run_options.default_options(MoCo, resume="ckpt"), {"resume"}, state, "c")
    assert (not_given.subset, not_given.epochs, not_given.workers) == (256, 10, 4)
    with pytest.raises(UserError, match="--subset 300 differs from the run's 256"):
        checkpoints.resumed_options(MoCo, run_options.default_options(MoCo, subset=300), {"subset"}, state, "c")
    with pytest.raises(UserError, match="may only raise it"):
        checkpoints.resumed_options(MoCo, run_options.default_options(MoCo, epochs=5), {"epochs"}, state, "c")
    with pytest.raises(UserError, match="is a moco run, not simclr"):
        checkpoints.resumed_options(SimCLR, run_options.default_options(SimCLR), set(), state, "c")


def test_args_json_keeps_every_start(tmp_path):
    for epochs in (1, 2):
        checkpoints.record_start(tmp_path, argparse.Namespace(epochs=epochs))
    starts = json.loads((tmp_path / "args.json").read_text())["starts"]
    assert [s["options"]["epochs"] for s in starts] == [1, 2] and all("argv" in s and "time" in s for s in starts)


def test_epoch_callback_sees_metrics_and_stops_the_run(tmp_path):
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return epoch == 1  # stop after the first of 3 epochs

    record = training.run(MoCo, tiny_options(tmp_path, epochs=3, knn_every=2), on_epoch=on_epoch)
    assert seen == [(1, ["epoch", "epoch_s", "images_per_s", "knn_top1", "loss", "lr"])]
    assert record["epochs"] == 1 and record["knn_top1_final"] is not None  # a stopped run still ends with a reading
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["run_id"] == record["run_id"] and row["epochs"] == 1


def test_an_exception_from_the_callback_ends_the_run_without_a_row(tmp_path):
    class Pruned(Exception):
        pass

    def prune(epoch, metrics):
        raise Pruned

    with pytest.raises(Pruned):
        training.run(MoCo, tiny_options(tmp_path, epochs=2), on_epoch=prune)
    assert not (tmp_path / "r.xlsx").exists() and (tmp_path / "run" / "checkpoint_last.pth").exists()


def test_epochs_0_evaluates_the_network_at_initialisation(tmp_path):
    record = training.run(Supervised, tiny_options(tmp_path, Supervised, epochs=0, linear_epochs=1))
    assert record["epochs"] == 0 and record["knn_top1_final"] is not None and record["linear_top1"] is not None
    assert record["images_per_s"] is None and not (tmp_path / "run" / "checkpoint_last.pth").exists()


def test_validation_split_replaces_the_test_set(tmp_path):
    record = training.run(MoCo, tiny_options(tmp_path, epochs=1, val_size=40))
    assert "40 validation images (scored instead of test)" in record["data"]


def test_pixels_baseline_needs_no_training(tmp_path):
    from methods import RawPixels
    record = training.run(RawPixels, tiny_options(tmp_path, RawPixels, linear_epochs=1))
    assert record["method"] == "pixels" and record["knn_top1_final"] is not None
    with pytest.raises(UserError, match="needs --epochs 0"):
        training.run(RawPixels, tiny_options(tmp_path, RawPixels, epochs=1))


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


def test_a_knn_k_above_the_banks_images_per_class_is_noted(tmp_path, capsys):
    def evaluate_at_init(knn_k):
        options = run_options.default_options(Supervised, dataset="synthetic", subset=40, batch_size=8, crop_size=16,
                                           workers=0, epochs=0, linear_epochs=0, knn_k=knn_k,
                                           results=str(tmp_path / "r.xlsx"),
                                           results_dir=str(tmp_path / f"k{knn_k}"))
        training.run(Supervised, options, quiet=True)
        return capsys.readouterr().out

    printed = evaluate_at_init(200)
    assert "note: --knn-k 200 is more than the kNN memory bank's 4 images per class" in printed
    assert "note: --subset keeps 40 training images; the kNN monitor and linear evaluation still score the full " \
           "500-image test set" in printed
    assert "(e.g. 2)" in evaluate_at_init(20)  # it used to suggest 20, the value the user gave
    assert "--knn-k" not in evaluate_at_init(4)


def test_a_short_run_on_the_demo_cosine_is_told_its_last_epoch_trains_at_lr_0():
    def lr_notes(**change):
        return [n for n in MoCo.notes(run_options.default_options(MoCo, **change), 10**6) if "lr 0" in n]

    (note,) = lr_notes(epochs=2)
    assert "the last of these 2 epochs trains at lr 0 (50% of the run)" in note and "--no-cos" in note
    assert lr_notes(epochs=200) == [] and lr_notes(epochs=2, cos=False) == [] and lr_notes(epochs=0) == []


def test_a_queue_as_long_as_the_training_set_is_noted(tmp_path, capsys):
    """MoCo's queue holds the last K keys: with K >= the training images, each image meets its own earlier key."""
    def note_at_init(moco_k):
        options = run_options.default_options(MoCo, dataset="synthetic", subset=64, batch_size=16, crop_size=16, workers=0,
                                           epochs=0, linear_epochs=0, knn_k=4, moco_k=moco_k, bn_splits=1,
                                           results=str(tmp_path / "r.xlsx"), results_dir=str(tmp_path / f"k{moco_k}"))
        training.run(MoCo, options, quiet=True)
        return [line for line in capsys.readouterr().out.splitlines() if "--moco-k" in line]

    (line,) = note_at_init(64)
    assert line.startswith("note: --moco-k 64 is at least the 64 training images") and "own earlier key" in line
    assert note_at_init(63) == []
    with_note = run_options.default_options(SimCLR, subset=8)
    assert SimCLR.notes(with_note, 8) == []  # no queue, no note


def test_the_progress_bar_shows_the_epochs_running_mean_loss(capsys):
    """The bar used to show an early step's loss (0.0655) while the epoch's mean was 3.59. Step i's loss here is i."""
    class StepLoss(Method):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, images, labels):
            return self.weight * 0 + images.float().mean()

    model = StepLoss()
    batches = [(torch.full((2, 3, 4, 4), float(i)), torch.zeros(2, dtype=torch.long)) for i in range(25)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rt = runtime.Runtime(torch.device("cpu"), "fp32")
    mean, images, _, _ = training.train_epoch(rt, model, model, batches, optimizer, lambda t: 0.1, 0, 1)
    assert mean == sum(range(25)) / 25 and images == 50
    shown = [float(x) for x in re.findall(r"loss=([\d.]+)", capsys.readouterr().err)]
    # refreshed after steps 1, 11 and 21: the means of losses 0, 0..10 and 0..20
    assert sorted(set(shown)) == [0.0, sum(range(11)) / 11, sum(range(21)) / 21], shown
