"""An .xlsx file that several processes append to, whatever its sheets hold: one writer at a time (a lock in the temp
dir), an atomic save, a damaged file moved aside, a workbook open in a spreadsheet app left alone, and, when a write
fails, that write's numbers kept in a JSON file beside the workbook, which the next write folds back in.

results.py keeps this repo's sheets in such a store; this module knows nothing of them."""
import contextlib
import datetime
import hashlib
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

import filelock
import openpyxl

from cli import UserError

LOCK_TIMEOUT_S = 120


def writable_problem(path):
    """Why the workbook at `path` could not be written, or None. Writes and removes one temp file beside it (os.access
    says yes to root where writing fails, e.g. in /proc); touches nothing else."""
    path = Path(os.path.realpath(path))
    if path.suffix.lower() != ".xlsx":  # a .csv or .txt of the user's would otherwise be moved aside as corrupt
        return "its name does not end in .xlsx"
    if path.is_dir():
        return "it is a directory"
    if not path.parent.exists():
        return f"its directory {path.parent} does not exist"
    if not path.parent.is_dir():
        return f"{path.parent} is not a directory"
    probe, target = _temp_name(path), f"its directory {path.parent}"  # the final temp file + rename needs it
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
        if path.exists():
            target = "the file"
            os.close(os.open(path, os.O_WRONLY))  # no O_TRUNC: opening for writing changes nothing
    except OSError as error:
        return f"{target} is not writable ({error.strerror})"
    return None


def app_lock(path):
    """The lock file LibreOffice (.~lock.NAME#) or Excel (~$NAME) keeps beside a workbook it has open, or None."""
    path = Path(path)
    return next((lock for lock in (path.with_name(f".~lock.{path.name}#"), path.with_name(f"~${path.name}"))
                 if lock.exists()), None)


def update(path, change, unsaved, unsaved_name, *, check, complete, fold):
    """Under the lock: check(path) (raises UserError), load the workbook (or start an empty one), complete(workbook)
    (adds the sheets it must have), fold(workbook, records) the unsaved records of earlier failed writes,
    change(workbook), save atomically; return what change returned.

    If anything fails, `unsaved` (this call's numbers, a dict for JSON) goes to a file beside the workbook, and the
    error is raised (an OSError or UserError as one UserError naming that file, for the door's one `error:` line)."""
    path = Path(os.path.realpath(path))
    saved = False
    try:
        app = app_lock(path)
        if app:
            raise UserError(f"it is open in a spreadsheet app ({app.name} beside it), which would overwrite a row "
                            "written now when it saves; close it, and the next run folds the saved rows back in")
        with _locked(path):
            check(path)
            workbook = _load_or_start(path)
            complete(workbook)
            records, folded = _unsaved_records(path)
            if records:
                fold(workbook, records)
            result = change(workbook)
            _save_atomically(workbook, path)
            saved = True
            for unsaved_file in folded:  # under the lock: a writer waiting for it would fold them in a second time
                unsaved_file.unlink(missing_ok=True)
        if folded:
            print(f"results: folded {len(folded)} earlier unsaved file(s) back into {path}: "
                  f"{', '.join(f.name for f in folded)}")
        return result
    except BaseException as error:  # whatever went wrong, the numbers must survive
        if saved:  # they are in the workbook (Ctrl-C after the save): a fallback file would add them a second time
            raise
        fallback = _save_fallback(path, unsaved, error)
        if isinstance(error, (OSError, UserError)):
            raise UserError(f"could not write the results workbook {path} ({error}); "
                            f"{unsaved_name} were saved to {fallback}") from error
        print(f"results: could not write {path}; {unsaved_name} were saved to {fallback}", file=sys.stderr)
        raise


def _lock(path):
    # Not beside the workbook: the lock file would stay in the user's folder (unlinking it on release races with a
    # waiting writer). The temp dir holds one per workbook, named by its resolved path; 0o666 so other users can lock.
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    lock_path = Path(tempfile.gettempdir()) / f"results-xlsx-{digest}.lock"
    return filelock.FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S, mode=0o666)


@contextlib.contextmanager
def _locked(path):
    """The workbook's lock; a writer that has to wait says so, once, instead of hanging silently."""
    lock = _lock(path)
    try:
        lock.acquire(timeout=1)
    except filelock.Timeout:
        print(f"results: waiting up to {LOCK_TIMEOUT_S} s for {path}, which another run is writing", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _load_or_start(path):
    if path.exists():
        try:
            return openpyxl.load_workbook(path)
        except OSError:
            raise  # unreadable is not corrupt: never move a workbook aside for a permission problem
        except Exception as error:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            aside = path.with_name(f"{path.stem}.corrupt-{stamp}{path.suffix}")
            for n in range(1, 1000):
                if not aside.exists():
                    break
                aside = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}{path.suffix}")
            os.replace(path, aside)
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            print(f"note: {path} could not be read as a workbook ({reason}); moved it to {aside} and started a new one",
                  file=sys.stderr)
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    return workbook


def _temp_name(path):
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _save_atomically(workbook, path):
    temp = _temp_name(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & umask, like a normal save
    try:
        with os.fdopen(fd, "wb") as file:
            workbook.save(file)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _unsaved_records(path):
    """The records of earlier failed writes to this workbook (`NAME.unsaved-*.json` beside it), oldest first, and
    their files, to be removed once the workbook is saved."""
    records, files = [], []
    for unsaved_file in sorted(path.parent.glob(f"{path.stem}.unsaved-*.json")):
        try:
            record = json.loads(unsaved_file.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: left where it is
        if record.get("workbook") == str(path):
            records.append(record)
            files.append(unsaved_file)
    return records, files


def _save_fallback(path, unsaved, error):
    record = {"workbook": str(path), "error": f"{type(error).__name__}: {error}", **unsaved}
    name = f"{path.stem}.unsaved-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}-{secrets.token_hex(2)}.json"
    for folder in (path.parent, Path.cwd(), Path(tempfile.gettempdir())):
        try:
            with open(folder / name, "x") as file:
                json.dump(record, file, indent=1, default=str)
            return folder / name
        except OSError:
            continue
    print(json.dumps(record, default=str), file=sys.stderr)
    return "stderr (above)"
