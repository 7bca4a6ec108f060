"""End-to-end runs of the MoCo door, moco_augmented.py, on synthetic data and CIFAR-10 files in the real format."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MOCO, error_of, log_of, moco_run, sheet_rows, write_cifar10, write_image_folder

import moco_augmented
import runtime

REPO = Path(__file__).resolve().parents[1]


def test_synthetic_run_writes_run_dir_and_workbook(tmp_path, capsys):
    run_dir = moco_run(tmp_path, "--crops", "3", "--symmetric", "--mochi", "8", "4", "2", "--debias", "0.1", epochs=2)
    assert {"args.json", "log.csv", "checkpoint_last.pth", "checkpoint_best.pth"} <= {p.name for p in run_dir.iterdir()}
    (start,) = json.loads((run_dir / "args.json").read_text())["starts"]
    assert start["options"]["crops"] == 3 and start["options"]["symmetric"] is True
    assert [r["epoch"] for r in log_of(run_dir)] == ["1", "2"]
    (row,) = sheet_rows(tmp_path / "results.xlsx")
    assert row["script"] == "moco_augmented.py"
    assert row["method"] == "moco" and row["dataset"] == "synthetic" and row["head"] == "linear 128"
    assert row["aug"] == "ours" and row["crops"] == 3 and row["epochs"] == 2 and row["world_size"] == 1
    assert 0 <= row["knn_top1_final"] <= 100 and 0 <= row["linear_top1"] <= 100
    assert row["precision"] == runtime.auto_precision(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
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
    (["--precision", "fp16"], "--precision fp16 needs a CUDA GPU"),
    (["--crop-size", "0"], "crop size 0 is out of range"),
    (["--batch-size", "2", "--bn-splits", "2"], "leaves 1 image per BatchNorm batch"),
    (["--width", "-0.5"], "--width must be > 0"),
    (["--moco-t", "inf"], "expected a finite number"),
    (["--seed", "-1"], "a seed must be in [0, 2**31), got -1"),  # numpy's ValueError, as a traceback
    (["--sync-bn"], "--sync-bn pools BatchNorm statistics over every process, which undoes MoCo's shuffle-BN"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, message):
    if "--precision" in extra and torch.cuda.is_available():
        pytest.skip("CPU-only check")
    argv = [*TINY_MOCO, "--epochs", "1", "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "x"), *extra]
    assert message in error_of(argv, capsys, moco_augmented.main)
    assert not (tmp_path / "r.xlsx").exists() and not (tmp_path / "x" / "checkpoint_last.pth").exists()


@pytest.mark.parametrize("name", ["r.csv", "notes.txt", "results"])
def test_a_results_file_that_is_not_a_workbook_is_refused_and_left_alone(tmp_path, capsys, name):
    """Before the fix an existing r.csv or notes.txt was moved aside as a corrupt workbook and replaced."""
    notes = tmp_path / name
    notes.write_text("the user's own notes\n")
    argv = [*TINY_MOCO, "--epochs", "1", "--results", str(notes), "--results-dir", str(tmp_path / "x")]
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
        command = [sys.executable, str(REPO / "moco_augmented.py"), *TINY_MOCO, "--workers", "2", "--width", "0.25",
                   "--crop-size", "16", "--epochs", "2", "--linear-epochs", "0", "--results", str(tmp_path / "r.xlsx"),
                   "--results-dir", str(tmp_path / name)]
        out = subprocess.run(command, capture_output=True, text=True, env={"NO_ALBUMENTATIONS_UPDATE": "1",
                                                                           "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        logs.append([(r["loss"], r["knn_top1"]) for r in log_of(tmp_path / name)])
    assert len(logs[0]) == 2 and logs[0] == logs[1]
