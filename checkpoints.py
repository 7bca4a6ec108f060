"""A run's directory and checkpoints: the run dir (refused when it holds another run, cleaned of a start that died
before its first checkpoint), args.json of every start, atomic checkpoint writes, and the rules of --resume (what a
resume may change, and a finished run that must not be recorded twice)."""
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from cli import UserError, make_dirs


CHECKPOINT_FORMAT = 2
# What a resume may change: where and how it runs. --epochs may only grow. Anything else would be another run.
RESUME_MAY_CHANGE = {"workers", "results", "results_dir", "precision", "channels_last", "compile", "data_dir",
                     "download", "resume", "study"}


def make_run_dir(results_dir, default_name, resuming):
    run_dir = Path(results_dir) if results_dir else Path("runs") / default_name
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a directory")
    if (run_dir / "checkpoint_last.pth").exists() and not resuming:
        raise UserError(f"{run_dir} already holds a run; resume it with --resume {run_dir / 'checkpoint_last.pth'} "
                        f"or choose another --results-dir")
    make_dirs(run_dir, "run directory")
    stale = [run_dir / name for name in ("log.csv", "checkpoint_last.pth.tmp", "checkpoint_best.pth.tmp")]
    stale = [path for path in stale if path.exists()] if not resuming else []
    if stale:  # a start killed before its first checkpoint: its epochs would be logged twice
        print(f"note: {run_dir} holds a start that ended before its first checkpoint; starting it afresh "
              f"(removed {', '.join(path.name for path in stale)})")
        for path in stale:
            path.unlink()
    return run_dir


def save_checkpoint(path, state):
    """Atomic: a crash mid-write never leaves a truncated checkpoint in place of a good one."""
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}): is it corrupt?") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint written by this repo")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} was written by an earlier version of this repo and cannot be resumed; "
                        "start a new run")
    return state


def resumed_options(method, options, given, state, path):
    """The options of the checkpoint's run, with what this start may change taken from `options`.

    given: names set explicitly on this command line (None: every option counts as given)."""
    saved = state["options"]
    if state["method"] != method.name:
        raise UserError(f"checkpoint {path} is a {state['method']} run, not {method.name}")
    merged = copy.copy(options)
    for name, saved_value in saved.items():
        if not hasattr(options, name):
            continue
        value = getattr(options, name)
        if (given is not None and name not in given) or value == saved_value:
            setattr(merged, name, saved_value)
        elif not (name in RESUME_MAY_CHANGE or (name == "epochs" and value > saved_value)):
            flag = "--" + name.replace("_", "-")
            allowed = " (a resume may only raise it)" if name == "epochs" else ""
            raise UserError(f"{flag} {value} differs from the run's {saved_value}{allowed}; a resumed run keeps the "
                            f"options it was started with (see {Path(state['run_dir']) / 'args.json'})")
    merged.resume = options.resume
    return merged


RECORDED = "recorded.json"  # written after the run's row: a bare --resume of a finished run then adds nothing


def check_unfinished(state, opts):
    """A bare --resume of a run that trained all its epochs and wrote its row would count it twice in the summary."""
    recorded = Path(state["run_dir"]) / RECORDED
    if state["epoch"] >= opts.epochs and recorded.exists():
        row = json.loads(recorded.read_text())
        raise UserError(f"the run in {state['run_dir']} finished its {state['epoch']} epochs and is run "
                        f"{row['run_id']} of {row['results']}; nothing to do (raise --epochs to train it further)")


def record_start(run_dir, options):
    """args.json: every start of the run (the first and each resume), with its command line and options."""
    path = Path(run_dir) / "args.json"
    try:
        starts = json.loads(path.read_text())["starts"]
    except (OSError, ValueError, KeyError, TypeError):
        starts = []
    starts.append(dict(time=time.strftime("%Y-%m-%d %H:%M:%S"), argv=sys.argv, options=vars(options)))
    path.write_text(json.dumps({"starts": starts}, indent=2, default=str))
