"""search_augment.py: a tiny Optuna search and grid on synthetic, end to end, through the real SQLite storage."""
import json
import re
from datetime import datetime, timedelta
import shutil
import signal
import time

import numpy as np
import optuna
import pytest
from conftest import TINY_SEARCH, error_of, sheet_rows, start_search

import search_augment
import training
import augmentations as aug
from augmentations import policy_from_json
from cli import UserError

def search_argv(tmp_path, trials, *extra):
    return [*TINY_SEARCH, "--trials", str(trials), "--storage", f"sqlite:///{tmp_path / 'search.db'}", "--study", "t",
            "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.xlsx"), *extra]


def trials(tmp_path):
    return optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'search.db'}").trials


def states(tmp_path):
    return [t.state.name for t in trials(tmp_path)]


def test_tiny_search_end_to_end_writes_best_policy_plots_and_search_sheet(tmp_path, capsys, recwarn):
    search_augment.main(search_argv(tmp_path, 3))
    optuna_warnings = [w for w in recwarn if "optuna" in w.filename or w.category is optuna.exceptions.ExperimentalWarning]
    assert not optuna_warnings, [str(w.message) for w in optuna_warnings]  # they used to end the search's output
    assert states(tmp_path).count("COMPLETE") + states(tmp_path).count("PRUNED") == 3
    best = tmp_path / "out" / "best.json"
    assert policy_from_json(str(best))[0].name == "crop"  # usable as --aug best.json
    assert (tmp_path / "out" / "history.png").stat().st_size > 1000
    trial_runs = sorted((tmp_path / "out" / "runs").glob("trial-*"))
    assert len(trial_runs) == 3 and not list((tmp_path / "out" / "runs").glob("trial-*/*.pth"))  # no gigabytes
    assert all((run / "log.csv").exists() for run in trial_runs)
    trials = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted(r["trial"] for r in trials) == [0, 1, 2] and all(r["study"] == "t" for r in trials)
    out = capsys.readouterr().out
    assert "proxy (validation kNN top-1): best" in out and "ratio" in out and "test re-check" in out
    assert "trials/hour; pruning saved" in out
    rows_before = len(sheet_rows(tmp_path / "r.xlsx"))  # a pruned trial writes no runs row: TPE's draws decide
    search_augment.main(search_argv(tmp_path, 3))  # a finished study used to run one more trial
    out = capsys.readouterr().out
    assert "has finished 3 of --trials 3: no trial to run" in out and len(states(tmp_path)) == 3
    assert "test re-check" in out and len(sheet_rows(tmp_path / "r.xlsx")) == rows_before  # kept, not rerun
    runs = sheet_rows(tmp_path / "r.xlsx")
    assert any("validation images" in r["data"] for r in runs) and any("test images" in r["data"] for r in runs)
    # the best policy trains with the MoCo door
    import moco_augmented
    moco_augmented.main(["--dataset", "synthetic", "--subset", "32", "--batch-size", "16", "--moco-k", "32",
                         "--bn-splits", "2", "--workers", "0", "--epochs", "1", "--linear-epochs", "0", "--aug",
                         str(best), "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "moco")])
    assert json.loads(sheet_rows(tmp_path / "r.xlsx")[-1]["policy"]) == json.loads(best.read_text())


def test_a_search_killed_in_its_test_recheck_finishes_it_when_rerun(tmp_path, capsys, monkeypatch):
    train = training.run

    def killed_at_the_recheck(method, options, **kwargs):
        if "best-test" in options.results_dir:
            raise KeyboardInterrupt
        return train(method, options, **kwargs)

    monkeypatch.setattr(training, "run", killed_at_the_recheck)
    with pytest.raises(KeyboardInterrupt):
        search_augment.main(search_argv(tmp_path, 1))
    monkeypatch.setattr(training, "run", train)
    capsys.readouterr()
    search_augment.main(search_argv(tmp_path, 1))  # used to say "nothing to run" and never re-check
    assert "test re-check: best" in capsys.readouterr().out
    assert all("test images" in r["data"] for r in sheet_rows(tmp_path / "r.xlsx")[-2:])


def test_a_trial_below_the_bar_is_pruned_and_recorded_once(tmp_path):
    search_augment.main(search_argv(tmp_path, 2, "--prune-below", "101"))  # no kNN reaches 101%: every trial pruned
    assert states(tmp_path) == ["PRUNED", "PRUNED"]
    trials = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["trial"], r["state"]) for r in trials) == [(0, "PRUNED"), (1, "PRUNED")]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the trials are told by hand, not optimize()
def test_a_search_whose_proxy_reads_knn_every_2_epochs_prunes_on_the_readings_it_has(tmp_path):
    search_augment.main(search_argv(tmp_path, 2, "--epochs", "3", "--knn-every", "2"))
    assert states(tmp_path) in (["COMPLETE", "COMPLETE"], ["COMPLETE", "PRUNED"])  # it used to fail at epoch 1
    assert all(step in (2, 3) for t in trials(tmp_path) for step in t.intermediate_values)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask/tell here
def test_no_prune_keeps_the_trials_that_halving_prunes(tmp_path):
    """The search's own study, trials told by hand: each scores worse after epoch 1 than every trial before it, so
    SuccessiveHalving (reduction factor 4) stops those that are not among the best quarter; --no-prune stops none."""
    def pruned(name, *extra):
        (tmp_path / name).mkdir()
        study = search_augment.open_study(search_augment.parse_args(search_argv(tmp_path / name, 1, *extra))[1])
        verdicts = []
        for score in (80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 20.0, 10.0):
            trial = study.ask()
            trial.report(score, 1)
            verdicts.append(trial.should_prune())
            trial.report(score, 2)
            study.tell(trial, score)
        return verdicts

    assert any(pruned("halving"))
    assert not any(pruned("no-prune", "--no-prune"))


def test_grid_gives_one_row_per_spec_and_seed_and_skips_finished_ones(tmp_path, capsys):
    argv = [*TINY_SEARCH[:-2], "--knn-every", "0", "--grid", "original", "ours", "--seeds", "2", "--out",
            str(tmp_path / "grid"), "--results", str(tmp_path / "r.xlsx")]
    search_augment.main(argv)
    rows = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["spec"], r["seed"]) for r in rows) == [("original", 0), ("original", 1), ("ours", 0), ("ours", 1)]
    table = (tmp_path / "grid" / "grid.md").read_text()
    assert "| original | 2 |" in table and "±" in table and (tmp_path / "grid" / "grid_knn.png").exists()
    setting = "supervised on synthetic: study supervised-synthetic, epochs 1, batch 16, crop 16, width 0.25"
    assert table.startswith(setting)  # what the runs share, above the table
    assert "| kNN final vs original (95% CI) |" in table.splitlines()[2]
    ours = next(line for line in table.splitlines() if line.startswith("| ours |"))
    assert re.search(r"\| [+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]( \*)? \|", ours)  # 2 seed pairs
    search_augment.main(argv)  # the same command again: nothing reruns
    assert len(sheet_rows(tmp_path / "r.xlsx", "search")) == 4 and "skipped" in capsys.readouterr().out


def test_a_grid_rerun_without_its_run_folders_skips_and_still_plots_every_curve(tmp_path, capsys):
    """A fresh clone has grid.json and the workbook but no runs/ folders (not committed): the rerun read each run's
    log.csv for the plot and stopped with a traceback. The curves come from the workbook's curves sheet."""
    argv = [*TINY_SEARCH[:-2], "--knn-every", "1", "--grid", "original", "ours", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "r.xlsx")]
    search_augment.main(argv)
    shutil.rmtree(tmp_path / "grid" / "runs")
    search_augment.main(argv)
    assert "skipped" in capsys.readouterr().out
    knn = {row["run_id"]: row["knn_top1"] for row in sheet_rows(tmp_path / "r.xlsx", "curves")}
    done = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert search_augment.grid_curves(done, ["original", "ours"], tmp_path / "r.xlsx") == {
        spec: {1: knn[done[f"{spec} seed 0"]["run_id"]]} for spec in ("original", "ours")}


def test_a_grid_killed_between_a_runs_row_and_grid_json_takes_the_row_on_the_rerun(tmp_path, capsys):
    """It used to resume the finished run, which stopped with 'nothing to do' on every rerun of the grid."""
    argv = [*TINY_SEARCH[:-2], "--knn-every", "0", "--grid", "original", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "r.xlsx")]
    search_augment.main(argv)
    grid_json = tmp_path / "grid" / "grid.json"
    finished = json.loads(grid_json.read_text())
    grid_json.write_text("{}")  # the kill's state: the run's row and recorded.json written, grid.json not yet
    capsys.readouterr()
    search_augment.main(argv)
    assert "finished before (run r0001), taken from" in capsys.readouterr().out
    assert json.loads(grid_json.read_text()) == finished
    assert [r["run_id"] for r in sheet_rows(tmp_path / "r.xlsx")] == ["r0001"]  # not trained or recorded again


def test_a_grid_rerun_with_other_options_into_the_same_out_is_refused_before_it_trains(tmp_path, capsys):
    """It skipped the finished runs by spec and seed alone, and grid.md put the new --epochs over the old runs."""
    argv = [*TINY_SEARCH[:-2], "--knn-every", "0", "--grid", "original", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "r.xlsx")]
    search_augment.main(argv)
    line = error_of([*argv, "--epochs", "2", "--seeds", "2"], capsys, search_augment.main)
    assert "holds original seed 0 trained with --epochs 1, not 2: give this grid its own --out" in line
    assert len(sheet_rows(tmp_path / "r.xlsx")) == 1  # seed 1 did not run either


def test_grid_table_says_over_how_many_pairs_when_a_seed_has_no_partner():
    done = {f"{label} seed {seed}": dict(label=label, seed=seed, knn_top1_final=knn, knn_top1_best=knn,
                                         linear_top1=None) for label, seed, knn in [
        ("original", 0, 80.0), ("original", 1, 81.0), ("ours", 0, 82.0), ("ours", 1, 84.0), ("ours", 2, 90.0)]}
    ours = search_augment.grid_table(done, ["original", "ours"], "original").splitlines()[3]
    # differences 2 and 3 (seed 2 has no original): mean 2.5, t(0.975, 1) x 0.7071 / sqrt 2 = 6.353
    assert ours.startswith("| ours | 3 | 85.33 ± 4.16 |") and "+2.50 [-3.85, +8.85] (2 pairs) |" in ours


def test_grid_md_names_the_mixing(tmp_path):
    """A --mix grid's grid.md read like a plain grid's: nothing in it said the runs mixed."""
    moco = ["--method", "moco", *TINY_SEARCH[2:], "--moco-k", "32", "--bn-splits", "2", "--knn-every", "0",
            "--grid", "ours", "--results", str(tmp_path / "r.xlsx")]
    search_augment.main([*moco, "--mix", "imix", "--out", str(tmp_path / "imix")])
    assert (tmp_path / "imix" / "grid.md").read_text().splitlines()[0].endswith(", mix imix")


def test_a_policy_file_in_a_grid_runs_in_a_folder_named_after_it(tmp_path, capsys):
    policy = tmp_path / "policies" / "searched.json"  # as the search's best.json, copied where the study keeps it
    policy.parent.mkdir()
    policy.write_text(aug.policy_to_json(aug.resolve_policy("ours-clahe", 16)))
    argv = [*TINY_SEARCH[:-2], "--knn-every", "0", "--grid", "original", str(policy), "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "r.xlsx")]
    search_augment.main(argv)
    assert sorted(p.name for p in (tmp_path / "grid" / "runs").iterdir()) == ["original-seed0", "searched-seed0"]
    assert sheet_rows(tmp_path / "r.xlsx")[-1]["aug"] == str(policy)  # the row names the file it trained with
    clash = [*argv[:-4], str(tmp_path / "searched.json"), *argv[-4:]]  # two policy files named searched.json
    assert "would share a run folder" in error_of(clash, capsys, search_augment.main)


def test_bad_options_are_one_line(tmp_path, capsys):
    assert "--trials" in error_of(search_argv(tmp_path, 0), capsys, search_augment.main)
    assert "nosuchop" in error_of([*search_argv(tmp_path, 1), "--base", "ours+nosuchop"], capsys, search_augment.main)
    line = error_of([*search_argv(tmp_path, 1), "--resume", "x.pth"], capsys, search_augment.main)
    assert "a search or grid continues when the same command is run again" in line  # it used to record a FAIL trial
    # a bad last spec used to fail only after the first spec had trained and been recorded in full
    grid = [*TINY_SEARCH, "--grid", "original", "nosuch", "--out", str(tmp_path / "grid"), "--results", str(tmp_path / "r.xlsx")]
    assert "nosuch" in error_of(grid, capsys, search_augment.main)
    assert not (tmp_path / "r.xlsx").exists() and not (tmp_path / "grid").exists()
    line = error_of([*TINY_SEARCH, "--grid", "original", "ours", "--reference", "ours-clahe"], capsys, search_augment.main)
    assert "--reference ours-clahe is not one of the --grid specs" in line
    assert "--reference compares" in error_of([*search_argv(tmp_path, 1), "--reference", "ours"], capsys,
                                              search_augment.main)


def test_an_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("kept")
    under_file = ["--out", str(tmp_path / "file" / "out"), "--results", str(tmp_path / "r.xlsx")]
    assert "cannot create --out" in error_of([*TINY_SEARCH, "--grid", "ours", *under_file], capsys, search_augment.main)
    search = [*TINY_SEARCH, "--trials", "1", "--storage", f"sqlite:///{tmp_path / 'search.db'}", *under_file]
    assert "cannot create --out's trials directory" in error_of(search, capsys, search_augment.main)
    assert (tmp_path / "file").read_text() == "kept" and not (tmp_path / "r.xlsx").exists()


def test_the_reference_spec_runs_first():
    options = search_augment.parse_args([*TINY_SEARCH, "--grid", "original", "ours", "ours-clahe", "--reference", "ours"])[1]
    assert options.grid == ["ours", "original", "ours-clahe"] and options.reference == "ours"
    assert search_augment.parse_args([*TINY_SEARCH, "--grid", "ours-clahe", "ours"])[1].reference == "ours-clahe"


def test_a_proxy_that_cannot_run_stops_the_search_with_one_line_after_one_failed_trial(tmp_path, capsys):
    line = error_of(search_argv(tmp_path, 3, "--batch-size", "1000"), capsys, search_augment.main)
    assert "the proxy run cannot start" in line and "--batch-size 1000" in line
    assert states(tmp_path) == ["FAIL"]
    assert [(r["trial"], r["state"]) for r in sheet_rows(tmp_path / "r.xlsx", "search")] == [(0, "FAIL")]


def test_a_diverging_trial_is_failed_and_the_search_goes_on(tmp_path, capsys):
    search_augment.main(search_argv(tmp_path, 2, "--lr", "1e30"))  # every policy diverges at this lr
    assert states(tmp_path) == ["FAIL", "FAIL"]
    assert "note: trial 1 failed: loss became" in capsys.readouterr().out


def test_a_killed_search_resumes_and_its_killed_trial_is_failed_then_retried(tmp_path):
    argv = search_argv(tmp_path, 3, "--heartbeat", "1")
    process = start_search(argv, tmp_path, "killed.log")
    second_trial = tmp_path / "out" / "trials" / "trial-0001.json"  # written as trial 1 starts
    deadline = time.time() + 240
    while not second_trial.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert states(tmp_path)[:2] in (["COMPLETE", "RUNNING"], ["PRUNED", "RUNNING"])
    time.sleep(5)  # 3 missed heartbeats make it stale; SQLite's clock has whole seconds, so 3.5 s can read as 3
    search_augment.main(argv)  # the same command again
    study = trials(tmp_path)
    assert [t.state.name for t in study][1] == "FAIL"
    retried = [t for t in study if t.system_attrs.get("failed_trial") == 1]  # RetryHeartbeatStaleTrialCallback's mark
    assert len(retried) == 1 and retried[0].params == study[1].params and retried[0].state.name != "RUNNING"
    # the resumed process draws policies of its own, not trial 0's again (its retry repeats trial 1's, as it should)
    assert len({json.dumps(t.params, sort_keys=True) for t in study if t.number != 1}) == len(study) - 1
    # the killed trial is replaced by its retry, so it does not count toward --trials 3: four trials finish
    assert sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in study) == 4 and len(study) == 4
    rows = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["trial"], r["state"]) for r in rows) == sorted((t.number, t.state.name) for t in study)


def test_an_interrupted_trial_is_failed_in_the_sheet_retried_once_and_not_counted(tmp_path):
    argv = search_argv(tmp_path, 2, "--epochs", "4")  # long enough a trial to be inside it when Ctrl-C comes
    process = start_search(argv, tmp_path, "interrupted.log")
    first_epoch = tmp_path / "out" / "runs" / "trial-0000" / "log.csv"  # written after the trial's first epoch
    deadline = time.time() + 240
    while not first_epoch.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # Ctrl-C in the user's terminal
    assert process.wait(timeout=120) == 130, (tmp_path / "interrupted.log").read_text()[-2000:]
    assert states(tmp_path) == ["FAIL", "WAITING"]  # it used to be FAIL alone, never retried, counted as done
    assert [(r["trial"], r["state"]) for r in sheet_rows(tmp_path / "r.xlsx", "search")] == [(0, "FAIL")]
    search_augment.main(argv)  # the same command again: the retry, then one more trial
    study = trials(tmp_path)
    assert study[1].system_attrs.get("failed_trial") == 0 and study[1].params == study[0].params
    assert [t.state.name for t in study][0] == "FAIL" and len(study) == 3
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study[1:])
    rows = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["trial"], r["state"]) for r in rows) == sorted((t.number, t.state.name) for t in study)


def test_two_processes_on_one_sqlite_study_record_every_trial_exactly_once(tmp_path):
    argv = search_argv(tmp_path, 4)
    processes = [start_search(argv, tmp_path, f"p{i}.log") for i in range(2)]
    for i, process in enumerate(processes):
        assert process.wait(timeout=600) == 0, (tmp_path / f"p{i}.log").read_text()[-2000:]
    study = trials(tmp_path)
    assert len(study) >= 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study)
    # TPE's first policies are random draws that ignore the study: seeded by --seed alone, both drew the same ones
    assert len({json.dumps(t.params, sort_keys=True) for t in study}) == len(study)
    rows = sheet_rows(tmp_path / "r.xlsx", "search")
    assert sorted((r["trial"], r["state"]) for r in rows) == sorted((t.number, t.state.name) for t in study)
    # both processes ended with the summary (best policy, base, test re-check)
    logs = [(tmp_path / f"p{i}.log").read_text() for i in range(2)]
    assert all("best policy" in log for log in logs)


def test_study_cost_counts_trials_per_hour_and_the_epochs_pruning_saved():
    study, start = optuna.create_study(), datetime(2026, 11, 30, 12)
    for state, epochs_run, minutes in [("COMPLETE", 4, 10), ("PRUNED", 1, 5), ("PRUNED", 2, 5)]:
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=optuna.trial.TrialState[state], value=1.0 if state == "COMPLETE" else None,
            datetime_start=start, datetime_complete=start + timedelta(minutes=minutes), params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={e: 1.0 for e in range(1, epochs_run + 1)}))
    line = search_augment.study_cost(study, 4)
    # 3 trials in 20 minutes: 9 an hour; 4 + 1 + 2 = 7 of 3 x 4 = 12 epochs run: 5/12 = 42% saved
    assert "3 finished trials in 20.0 min" in line and "9.0 trials/hour" in line and "saved 42% of the 12" in line


def test_a_moco_proxy_trains_at_constant_lr_unless_told(tmp_path):
    """The demo's cosine puts the last of the proxy's 3 epochs at lr 0; the search's proxy uses constant lr."""
    moco = ["--method", "moco", *TINY_SEARCH[2:], "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    assert search_augment.parse_args(moco)[1].cos is False
    assert search_augment.parse_args([*moco, "--cos"])[1].cos is True
    assert search_augment.parse_args([*moco, "--grid", "ours"])[1].cos is True  # the grid keeps the recipe's schedule


def test_the_search_proxy_trains_3_epochs_and_scores_a_tenth_of_the_training_set_unless_told(tmp_path):
    bare = ["--dataset", "synthetic", "--trials", "1"]  # README: at 2 epochs MoCo's ranking of specs was reversed
    assert (search_augment.parse_args(bare)[1].epochs, search_augment.parse_args(bare)[1].val_size) == (3, 0.1)
    assert search_augment.parse_args([*bare, "--val-size", "250"])[1].val_size == 250
    assert search_augment.parse_args([*bare, "--grid", "ours"])[1].val_size == 0  # the grid scores on the test set


def test_the_search_proxy_scores_with_20_neighbours_unless_told(tmp_path):
    assert search_augment.parse_args(search_argv(tmp_path, 1))[1].knn_k == 20
    assert search_augment.parse_args([*search_argv(tmp_path, 1), "--knn-k", "7"])[1].knn_k == 7
    assert search_augment.parse_args([*TINY_SEARCH, "--grid", "ours"])[1].knn_k == 200  # the grid keeps the monitor's


# --- the search space: flat Optuna parameters laid over a base policy ---------------------------------------

def test_search_space_lies_in_the_valid_ranges_and_holds_the_defaults():
    assert set(search_augment.SEARCH_SPACE) == set(aug.SEED_OPS) | {"blur"}
    for name, space in search_augment.SEARCH_SPACE.items():
        default_p, params = aug.OPS[name]
        for param, choices in space.items():
            if param == "on":
                assert choices == (False, True)
                continue
            low, high = choices
            valid_low, valid_high = (0, 1) if param == "p" else params[param][1:]
            assert valid_low <= low < high and (valid_high is None or high <= valid_high), (name, param)
            default = default_p if param == "p" else params[param][0]
            assert low <= default <= high, (name, param)


def sample_params(rng):
    """What an Optuna trial suggests: a value for every key of SEARCH_SPACE, plus unrelated hyper-parameters."""
    params = {"lr": 0.1, "batch_size": 256}
    for name, space in search_augment.SEARCH_SPACE.items():
        for param, choices in space.items():
            params[f"{name}.{param}"] = bool(rng.integers(2)) if param == "on" else float(rng.uniform(*choices))
    return params


def test_policy_from_params():
    policy = search_augment.policy_from_params({"solarize.on": True, "solarize.p": 0.3, "gray.on": False, "gray.p": 0.4,
                                     "jitter.strength": 0.7, "crop.scale_min": 0.2, "lr": 0.03})
    assert aug.op_names(policy) == ["crop", "jitter", "flip", "solarize"]
    assert policy[0].params["scale_min"] == 0.2 and policy[1].params["strength"] == 0.7
    assert policy[3] == aug.Op("solarize", 0.3, {"threshold": 0.5})
    assert search_augment.policy_from_params({}, base="ours", size=96) == aug.resolve_policy("ours", 96)
    assert aug.op_names(search_augment.policy_from_params({"blur.on": True}, base="simclr", size=32))[-1] == "blur"
    with pytest.raises(UserError, match="clahe.clip is given but 'original' has no clahe: switch it on"):
        search_augment.policy_from_params({"clahe.clip": 2.0})
    with pytest.raises(UserError, match="a probability"):
        search_augment.policy_from_params({"flip.p": 1.5})
    with pytest.raises(UserError, match="unknown parameter 'strength' of flip"):
        search_augment.policy_from_params({"flip.strength": 1.0})
    with pytest.raises(UserError, match="solarize.on must be True or False"):
        search_augment.policy_from_params({"solarize.on": "yes"})
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for _ in range(20):
        params = sample_params(rng)
        policy = search_augment.policy_from_params(params)
        on = [name for name in search_augment.SEARCH_SPACE if params.get(f"{name}.on", True)]
        assert sorted(aug.op_names(policy)) == sorted(on)
        assert aug.policy_from_json(aug.policy_to_json(policy)) == policy
        assert aug.build_transform(policy, 32)(image=image)["image"].shape == (3, 32, 32)
