"""checkpoints.py: what --resume may change, every start of a run kept in its args.json, and resume end to end
through the MoCo door: a killed run resumed from its checkpoint alone continues exactly, a finished or changed one is
refused in one line, a damaged checkpoint or run dir is named. (BYOL and SwAV: tests/test_pretrain.py; mixing:
tests/test_mixing.py.)"""
import argparse
import json

import pytest
import torch
from conftest import TINY_MOCO, error_of, log_of, moco_killed_after_epoch_1, moco_run, sheet_rows

import checkpoints
import moco_augmented
import run_options
from cli import UserError
from methods import MoCo, SimCLR


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


def test_an_epoch_logged_after_the_last_checkpoint_is_in_log_csv_once_after_the_resume(tmp_path):
    killed = moco_killed_after_epoch_1(tmp_path, "--knn-every", "0", "--linear-epochs", "0", name="killed")
    with open(killed / "log.csv", "a") as f:  # killed after epoch 2's log line, before its checkpoint
        f.write("2,9.9,,0.06,1.0,10\n")
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth")])  # trains epoch 2 again
    log = log_of(killed)
    assert [r["epoch"] for r in log] == ["1", "2"] and log[1]["loss"] != "9.9"  # it used to hold epoch 2 twice


def test_bare_resume_continues_exactly_with_the_runs_own_options(tmp_path, capsys):
    straight = moco_run(tmp_path, "--knn-every", "0", "--linear-epochs", "0", name="straight", epochs=2)
    killed = moco_killed_after_epoch_1(tmp_path, "--knn-every", "0", "--linear-epochs", "0", name="killed")
    assert len(sheet_rows(tmp_path / "results.xlsx")) == 1
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth")])  # nothing else: the run's own options
    loss = [float(log_of(d)[1]["loss"]) for d in (straight, killed)]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
    queues = [torch.load(d / "checkpoint_last.pth", weights_only=False)["model"]["queue"] for d in (straight, killed)]
    assert torch.allclose(queues[0], queues[1], atol=1e-4)
    rows = sheet_rows(tmp_path / "results.xlsx")
    assert len(rows) == 2 and rows[1]["run_dir"] == str(killed) and rows[1]["epochs"] == 2
    starts = json.loads((killed / "args.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["options"]["subset"] == 64 and starts[1]["options"]["moco_k"] == 64
    # a bare resume of the finished run used to append a duplicate row that the summary counted twice
    line = error_of(["--resume", str(killed / "checkpoint_last.pth")], capsys, moco_augmented.main)
    assert "finished its 2 epochs and is run r0002" in line and "raise --epochs" in line
    assert len(sheet_rows(tmp_path / "results.xlsx")) == 2
    # a different --subset or a lower --epochs would be another run: refused, naming the option; nothing lost
    before = (killed / "checkpoint_last.pth").read_bytes()
    line = error_of(["--resume", str(killed / "checkpoint_last.pth"), "--subset", "128"], capsys, moco_augmented.main)
    assert "--subset 128 differs from the run's 64" in line
    line = error_of(["--resume", str(killed / "checkpoint_last.pth"), "--epochs", "1"], capsys, moco_augmented.main)
    assert "--epochs 1 differs" in line and "may only raise it" in line
    assert (killed / "checkpoint_last.pth").read_bytes() == before and len(sheet_rows(tmp_path / "results.xlsx")) == 2
    # raising --epochs and changing where it runs (workers) are allowed
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth"), "--epochs", "3", "--workers", "1"])
    assert [r["epoch"] for r in log_of(killed)] == ["1", "2", "3"]


def test_a_start_killed_before_its_first_checkpoint_is_started_afresh(tmp_path, capsys):
    """kill -9 during the first checkpoint write leaves log.csv and a .tmp; the same command again used to append to
    that log.csv, which then held epoch 1 twice."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.csv").write_text("epoch,loss,knn_top1,lr,epoch_s,images_per_s\n1,4.2,,0.06,1.0,64\n")
    (run_dir / "checkpoint_last.pth.tmp").write_bytes(b"half a checkpoint")
    moco_run(tmp_path, "--knn-every", "0", "--linear-epochs", "0")
    assert "starting it afresh (removed log.csv, checkpoint_last.pth.tmp)" in capsys.readouterr().out
    assert [r["epoch"] for r in log_of(run_dir)] == ["1"] and not (run_dir / "checkpoint_last.pth.tmp").exists()


def test_resume_is_exact_with_the_monitor_every_epoch(tmp_path):
    """A 3-epoch run with the kNN monitor every epoch, killed after epoch 1 and resumed bare, ends with the straight
    run's epoch-3 loss. Before the fix every loader iterator drew its seed from torch's global RNG, and the resumed
    process made its first eval iterator an epoch later than the straight run, so shuffle-BN's permutations moved."""
    extra = ["--knn-every", "1", "--linear-epochs", "0", "--width", "0.25", "--epochs", "3"]
    straight = moco_run(tmp_path, *extra, name="straight", epochs=3)
    killed = moco_killed_after_epoch_1(tmp_path, *extra, name="killed")
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth")])
    logs = [log_of(d) for d in (straight, killed)]
    assert [r["epoch"] for r in logs[1]] == ["1", "2", "3"]
    assert [(r["loss"], r["knn_top1"]) for r in logs[1]] == [(r["loss"], r["knn_top1"]) for r in logs[0]]


def test_resume_with_mochi_and_debias_continues_exactly(tmp_path):
    queue_options = ["--mochi", "16", "4", "2", "--debias", "0.1", "--knn-every", "0", "--linear-epochs", "0"]
    straight = moco_run(tmp_path, *queue_options, name="straight", epochs=2)
    killed = moco_killed_after_epoch_1(tmp_path, *queue_options, name="killed")
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth")])
    loss = [float(log_of(d)[1]["loss"]) for d in (straight, killed)]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
    rows = sheet_rows(tmp_path / "results.xlsx")
    assert rows[0]["mochi"] == "16 4 2" and rows[0]["debias"] == 0.1


def test_bad_checkpoints(tmp_path, capsys):
    run_dir = moco_run(tmp_path, "--knn-every", "0", "--linear-epochs", "0")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    assert "cannot be read" in error_of([*TINY_MOCO, "--resume", str(corrupt)], capsys, moco_augmented.main)
    old = tmp_path / "old.pth"
    torch.save({"model": {}, "signature": {"script": "moco"}}, old)  # a checkpoint of the previous version
    assert "earlier version" in error_of(["--resume", str(old)], capsys, moco_augmented.main)
    # a new run into a directory that already holds one is refused, and its checkpoint kept
    before = (run_dir / "checkpoint_last.pth").read_bytes()
    assert "already holds a run" in error_of([*TINY_MOCO, "--results-dir", str(run_dir)], capsys, moco_augmented.main)
    assert (run_dir / "checkpoint_last.pth").read_bytes() == before
