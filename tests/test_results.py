import json
import multiprocessing
import os
import re
import zipfile
from pathlib import Path

import openpyxl
import pytest

import results
from training import UserError

REPO = Path(__file__).resolve().parents[1]


def make_run(**overrides):
    run = {"script": "moco_augmented.py", "method": "moco", "dataset": "synthetic", "arch": "resnet18",
           "aug": "ours", "crops": 2, "crop_size": 32, "epochs": 3, "batch_size": 64, "lr": 0.06,
           "knn_top1_final": 41.5, "knn_top1_best": 42.25, "wall_time_s": 12.5, "args": {"lr": 0.06}}
    run.update(overrides)
    return run


def make_curves(epochs=3):
    return [{"epoch": e, "loss": 7.0 - e, "knn_top1": 30.0 + e, "lr": 0.06, "epoch_s": 4.0}
            for e in range(1, epochs + 1)]


def rows(sheet):
    return [list(r) for r in sheet.iter_rows(values_only=True)]


def test_append_two_runs_writes_runs_curves_chart_and_reference(tmp_path):
    path = tmp_path / "results.xlsx"
    first = results.append_run(path, make_run(), make_curves(3))
    second = results.append_run(path, make_run(aug="original", knn_top1_final=float("nan")), make_curves(2))
    assert (first, second) == ("r0001", "r0002")

    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["runs", "curves", "chart", "reference"]
    runs = rows(book["runs"])
    assert runs[0] == results.RUN_COLUMNS and len(runs) == 3
    record = dict(zip(runs[0], runs[1]))
    assert record["run_id"] == "r0001" and record["aug"] == "ours" and record["linear_top1"] is None
    assert record["knn_top1_final"] == 41.5 and isinstance(record["crops"], int) and isinstance(record["lr"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", record["time"])
    assert json.loads(record["args"]) == {"lr": 0.06}
    assert dict(zip(runs[0], runs[2]))["knn_top1_final"] == "nan"  # Excel has no NaN; kept as text
    assert book["runs"]["A1"].font.bold and book["runs"].freeze_panes == "B2"

    curves = rows(book["curves"])
    assert curves[0] == results.CURVE_COLUMNS
    assert [(r[0], r[1], r[3]) for r in curves[1:]] == [
        ("r0001", 1, 31.0), ("r0001", 2, 32.0), ("r0001", 3, 33.0), ("r0002", 1, 31.0), ("r0002", 2, 32.0)]

    with zipfile.ZipFile(path) as archive:
        charts = [n for n in archive.namelist() if n.startswith("xl/charts/chart")]
        assert charts == ["xl/charts/chart1.xml"]
        chart_xml = archive.read(charts[0]).decode()
    assert chart_xml.count("<ser>") == 4  # two runs + the seed study's two curves
    assert "r0002 synthetic original" in chart_xml and "'curves'!$B$5:$B$6" in chart_xml

    reference = rows(book["reference"])
    assert reference[0][:7] == results.REFERENCE_COLUMNS
    published = {(r[0], r[6]) for r in reference[1:] if r[0]}
    assert any(value == 82.19 and "soonwonh/Modified-Moco" in source for source, value in published)
    assert any(value == 85.01 and "soonwonh/Modified-Moco" in source for source, value in published)
    assert any(value == 90.7 and "facebookresearch/moco" in source for source, value in published)
    curve_columns = reference[0][8:13]
    assert curve_columns == ["epoch", "original_train_loss", "original_knn_top1", "ours7_train_loss", "ours7_knn_top1"]
    seed = [r[8:13] for r in reference[1:] if r[8] is not None]
    assert [r[0] for r in seed] == list(range(1, 201))
    assert seed[-1][2] == 82.19 and seed[-1][4] == 85.01


def test_published_table_matches_reference_md():
    text = (REPO / "reference" / "REFERENCE.md").read_text()
    published, header = [], []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells or set(cells[0]) <= {"-"}:
            header = [] if not cells else header
        elif not header:
            header = cells
        elif "value" in header:  # "Other anchors": source, method, dataset, epochs, metric, value
            published.append((int(cells[header.index("epochs")]), float(cells[header.index("value")])))
        else:  # MoCo table: one value column per epoch count ("200 ep", ...)
            published += [(int(h.split()[0]), float(c)) for h, c in zip(header[2:], cells[2:]) if c]
    transcribed = [(row[4], float(row[6])) for row in results.PUBLISHED]
    assert sorted(transcribed) == sorted(published) and len(published) == 14


def _append_after(barrier, path, aug):
    barrier.wait()
    results.append_run(path, make_run(aug=aug), make_curves(2))


def test_concurrent_appends_both_land(tmp_path):
    path = tmp_path / "results.xlsx"
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = context.Barrier(3)
    workers = [context.Process(target=_append_after, args=(barrier, path, aug)) for aug in ("original", "ours")]
    for worker in workers:
        worker.start()
    barrier.wait()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    runs = rows(openpyxl.load_workbook(path)["runs"])[1:]
    assert sorted(r[0] for r in runs) == ["r0001", "r0002"]
    assert sorted(r[6] for r in runs) == ["original", "ours"]


def test_corrupt_workbook_is_moved_aside_not_lost(tmp_path):
    path = tmp_path / "results.xlsx"
    garbage = b"this is not a zip file\x00\xff" * 10
    path.write_bytes(garbage)
    with pytest.warns(UserWarning, match="corrupt"):
        run_id = results.append_run(path, make_run(), make_curves(1))
    aside = list(tmp_path.glob("results.corrupt-*.xlsx"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert rows(openpyxl.load_workbook(path)["runs"])[1][0] == run_id


def test_check_writable(tmp_path):
    results.check_writable(tmp_path / "new.xlsx")
    assert not (tmp_path / "new.xlsx").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "missing" / "r.xlsx", tmp_path, tmp_path / "file" / "r.xlsx"):
        with pytest.raises(UserError, match="results workbook"):
            results.check_writable(bad)


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() == 0, reason="root ignores file permissions")
def test_check_writable_read_only_dir(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        results.check_writable(tmp_path / "ro" / "r.xlsx")


def test_failed_final_write_keeps_numbers_and_old_workbook(tmp_path, monkeypatch):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), make_curves(2))
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UserError, match="unsaved-.*json"):
        results.append_run(path, make_run(aug="lost?", linear_top1=77.5), make_curves(4))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    [fallback] = tmp_path.glob("results.unsaved-*.json")
    record = json.loads(fallback.read_text())
    assert record["run"]["aug"] == "lost?" and record["run"]["linear_top1"] == 77.5 and len(record["curves"]) == 4


def test_user_columns_are_kept(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), [])
    book = openpyxl.load_workbook(path)
    book["runs"].cell(1, len(results.RUN_COLUMNS) + 1, "notes")
    book["runs"].cell(2, len(results.RUN_COLUMNS) + 1, "my note")
    book.save(path)
    assert results.append_run(path, make_run(script="=not a formula"), []) == "r0002"
    runs = rows(openpyxl.load_workbook(path)["runs"])
    assert runs[1][-1] == "my note" and runs[2][2] == "=not a formula"


def test_unknown_key_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="knn_top_1"):
        results.append_run(tmp_path / "r.xlsx", make_run(knn_top_1=3.0), [])
    with pytest.raises(ValueError, match="run_id"):
        results.append_run(tmp_path / "r.xlsx", make_run(run_id="mine"), [])
    assert not (tmp_path / "r.xlsx").exists()


def test_default_path_is_repo_root():
    assert results.default_path() == REPO / "results.xlsx"
