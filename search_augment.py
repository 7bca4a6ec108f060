"""Augmentation search (Optuna) and grids over augmentation specs, on short proxy runs of the one run path.

    # search: TPE over the ops of SEARCH_SPACE, pruned on the per-epoch validation kNN
    python search_augment.py --method moco --dataset synthetic --subset 256 --epochs 2 --trials 4 \
        --storage sqlite:///search.db --study demo --out search-demo --results results.xlsx
    # grid: every spec with N seeds, mean ± std, plus the random-init and raw-pixel baselines
    python search_augment.py --method moco --dataset synthetic --epochs 2 --grid original ours ours-clahe --seeds 2 \
        --baselines --out grid-demo
    # the studies in a storage as a web page (optuna-dashboard), while searches run
    python search_augment.py --dashboard --storage sqlite:///search.db --port 8080

A search scores each trial by kNN top-1 on a validation split carved from the training set (--val-size, seeded and
stratified), never on the test set; the test set is read once at the end, to re-check the best policy against the
base. The study lives in an Optuna storage: several processes (or machines sharing a PostgreSQL URL) running the same
command work on one study, and a killed search continues when the command is run again.
"""
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import training
from augmentations import (OPS, Policy, add_op, check_policy, names_of, policy_to_json, remove_op, resolve_policy,
                           set_value)
from checkpoints import RECORDED, RESUME_MAY_CHANGE
from cli import ArgumentParser, UserError, make_dirs, parse_with_given, run_main
from datasets import check_crop_size, dataset_info
from methods import METHODS, RawPixels, get_method
from results import append_search_trials, knn_curves
from stats import mean_std, paired_difference
from run_options import add_run_options

SCRIPT = Path(__file__).name  # recorded in the workbook rows


def search_parser():
    """The search's and grid's own options; every other option is each proxy run's (run_options)."""
    p = ArgumentParser(add_help=False)
    own = p.add_argument_group("search and grid", "the search's own options; the others are each proxy run's")
    own.add_argument("--method", default="moco", choices=[name for name in METHODS if name != "pixels"])
    own.add_argument("--trials", type=int, default=20, help="trials of the study in all (over every process)")
    own.add_argument("--storage", default="sqlite:///search.db", help="Optuna storage URL (SQLite, PostgreSQL, ...)")
    own.add_argument("--out", default=None, help="folder for trial policies, runs, plots, best.json; None: search-<study>")
    own.add_argument("--prune-below", type=float, default=None, metavar="SCORE",
                     help="also prune a trial whose validation kNN top-1 falls below SCORE at any epoch")
    own.add_argument("--no-prune", action="store_true",
                     help="no SuccessiveHalving pruning (--prune-below still applies): for a proxy whose first epochs "
                          "rank policies unlike its last, as MoCo's do on Fashion-MNIST (README)")
    own.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                     help="SQL storages: a trial silent for 3 heartbeats (a killed process) is failed and retried once")
    own.add_argument("--dashboard", action="store_true",
                     help="serve the studies in --storage as optuna-dashboard's web page (runs no search)")
    own.add_argument("--host", default="127.0.0.1", help="--dashboard: address to serve on (0.0.0.0: every one)")
    own.add_argument("--port", type=int, default=8080, help="--dashboard: port to serve on")
    own.add_argument("--base", default="original", help="the policy the search space is laid over and compared with")
    own.add_argument("--grid", nargs="+", default=None, metavar="SPEC", help="evaluate these specs instead of searching")
    own.add_argument("--seeds", type=int, default=1, help="grid: seeds per spec (0, 1, ...)")
    own.add_argument("--reference", default=None, metavar="SPEC",
                     help="grid: the spec every other is compared with, seed by seed (default: the first; it runs first)")
    own.add_argument("--baselines", action="store_true",
                     help="grid: also the network at initialisation and raw pixels, on the same protocol")
    return p


SEARCH_OPTIONS = [action.dest for action in search_parser()._actions]  # stripped from a proxy run's options


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    search = search_parser()
    method = get_method(search.parse_known_args(argv)[0].method)
    p = add_run_options(ArgumentParser(description=__doc__.split("\n")[0], parents=[search]), method)
    p.set_defaults(study=None)  # the run option --study names the Optuna study too; None: <method>-<dataset>
    p.set_defaults(epochs=3, batch_size=64, linear_epochs=0, knn_every=1)  # the proxy's budget (README: why 3)
    for action in p._actions:  # these two defaults depend on the mode, which --help must say
        if action.dest == "knn_k":
            action.help = "kNN neighbours (default: 20 for a search's proxy, 200 with --grid, the monitor's protocol)"
        elif action.dest == "val_size":
            action.help = ("labelled training images held out for scoring, a number or a fraction (default: 0.1 for a "
                           "search; 0 with --grid, which scores on the test set)")
    options, given = parse_with_given(p, argv)
    if "resume" in given:
        raise UserError("--resume continues one run; a search or grid continues when the same command is run again")
    if options.grid is None:  # the search's proxy score; the grid keeps the monitor's protocol unless asked
        if "val_size" not in given:
            options.val_size = 0.1  # narrower gaps than a few hundred images resolve; the grid scores on the test set
        if "knn_k" not in given:
            options.knn_k = 20  # the demo's 200 neighbours are most of a proxy's small memory bank: every vote alike
        if method.lr_per_epoch and not given & {"cos", "schedule"}:
            options.cos = False  # MoCo's demo cosine trains the last of 3 proxy epochs at lr 0: a third of the budget
    options.study = options.study or f"{method.name}-{options.dataset}"
    options.out = Path(options.out or f"search-{options.study}")
    if options.trials < 1 or options.seeds < 1 or options.heartbeat < 1:
        raise UserError("--trials, --seeds and --heartbeat must be >= 1")
    if options.grid is not None:
        options.reference = options.reference or options.grid[0]
        if options.reference not in options.grid:
            raise UserError(f"--reference {options.reference} is not one of the --grid specs ({' '.join(options.grid)})")
        options.grid = [options.reference, *(spec for spec in options.grid if spec != options.reference)]
        folders = [run_folder(spec) for spec in options.grid]
        if len(set(folders)) < len(folders):
            raise UserError(f"two --grid specs would share a run folder ({' '.join(folders)}): rename a policy file")
    elif options.reference is not None:
        raise UserError("--reference compares the specs of a --grid")
    return method, options


def run_options(options, **changes):
    """The options of one proxy run: the search's own options dropped, the run's set."""
    opts = copy.copy(options)
    for name in SEARCH_OPTIONS:
        delattr(opts, name)
    for name, value in changes.items():
        setattr(opts, name, value)
    return opts


# ---------------------------------------------------------------- grid

def run_folder(label):
    """A grid entry's folder name under OUT/runs: a spec, a baseline, or a policy file by its name without .json."""
    return (Path(label).stem if label.endswith(".json") else label).replace(" ", "_")


def grid(method, options):
    """Every spec x seed (and the baselines), each run once: a rerun of the same command skips the finished ones."""
    size = check_crop_size(dataset_info(options.dataset), options.crop_size)
    for spec in options.grid:  # every spec before the first run: a typo in the last must not cost the others' time
        resolve_policy(spec, size)
    out, done_path = options.out, options.out / "grid.json"
    make_dirs(out, "--out")
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    jobs = [(method, spec, seed, {}) for spec in options.grid for seed in range(options.seeds)]
    if options.baselines:
        jobs += [(method, "random init", seed, {"epochs": 0, "aug": "eval"}) for seed in range(options.seeds)]
        jobs += [(RawPixels, "raw pixels", 0, {"epochs": 0, "aug": "eval", "linear_protocol": "probe"})]
    check_done_runs_match(done, options, jobs)
    for number, (job_method, label, seed, changes) in enumerate(jobs):
        key = f"{label} seed {seed}"
        if key in done:
            print(f"grid: {key} done before (run {done[key]['run_id']}), skipped")
            continue
        run_dir = out / "runs" / f"{run_folder(label)}-seed{seed}"
        opts = run_options(options, **{"aug": label, "seed": seed, "results_dir": str(run_dir), **changes})
        recorded = run_dir / RECORDED
        record = json.loads(recorded.read_text()) if recorded.exists() else {}
        if "knn_top1_final" in record:  # killed after its row was written, before grid.json was: its row is the result
            print(f"grid: {key} finished before (run {record['run_id']}), taken from {recorded}")
        else:
            if (run_dir / "checkpoint_last.pth").exists():  # a killed run of this grid: continue it
                opts.resume = str(run_dir / "checkpoint_last.pth")
            record = training.run(job_method, opts, script=SCRIPT)
        done[key] = dict(label=label, seed=seed, run_id=record.get("run_id"), run_dir=str(run_dir),
                         knn_top1_final=record["knn_top1_final"], knn_top1_best=record["knn_top1_best"],
                         linear_top1=record["linear_top1"])
        write_atomically(done_path, json.dumps(done, indent=1))
        append_search_trials(options.results, [dict(
            study=options.study, trial=number, policy=record["policy"], proxy_score=record["knn_top1_final"],
            state="COMPLETE", seconds=record["wall_time_s"], method=job_method.name,
            dataset=options.dataset, spec=label, seed=seed)])
    table = grid_table(done, [*options.grid, *(["random init", "raw pixels"] if options.baselines else [])],
                       options.reference)
    (out / "grid.md").write_text(f"{grid_setting(method, options)}\n\n{table}\n")
    print(table)
    plot_grid_curves(grid_curves(done, options.grid, options.results), out / "grid_knn.png", options)
    return done


GRID_MAY_CHANGE = RESUME_MAY_CHANGE - {"precision", "study"}  # both are part of a grid's setting


def check_done_runs_match(done, options, jobs):
    """A finished run is skipped by its spec and seed alone: one trained with other options (another --epochs into
    the same --out) would stand in grid.md for a setting it never ran. Refused before anything trains."""
    for _, label, seed, changes in jobs:
        entry = done.get(f"{label} seed {seed}")
        args = Path(entry["run_dir"]) / "args.json" if entry else None
        if args is None or not args.exists():
            continue
        trained = json.loads(args.read_text())["starts"][0]["options"]
        wanted = json.loads(json.dumps(vars(run_options(options, **{"aug": label, "seed": seed, **changes})),
                                       default=str))
        for name in sorted(wanted.keys() & trained.keys() - GRID_MAY_CHANGE):
            if wanted[name] != trained[name] and not (name == "precision" and trained[name] == "auto"):  # per machine
                raise UserError(f"{options.out} holds {label} seed {seed} trained with --{name.replace('_', '-')} "
                                f"{trained[name]}, not {wanted[name]}: give this grid its own --out")


def write_atomically(path, text):
    """A kill mid-write leaves the old file whole, never half a JSON that every rerun would fail on."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def grid_setting(method, options):
    """grid.md's first line: what every run of the grid shares (two grids' tables can look alike otherwise)."""
    shared = dict(study=options.study, epochs=options.epochs, batch=options.batch_size, crop=options.crop_size,
                  width=options.width, lr=options.lr, precision=options.precision, mix=options.mix)
    return f"{method.name} on {options.dataset}: " + ", ".join(f"{k} {v}" for k, v in shared.items() if v is not None)


def grid_table(done, labels, reference):
    """Mean ± std over seeds, and each spec's paired difference from the reference (95% CI; * where it excludes 0)."""
    metrics = ("knn_top1_final", "knn_top1_best", "linear_top1")
    by_label = {label: {r["seed"]: r for r in done.values() if r["label"] == label} for label in labels}
    rows = [f"| spec | seeds | kNN top-1 final | kNN top-1 best | linear top-1 | kNN final vs {reference} "
            f"(95% CI) | linear vs {reference} (95% CI) |", "|---|---|---|---|---|---|---|"]
    for label, runs in by_label.items():
        cells = [mean_std([r[key] for r in runs.values()]) for key in metrics]
        for key in ("knn_top1_final", "linear_top1"):
            paired = None
            if label != reference:
                paired = paired_difference({s: r[key] for s, r in runs.items()},
                                           {s: r[key] for s, r in by_label.get(reference, {}).items()})
            cell = str(paired) if paired else ""
            if paired and 1 < paired.pairs < len(runs):  # a seed without a partner: over how many pairs, then
                cell += f" ({paired.pairs} pairs)"
            cells.append(cell)
        rows.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    rows += ["", f"vs {reference}: the mean over seeds of (spec - {reference}) on the same seed, with its 95% confidence "
                 "interval (Student t over the seed pairs); * where the interval excludes 0."]
    return "\n".join(rows)


def grid_curves(done, specs, results):
    """{spec: {epoch: kNN top-1, the mean over its seeds}} from the workbook's curves of each run (the run folders,
    with their log.csv, are not kept: a fresh clone has none)."""
    readings = knn_curves(results, [run["run_id"] for run in done.values()])
    curves = {}
    for spec in specs:
        by_epoch = {}
        for run in (r for r in done.values() if r["label"] == spec):
            for epoch, knn in readings.get(run["run_id"], {}).items():
                by_epoch.setdefault(int(epoch), []).append(knn)
        curves[spec] = {epoch: statistics.mean(by_epoch[epoch]) for epoch in sorted(by_epoch)}
    return curves


def plot_grid_curves(curves, path, options):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec, by_epoch in curves.items():
        ax.plot(list(by_epoch), list(by_epoch.values()), marker="o", label=spec)
    ax.set(xlabel="epoch", ylabel="kNN top-1 (%), mean over seeds",
           title=f"{options.dataset}: kNN top-1 by augmentation spec ({options.seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- search

# The default search space around the seed's 7 ops + blur, for an Optuna search: per op, "on": (False, True) when it
# may be switched off (crop always stays), every other key a (low, high) range of that value. As flat Optuna
# parameters: "solarize.on", "solarize.p", "solarize.threshold", ...; see policy_from_params.
SEARCH_SPACE = {
    "crop": {"scale_min": (0.08, 0.5)},
    "jitter": {"on": (False, True), "p": (0.0, 1.0), "strength": (0.0, 1.0), "hue": (0.0, 0.2)},
    "flip": {"on": (False, True), "p": (0.0, 0.5)},  # p and 1 - p flip equally often in effect
    "gray": {"on": (False, True), "p": (0.0, 0.5)},
    "blur": {"on": (False, True), "p": (0.0, 1.0), "sigma_max": (0.5, 3.0)},
    "solarize": {"on": (False, True), "p": (0.0, 0.5), "threshold": (0.3, 0.9)},
    "clahe": {"on": (False, True), "p": (0.0, 0.5), "clip": (1.0, 8.0)},
    "brightness_contrast": {"on": (False, True), "p": (0.0, 0.5), "limit": (0.0, 0.4)},
}


def policy_from_params(params: dict, base="original", size=32) -> Policy:
    """Flat search parameters {"solarize.on": True, "solarize.p": 0.3, ...} applied to the policy of spec `base`:
    "op.on" adds or removes the op (absent: as in base), the other "op.param" values set it. Values of an op switched
    off are ignored; keys that name no op (a trial's other hyper-parameters, such as "lr") are skipped."""
    policy = resolve_policy(base, size)
    switches = {key[: -len(".on")]: on for key, on in params.items() if key.endswith(".on")}
    switches = {name: on for name, on in switches.items() if name in OPS}
    for name, on in switches.items():
        if not isinstance(on, (bool, np.bool_)):
            raise UserError(f"{name}.on must be True or False, got {on!r}")
        if on != (name in names_of(policy)):
            (add_op if on else remove_op)(policy, name, f"{base}, {name}.on={on}")
    for key, value in params.items():
        name, _, param = key.partition(".")
        if name not in OPS or param == "on" or switches.get(name) is False:
            continue
        if name not in names_of(policy):
            raise UserError(f"{key} is given but {base!r} has no {name}: switch it on with {name}.on=True")
        set_value(policy[names_of(policy).index(name)], param, value, f"{key}={value}")
    check_policy(policy, "search parameters")
    return policy



def suggest_params(trial):
    """One point of SEARCH_SPACE: each op on/off (crop always on), then its p and magnitudes when on."""
    params = {}
    for op, space in SEARCH_SPACE.items():
        on = trial.suggest_categorical(f"{op}.on", [True, False]) if "on" in space else True
        params[f"{op}.on"] = on
        if on:
            for name, (low, high) in space.items():
                if name != "on":
                    params[f"{op}.{name}"] = trial.suggest_float(f"{op}.{name}", low, high)
    return params


def search(method, options):
    """Trials until the study has --trials (over every process), then the best policy against the base."""
    import optuna

    make_dirs(options.out / "trials", "--out's trials directory")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's outcome is printed here, in one line
    study = open_study(options)
    scored = "validation" if options.val_size else "test"
    if not options.val_size:
        print("warning: --val-size 0 scores every trial on the test set, so the search optimises on it and its best "
              "score is biased upward; hold out a validation split (--val-size 0.1) to keep the test set for the end")

    def stop_when_done(study, trial):
        if counted_trials(study) >= options.trials:
            study.stop()

    done = counted_trials(study)
    if done >= options.trials:  # optimize would still start one more trial before the callback stops it
        print(f"study {options.study} has finished {done} of --trials {options.trials}: no trial to run (raise --trials "
              f"to search further; best policy in {options.out / 'best.json'})")
        report_best(method, options, study, scored)  # finishes the end-of-search runs a kill interrupted
        return study
    cannot_run = []
    try:
        study.optimize(trial_objective(method, options, scored, cannot_run), n_trials=options.trials - done,
                       callbacks=[stop_when_done])
        if cannot_run:
            raise UserError(f"the proxy run cannot start: {cannot_run[0]}")
        print(study_cost(study, options.epochs))
        report_best(method, options, study, scored)
    except Exception as error:
        lost = storage_error(error)
        if lost is None:
            raise
        raise UserError(f"lost --storage {shown_url(options.storage)}: {lost.orig}; every finished trial is in the "
                        f"search sheet of {options.results}; run the same command again once the storage is back: "
                        f"it resumes the study and retries the interrupted trial once") from error
    return study


def storage_error(error):
    """The storage's OperationalError (the server went away: stopped, restarted, network) behind error, or None.
    Optuna can mask it: when a trial's end cannot be written, its _run_trial (optuna 5.0) raises UnboundLocalError
    from its `finally`, with the OperationalError as context."""
    import sqlalchemy.exc

    while error is not None and not isinstance(error, sqlalchemy.exc.OperationalError):
        error = error.__cause__ or error.__context__
    return error


def trial_objective(method, options, scored, cannot_run):
    """Optuna's objective: one proxy run of a suggested policy, recorded in the search sheet as COMPLETE, PRUNED or
    FAIL. A proxy that cannot run at all is appended to cannot_run and stops the study."""
    import optuna

    out, size = options.out, check_crop_size(dataset_info(options.dataset), options.crop_size)

    def objective(trial):
        policy = policy_from_params(suggest_params(trial), base=options.base, size=size)
        policy_file = out / "trials" / f"trial-{trial.number:04d}.json"
        policy_file.write_text(policy_to_json(policy))
        trial.set_user_attr("policy", policy_to_json(policy))
        started = time.time()

        def record(score, state):
            record_trial(options, trial.number, policy_to_json(policy), score, state, time.time() - started)

        def report(epoch, metrics):
            if metrics["knn_top1"] is None:  # no reading this epoch (--knn-every N > 1): nothing to prune on
                return
            trial.report(metrics["knn_top1"], epoch)
            below = options.prune_below is not None and metrics["knn_top1"] < options.prune_below
            if below or trial.should_prune():
                record(metrics["knn_top1"], "PRUNED")
                print(f"trial {trial.number}: pruned after epoch {epoch} ({scored} kNN top-1 "
                      f"{metrics['knn_top1']:.2f})")
                raise optuna.TrialPruned()

        run_dir = out / "runs" / f"trial-{trial.number:04d}"
        opts = run_options(options, aug=str(policy_file), results_dir=str(run_dir))
        try:
            score = training.run(method, opts, on_epoch=report, quiet=True, script=SCRIPT)["knn_top1_final"]
        except training.NonFiniteLoss as error:  # this policy diverged: failed (NaN is Optuna's FAIL), search goes on
            record(None, "FAIL")
            print(f"note: trial {trial.number} failed: {error}")
            return float("nan")
        except UserError as error:  # the proxy cannot run at all (data, sizes, paths): no other trial would either
            record(None, "FAIL")
            cannot_run.append(error)
            trial.study.stop()
            return float("nan")
        except KeyboardInterrupt:  # Ctrl-C: as a killed trial, FAIL in the sheet and retried once by the next run
            record(None, "FAIL")
            retry_once(trial.study, trial.study.get_trials(deepcopy=False)[trial.number])
            raise
        finally:  # a trial is never resumed (a killed one is retried from scratch): its 2 checkpoints of ~130 MB
            for checkpoint in run_dir.glob("*.pth"):  # each would add up to gigabytes over a study; log.csv stays
                checkpoint.unlink()
        record(score, "COMPLETE")
        print(f"trial {trial.number}: {scored} kNN top-1 {score:.2f}")
        return score

    return objective


def report_best(method, options, study, scored):
    """best.json, the base policy on the same proxy (once per study), the plots, and both re-checked on the test set
    (once per best trial). Each score is kept in the study, so a rerun after a kill runs only what is missing."""
    import optuna

    out = options.out
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        print(f"study {options.study}: no completed trial yet ({len(study.trials)} pruned or failed)")
        return
    best = study.best_trial
    (out / "best.json").write_text(best.user_attrs["policy"])
    tag = f"{len(study.trials):04d}-{os.getpid()}"  # a rerun or a second process writes its own run dirs
    base_score = study.user_attrs.get("base_score")
    if base_score is None:  # the base policy on the same proxy, once per study
        opts = run_options(options, aug=options.base, results_dir=str(out / "runs" / f"base-validation-{tag}"))
        base_score = training.run(method, opts, quiet=True, script=SCRIPT)["knn_top1_final"]
        study.set_user_attr("base_score", base_score)
    plot_study(study, out)
    test = study.user_attrs.get("test_recheck", {})
    if test.get("best_trial") != best.number:
        test = {name: training.run(method, run_options(options, aug=aug, val_size=0,
                                                       results_dir=str(out / "runs" / f"{name}-{tag}")),
                                   quiet=True, script=SCRIPT)["knn_top1_final"]
                for name, aug in (("best-test", str(out / "best.json")), ("base-test", options.base))}
        study.set_user_attr("test_recheck", {**test, "best_trial": best.number})
    print(f"best policy {out / 'best.json'}: {best.user_attrs['policy']}")
    print(f"proxy ({scored} kNN top-1): best {best.value:.2f} vs base '{options.base}' {base_score:.2f}, ratio "
          f"{best.value / max(base_score, 1e-9):.3f} | test re-check: best {test['best-test']:.2f} vs base "
          f"{test['base-test']:.2f} | {len(completed)} completed of {len(study.trials)} trials")


def counted_trials(study):
    """Trials that count toward --trials: the finished ones, less those a retry replaces (killed or interrupted)."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)}
    return sum(t.number not in retried for t in finished)


def retry_once(study, trial):
    """Queue trial's parameters again, unless it is itself a retry (Optuna's callback for stale trials, max 1)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


def study_cost(study, epochs):
    """Trials per hour of one process (finished trials over their summed wall time) and the share of the proxy's
    epochs that pruning saved (epochs the finished trials did not run, over trials x epochs)."""
    done = [t for t in study.trials if t.datetime_complete is not None and t.datetime_start is not None]
    if not done:
        return "no finished trial"
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    ran = sum(epochs if t.state.name == "COMPLETE" else len(t.intermediate_values) for t in done)
    saved = f"pruning saved {1 - ran / (len(done) * epochs):.0%} of the {len(done) * epochs} proxy epochs"
    if any(t.state.name == "FAIL" for t in done):
        saved += " (failed trials' unrun epochs included)"
    per_hour = 3600 * len(done) / seconds
    return f"{len(done)} finished trials in {seconds / 60:.1f} min of trial time: {per_hour:.1f} trials/hour; {saved}"


def sampler_seed(seed, trials_before):
    """TPE's seed for this process: --seed mixed with the trials the study held when the process joined and with the
    process itself (host and id). TPE draws its first 10 policies at random without looking at the study, so with
    --seed alone every process of a shared search, and every resumed search, would draw the same policies again."""
    import socket
    import zlib

    process = f"{socket.gethostname()}:{os.getpid()}"
    return int(np.random.SeedSequence([seed, trials_before, zlib.crc32(process.encode())]).generate_state(1)[0])


def open_study(options, attempts=5):
    """The study in --storage, created by whichever process comes first. Processes started together race to create
    a new database's tables (one of them gets an IntegrityError); the losers retry, and then find the tables made."""
    import random

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            # every URL, dialect+driver ones (postgresql+psycopg://) included: without heartbeats a killed trial
            # stays RUNNING and is never retried
            study = optuna.create_study(study_name=options.study, storage=sql_storage(options), load_if_exists=True,
                                        direction="maximize", pruner=optuna.pruners.NopPruner() if options.no_prune
                                        else optuna.pruners.SuccessiveHalvingPruner())
            study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(options.seed, len(study.trials)))
            return study
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            if attempt == attempts - 1:
                raise UserError(f"cannot open the study in --storage {shown_url(options.storage)}: "
                                f"{error.orig}") from error
            time.sleep(0.5 + random.random())
        except (ValueError, ImportError, sqlalchemy.exc.ArgumentError) as error:
            raise UserError(f"cannot open --storage {shown_url(options.storage)}: {error}") from error


def shown_url(storage):
    """The storage URL as an error line may show it: a password in it is masked."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a database URL (a journal file path): nothing to hide
        return storage


def sql_storage(options):
    """The SQL storage with heartbeats: a trial whose process died (no heartbeat for 3 intervals) is failed, recorded
    as FAIL in the search sheet, and retried once with the same parameters, by whichever process next asks for one."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    def stale(study, trial):
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        record_trial(options, trial.number, trial.user_attrs.get("policy"), None, "FAIL", seconds)
        retry_once(study, trial)

    class Storage(RDBStorage):
        def record_heartbeat(self, trial_id):
            try:
                super().record_heartbeat(trial_id)
            except sqlalchemy.exc.OperationalError:  # a server down: the heartbeat thread would die with a
                pass  # traceback; the trial's own next call to the storage reports it as the error line

    # SQLite: concurrent processes wait for the file lock instead of failing at once. A server: a pooled connection
    # is checked before use, so a search outlives a server restart between two of its calls.
    sqlite = options.storage.startswith("sqlite:")
    engine = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return Storage(options.storage, engine_kwargs=engine, heartbeat_interval=options.heartbeat,
                       grace_period=3 * options.heartbeat, heartbeat_stale_trial_callback=stale)


def record_trial(options, number, policy_json, score, state, seconds):
    append_search_trials(options.results, [dict(
        study=options.study, trial=number, policy=policy_json, proxy_score=score, state=state,
        seconds=round(seconds, 1), method=options.method, dataset=options.dataset, spec="search")])


def plot_study(study, out):
    """Optimisation history and parameter importances, as PNGs (Optuna's matplotlib visualisation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    for name, plot in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # Optuna warns that its matplotlib plots are experimental, every time
                warnings.simplefilter("ignore")
                axes = plot(study)
        except (ValueError, RuntimeError) as error:  # importances need 2+ completed trials with varied params
            print(f"note: no {name} plot ({error})")
            continue
        axes.figure.set_size_inches(8, 5)
        axes.figure.tight_layout()
        axes.figure.savefig(out / f"{name}.png", dpi=110)
        plt.close(axes.figure)


def dashboard(options):
    """optuna-dashboard's page of every study in --storage, served until Ctrl-C, while searches run anywhere."""
    import sqlalchemy.exc
    from optuna_dashboard import run_server

    if options.storage.startswith("sqlite:///") and not Path(options.storage[len("sqlite:///"):]).exists():
        raise UserError(f"--storage {options.storage}: no such database file (a search creates it)")
    print(f"optuna-dashboard: the studies in {shown_url(options.storage)} at "
          f"http://{options.host}:{options.port}/dashboard/ (Ctrl-C stops it)", flush=True)
    try:
        run_server(options.storage, host=options.host, port=options.port)
    except OSError as error:
        raise UserError(f"cannot serve on {options.host}:{options.port}: {error.strerror or error}") from error
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise UserError(f"cannot open --storage {shown_url(options.storage)}: {error}") from error


def main(argv=None):
    method, options = parse_args(argv)
    if options.dashboard:
        return dashboard(options)
    resolve_policy(options.base, 32)  # a bad base is one line before anything runs
    return grid(method, options) if options.grid else search(method, options)


if __name__ == "__main__":
    run_main(main)
