"""Both scripts under torchrun with 2 CPU processes (gloo)."""
import os
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

REPO = Path(__file__).resolve().parents[1]


def torchrun(script, *args, cwd):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script,args", [
    ("moco_augmented.py", ["--width", "0.25", "--dataset", "synthetic", "--subset", "64", "--batch-size", "32", "--moco-k", "64",
                           "--workers", "0", "--epochs", "1", "--linear-epochs", "1", "--mochi", "8", "4", "2",
                           "--debias", "0.1"]),
    ("simclr_main.py", ["-width", "0.25", "-dataset", "synthetic", "-subset", "64", "-batch_size", "32", "-workers", "0", "-epoch", "1",
                        "-finetune_epochs", "1"]),
])
def test_two_processes_write_one_row_with_world_size_2(tmp_path, script, args):
    out = torchrun(script, *args, "--results", str(tmp_path / "r.xlsx"), "--results-dir" if script.startswith("moco")
                   else "--results_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ws = openpyxl.load_workbook(tmp_path / "r.xlsx")["runs"]
    header = [c.value for c in ws[1]]
    rows = [dict(zip(header, [c.value for c in r])) for r in ws.iter_rows(min_row=2)]
    assert len(rows) == 1 and rows[0]["world_size"] == 2 and rows[0]["knn_top1_final"] is not None
    assert (tmp_path / "run" / "checkpoint_last.pth").exists()


def test_ddp_equivalences(tmp_path):
    """SimCLR, BYOL, SimSiam, SwAV loss/gradients of 2 × b equal 1 × 2b, with --mix given the same pairs; MoCo's queue
    holds both ranks' keys; weights stay identical."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(REPO / "tests" / "ddp_checks.py")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ddp checks passed") == 2


def test_swav_with_multicrop_and_a_queue_runs_under_torchrun(tmp_path):
    """pretrain.py --method swav with 2 processes: distributed Sinkhorn, the shared queue (full at the second step),
    prototypes frozen for the first step, two local crops; one row with world size 2."""
    out = torchrun("pretrain.py", "--method", "swav", "--width", "0.25", "--dataset", "synthetic", "--subset", "64",
                   "--batch-size", "32", "--workers", "0", "--epochs", "1", "--linear-epochs", "1", "--prototypes", "30", "--local-crops", "2",
                   "--queue-length", "32", "--queue-start", "0", "--freeze-prototypes-steps", "1",
                   "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ws = openpyxl.load_workbook(tmp_path / "r.xlsx")["runs"]
    header = [c.value for c in ws[1]]
    (row,) = [dict(zip(header, [c.value for c in r])) for r in ws.iter_rows(min_row=2)]
    assert (row["method"], row["world_size"], row["crops"]) == ("swav", 2, "2+2") and row["knn_top1_final"] is not None
