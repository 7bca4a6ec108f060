"""The lab notebook results.xlsx: every training run appends a row, its per-epoch curves and a refreshed chart."""
import csv
import datetime
import json
import math
import os
import re
import secrets
import sys
import tempfile
import warnings
from pathlib import Path

import filelock
import openpyxl
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.chart import Reference, ScatterChart, Series
from openpyxl.styles import Font

from cli import UserError

RUN_COLUMNS = [
    "run_id", "time", "script", "method", "dataset", "arch", "aug", "crops", "crop_size", "epochs", "batch_size",
    "lr", "optimizer", "precision", "world_size", "knn_top1_final", "knn_top1_best", "linear_top1", "linear_top5",
    "supervised_top1", "wall_time_s", "images_per_s", "peak_gpu_mem_gb", "hardware", "data", "run_dir",
    "git_commit", "args",
]
CURVE_COLUMNS = ["run_id", "epoch", "loss", "knn_top1", "lr", "epoch_s"]
REFERENCE_COLUMNS = ["source", "method", "dataset", "config", "epochs", "metric", "value"]
SEED_CURVES_CSV = Path(__file__).resolve().parent / "reference" / "seed_moco_cifar10_knn.csv"
LOCK_TIMEOUT_S = 120
CHART_MAX_RUNS = 20
WIDE_COLUMNS = {"time": 20, "hardware": 28, "data": 30, "run_dir": 30, "git_commit": 14, "args": 60}

_MOCO = "facebookresearch/moco Colab demo (moco_cifar10_demo)"
_SEED = "seed augmentation study (soonwonh/Modified-Moco, Moco_Cifar10.xlsx)"
_MOCO_SETUP = "ResNet-18 CIFAR stem, batch 512, lr 0.06 cosine, K=4096, m=0.99, T=0.1, bn-splits 8"
_KNN = "kNN top-1 (k=200, t=0.1)"
# Transcribed from reference/REFERENCE.md; tests/test_results.py checks every number against that file.
PUBLISHED = [
    *[(_MOCO, "MoCo-v1", "CIFAR-10", f"{loss} loss; {_MOCO_SETUP}", epochs, _KNN, value)
      for loss, values in (("asymmetric", (82.6, 86.3, 88.7)), ("symmetric", (85.3, 88.5, 89.7)))
      for epochs, value in zip((200, 400, 800), values)],
    (_MOCO, "MoCo-v1", "CIFAR-10", f"linear probe of the 800-ep symmetric model (lr 30, wd 0, 100 ep); {_MOCO_SETUP}",
     800, "linear top-1", 90.7),
    (_SEED, "MoCo-v1", "CIFAR-10", f"original 4 transforms (torchvision); {_MOCO_SETUP}", 200, _KNN, 82.19),
    (_SEED, "MoCo-v1", "CIFAR-10", "7 transforms: + Solarize p=.2, CLAHE p=.2, RandomBrightnessContrast p=.2 "
     f"(Albumentations); {_MOCO_SETUP}", 200, _KNN, 85.01),
    ("solo-learn", "SimCLR", "CIFAR-10", "ResNet-18", 1000, "linear top-1", 90.74),
    ("solo-learn", "MoCo-v2+", "CIFAR-10", "ResNet-18", 1000, "linear top-1", 92.94),
    ("lightly (CIFAR-10 benchmark, batch 512)", "MoCo", "CIFAR-10", "ResNet-18", 200, "kNN top-1", 85),
    ("lightly (CIFAR-10 benchmark, batch 512)", "SimCLR", "CIFAR-10", "ResNet-18", 200, "kNN top-1", 83),
    ("SimCLR paper (Chen et al. 2020), Appendix B.9", "SimCLR ResNet-50", "CIFAR-10", "ResNet-50", 1000,
     "linear top-1", 94.0),
]
SEED_SERIES = [("original_knn_top1", "seed: original 4 transforms (82.19 @ ep 200)"),
               ("ours7_knn_top1", "seed: 7 transforms (85.01 @ ep 200)")]


def default_path():
    """results.xlsx at the repo root, next to this file."""
    return Path(__file__).resolve().parent / "results.xlsx"


def check_writable(path):
    """Before training: fail now, with UserError, if the workbook could not be written at the end. Touches nothing."""
    path = Path(os.path.realpath(path))
    problem = None
    if path.is_dir():
        problem = "it is a directory"
    elif not path.parent.exists():
        problem = f"its directory {path.parent} does not exist"
    elif not path.parent.is_dir():
        problem = f"{path.parent} is not a directory"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"its directory {path.parent} is not writable"  # the temp file + rename needs the directory
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    if problem:
        raise UserError(f"cannot write the results workbook {path}: {problem} (choose another with --results PATH)")


def append_run(path, run, curves):
    """Append one run (keys from RUN_COLUMNS) and its per-epoch curves (keys from CURVE_COLUMNS); return its run_id."""
    unknown = set(run) - set(RUN_COLUMNS[1:]) | {key for point in curves for key in point} - set(CURVE_COLUMNS[1:])
    if unknown:
        raise ValueError(f"append_run: unknown keys {sorted(unknown)} (run_id is assigned by append_run)")
    path = Path(os.path.realpath(path))
    row = {name: _cell_value(value) for name, value in run.items()}
    row.setdefault("time", datetime.datetime.now().isoformat(timespec="seconds"))
    points = [{name: _cell_value(value) for name, value in point.items()} for point in curves]
    try:
        with filelock.FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
            check_writable(path)
            workbook = _load_or_start(path)
            run_id = _next_run_id(workbook["runs"])
            _append_by_header(workbook["runs"], {"run_id": run_id, **row})
            for point in points:
                _append_by_header(workbook["curves"], {"run_id": run_id, **point})
            _rebuild_chart(workbook)
            _save_atomically(workbook, path)
        return run_id
    except BaseException as error:  # whatever went wrong, the run's numbers must survive
        fallback = _save_fallback(path, row, points, error)
        if isinstance(error, (OSError, UserError)):
            raise UserError(f"could not write the results workbook {path} ({error}); "
                            f"this run's row and curves were saved to {fallback}") from error
        print(f"results: could not write {path}; this run's row and curves were saved to {fallback}", file=sys.stderr)
        raise


def _cell_value(value):
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, default=str)
    elif value is not None and not isinstance(value, (bool, int, float, str, datetime.datetime)):
        value = str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # Excel has no NaN/inf; keep the fact as text
    if isinstance(value, str):
        return ILLEGAL_CHARACTERS_RE.sub("", value)[:32767]  # Excel's cell limit
    return value


def _load_or_start(path):
    workbook = None
    if path.exists():
        try:
            workbook = openpyxl.load_workbook(path)
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
            warnings.warn(f"{path} could not be read as a workbook ({type(error).__name__}: {error}); "
                          f"moved it to {aside} and started a new one")
    if workbook is None:
        workbook = openpyxl.Workbook()
        workbook.remove(workbook.active)
    for name, columns in (("runs", RUN_COLUMNS), ("curves", CURVE_COLUMNS)):
        if name not in workbook.sheetnames:
            sheet = workbook.create_sheet(name)
            sheet.append(columns)
            for cell in sheet[1]:
                cell.font = Font(bold=True)
                width = WIDE_COLUMNS.get(cell.value, max(9, len(cell.value) + 2))
                sheet.column_dimensions[cell.column_letter].width = width
            sheet.freeze_panes = "B2"
    if "reference" not in workbook.sheetnames:
        _add_reference_sheet(workbook)
    return workbook


def _add_reference_sheet(workbook):
    sheet = workbook.create_sheet("reference")
    for values in [REFERENCE_COLUMNS, *PUBLISHED]:
        sheet.append(values)
    curves_at = len(REFERENCE_COLUMNS) + 2  # the seed curves sit to the right of the table, one blank column between
    try:
        with open(SEED_CURVES_CSV, newline="") as file:
            rows = list(csv.reader(file))
    except OSError as error:
        warnings.warn(f"seed curves not added to the reference sheet: {error}")
        rows = []
    for r, values in enumerate(rows, start=1):
        for c, value in enumerate(values):
            sheet.cell(r, curves_at + c, value if r == 1 else (int(value) if c == 0 else float(value)))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for letter, width in (("A", 62), ("B", 16), ("C", 10), ("D", 60), ("F", 24)):
        sheet.column_dimensions[letter].width = width
    sheet.freeze_panes = "A2"


def _header(sheet):
    return [cell.value for cell in sheet[1]]


def _append_by_header(sheet, values):
    """Place values by header name, so columns a user added or reordered are kept; new names become new columns."""
    header = _header(sheet)
    for name in values:
        if name not in header:
            header.append(name)
            sheet.cell(1, len(header), name).font = Font(bold=True)
    r = sheet.max_row + 1
    for name, value in values.items():
        cell = sheet.cell(r, header.index(name) + 1, value)
        if isinstance(value, str) and value.startswith("="):
            cell.data_type = "s"  # text, not a formula


def _next_run_id(runs):
    column = _header(runs).index("run_id") + 1
    ids = runs.iter_rows(min_row=2, min_col=column, max_col=column, values_only=True)
    numbers = [int(v[1:]) for (v,) in ids if isinstance(v, str) and re.fullmatch(r"r\d+", v)]
    return f"r{max(numbers, default=0) + 1:04d}"


def _rebuild_chart(workbook):
    # A scatter chart with lines: runs of different lengths each keep their own epoch axis.
    chart = ScatterChart(scatterStyle="lineMarker")
    chart.title, chart.x_axis.title, chart.y_axis.title = "kNN top-1 by epoch", "epoch", "kNN top-1 (%)"
    chart.x_axis.delete = chart.y_axis.delete = False  # otherwise recent Excel hides openpyxl's axes
    runs, curves = workbook["runs"], workbook["curves"]
    run_header, curve_header = _header(runs), _header(curves)
    label_columns = [run_header.index(name) for name in ("run_id", "dataset", "aug")]
    labels = {row[label_columns[0]]: " ".join(str(row[i] or "") for i in label_columns)
              for row in runs.iter_rows(min_row=2, values_only=True)}
    blocks = {}  # run_id -> (first row, last row) of its last contiguous block in `curves`
    for r, run_id in enumerate(curves.iter_rows(min_row=2, max_col=1, values_only=True), start=2):
        first = blocks[run_id[0]][0] if run_id[0] in blocks and blocks[run_id[0]][1] == r - 1 else r
        blocks[run_id[0]] = (first, r)
    epoch_col, knn_col = curve_header.index("epoch") + 1, curve_header.index("knn_top1") + 1
    for run_id, (first, last) in list(blocks.items())[-CHART_MAX_RUNS:]:
        knn = [curves.cell(r, knn_col).value for r in range(first, last + 1)]
        if any(isinstance(v, (int, float)) for v in knn):
            _add_series(chart, curves, epoch_col, knn_col, first, last, labels.get(run_id, str(run_id)))
    reference = workbook["reference"]
    ref_header = _header(reference)
    for column, title in SEED_SERIES:
        if "epoch" in ref_header and column in ref_header:
            x_col, y_col = ref_header.index("epoch") + 1, ref_header.index(column) + 1
            last = max(r for r in range(1, reference.max_row + 1) if reference.cell(r, y_col).value is not None)
            _add_series(chart, reference, x_col, y_col, 2, last, title)
    chart.width, chart.height = 30, 16
    index = workbook.sheetnames.index("chart") if "chart" in workbook.sheetnames else 2
    if "chart" in workbook.sheetnames:
        workbook.remove(workbook["chart"])
    workbook.create_chartsheet("chart", index).add_chart(chart)


def _add_series(chart, sheet, x_col, y_col, first, last, title):
    series = Series(Reference(sheet, min_col=y_col, min_row=first, max_row=last),
                    Reference(sheet, min_col=x_col, min_row=first, max_row=last), title=title)
    series.marker.symbol, series.smooth = "none", False
    chart.series.append(series)


def _save_atomically(workbook, path):
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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


def _save_fallback(path, row, points, error):
    record = {"workbook": str(path), "error": f"{type(error).__name__}: {error}", "run": row, "curves": points}
    name = f"{path.stem}.unsaved-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.json"
    for folder in (path.parent, Path.cwd(), Path(tempfile.gettempdir())):
        try:
            with open(folder / name, "x") as file:
                json.dump(record, file, indent=1, default=str)
            return folder / name
        except OSError:
            continue
    print(json.dumps(record, default=str), file=sys.stderr)
    return "stderr (above)"
