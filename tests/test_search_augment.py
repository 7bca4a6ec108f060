"""search_augment.py: a tiny Optuna search and grid on synthetic, end to end, through the real SQLite storage."""
import json

import optuna
import pytest
from conftest import sheet_rows

import search_augment
from augmentations import policy_from_json

TINY = ["--method", "supervised", "--dataset", "synthetic", "--subset", "48", "--batch-size", "16", "--workers", "0",
        "--epochs", "1", "--val-size", "40"]


def search_argv(tmp_path, trials, *extra):
    return [*TINY, "--trials", str(trials), "--storage", f"sqlite:///{tmp_path / 'search.db'}", "--study", "t",
            "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.xlsx"), *extra]


def states(tmp_path):
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'search.db'}")
    return [t.state.name for t in study.trials]


def test_tiny_search_end_to_end_writes_best_policy_plots_and_search_sheet(tmp_path, capsys):
    search_augment.main(search_argv(tmp_path, 3))
    assert states(tmp_path).count("COMPLETE") + states(tmp_path).count("PRUNED") == 3
    best = tmp_path / "out" / "best.json"
    assert policy_from_json(str(best))[0].name == "crop"  # usable as --aug best.json
    assert (tmp_path / "out" / "history.png").stat().st_size > 1000
    trials = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted(r["trial"] for r in trials) == [0, 1, 2] and all(r["study"] == "t" for r in trials)
    out = capsys.readouterr().out
    assert "proxy (validation kNN top-1): best" in out and "ratio" in out and "test re-check" in out
    runs = sheet_rows(tmp_path / "r.xlsx")
    assert any("validation images" in r["data"] for r in runs) and any("test images" in r["data"] for r in runs)
    # the best policy trains with the MoCo door
    import moco_augmented
    moco_augmented.main(["--dataset", "synthetic", "--subset", "32", "--batch-size", "16", "--moco-k", "32",
                         "--bn-splits", "2", "--workers", "0", "--epochs", "1", "--linear-epochs", "0", "--aug",
                         str(best), "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "moco")])
    assert json.loads(sheet_rows(tmp_path / "r.xlsx")[-1]["policy"]) == json.loads(best.read_text())


def test_a_trial_below_the_bar_is_pruned_and_recorded_once(tmp_path):
    search_augment.main(search_argv(tmp_path, 2, "--prune-below", "101"))  # no kNN reaches 101%: every trial pruned
    assert states(tmp_path) == ["PRUNED", "PRUNED"]
    trials = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["trial"], r["state"]) for r in trials) == [(0, "PRUNED"), (1, "PRUNED")]


def test_rerunning_the_same_command_resumes_the_study(tmp_path):
    search_augment.main(search_argv(tmp_path, 1))
    search_augment.main(search_argv(tmp_path, 2))  # the same study, one trial more
    assert len(states(tmp_path)) == 2
    assert sorted(r["trial"] for r in sheet_rows(tmp_path / "r.xlsx", "search")) == [0, 1]


def test_grid_gives_one_row_per_spec_and_seed_and_skips_finished_ones(tmp_path, capsys):
    argv = [*TINY[:-2], "--knn-every", "0", "--grid", "original", "ours", "--seeds", "2", "--out",
            str(tmp_path / "grid"), "--results", str(tmp_path / "r.xlsx")]
    search_augment.main(argv)
    rows = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["spec"], r["seed"]) for r in rows) == [("original", 0), ("original", 1), ("ours", 0), ("ours", 1)]
    table = (tmp_path / "grid" / "grid.md").read_text()
    assert "| original | 2 |" in table and "±" in table and (tmp_path / "grid" / "grid_knn.png").exists()
    search_augment.main(argv)  # the same command again: nothing reruns
    assert len(sheet_rows(tmp_path / "r.xlsx", "search")) == 4 and "skipped" in capsys.readouterr().out


def test_bad_options_are_one_line(tmp_path, capsys):
    from conftest import error_of
    assert "--trials" in error_of(search_argv(tmp_path, 0), capsys, search_augment.main)
    assert "nosuchop" in error_of([*search_argv(tmp_path, 1), "--base", "ours+nosuchop"], capsys, search_augment.main)
