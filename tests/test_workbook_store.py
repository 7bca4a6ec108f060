"""The store under results.xlsx, through its own interface: a change that writes one cell into a sheet of its own.
tests/test_results.py checks the same guarantees for the repo's rows (runs, curves, search trials)."""
import contextlib
import json
import os
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path

import openpyxl
import pytest

import workbook_store
from cli import UserError


def write_cell(value, sheet="notes"):
    def change(workbook):
        if sheet not in workbook.sheetnames:
            workbook.create_sheet(sheet)
        workbook[sheet].append([value])
        return value
    return change


def update(path, value, **hooks):
    """store.update with this test's cell: refused like the repo's rows, completed and folded by the given hooks."""
    hooks = {"check": lambda path: None, "complete": lambda workbook: None,
             "fold": lambda workbook, records: [write_cell(r["value"])(workbook) for r in records], **hooks}
    return workbook_store.update(path, write_cell(value), {"value": value}, "this test's value", **hooks)


def cells(path, sheet="notes"):
    return [row[0] for row in openpyxl.load_workbook(path)[sheet].iter_rows(values_only=True)]


def test_updates_land_in_order_and_leave_only_the_workbook(tmp_path):
    path = tmp_path / "book.xlsx"
    completed = []
    assert update(path, "a", complete=completed.append) == "a"
    update(path, "b", complete=completed.append)
    assert cells(path) == ["a", "b"] and len(completed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["book.xlsx"]


def test_the_lock_lives_in_the_temp_dir_one_per_resolved_path(tmp_path):
    path = tmp_path / "results.xlsx"
    assert Path(workbook_store._lock(path).lock_file).parent == Path(tempfile.gettempdir())
    assert workbook_store._lock(tmp_path / "." / "results.xlsx").lock_file == workbook_store._lock(path).lock_file != \
        workbook_store._lock(tmp_path / "other.xlsx").lock_file


def test_a_failed_save_keeps_the_old_file_and_the_numbers(tmp_path, monkeypatch):
    path = tmp_path / "book.xlsx"
    update(path, "kept")
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(UserError, match=r"No space left on device.*this test's value were saved to .*unsaved-.*json"):
        update(path, "lost?")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    [fallback] = tmp_path.glob("book.unsaved-*.json")
    record = json.loads(fallback.read_text())
    assert record["value"] == "lost?" and record["workbook"] == str(path) and record["error"].startswith("OSError")


def test_ctrl_c_after_the_save_keeps_no_second_copy_of_the_numbers(tmp_path, monkeypatch):
    """The row was in the saved workbook and in a fallback file too, which the next write folded in: twice."""
    path = tmp_path / "book.xlsx"
    locked = workbook_store._locked

    @contextlib.contextmanager
    def interrupted_as_the_lock_is_released(target):
        with locked(target):
            yield
        raise KeyboardInterrupt
    monkeypatch.setattr(workbook_store, "_locked", interrupted_as_the_lock_is_released)
    with pytest.raises(KeyboardInterrupt):
        update(path, "once")
    monkeypatch.undo()
    update(path, "next")
    assert cells(path) == ["once", "next"] and [p.name for p in tmp_path.iterdir()] == ["book.xlsx"]


def test_unsaved_records_fold_back_into_the_next_update_and_their_files_go(tmp_path, capsys):
    path = tmp_path / "book.xlsx"
    update(path, "first")
    (tmp_path / ".~lock.book.xlsx#").write_text("user,host,...")  # LibreOffice has it open: refused, kept aside
    for value in ("x", "y"):
        with pytest.raises(UserError, match="open in a spreadsheet app"):
            update(path, value)
    foreign = tmp_path / "book.unsaved-19990101-000000-1-ab.json"
    foreign.write_text(json.dumps({"workbook": str(tmp_path / "elsewhere.xlsx"), "value": "not ours"}))
    (tmp_path / ".~lock.book.xlsx#").unlink()
    folded = []
    update(path, "after", fold=lambda workbook, records: folded.append([r["value"] for r in records]))
    assert sorted(folded[0]) == ["x", "y"] and "folded 2 earlier unsaved file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [foreign.name, "book.xlsx"]  # another workbook's is left


def test_a_corrupt_workbook_is_moved_aside_with_one_line(tmp_path, capfd):
    path = tmp_path / "book.xlsx"
    garbage = b"this is not a zip file\x00\xff" * 10
    path.write_bytes(garbage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would print two lines with a source location
        update(path, "new")
    [aside] = tmp_path.glob("book.corrupt-*.xlsx")
    assert aside.read_bytes() == garbage and cells(path) == ["new"]
    err = capfd.readouterr().err
    assert re.fullmatch(rf"note: {re.escape(str(path))} could not be read as a workbook \(.+\); "
                        rf"moved it to {re.escape(str(aside))} and started a new one\n", err)


def test_a_refusing_check_writes_nothing_but_the_numbers(tmp_path):
    path = tmp_path / "book.xlsx"

    def refuse(path):
        raise UserError("not this one")

    with pytest.raises(UserError, match="not this one.*saved to"):
        update(path, "v", check=refuse)
    assert not path.exists() and len(list(tmp_path.glob("book.unsaved-*.json"))) == 1


def test_a_writer_that_waits_for_the_lock_says_so(tmp_path, capsys):
    path = tmp_path / "book.xlsx"
    held = workbook_store._lock(Path(os.path.realpath(path)))
    held.acquire()
    waiter = threading.Thread(target=update, args=(path, "late"))
    waiter.start()
    deadline = time.time() + 30
    while "waiting up to 120 s" not in capsys.readouterr().err and time.time() < deadline:
        time.sleep(0.1)  # polled: the message comes after the first second of waiting
    assert time.time() < deadline and waiter.is_alive()
    held.release()
    waiter.join(30)
    assert cells(path) == ["late"]


def test_writable_problem(tmp_path):
    assert workbook_store.writable_problem(tmp_path / "new.xlsx") is None and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    assert workbook_store.writable_problem(tmp_path / "notes.csv") == "its name does not end in .xlsx"
    assert workbook_store.writable_problem(tmp_path / "d.xlsx") is None
    (tmp_path / "d.xlsx").mkdir()
    assert workbook_store.writable_problem(tmp_path / "d.xlsx") == "it is a directory"
    assert workbook_store.writable_problem(tmp_path / "missing" / "r.xlsx").endswith("does not exist")
    assert workbook_store.writable_problem(tmp_path / "file" / "r.xlsx").endswith("is not a directory")
