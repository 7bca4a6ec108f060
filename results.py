"""The lab notebook results.xlsx, its schema and sheets: every training run appends a row and its per-epoch curves,
which refresh the chart, the summary over seeds and the args sheet; augmentation searches append their trials to the
`search` sheet; the `reference` sheet shows reference/published.csv. The file itself (lock, atomic save, unsaved rows
kept and folded back) is workbook_store.py's."""
import csv
import datetime
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import openpyxl
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.chart import Reference, ScatterChart, Series
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.properties import PageSetupProperties

import workbook_store
from cli import UserError
from stats import by_seed, paired_difference

RUN_COLUMNS = [
    "run_id", "time", "study", "script", "method", "dataset", "arch", "head", "debias", "mochi", "mix", "aug", "policy",
    "crops", "crop_size", "epochs", "batch_size", "lr", "optimizer", "precision", "world_size", "seed",
    "knn_top1_final", "knn_top1_best", "linear_top1", "linear_top5", "supervised_top1", "wall_time_s", "images_per_s",
    "peak_gpu_mem_gb", "hardware", "data", "run_dir", "git_commit", "torch", "method_options", "args",
]
CURVE_COLUMNS = ["run_id", "epoch", "loss", "knn_top1", "lr", "epoch_s"]
SEARCH_COLUMNS = ["study", "trial", "policy", "proxy_score", "state", "seconds", "method", "dataset", "spec", "seed",
                  "test_top1", "time"]
SEARCH_REQUIRED = SEARCH_COLUMNS[:6]
REFERENCE_COLUMNS = ["source", "method", "dataset", "config", "epochs", "metric", "value"]
JSON_COLUMNS = ["policy", "method_options", "args"]  # long texts: a one-line preview in `runs`, in full in `args`
# one setting; `data` names the split that was scored: a search's validation runs and its test re-checks share the rest
SUMMARY_KEYS = ["study", "dataset", "method", "arch", "crop_size", "aug", "mix", "epochs", "optimizer", "lr", "precision",
                "data"]
SUMMARY_SPLITS = ["method_options"]  # split settings too, shown after the statistics: too long to print on every page
SETTING_KEYS = SUMMARY_KEYS + SUMMARY_SPLITS
COMPARED_KEYS = ["aug", "mix"]  # what the settings of one comparison differ in (the augmentation, with its mixing)
SUMMARY_METRICS = ["knn_top1_final", "knn_top1_best", "linear_top1"]
# each setting's kNN top-1 final against the reference of its comparison (the same setting but for the aug and the
# mixing; the reference is the one that ran first, as search_augment's --grid runs its --reference first), seed by seed
PAIRED_COLUMNS = ["vs", "pairs", "knn_final_diff", "knn_final_diff_low", "knn_final_diff_high", "ci_excludes_0"]
SHEET_ORDER = ["summary", "chart", "runs", "curves", "args", "search", "reference"]  # printed in this order

ACCURACY = "0.00"
COLUMN_FORMATS = {
    **dict.fromkeys(["knn_top1_final", "knn_top1_best", "linear_top1", "linear_top5", "supervised_top1", "knn_top1",
                     "proxy_score", "test_top1"], ACCURACY),
    "wall_time_s": "#,##0.0", "seconds": "#,##0.0", "epoch_s": "0.00", "images_per_s": "#,##0",
    "peak_gpu_mem_gb": "0.00", "loss": "0.0000",
    **{f"{metric}_{stat}": ACCURACY for metric in SUMMARY_METRICS for stat in ("mean", "std")},
    **dict.fromkeys(["knn_final_diff", "knn_final_diff_low", "knn_final_diff_high"], "+0.00;-0.00;0.00"),
}
CONTENT_WIDTHS = {  # characters the usual values need; a column is at least as wide as its bold header
    "time": 20, "script": 19, "method": 11, "dataset": 13, "arch": 14, "head": 14, "mochi": 12, "mix": 10, "aug": 26,
    "policy": 30, "optimizer": 10, "hardware": 28, "data": 36, "run_dir": 50, "git_commit": 12,
    "method_options": 30, "args": 30, "study": 20, "spec": 22, "state": 10, "seeds": 12, "setting": 40,
}
CONFIG_WIDTH = 60  # the reference sheet's config column; longer configs wrap
ARGS_WIDTHS = {"policy": 50, "method_options": 40, "args": 100}
PRINT_WIDTH_PER_PAGE = 150  # column-width units per landscape page: fitting more shrinks the print below ~80 %
CHART_MAX_SETTINGS = 10
CHART_DATA_COLUMNS = ["setting", "epoch", "knn_top1_mean", "runs"]
CHART_DATA_AT = 19  # column S: right of the 27 x 17 cm chart, which covers about A1:M39 in LibreOffice
CHART_PRINT_AREA = "A1:M40"
HEADER_FONT = Font(name="Calibri", size=11, bold=True)  # bold alone falls back to a serif font in LibreOffice
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
PUBLISHED_CSV = REFERENCE_DIR / "published.csv"  # the repo's one copy of every published number, with its source
SEED_CURVES_CSV = REFERENCE_DIR / "seed_moco_cifar10_knn.csv"

SEED_SERIES = [("original_knn_top1", "seed study: original 4 transforms"),
               ("ours7_knn_top1", "seed study: 7 transforms")]


def run_row(*, script, method, options, dataset_info, crop_size, views, optimizer, lr, precision, world_size, history,
            linear, supervised, started, peak_gpu_mem_gb, hardware, run_dir, git_commit, data, policy=None,
            **method_fields):
    """The `runs` row of a finished run (keys from RUN_COLUMNS); method_fields: the method's own columns."""
    few_classes = dataset_info.num_classes <= 10  # top-5 of 10 classes says little
    knn = [r["knn_top1"] for r in history if r["knn_top1"] is not None]
    trained = [r for r in history if r["epoch"] > 0]  # epoch 0: the network evaluated at initialisation
    arch = options.arch if getattr(options, "width", 1.0) == 1.0 else f"{options.arch} x{options.width:g}"
    return dict(
        study=getattr(options, "study", None) or None, script=script, method=method, dataset=options.dataset,
        arch=arch, aug=options.aug, crops=views,
        crop_size=crop_size, epochs=history[-1]["epoch"] if history else 0, batch_size=options.batch_size,
        lr=lr, optimizer=optimizer, precision=precision, world_size=world_size, seed=options.seed,
        knn_top1_final=_rounded(knn[-1] if knn else None), knn_top1_best=_rounded(max(knn, default=None)),
        linear_top1=_rounded(linear[0]), linear_top5=None if few_classes else _rounded(linear[1]),
        supervised_top1=_rounded(supervised[0]), wall_time_s=round(time.time() - started, 1),
        images_per_s=round(sum(r["images_per_s"] for r in trained) / len(trained), 1) if trained else None,
        peak_gpu_mem_gb=peak_gpu_mem_gb, hardware=hardware, data=data, run_dir=str(run_dir), git_commit=git_commit,
        torch=torch_version(), policy=policy, args=json.dumps(vars(options), default=str), **method_fields)


def torch_version():
    """The torch build a row was made with (with the git commit, what reproduces it; requirements.lock pins the rest)."""
    from importlib.metadata import version  # torch itself is not imported by the workbook code
    return version("torch")


def curve_rows(history):
    """The `curves` rows of a run's per-epoch history."""
    return [dict(epoch=r["epoch"], loss=r["loss"], knn_top1=_rounded(r["knn_top1"]), lr=r["lr"],
                 epoch_s=round(r["epoch_s"], 2)) for r in history]


def _rounded(accuracy):
    return None if accuracy is None else round(accuracy, 2)


def default_path():
    """results.xlsx at the repo root, next to this file."""
    return Path(__file__).resolve().parent / "results.xlsx"


def check_writable(path):
    """Before training: fail now, with UserError, if the workbook could not take this run's row at the end (the file
    or its folder, or a workbook of another layout); warn if a spreadsheet app has it open."""
    path = Path(os.path.realpath(path))
    problem = workbook_store.writable_problem(path) or (_foreign_layout(path) if path.exists() else None)
    if problem:
        raise UserError(f"cannot write the results workbook {path}: {problem} (choose another with --results PATH)")
    app = workbook_store.app_lock(path)
    if app:
        print(f"warning: {path} is open in a spreadsheet app ({app.name}); close it before this run ends, "
              "or its row goes to a side file that the next run folds back in", file=sys.stderr)


def _foreign_layout(path):
    """Why a readable workbook cannot take this repo's rows (a `runs` sheet without run_id), or None. An unreadable
    one is left to the append, which moves it aside with a note."""
    try:
        workbook = openpyxl.load_workbook(path, read_only=True)
    except Exception:  # noqa: BLE001 - any damage: handled where the row is written
        return None
    try:
        first_rows = list(workbook["runs"].iter_rows(max_row=2, values_only=True)) if "runs" in workbook.sheetnames else []
        if len(first_rows) == 2 and "run_id" not in first_rows[0]:  # a header-only sheet takes the current layout
            return "its `runs` sheet has no run_id column (a workbook of another layout, not one this repo wrote)"
        return None
    finally:
        workbook.close()


def append_run(path, run, curves):
    """Append one run (keys from RUN_COLUMNS) and its per-epoch curves (keys from CURVE_COLUMNS); return its run_id."""
    unknown = set(run) - set(RUN_COLUMNS[1:]) | {key for point in curves for key in point} - set(CURVE_COLUMNS[1:])
    if unknown:
        raise ValueError(f"append_run: unknown keys {sorted(unknown)} (run_id is assigned by append_run)")
    row = {name: _cell_value(_one_line(value) if name in JSON_COLUMNS else value) for name, value in run.items()}
    row.setdefault("time", _now())
    points = [{name: _cell_value(value) for name, value in point.items()} for point in curves]

    def add(workbook):
        run_id = _add_run(workbook, row, points)
        _rebuild_run_sheets(workbook)
        return run_id

    return _update(path, add, {"run": row, "curves": points}, "this run's row and curves")


def _add_run(workbook, row, points):
    run_id = _next_run_id(workbook["runs"])
    _append_by_header(workbook["runs"], {"run_id": run_id, **row})
    for point in points:
        _append_by_header(workbook["curves"], {"run_id": run_id, **point})
    return run_id


def _rebuild_run_sheets(workbook):
    _rebuild_summary(workbook)
    _rebuild_args(workbook)
    _rebuild_chart(workbook)


def _add_trials(workbook, rows):
    if "search" not in workbook.sheetnames:
        _new_table(workbook, "search", SEARCH_COLUMNS)
    for row in rows:
        _append_by_header(workbook["search"], row)


def append_search_trials(path, trials):
    """Append augmentation-search or grid trials to the `search` sheet, one row each. Keys from SEARCH_COLUMNS:
    study, trial, policy, proxy_score, state and seconds are required; time defaults to now."""
    for trial in trials:
        unknown, missing = set(trial) - set(SEARCH_COLUMNS), set(SEARCH_REQUIRED) - set(trial)
        if unknown or missing:
            raise ValueError(f"append_search_trials: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    rows = [{"time": _now(), **{name: _cell_value(_one_line(value) if name == "policy" else value)
                                for name, value in trial.items()}} for trial in trials]

    _update(path, lambda workbook: _add_trials(workbook, rows), {"search_trials": rows}, "these search trials")


def _update(path, change, unsaved, unsaved_name):
    """change(workbook) in the store, the sheets this repo needs added first and earlier unsaved rows folded in."""
    return workbook_store.update(path, change, unsaved, unsaved_name, check=check_writable, complete=_complete,
                                 fold=_fold_unsaved)


def _complete(workbook):
    """The sheets every write needs: `runs` (in the current layout while it has no runs), `curves`, and `reference`
    as published.csv has it."""
    if "runs" not in workbook.sheetnames or workbook["runs"].max_row == 1:
        older = _header(workbook["runs"]) if "runs" in workbook.sheetnames else []
        _new_table(workbook, "runs", RUN_COLUMNS + [name for name in older if name and name not in RUN_COLUMNS])
    if "curves" not in workbook.sheetnames:
        _new_table(workbook, "curves", CURVE_COLUMNS, orientation="portrait")  # narrow and long
    _add_reference_sheet(workbook)  # rebuilt on every write: published.csv may have gained rows


def _fold_unsaved(workbook, records):
    """The rows of earlier failed writes (the store's unsaved records), added as they would have been."""
    for record in records:
        if "run" in record:
            _add_run(workbook, record["run"], record.get("curves", []))
        if "search_trials" in record:
            _add_trials(workbook, record["search_trials"])
    if any("run" in record for record in records):
        _rebuild_run_sheets(workbook)


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def _one_line(value):
    """JSON text on one line: a spreadsheet shows a one-line cell of indented JSON as its last line, "}"."""
    if isinstance(value, str):
        try:
            return json.dumps(json.loads(value))
        except ValueError:
            return value
    return value


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


def _new_table(workbook, name, columns, orientation="landscape"):
    """A sheet with a bold, frozen header row and a width for every column, printed with the header on every page."""
    sheet = _replace_sheet(workbook, name)
    for column, title in enumerate(columns, start=1):
        _add_header_cell(sheet, column, title)
    sheet.freeze_panes = "B2"
    _set_print_layout(sheet, orientation=orientation)
    sheet.print_title_rows = "1:1"
    return sheet


def _replace_sheet(workbook, name):
    """A new, empty sheet `name` in its SHEET_ORDER place, instead of any sheet of that name."""
    index = _sheet_position(workbook, name)
    if name in workbook.sheetnames:
        workbook.remove(workbook[name])
    return workbook.create_sheet(name, index)


def _sheet_position(workbook, name):
    """Where sheet `name` goes by SHEET_ORDER among the other sheets (an older workbook's rebuilt sheets move there)."""
    others = [existing for existing in workbook.sheetnames if existing != name]
    later = SHEET_ORDER[SHEET_ORDER.index(name) + 1:]
    return next((i for i, existing in enumerate(others) if existing in later), len(others))


def _add_header_cell(sheet, column, title):
    sheet.cell(1, column, title).font = HEADER_FONT
    width = max(len(str(title)) + 3, CONTENT_WIDTHS.get(title, 8))
    sheet.column_dimensions[get_column_letter(column)].width = width


def _set_print_layout(sheet, orientation="landscape"):
    sheet.page_setup.orientation = orientation
    sheet.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    sheet.page_setup.fitToWidth, sheet.page_setup.fitToHeight = 1, 0  # 0: as many pages tall as needed


def published():
    """The rows of reference/published.csv (REFERENCE_COLUMNS; epochs an int, value a float); ValueError on a row
    that is not one."""
    with open(PUBLISHED_CSV, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != REFERENCE_COLUMNS:
            raise ValueError(f"{PUBLISHED_CSV}: columns {reader.fieldnames}, expected {REFERENCE_COLUMNS}")
        return [[*(row[name] for name in REFERENCE_COLUMNS[:4]), int(row["epochs"]), row["metric"],
                 float(row["value"])] for row in reader]


def _add_reference_sheet(workbook):
    try:
        numbers = published()
    except (OSError, ValueError, KeyError) as error:  # a broken edit of the CSV must not cost a run its row
        print(f"note: the reference sheet was left as it was: {PUBLISHED_CSV} could not be read "
              f"({type(error).__name__}: {error})", file=sys.stderr)
        return
    sheet = _replace_sheet(workbook, "reference")
    for values in [REFERENCE_COLUMNS, *numbers]:
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
        cell.font = HEADER_FONT
        sheet.column_dimensions[cell.column_letter].width = len(str(cell.value)) + 3
    source_width = max([len(str(row[0])) for row in numbers], default=60) + 2  # a source never runs into `method`
    for letter, width in (("A", source_width), ("B", 16), ("C", 10), ("D", CONFIG_WIDTH), ("F", 24)):
        sheet.column_dimensions[letter].width = width
    for r in range(2, len(numbers) + 2):  # a long config wraps in its cell instead of being cut at the next column
        sheet.cell(r, 4).alignment = Alignment(wrap_text=True, vertical="top")
        sheet.row_dimensions[r].height = 15 * math.ceil(len(str(sheet.cell(r, 4).value)) / CONFIG_WIDTH)
    sheet.freeze_panes, sheet.print_title_rows = "A2", "1:1"
    _set_print_layout(sheet)
    sheet.page_setup.fitToWidth = 2  # the published table, then the seed curves


def _header(sheet):
    return [cell.value for cell in sheet[1]]


def _records(sheet):
    header = _header(sheet)
    return [dict(zip(header, row)) for row in sheet.iter_rows(min_row=2, values_only=True) if any(row)]


def _append_by_header(sheet, values):
    """Place values by header name, so columns a user added or reordered are kept; new names become new columns."""
    header = _header(sheet)
    for name in values:
        if name not in header:
            header.append(name)
            _add_header_cell(sheet, len(header), name)
    r = sheet.max_row + 1
    for name, value in values.items():
        cell = sheet.cell(r, header.index(name) + 1, value)
        if isinstance(value, str) and value.startswith("="):
            cell.data_type = "s"  # text, not a formula
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name in COLUMN_FORMATS:
            cell.number_format = COLUMN_FORMATS[name]
    _fit_print_width(sheet, len(header))


def _fit_print_width(sheet, n_columns):
    """A wide table prints on pages side by side, its first column on each, rather than shrunk onto one."""
    total = sum(sheet.column_dimensions[get_column_letter(c)].width or 13 for c in range(1, n_columns + 1))
    sheet.page_setup.fitToWidth = math.ceil(total / PRINT_WIDTH_PER_PAGE)
    sheet.print_title_cols = "A:A"
    # The last column's long text would otherwise spill into empty columns and onto pages of its own.
    sheet.print_area = f"A1:{get_column_letter(n_columns)}{sheet.max_row}"


def _next_run_id(runs):
    column = _header(runs).index("run_id") + 1
    ids = runs.iter_rows(min_row=2, min_col=column, max_col=column, values_only=True)
    numbers = [int(v[1:]) for (v,) in ids if isinstance(v, str) and re.fullmatch(r"r\d+", v)]
    return f"r{max(numbers, default=0) + 1:04d}"


def _rebuild_summary(workbook):
    """Mean ± sample std over the runs (seeds) of each setting (SETTING_KEYS: a study, or rows without one, split by
    dataset, method, backbone, crop size, aug, mixing, epochs, optimizer, lr, precision, data and method options);
    hardware does not split them."""
    groups, references = {}, {}
    for record in _records(workbook["runs"]):
        groups.setdefault(_setting(record), []).append(record)
        references.setdefault(_comparison(_setting(record)), _setting(record))  # the first run's aug and mixing
    stats = [f"{metric}_{stat}" for metric in SUMMARY_METRICS for stat in ("mean", "std", "n")]
    sheet = _new_table(workbook, "summary", [*SUMMARY_KEYS, "runs", "seeds", *stats, *PAIRED_COLUMNS, *SUMMARY_SPLITS])
    for key in sorted(groups, key=lambda key: [_sort_key(value) for value in key]):
        records = groups[key]
        seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None}, key=_sort_key)
        row = [*key[:len(SUMMARY_KEYS)], len(records), ", ".join(map(str, seeds)) or None]
        for metric in SUMMARY_METRICS:
            values = [r.get(metric) for r in records]
            values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            # stored rounded as grid.md and README print them (f"{x:.2f}"): the app's own rounding of 35.535 says 35.54
            row += [_rounded(statistics.fmean(values)) if values else None,
                    _rounded(statistics.stdev(values)) if len(values) > 1 else None, len(values)]
        reference = references[_comparison(key)]
        paired = None if reference == key else paired_difference(by_seed(records), by_seed(groups[reference]))
        if paired is not None:
            row += [_compared_label(reference), paired.pairs, _rounded(paired.mean),
                    *(None if v is None else _rounded(v) for v in (paired.low, paired.high)),
                    ("yes" if paired.excludes_zero else "no") if paired.low is not None else None]
        else:
            row += [None] * len(PAIRED_COLUMNS)
        _append_by_header(sheet, dict(zip(_header(sheet), [*row, *key[len(SUMMARY_KEYS):]])))
        sheet.cell(sheet.max_row, len(SUMMARY_KEYS) + 2).alignment = Alignment(horizontal="right")  # seeds, as numbers
    sheet.print_title_cols = f"A:{get_column_letter(len(SUMMARY_KEYS))}"  # a group's name on every page


def _setting(record):
    """The setting a run belongs to (SETTING_KEYS' values): its seeds share it, the summary and the chart group by it."""
    return tuple(record.get(key) for key in SETTING_KEYS)


def _comparison(setting):
    """The settings compared seed by seed: the same in every setting key but the aug and the mixing."""
    return tuple(value for name, value in zip(SETTING_KEYS, setting) if name not in COMPARED_KEYS)


def _compared_label(setting):
    """What a comparison's reference is, in the `vs` column: its aug, and its mixing if it mixes."""
    aug, mix = (setting[SETTING_KEYS.index(name)] for name in COMPARED_KEYS)
    return aug if mix is None else f"{aug}, mix {mix}"


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _rebuild_args(workbook):
    """The long JSON texts of every run, wrapped, where they can be read and printed."""
    runs = workbook["runs"]
    present = [name for name in JSON_COLUMNS if name in _header(runs)]
    sheet = _new_table(workbook, "args", ["run_id", *present])
    for column, name in enumerate(present, start=2):
        sheet.column_dimensions[get_column_letter(column)].width = ARGS_WIDTHS[name]
    for record in _records(runs):
        texts = [record.get(name) for name in present]
        sheet.append([record.get("run_id"), *texts])
        for cell in sheet[sheet.max_row]:
            cell.alignment = Alignment(wrap_text=True, vertical="top")
        # LibreOffice and Excel keep the default one-line height on open; wrapped lines would overlap the next row.
        lines = max([1, *(math.ceil(len(str(text or "")) / ARGS_WIDTHS[name]) for name, text in zip(present, texts))])
        sheet.row_dimensions[sheet.max_row].height = min(409, 15 * lines)  # 409 pt: Excel's tallest row


def knn_curves(path, run_ids):
    """{run_id: {epoch: kNN top-1}} of those runs in the workbook at path (a run without a kNN reading is absent):
    the curves outlive the run folders, which are not kept (a fresh clone has none)."""
    if not Path(path).exists():
        return {}
    workbook = openpyxl.load_workbook(path, read_only=True)
    try:
        return _knn_readings(workbook, set(run_ids)) if "curves" in workbook.sheetnames else {}
    finally:
        workbook.close()


def _knn_readings(workbook, run_ids):
    """{run_id: {epoch: kNN top-1}} from the curves sheet; a run's later rows for an epoch replace its earlier ones."""
    rows = workbook["curves"].iter_rows(values_only=True)
    header = list(next(rows, ()))
    epoch_col, knn_col = header.index("epoch"), header.index("knn_top1")
    readings = {}
    for row in rows:
        if row and row[0] in run_ids and isinstance(row[knn_col], (int, float)) \
                and isinstance(row[epoch_col], (int, float)):
            readings.setdefault(row[0], {})[row[epoch_col]] = row[knn_col]
    return readings


def _setting_curves(workbook):
    """[(setting, number of runs, {epoch: mean kNN top-1 over the runs})] of every setting (SETTING_KEYS) with a
    kNN reading, the setting of the newest run last. A run's later curve rows for an epoch replace its earlier ones."""
    runs = {record.get("run_id"): record for record in _records(workbook["runs"])}
    readings = _knn_readings(workbook, runs)
    settings = {}  # key -> {run_id: readings}, in the order of each setting's newest run
    for run_id, record in runs.items():
        if run_id in readings:
            key = _setting(record)
            settings.setdefault(key, {})[run_id] = readings[run_id]
            settings[key] = settings.pop(key)  # moved last: its newest run is the newest so far
    curves = []
    for key, by_run in settings.items():
        epochs = sorted({epoch for points in by_run.values() for epoch in points})
        curves.append((key, len(by_run), {epoch: statistics.fmean([points[epoch] for points in by_run.values()
                                                                    if epoch in points]) for epoch in epochs}))
    return curves


def _setting_labels(keys):
    """Method and aug, and every other setting key whose value differs between the charted settings; of the method
    options, those in which the method's charted settings differ."""
    varying = {name for i, name in enumerate(SUMMARY_KEYS) if len({key[i] for key in keys}) > 1}
    shown = [i for i, name in enumerate(SUMMARY_KEYS) if name in {"method", "aug"} | varying]
    names = {"epochs": "{} ep", "crop_size": "{} px", "lr": "lr {:g}"}
    method, options = SETTING_KEYS.index("method"), SETTING_KEYS.index("method_options")
    apart = options_apart([(key[method], _json_object(key[options])) for key in keys])
    labels = []
    for key, differing in zip(keys, apart):
        words = [names.get(SUMMARY_KEYS[i], "{}").format(key[i]) for i in shown if key[i] not in (None, "")]
        labels.append(" ".join(words + [differing] if differing else words))
    return labels


def options_apart(settings):
    """For each (method, {option: value}) setting, "name value, ..." of its options whose values differ in another
    setting of the same method (e.g. SwAV's sinkhorn_eps); empty where a method's settings share them all."""
    return [", ".join(f"{name} {value}" for name, value in options.items()
                      if any(other.get(name) != value for other_method, other in settings if other_method == method))
            for method, options in settings]


def _json_object(text):
    """A JSON cell's object ({} for an empty cell or text that is not a JSON object, e.g. one a user typed)."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rebuild_chart(workbook):
    """kNN top-1 by epoch: one line per setting of the summary (the mean over its runs, its seeds, at each monitored
    epoch) for the CHART_MAX_SETTINGS settings with the newest runs, and the seed study's two curves. The lines' data
    sit on the chart's sheet, right of the printed chart."""
    # A worksheet holding the chart, not a chartsheet: openpyxl anchors a chartsheet's chart with size 0 x 0, which
    # LibreOffice draws as nothing, and numbers the print titles and areas of the sheets after a chartsheet wrongly
    # (its localSheetId counts worksheets only), so they would land on the wrong sheets.
    sheet = _replace_sheet(workbook, "chart")
    sheet.sheet_view.showGridLines = False
    # A scatter chart with lines: settings of different lengths each keep their own epoch axis.
    chart = ScatterChart(scatterStyle="lineMarker")
    chart.title, chart.x_axis.title, chart.y_axis.title = "kNN top-1 by epoch", "epoch", "kNN top-1 (%)"
    chart.x_axis.delete = chart.y_axis.delete = False  # otherwise recent Excel hides openpyxl's axes
    curves = _setting_curves(workbook)[-CHART_MAX_SETTINGS:]
    for column, title in enumerate(CHART_DATA_COLUMNS, start=CHART_DATA_AT):
        _add_header_cell(sheet, column, title)
    setting_col, epoch_col, knn_col = CHART_DATA_AT, CHART_DATA_AT + 1, CHART_DATA_AT + 2
    max_epoch = 0
    for (key, n_runs, points), label in zip(curves, _setting_labels([key for key, _, _ in curves])):
        label = f"{label} ({n_runs} run{'s' if n_runs > 1 else ''})"
        first = sheet.max_row + 1
        for r, (epoch, knn) in enumerate(points.items(), start=first):
            sheet.cell(r, setting_col, label), sheet.cell(r, epoch_col, epoch)
            sheet.cell(r, knn_col, _rounded(knn)).number_format = ACCURACY
            sheet.cell(r, knn_col + 1, n_runs)
        _add_series(chart, sheet, epoch_col, knn_col, first, sheet.max_row, label, marker=True)
        max_epoch = max(max_epoch, *points)
    # The seed study's curves are drawn up to the runs' last epoch (all 200 epochs when there are no runs yet), so a
    # short run is not squeezed into the left edge of a 200-epoch axis.
    reference = workbook["reference"]
    ref_header = _header(reference)
    for column, title in SEED_SERIES:
        if "epoch" in ref_header and column in ref_header:
            x_col, y_col = ref_header.index("epoch") + 1, ref_header.index(column) + 1
            rows = [r for r in range(2, reference.max_row + 1) if isinstance(reference.cell(r, y_col).value, float)
                    and (not max_epoch or reference.cell(r, x_col).value <= max_epoch)]
            if rows:
                _add_series(chart, reference, x_col, y_col, rows[0], rows[-1], title)
                max_epoch = max(max_epoch, reference.cell(rows[-1], x_col).value)
    if max_epoch:
        chart.x_axis.scaling.min, chart.x_axis.scaling.max = 0, max_epoch
    chart.legend.position, chart.y_axis.number_format = "b", "0"
    chart.display_blanks = "span"  # a line through the epochs the monitor skipped
    chart.width, chart.height = 27, 17  # cm: a landscape page
    sheet.add_chart(chart, "A1")
    _set_print_layout(sheet)
    sheet.page_setup.fitToHeight = 1
    sheet.print_area = CHART_PRINT_AREA  # the chart; its data columns are for reading, not for the printed page


def _add_series(chart, sheet, x_col, y_col, first, last, title, marker=False):
    """marker: a run's kNN points are drawn as markers too, so a run monitored at a few epochs, or only at epoch 0 (the
    network at init), still shows; the chart spans the epochs without a reading."""
    series = Series(Reference(sheet, min_col=y_col, min_row=first, max_row=last),
                    Reference(sheet, min_col=x_col, min_row=first, max_row=last), title=title)
    series.marker.symbol, series.smooth = ("circle" if marker else "none"), False
    if marker:
        series.marker.size = 6
    chart.series.append(series)
