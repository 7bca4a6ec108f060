"""training.py: the views a method trains on, the monitor schedule, the epoch callback, evaluation at init, the
run's notes and the progress bar."""
import re

import pytest
import torch
from conftest import TINY_MOCO, error_of, log_of, method_options, moco_run, sheet_rows

import methods
import moco_augmented
import training
import runtime
import run_options
from cli import UserError
from datasets import load_splits
from methods import Method, MoCo, SimCLR, Supervised, SwAV

TINY = dict(width=0.25, dataset="synthetic", subset=64, batch_size=32, moco_k=64, bn_splits=2, workers=0,
            linear_epochs=0)


def tiny_options(tmp_path, method=MoCo, **overrides):
    options = dict(TINY, results=str(tmp_path / "r.xlsx"), results_dir=str(tmp_path / "run"), **overrides)
    return run_options.default_options(method, **{k: v for k, v in options.items() if k != "moco_k" or method is MoCo})


@pytest.mark.parametrize("epochs,every,due", [(5, 1, [1, 2, 3, 4, 5]), (5, 2, [2, 4, 5]), (5, 0, [5]), (1, 0, [1])])
def test_monitor_schedule(epochs, every, due):
    assert [e + 1 for e in range(epochs) if training.monitor_due(e, epochs, every)] == due


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


def test_run_options_build_multicrop_with_the_default_local_size():
    options = method_options(SwAV, local_crops=4)
    crops, recorded = training.train_views(SwAV, options, training.resolve_policy("simclr", 32), 32)
    assert (crops.n_global, crops.n_local, recorded) == (2, 4, "2+4")
    views = crops(load_splits("synthetic", subset=4).pretrain[0][0])
    assert [v.shape[-1] for v in views] == [32, 32, 18, 18, 18, 18]  # 9/16 of 32 px


def test_knn_every_0_monitors_once_at_the_end_with_bn_splits_and_a_ragged_last_batch(tmp_path):
    """The issue's reproduction: 500 test images in batches of 32 end in a batch of 20, which 8 BN splits cannot
    divide; the monitor and the probe must run the network in eval mode and must run at the end."""
    run_dir = moco_run(tmp_path, "--knn-every", "0", "--bn-splits", "8", epochs=2)
    assert [r["knn_top1"] for r in log_of(run_dir)][0] == "" and float(log_of(run_dir)[1]["knn_top1"]) >= 0
    (row,) = sheet_rows(tmp_path / "results.xlsx")
    assert row["knn_top1_final"] is not None and row["linear_top1"] is not None


def test_logged_lr_is_the_demo_value_of_each_epoch(tmp_path):
    run_dir = moco_run(tmp_path, "--linear-epochs", "0", "--knn-every", "0", epochs=2)
    lrs = [float(r["lr"]) for r in log_of(run_dir)]
    assert lrs == pytest.approx([0.06 * 0.5 * (1 + 0.0), 0.0], abs=1e-12)  # demo epochs 1 and 2 of 2: cos(pi/2), cos(pi)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real_loss, calls = methods.moco_infonce, []

    def poisoned(*args):
        calls.append(1)
        return real_loss(*args) * (float("nan") if len(calls) > 3 else 1.0)  # 2 steps per epoch: epoch 2, step 2

    monkeypatch.setattr(methods, "moco_infonce", poisoned)
    line = error_of([*TINY_MOCO, "--epochs", "3", "--results", str(tmp_path / "r.xlsx"), "--results-dir",
                     str(tmp_path / "run")], capsys, moco_augmented.main)
    assert "loss became nan at epoch 2, step 2" in line
    assert torch.load(tmp_path / "run" / "checkpoint_last.pth", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "r.xlsx").exists()
