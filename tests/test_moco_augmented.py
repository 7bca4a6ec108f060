"""End-to-end runs of the MoCo door, moco_augmented.py, on synthetic data and CIFAR-10 files in the real format."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import error_of, kill_after_first_epoch, log_of, sheet_rows, write_cifar10, write_image_folder

import methods
import moco_augmented

REPO = Path(__file__).resolve().parents[1]
TINY = ["--width", "0.25", "--dataset", "synthetic", "--subset", "64", "--batch-size", "32", "--moco-k", "64",
        "--bn-splits", "2", "--workers", "0", "--linear-epochs", "2"]


def run(tmp_path, *extra, name="run", epochs=1):
    moco_augmented.main([*TINY, "--epochs", str(epochs), "--results", str(tmp_path / "results.xlsx"),
                         "--results-dir", str(tmp_path / name), *extra])
    return tmp_path / name


def test_synthetic_run_writes_run_dir_and_workbook(tmp_path, capsys):
    run_dir = run(tmp_path, "--crops", "3", "--symmetric", "--mochi", "8", "4", "2", "--debias", "0.1", epochs=2)
    assert {"args.json", "log.csv", "checkpoint_last.pth", "checkpoint_best.pth"} <= {p.name for p in run_dir.iterdir()}
    (start,) = json.loads((run_dir / "args.json").read_text())["starts"]
    assert start["options"]["crops"] == 3 and start["options"]["symmetric"] is True
    assert [r["epoch"] for r in log_of(run_dir)] == ["1", "2"]
    (row,) = sheet_rows(tmp_path / "results.xlsx")
    assert row["script"] == "moco_augmented.py"
    assert row["method"] == "moco" and row["dataset"] == "synthetic" and row["head"] == "linear 128"
    assert row["aug"] == "ours" and row["crops"] == 3 and row["epochs"] == 2 and row["world_size"] == 1
    assert 0 <= row["knn_top1_final"] <= 100 and 0 <= row["linear_top1"] <= 100 and row["precision"] == "fp32"
    assert row["seed"] == 0 and row["debias"] == 0.1 and row["mochi"] == "8 4 2"
    assert len(sheet_rows(tmp_path / "results.xlsx", "curves")) == 2
    out = capsys.readouterr().out
    assert "epoch    2 | loss" in out and "kNN top-1" in out and "linear evaluation (probe) top-1" in out


def test_cifar10_files_in_real_format(tmp_path, trust_checksums):
    write_cifar10(tmp_path / "data", per_batch=8, n_test=10)
    moco_augmented.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                         "--batch-size", "16", "--moco-k", "32", "--bn-splits", "2", "--workers", "0",
                         "--linear-epochs", "1", "--aug", "original", "--results", str(tmp_path / "r.xlsx"),
                         "--results-dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["dataset"] == "cifar10" and row["data"].startswith("cifar10: 40 train / 10 test")


def test_knn_every_0_monitors_once_at_the_end_with_bn_splits_and_a_ragged_last_batch(tmp_path):
    """The issue's reproduction: 500 test images in batches of 32 end in a batch of 20, which 8 BN splits cannot
    divide; the monitor and the probe must run the network in eval mode and must run at the end."""
    run_dir = run(tmp_path, "--knn-every", "0", "--bn-splits", "8", epochs=2)
    assert [r["knn_top1"] for r in log_of(run_dir)][0] == "" and float(log_of(run_dir)[1]["knn_top1"]) >= 0
    (row,) = sheet_rows(tmp_path / "results.xlsx")
    assert row["knn_top1_final"] is not None and row["linear_top1"] is not None


def test_logged_lr_is_the_demo_value_of_each_epoch(tmp_path):
    run_dir = run(tmp_path, "--linear-epochs", "0", "--knn-every", "0", epochs=2)
    lrs = [float(r["lr"]) for r in log_of(run_dir)]
    assert lrs == pytest.approx([0.06 * 0.5 * (1 + 0.0), 0.0], abs=1e-12)  # demo epochs 1 and 2 of 2: cos(pi/2), cos(pi)


def killed_after_epoch_1(tmp_path, *extra, name):
    """A 2-epoch run killed after its first epoch."""
    options, given = moco_augmented.parse_args([*TINY, "--epochs", "2", "--results", str(tmp_path / "results.xlsx"),
                                                "--results-dir", str(tmp_path / name), *extra])
    kill_after_first_epoch(methods.MoCo, options, given)
    return tmp_path / name


def test_bare_resume_continues_exactly_with_the_runs_own_options(tmp_path, capsys):
    straight = run(tmp_path, "--knn-every", "0", "--linear-epochs", "0", name="straight", epochs=2)
    killed = killed_after_epoch_1(tmp_path, "--knn-every", "0", "--linear-epochs", "0", name="killed")
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
    run(tmp_path, "--knn-every", "0", "--linear-epochs", "0")
    assert "starting it afresh (removed log.csv, checkpoint_last.pth.tmp)" in capsys.readouterr().out
    assert [r["epoch"] for r in log_of(run_dir)] == ["1"] and not (run_dir / "checkpoint_last.pth.tmp").exists()


def test_resume_is_exact_with_the_monitor_every_epoch(tmp_path):
    """A 3-epoch run with the kNN monitor every epoch, killed after epoch 1 and resumed bare, ends with the straight
    run's epoch-3 loss. Before the fix every loader iterator drew its seed from torch's global RNG, and the resumed
    process made its first eval iterator an epoch later than the straight run, so shuffle-BN's permutations moved."""
    extra = ["--knn-every", "1", "--linear-epochs", "0", "--width", "0.25", "--epochs", "3"]
    straight = run(tmp_path, *extra, name="straight", epochs=3)
    killed = killed_after_epoch_1(tmp_path, *extra, name="killed")
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth")])
    logs = [log_of(d) for d in (straight, killed)]
    assert [r["epoch"] for r in logs[1]] == ["1", "2", "3"]
    assert [(r["loss"], r["knn_top1"]) for r in logs[1]] == [(r["loss"], r["knn_top1"]) for r in logs[0]]


def test_resume_with_mochi_and_debias_continues_exactly(tmp_path):
    queue_options = ["--mochi", "16", "4", "2", "--debias", "0.1", "--knn-every", "0", "--linear-epochs", "0"]
    straight = run(tmp_path, *queue_options, name="straight", epochs=2)
    killed = killed_after_epoch_1(tmp_path, *queue_options, name="killed")
    moco_augmented.main(["--resume", str(killed / "checkpoint_last.pth")])
    loss = [float(log_of(d)[1]["loss"]) for d in (straight, killed)]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
    rows = sheet_rows(tmp_path / "results.xlsx")
    assert rows[0]["mochi"] == "16 4 2" and rows[0]["debias"] == 0.1


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "mnist"], "unknown dataset"),
    (["--arch", "vgg"], "invalid choice"),
    (["--aug", "ours+sharpen"], "sharpen"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--wd", "-0.0001"], "--wd must be >= 0"),
    (["--subset", "0"], "--subset must be > 0"),
    (["--crops", "1"], "--crops must be 2 or more"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--bn-splits", "0"], "--bn-splits must be >= 1"),
    (["--mlp", "-1"], "--mlp must be >= 0"),
    (["--crop-size", "100000"], "crop size 100000"),
    (["--linear-epochs", "-1"], "--linear-epochs must be >= 0"),
    (["--debias", "1"], "--debias must be in [0, 1)"),
    (["--mochi", "65", "4", "2"], "--mochi N must be in [1, --moco-k 64]"),
    (["--mochi", "8", "-1", "2"], "S and S' must be >= 0"),
    (["--subset", "16", "--batch-size", "32"], "larger than the 16 training images"),
    (["--batch-size", "30", "--bn-splits", "4"], "does not split into --bn-splits 4"),
    (["--resume", "/nonexistent/checkpoint_last.pth"], "does not exist"),
    (["--results", "/nonexistent-dir/results.xlsx"], "results.xlsx"),
    (["--results", "/proc/results.xlsx"], "/proc/results.xlsx"),
    (["--precision", "bf16"], "needs a CUDA GPU"),
    (["--crop-size", "0"], "crop size 0 is out of range"),
    (["--batch-size", "2", "--bn-splits", "2"], "leaves 1 image per BatchNorm batch"),
    (["--width", "-0.5"], "--width must be > 0"),
    (["--moco-t", "inf"], "expected a finite number"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, message):
    if "--precision" in extra and torch.cuda.is_available():
        pytest.skip("CPU-only check")
    argv = [*TINY, "--epochs", "1", "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "x"), *extra]
    assert message in error_of(argv, capsys, moco_augmented.main)
    assert not (tmp_path / "r.xlsx").exists() and not (tmp_path / "x" / "checkpoint_last.pth").exists()


@pytest.mark.parametrize("name", ["r.csv", "notes.txt", "results"])
def test_a_results_file_that_is_not_a_workbook_is_refused_and_left_alone(tmp_path, capsys, name):
    """Before the fix an existing r.csv or notes.txt was moved aside as a corrupt workbook and replaced."""
    notes = tmp_path / name
    notes.write_text("the user's own notes\n")
    argv = [*TINY, "--epochs", "1", "--results", str(notes), "--results-dir", str(tmp_path / "x")]
    assert "does not end in .xlsx" in error_of(argv, capsys, moco_augmented.main)
    assert [p.name for p in tmp_path.iterdir()] == [name] and notes.read_text() == "the user's own notes\n"


def test_missing_data_names_the_archive(tmp_path, capsys):
    line = error_of(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download"], capsys, moco_augmented.main)
    assert "cifar-10-python.tar.gz" in line and str(tmp_path) in line
    data_file = tmp_path / "file"
    data_file.write_text("x")
    assert "file" in error_of(["--dataset", "cifar10", "--data-dir", str(data_file)], capsys, moco_augmented.main)


def test_a_corrupt_image_read_by_a_loader_worker_is_one_line(tmp_path, capsys):
    write_image_folder(tmp_path / "folder", classes=("a", "b", "c", "d"))
    (tmp_path / "folder" / "train" / "b" / "1.JPEG").write_bytes(b"not a jpeg")
    line = error_of(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "folder"), "--crop-size", "16",
                     "--batch-size", "4", "--bn-splits", "2", "--moco-k", "8", "--workers", "1", "--epochs", "1",
                     "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "run")],
                    capsys, moco_augmented.main)
    assert "1.JPEG" in line and "DataLoader worker" not in line


def test_bad_checkpoints(tmp_path, capsys):
    run_dir = run(tmp_path, "--knn-every", "0", "--linear-epochs", "0")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    assert "cannot be read" in error_of([*TINY, "--resume", str(corrupt)], capsys, moco_augmented.main)
    old = tmp_path / "old.pth"
    torch.save({"model": {}, "signature": {"script": "moco"}}, old)  # a checkpoint of the previous version
    assert "earlier version" in error_of(["--resume", str(old)], capsys, moco_augmented.main)
    # a new run into a directory that already holds one is refused, and its checkpoint kept
    before = (run_dir / "checkpoint_last.pth").read_bytes()
    assert "already holds a run" in error_of([*TINY, "--results-dir", str(run_dir)], capsys, moco_augmented.main)
    assert (run_dir / "checkpoint_last.pth").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real_loss, calls = methods.moco_infonce, []

    def poisoned(*args):
        calls.append(1)
        return real_loss(*args) * (float("nan") if len(calls) > 3 else 1.0)  # 2 steps per epoch: epoch 2, step 2

    monkeypatch.setattr(methods, "moco_infonce", poisoned)
    line = error_of([*TINY, "--epochs", "3", "--results", str(tmp_path / "r.xlsx"), "--results-dir",
                     str(tmp_path / "run")], capsys, moco_augmented.main)
    assert "loss became nan at epoch 2, step 2" in line
    assert torch.load(tmp_path / "run" / "checkpoint_last.pth", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "r.xlsx").exists()


def test_door_imports_without_side_effects_and_reports_cli_errors(tmp_path):
    env = {"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", "import moco_augmented"], cwd=tmp_path, capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout == "" and list(tmp_path.iterdir()) == []
    out = subprocess.run([sys.executable, str(REPO / "moco_augmented.py"), "--dataset", "nope"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: unknown dataset")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run([sys.executable, str(REPO / "moco_augmented.py"), "--help"], capture_output=True, text=True,
                         env=env)
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert out.returncode == 0 and "default: 4096" in text and "(default: 0.06)" in text
    assert "fashionmnist" in text and "original, ours" in text


def test_the_same_command_twice_gives_the_same_losses(tmp_path):
    """Reproducible on one machine: the same command, in two processes with 2 loader workers, logs the same losses
    and kNN to the last printed digit (README says what is not reproducible across machines)."""
    logs = []
    for name in ("first", "second"):
        command = [sys.executable, str(REPO / "moco_augmented.py"), *TINY[:-4], "--workers", "2", "--width", "0.25",
                   "--crop-size", "16", "--epochs", "2", "--linear-epochs", "0", "--results", str(tmp_path / "r.xlsx"),
                   "--results-dir", str(tmp_path / name)]
        out = subprocess.run(command, capture_output=True, text=True, env={"NO_ALBUMENTATIONS_UPDATE": "1",
                                                                           "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        logs.append([(r["loss"], r["knn_top1"]) for r in log_of(tmp_path / name)])
    assert len(logs[0]) == 2 and logs[0] == logs[1]
