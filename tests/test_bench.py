"""bench.py at tiny sizes (--quick), so it never rots. Output shape only: no timing assertions."""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
from cli import UserError

NUMBER = r"[\d,]+(\.\d+)?"


@pytest.fixture(scope="module")
def output():
    # One torch thread: on a shared 2-core machine, OpenMP threads spin-waiting for a busy core make a step ~5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            bench.main(["--all", "--quick", "--workers", "0", "2"])
    finally:
        torch.set_num_threads(threads)
    return out.getvalue()


def rows(output, title):
    """The data rows of the markdown table under the heading that starts with `title`."""
    section = output.split(f"### {title}")[1].split("###")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert "Machine: " in section and "torch " in section and "albumentations " in section
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]  # [0] is the header


def test_aug_ends_with_the_headline(output):
    assert re.fullmatch(r"augmentation speedup vs torchvision v2 \(original preset, 32 px, 1 core\): \d+\.\dx",
                        output.strip().splitlines()[-1])
    table = rows(output, "Augmentation throughput")
    assert [(r[0], r[1]) for r in table] == [(p, s) for p in ("original", "ours", "simclr") for s in ("32 px", "96 px")]
    assert all(re.fullmatch(NUMBER, r[2]) and re.fullmatch(NUMBER, r[3]) and re.fullmatch(r"\d+\.\dx", r[4])
               for r in table)


def test_loader_has_a_row_per_worker_count(output):
    table = rows(output, "Training loader")
    assert [r[0] for r in table] == ["0", "2"]
    assert all(re.fullmatch(NUMBER, cell) for r in table for cell in r[1:])


def test_step_epoch_and_knn_print_numbers(output):
    step = rows(output, "Training step")
    mixed = bench.mixed_precision(torch.device("cpu"))  # bf16 on a CPU with AMX
    precisions = ["fp32", mixed] if mixed else ["fp32"]
    assert [r[:5] for r in step] == (
        [["MoCo", "8 splits", p, cl, "off"] for p in precisions for cl in ("off", "on")]
        + [["MoCo", "plain", mixed or "fp32", cl, "off"] for cl in ("off", "on")]
        + [["SimCLR", "plain", p, cl, "off"] for p in precisions for cl in ("off", "on")])
    assert all(re.fullmatch(NUMBER, r[5]) and float(r[6]) > 0 for r in step)
    (epoch,) = rows(output, "Default MoCo recipe")
    assert all(re.fullmatch(NUMBER, cell) for cell in epoch[2:7])
    (knn,) = rows(output, "kNN monitor")
    assert knn[:2] == ["2,000", "500"] and float(knn[2]) > 0


def test_widths_has_a_row_per_width_and_size(output):
    (narrow,) = rows(output, "MoCo training step by backbone width")
    assert narrow[:2] == ["0.25", "16-32-64-128"] and narrow[3] == "16"
    assert re.fullmatch(r"\d\.\d\d M", narrow[2]) and re.fullmatch(NUMBER, narrow[4]) and float(narrow[5]) > 0


def test_a_mode_is_required():
    with pytest.raises(UserError, match="choose at least one mode"):
        bench.main([])


@pytest.mark.parametrize("option", [["--steps", "0"], ["--batch-size", "0"], ["--seconds", "0"], ["--gemm-size", "0"]])
def test_an_explicit_zero_is_refused_not_replaced_by_the_default(option):
    with pytest.raises(UserError, match="must be positive"):
        bench.parse_args(["--step", *option], cuda=False)


def test_compile_adds_a_row_per_model(monkeypatch):
    compiled = []
    monkeypatch.setattr(bench.torch, "compile", lambda model: compiled.append(model) or model)  # real: minutes on CPU
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(["--step", "--quick", "--compile"])
    step = rows(out.getvalue(), "Training step")
    assert [r[:2] for r in step if r[4].startswith("on (first step ")] == [["MoCo", "8 splits"], ["SimCLR", "plain"]]
    assert len(compiled) == 2


def test_peak_has_both_gemms_and_the_moco_steps_share(output):
    table = rows(output, "Matmul peak")
    assert [r[:2] for r in table] == [["GEMM", "float32"], ["GEMM", "bfloat16"],
                                      ["MoCo step, ResNet-18 width 0.25, 16 px", "fp32"]]
    assert table[0][4] == "1.00" and all(re.fullmatch(NUMBER, r[3]) for r in table)
    assert float(table[2][2]) > 0 and 0 < float(table[2][4])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's levers")
def test_levers_time_each_precision_layout_and_batchnorm_then_the_loader(output):
    mixed = bench.mixed_precision(torch.device("cpu"))
    precisions = ["fp32", mixed] if mixed else ["fp32"]
    step = rows(output, "The CPU recipe's MoCo step")  # --quick: the fixture's one thread, one loader worker
    assert [r[:5] for r in step] == [[p, cl, "1", "off", "2 splits"] for p in precisions for cl in ("off", "on")] + [
        [precisions[-1], "off", "1", "off", "plain"]]
    assert all(re.fullmatch(NUMBER, cell) for r in step for cell in r[5:8]) and step[0][9] == "1.00x"
    assert all(0 < float(r[8]) for r in step)  # FLOPs x steps/s over the GEMM peak of the row's precision
    end_to_end = rows(output, "The CPU recipe end to end")
    assert [r[:3] for r in end_to_end] == [[p, "1", "1"] for p in precisions]
    assert all(re.fullmatch(NUMBER, cell) for r in end_to_end for cell in r[3:])


def test_the_peer_benchmark_without_lightly_says_how_to_install_it_in_one_line():
    """lightly is installed for benchmarks/peer_lightly.py only, never a requirement: without it, one error line."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_lightly.py"
    env = {**os.environ, "PYTHONPATH": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['lightly'] = None; sys.argv = sys.argv[1:]; "
                           "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')", str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: lightly is not importable") and "pip install --no-deps --target .peer" in line
