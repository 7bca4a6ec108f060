"""search_augment.py on a real PostgreSQL server, as README's "Many machines" runs it: processes started as a user
starts them, a postgresql+psycopg:// URL, and the study's web page (optuna-dashboard) loaded in headless Chromium.

The server is conftest's throwaway one (initdb in a temp dir, 127.0.0.1, a free port); each test has a database of
its own. Under CI=true these tests run, never skip (.ci/run installs postgresql and chromium-headless-shell)."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import optuna
from conftest import TINY_SEARCH, error_of, free_port, needs, sheet_rows, start_search

import search_augment

DOOR = Path(search_augment.__file__)


def search_argv(tmp_path, url, trials, *extra):
    return [*TINY_SEARCH, "--trials", str(trials), "--storage", url, "--study", "t", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "r.xlsx"), *extra]


def trials(url):
    return optuna.load_study(study_name="t", storage=url).trials


def wait_for(path, process, log, seconds=240):
    deadline = time.time() + seconds
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, log.read_text()[-2000:]


def first_epoch_of_trial_1(tmp_path):
    """Written after trial 1's first epoch: trial 0 has finished, and trial 1 has recorded its first heartbeat (a trial
    killed before its first heartbeat has none, and Optuna never finds it stale: it stays RUNNING)."""
    return tmp_path / "out" / "runs" / "trial-0001" / "log.csv"


def sheet_matches_study(tmp_path, study):
    rows = sheet_rows(tmp_path / "r.xlsx", "search")
    return sorted((r["trial"], r["state"]) for r in rows) == sorted((t.number, t.state.name) for t in study)


def test_postgres_two_processes_on_a_new_study_record_every_trial_exactly_once(postgres, tmp_path):
    url = postgres.new_database("two_processes")  # a new database: both processes race to create the schema
    argv = search_argv(tmp_path, url, 4)
    processes = [start_search(argv, tmp_path, f"p{i}.log") for i in range(2)]
    for i, process in enumerate(processes):
        assert process.wait(timeout=600) == 0, (tmp_path / f"p{i}.log").read_text()[-2000:]
    study = trials(url)
    assert len(study) >= 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study)
    assert len({t.number for t in study}) == len(study) and sheet_matches_study(tmp_path, study)
    assert len({json.dumps(t.params, sort_keys=True) for t in study}) == len(study)  # each process its own policies
    assert all("best policy" in (tmp_path / f"p{i}.log").read_text() for i in range(2))


def test_postgres_a_killed_process_trial_is_failed_by_its_heartbeat_and_retried_once(postgres, tmp_path):
    url = postgres.new_database("killed")
    argv = search_argv(tmp_path, url, 3, "--heartbeat", "1", "--epochs", "3")
    process = start_search(argv, tmp_path, "killed.log")
    wait_for(first_epoch_of_trial_1(tmp_path), process, tmp_path / "killed.log")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [t.state.name for t in trials(url)][:2] in (["COMPLETE", "RUNNING"], ["PRUNED", "RUNNING"])
    time.sleep(3.5)  # 3 missed heartbeats make it stale (PostgreSQL's timestamps have microseconds)
    rerun = start_search(argv, tmp_path, "rerun.log")  # the same command again, as the next process
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-2000:]
    study = trials(url)
    assert study[1].state.name == "FAIL"
    retried = [t for t in study if t.system_attrs.get("failed_trial") == 1]  # RetryHeartbeatStaleTrialCallback's mark
    assert len(retried) == 1 and retried[0].params == study[1].params and retried[0].state.name != "RUNNING"
    assert len(study) == 4 and all(t.state.is_finished() for t in study)  # the retry replaces it in --trials 3
    assert sheet_matches_study(tmp_path, study)


def test_postgres_server_stopped_mid_search_is_one_error_line_and_the_same_command_resumes(postgres, tmp_path):
    url = postgres.new_database("stopped")
    argv = search_argv(tmp_path, url, 3, "--heartbeat", "1", "--epochs", "3")
    process = start_search(argv, tmp_path, "stopped.log")
    log = tmp_path / "stopped.log"
    wait_for(first_epoch_of_trial_1(tmp_path), process, log)
    postgres.stop()
    try:
        assert process.wait(timeout=240) == 2, log.read_text()[-2000:]
        output = log.read_text()
        errors = [line[line.index("error: "):] for line in output.splitlines() if "error: " in line]
        assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
        assert errors[0].startswith(f"error: lost --storage {url}: ") and "run the same command again" in errors[0]
        assert [(r["trial"], r["state"]) for r in sheet_rows(tmp_path / "r.xlsx", "search")] in (
            [(0, "COMPLETE")], [(0, "PRUNED")])  # the finished trial kept
    finally:
        postgres.start()
    time.sleep(3.5)  # the interrupted trial's heartbeat is stale by now; wait in case the restart was quick
    search_augment.main(argv)  # the same command
    study = trials(url)
    assert study[1].state.name == "FAIL" and len(study) == 4 and all(t.state.is_finished() for t in study)
    assert [t.system_attrs.get("failed_trial") for t in study].count(1) == 1
    assert sheet_matches_study(tmp_path, study)


def test_postgres_a_storage_that_cannot_be_reached_is_one_line_with_its_password_masked(tmp_path, capsys):
    port = free_port()
    url = f"postgresql+psycopg://search:s3cret@127.0.0.1:{port}/nothing"
    line = error_of(search_argv(tmp_path, url, 1), capsys, search_augment.main)
    assert line.startswith(f"error: cannot open the study in --storage postgresql+psycopg://search:***@127.0.0.1:{port}")
    assert "s3cret" not in line


def test_dashboard_serves_a_postgres_study_page_that_chromium_renders(postgres, tmp_path):
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    needs("Debian's chromium-headless-shell", browser)
    url = postgres.new_database("dashboard")
    study = optuna.create_study(study_name="fashion-moco-search", storage=url, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("crop_scale_min", 0.08, 1.0), n_trials=3)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-u", str(DOOR), "--dashboard", "--storage", url, "--port", str(port)],
                              cwd=tmp_path, stdout=open(tmp_path / "dashboard.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while "Listening on" not in (tmp_path / "dashboard.log").read_text() and time.time() < deadline:
            assert server.poll() is None, (tmp_path / "dashboard.log").read_text()
            time.sleep(0.2)
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}"
        chromium = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}",
                    "--virtual-time-budget=15000", "--window-size=1280,800"]  # the budget lets its scripts fetch
        dom = subprocess.run([*chromium, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        shot = tmp_path / "study.png"
        subprocess.run([*chromium, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    finally:
        server.terminate()
        server.wait()
    assert "optuna-dashboard: the studies in " + url in (tmp_path / "dashboard.log").read_text()
    assert "fashion-moco-search" in dom and "History" in dom  # the study's own page, its history plot drawn
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (800, 1280) and image.std() > 20  # not a blank page
    assert len({tuple(p) for p in image.reshape(-1, 3)[::7]}) > 50  # text, plot lines and markers


def test_dashboard_of_a_missing_sqlite_file_is_one_line(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'no-such.db'}"
    line = error_of(["--dashboard", "--storage", storage], capsys, search_augment.main)
    assert line == f"error: --storage {storage}: no such database file (a search creates it)"
    assert not (tmp_path / "no-such.db").exists()
