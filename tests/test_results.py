import csv
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from openpyxl.utils import get_column_letter

import results
from conftest import needs
from cli import UserError

REPO = Path(__file__).resolve().parents[1]
LONG_ARGS = {f"option_{k}": f"value number {k}" for k in range(80)}  # ~2,000 characters of JSON, like a real run


def make_run(**overrides):
    run = {"script": "moco_augmented.py", "method": "moco", "dataset": "synthetic", "arch": "resnet18",
           "aug": "ours", "crops": 2, "crop_size": 32, "epochs": 3, "batch_size": 64, "lr": 0.06,
           "knn_top1_final": 41.5, "knn_top1_best": 42.25, "wall_time_s": 12.5, "args": {"lr": 0.06}}
    run.update(overrides)
    return run


def make_curves(epochs=3, offset=0.0):
    return [{"epoch": e, "loss": 7.0 - e, "knn_top1": 30.0 + e + offset, "lr": 0.06, "epoch_s": 4.0}
            for e in range(1, epochs + 1)]


def rows(sheet):
    return [list(r) for r in sheet.iter_rows(values_only=True)]


def records(sheet):
    header, *body = rows(sheet)
    return [dict(zip(header, r)) for r in body]


def read_part(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.read(name).decode()


def test_append_two_runs_writes_runs_curves_chart_and_reference(tmp_path):
    path = tmp_path / "results.xlsx"
    first = results.append_run(path, make_run(), make_curves(3))
    second = results.append_run(path, make_run(aug="original", knn_top1_final=float("nan")), make_curves(2))
    assert (first, second) == ("r0001", "r0002")

    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["summary", "chart", "runs", "curves", "args", "reference"]  # printed in this order
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
    chart_xml = read_part(path, charts[0])
    assert chart_xml.count("<ser>") == 4  # two settings (one run each) + the seed study's two curves
    assert "<v>moco ours (1 run)</v>" in chart_xml and "<v>moco original (1 run)</v>" in chart_xml
    assert "'chart'!$T$5:$T$6" in chart_xml and "'chart'!$U$5:$U$6" in chart_xml  # the second setting's 2 epochs

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


def test_chart_draws_one_line_per_setting_the_mean_over_its_seeds(tmp_path, monkeypatch):
    """Every run used to be a line of its own (13 committed runs, a 15-line legend)."""
    path = tmp_path / "results.xlsx"
    point = lambda epoch, knn: {"epoch": epoch, "loss": 1.0, "knn_top1": knn, "lr": 0.06, "epoch_s": 4.0}  # noqa: E731
    results.append_run(path, make_run(seed=0), [point(1, 30.0), point(2, 40.0)])
    results.append_run(path, make_run(seed=1), [point(1, 21.0), point(2, None)])  # its monitor skipped epoch 2
    results.append_run(path, make_run(aug="original"), [point(1, 10.0)])
    data = [r[18:22] for r in rows(openpyxl.load_workbook(path)["chart"])]
    assert data == [["setting", "epoch", "knn_top1_mean", "runs"],
                    ["moco ours (2 runs)", 1, (30.0 + 21.0) / 2, 2], ["moco ours (2 runs)", 2, 40.0, 2],
                    ["moco original (1 run)", 1, 10.0, 1]]
    assert read_part(path, "xl/charts/chart1.xml").count("<ser>") == 2 + 2  # two settings, the seed study's two
    # the settings with the newest runs; a label names what differs between them
    monkeypatch.setattr(results, "CHART_MAX_SETTINGS", 2)
    results.append_run(path, make_run(aug="original", epochs=5), [point(1, 12.0)])
    chart_xml = read_part(path, "xl/charts/chart1.xml")
    assert chart_xml.count("<ser>") == 2 + 2 and "<v>moco ours 3 ep (2 runs)</v>" not in chart_xml
    assert "<v>moco original 3 ep (1 run)</v>" in chart_xml and "<v>moco original 5 ep (1 run)</v>" in chart_xml


def test_chart_has_a_size_and_an_epoch_axis_from_the_runs(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), make_curves(3))
    results.append_run(path, make_run(epochs=5), make_curves(5))
    ext = re.search(r'<ext cx="(\d+)" cy="(\d+)"', read_part(path, "xl/drawings/drawing1.xml"))
    assert int(ext[1]) > 5_000_000 and int(ext[2]) > 3_000_000  # EMU: more than 14 x 8 cm
    chart_xml = read_part(path, "xl/charts/chart1.xml")
    x_axis = re.search(r"<valAx><axId val=\"10\" />.*?</valAx>", chart_xml)[0]
    assert '<max val="5" />' in x_axis and '<min val="0" />' in x_axis
    # the seed study's curves are drawn over the same epochs (1..5), not over their 200
    assert "'reference'!$I$2:$I$6" in chart_xml and "'reference'!$K$2:$K$6" in chart_xml


def test_chart_without_runs_shows_the_whole_seed_study(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), [])
    chart_xml = read_part(path, "xl/charts/chart1.xml")
    assert chart_xml.count("<ser>") == 2 and "'reference'!$K$2:$K$201" in chart_xml and '<max val="200" />' in chart_xml


def test_runs_sheet_layout_and_args_sheet(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(args=LONG_ARGS, images_per_s=1234.56, linear_top1=55.123), make_curves(2))
    book = openpyxl.load_workbook(path)
    runs = book["runs"]
    widths = {cell.value: runs.column_dimensions[cell.column_letter].width for cell in runs[1]}
    assert all(widths[name] and widths[name] >= len(name) + 2 for name in results.RUN_COLUMNS)
    assert widths["script"] >= len("moco_augmented.py") + 1 and widths["time"] >= len("2025-01-01T00:00:00") + 1
    assert runs.freeze_panes == "B2"
    cells = {cell.value: runs.cell(2, cell.column) for cell in runs[1]}
    for name in ("knn_top1_final", "knn_top1_best", "linear_top1"):
        assert cells[name].number_format == "0.00"
    assert cells["wall_time_s"].number_format == "#,##0.0" and cells["images_per_s"].number_format == "#,##0"
    assert book["curves"].cell(2, 4).number_format == "0.00"  # knn_top1
    assert runs.page_setup.orientation == "landscape" and runs.sheet_properties.pageSetUpPr.fitToPage
    assert runs.page_setup.fitToHeight == 0 and 1 < runs.page_setup.fitToWidth <= 5
    # openpyxl numbers print settings wrongly after a chartsheet: each must name the sheet it is stored for
    names = re.findall(r'<definedName name="_xlnm.Print_\w+" localSheetId="(\d+)">\'(\w+)\'!',
                       read_part(path, "xl/workbook.xml"))
    assert len(names) > 5 and all(book.sheetnames[int(index)] == sheet for index, sheet in names)
    assert runs.print_title_rows == "$1:$1" and runs.print_area == f"'runs'!$A$1:${runs[1][-1].column_letter}$2"

    [arg_record] = records(book["args"])
    assert arg_record["run_id"] == "r0001" and json.loads(arg_record["args"]) == LONG_ARGS
    args_cell = book["args"].cell(2, rows(book["args"])[0].index("args") + 1)
    assert args_cell.alignment.wrap_text and book["args"].column_dimensions[args_cell.column_letter].width >= 80
    assert book["args"].row_dimensions[2].height >= 15 * 15  # tall enough for the wrapped lines


def test_new_run_columns_round_trip_and_unknown_keys_still_refused(tmp_path):
    columns = results.RUN_COLUMNS
    for name, after in (("head", "arch"), ("policy", "aug"), ("seed", "world_size")):
        assert columns.index(name) == columns.index(after) + 1
    assert {"debias", "mochi", "method_options", "args"} <= set(columns)
    path = tmp_path / "results.xlsx"
    policy = [{"op": "ColorJitter", "p": 0.8, "magnitude": 0.4}, {"op": "HorizontalFlip", "p": 0.5}]
    results.append_run(path, make_run(seed=3, head="mlp 2048-128", debias=0.1, mochi="N=1024 s=256 s'=256",
                                      policy=policy, method_options={"moco_k": 4096}), [])
    [record] = records(openpyxl.load_workbook(path)["runs"])
    assert record["seed"] == 3 and record["head"] == "mlp 2048-128" and record["debias"] == 0.1
    assert record["mochi"] == "N=1024 s=256 s'=256"
    assert json.loads(record["policy"]) == policy and json.loads(record["method_options"]) == {"moco_k": 4096}
    indented = json.dumps({"ops": policy}, indent=2)  # what policy_to_json writes: a cell used to show only "}"
    results.append_run(path, make_run(policy=indented), [])
    results.append_search_trials(path, [{**make_trials("t", 1)[0], "policy": indented}])
    cells = [records(openpyxl.load_workbook(path)[sheet])[-1]["policy"] for sheet in ("runs", "search")]
    assert all("\n" not in cell and json.loads(cell) == {"ops": policy} for cell in cells)
    with pytest.raises(ValueError, match="polcy"):
        results.append_run(path, make_run(polcy="x"), [])


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    path = tmp_path / "results.xlsx"
    ours = [(0, 41.0, 43.0, 60.0), (1, 44.5, 45.0, 61.5), (2, 42.0, 46.25, None)]
    for seed, final, best, linear in ours:
        hardware = "cpu" if seed else "NVIDIA H100"  # hardware must not split a group
        results.append_run(path, make_run(seed=seed, knn_top1_final=final, knn_top1_best=best, linear_top1=linear,
                                          hardware=hardware), [])
    results.append_run(path, make_run(aug="original", seed=0, knn_top1_final=40.0, knn_top1_best=40.5), [])
    results.append_run(path, make_run(seed=0, epochs=200, knn_top1_final=80.0, knn_top1_best=float("nan")), [])

    sheet = openpyxl.load_workbook(path)["summary"]
    summary = {(r["dataset"], r["method"], r["aug"], r["epochs"]): r for r in records(sheet)}
    assert len(summary) == 3 and len(records(sheet)) == 3

    def mean_std(values):
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    group = summary[("synthetic", "moco", "ours", 3)]
    assert group["runs"] == 3 and group["seeds"] == "0, 1, 2"
    for metric, values in (("knn_top1_final", [41.0, 44.5, 42.0]), ("knn_top1_best", [43.0, 45.0, 46.25]),
                           ("linear_top1", [60.0, 61.5])):
        mean, std = mean_std(values)
        assert group[f"{metric}_mean"] == round(mean, 2) and group[f"{metric}_std"] == round(std, 2)  # as printed
        assert group[f"{metric}_n"] == len(values)
    single = summary[("synthetic", "moco", "original", 3)]
    assert single["knn_top1_final_mean"] == 40.0 and single["knn_top1_final_std"] is None
    assert single["knn_top1_final_n"] == 1 and single["linear_top1_mean"] is None and single["linear_top1_n"] == 0
    long_run = summary[("synthetic", "moco", "ours", 200)]
    assert long_run["knn_top1_best_n"] == 0 and long_run["knn_top1_final_mean"] == 80.0  # "nan" is not a number
    mean_cell = sheet.cell(2, rows(sheet)[0].index("knn_top1_final_mean") + 1)
    assert isinstance(mean_cell.value, (int, float)) and mean_cell.number_format == "0.00"


def test_summary_is_stored_as_grid_md_and_readme_print_it(tmp_path):
    """A mean of 35.535 was stored in full, and LibreOffice's 0.00 format showed 35.54 where grid.md printed 35.53."""
    path = tmp_path / "results.xlsx"
    for seed, final in ((0, 35.53), (1, 35.54)):
        results.append_run(path, make_run(seed=seed, knn_top1_final=final), [])
    (group,) = records(openpyxl.load_workbook(path)["summary"])
    mean = (35.53 + 35.54) / 2
    assert group["knn_top1_final_mean"] == float(f"{mean:.2f}") == 35.53
    assert group["knn_top1_final_std"] == float(f"{math.sqrt(2 * (35.54 - mean) ** 2):.2f}")


def test_summary_pairs_each_aug_with_the_first_by_seed(tmp_path):
    """Within a comparison (the same setting but for the aug), each aug's kNN top-1 final minus the first-run aug's,
    seed by seed, with its Student-t 95% interval: t(0.975, 2) = 4.302653 from a t-table."""
    path = tmp_path / "results.xlsx"
    scores = {"original": [68.0, 69.0, 70.5], "ours": [70.0, 72.5, 71.0], "ours-clahe": [72.0, 71.5, 73.5]}
    for aug, finals in scores.items():
        for seed, final in enumerate(finals):
            results.append_run(path, make_run(aug=aug, seed=seed, knn_top1_final=final), [])
    results.append_run(path, make_run(aug="ours", seed=0, epochs=200, knn_top1_final=90.0), [])  # another comparison
    summary = {(r["aug"], r["epochs"]): r for r in records(openpyxl.load_workbook(path)["summary"])}
    assert all(summary[key]["vs"] is None for key in [("original", 3), ("ours", 200)])  # the references

    def interval(differences):
        mean = sum(differences) / 3
        half = 4.302653 * math.sqrt(sum((d - mean) ** 2 for d in differences) / 2) / math.sqrt(3)
        return round(mean, 2), round(mean - half, 2), round(mean + half, 2)

    ours, clahe = summary[("ours", 3)], summary[("ours-clahe", 3)]
    assert (ours["vs"], ours["pairs"], ours["ci_excludes_0"]) == ("original", 3, "no")
    assert (ours["knn_final_diff"], ours["knn_final_diff_low"], ours["knn_final_diff_high"]) == interval([2.0, 3.5, 0.5])
    assert (clahe["knn_final_diff"], clahe["knn_final_diff_low"], clahe["knn_final_diff_high"]) == interval([4.0, 2.5, 3.0])
    assert clahe["ci_excludes_0"] == "yes"


def test_summary_keeps_mixing_runs_apart_and_pairs_them_with_the_plain_runs(tmp_path):
    """--mix runs of a setting are their own group, compared seed by seed with the setting's first (plain) runs."""
    path = tmp_path / "results.xlsx"
    for mix, finals in ((None, [70.0, 71.0]), ("imix 1", [72.0, 71.5]), ("unmix 1", [69.0, 70.0])):
        for seed, final in enumerate(finals):
            results.append_run(path, make_run(aug="ours", mix=mix, seed=seed, knn_top1_final=final), [])
    summary = {r["mix"]: r for r in records(openpyxl.load_workbook(path)["summary"])}
    assert summary[None]["knn_top1_final_mean"] == 70.5 and summary[None]["vs"] is None
    assert (summary["imix 1"]["vs"], summary["imix 1"]["pairs"], summary["imix 1"]["knn_final_diff"]) == ("ours", 2, 1.25)
    assert summary["unmix 1"]["knn_final_diff"] == -1.0
    results.append_run(path, make_run(aug="original", mix="imix 1", seed=0, study="other", knn_top1_final=60.0), [])
    results.append_run(path, make_run(aug="ours", seed=0, study="other", knn_top1_final=61.0), [])
    (later,) = [r for r in records(openpyxl.load_workbook(path)["summary"]) if r["study"] == "other" and r["vs"]]
    assert (later["aug"], later["mix"], later["vs"], later["knn_final_diff"]) == ("ours", None, "original, mix imix 1", 1.0)


def test_summary_never_mixes_two_studies_or_backbones(tmp_path):
    """Two studies with the same dataset, method, aug and epochs (and the v1 rows without a study) stay apart, and so do
    two backbone widths or crop sizes within one study."""
    path = tmp_path / "results.xlsx"
    for study, arch, crop, final in [(None, "resnet18", 16, 30.0), (None, "resnet18", 16, 32.0),
                                     ("cpu-recipe", "resnet18 x0.25", 28, 70.0), ("cpu-recipe", "resnet18 x0.25", 28, 74.0),
                                     ("cpu-recipe", "resnet18 x0.5", 28, 80.0), ("cpu-recipe", "resnet18 x0.25", 16, 60.0),
                                     ("aug-study", "resnet18 x0.25", 28, 50.0)]:
        results.append_run(path, make_run(study=study, arch=arch, crop_size=crop, knn_top1_final=final), [])
    summary = {(r["study"], r["arch"], r["crop_size"]): r for r in records(openpyxl.load_workbook(path)["summary"])}
    assert {key: (r["runs"], r["knn_top1_final_mean"]) for key, r in summary.items()} == {
        (None, "resnet18", 16): (2, 31.0), ("cpu-recipe", "resnet18 x0.25", 28): (2, 72.0),
        ("cpu-recipe", "resnet18 x0.5", 28): (1, 80.0), ("cpu-recipe", "resnet18 x0.25", 16): (1, 60.0),
        ("aug-study", "resnet18 x0.25", 28): (1, 50.0)}


def test_summary_keeps_two_precisions_apart(tmp_path):
    """--precision auto is bf16 on one machine and fp32 on another: the same command's seeds must not average across."""
    path = tmp_path / "results.xlsx"
    for precision, seed, final in [("fp32", 0, 80.0), ("fp32", 1, 82.0), ("bf16", 0, 70.0), ("bf16", 1, 71.0)]:
        results.append_run(path, make_run(study="cpu-recipe", precision=precision, seed=seed, knn_top1_final=final), [])
    summary = {r["precision"]: r for r in records(openpyxl.load_workbook(path)["summary"])}
    assert {p: (r["runs"], r["knn_top1_final_mean"]) for p, r in summary.items()} == {"fp32": (2, 81.0),
                                                                                    "bf16": (2, 70.5)}


def test_summary_keeps_two_recipes_of_one_method_apart(tmp_path):
    """BYOL's LARS and SGD runs of one study and epoch budget were averaged into one summary row."""
    path = tmp_path / "results.xlsx"
    for optimizer, lr, seed, final in [("lars", 0.25, 0, 78.0), ("sgd", 0.03, 0, 84.0), ("sgd", 0.03, 1, 85.0),
                                       ("sgd", 0.06, 0, 83.0)]:
        results.append_run(path, make_run(method="byol", optimizer=optimizer, lr=lr, seed=seed,
                                          knn_top1_final=final), [])
    summary = {(r["optimizer"], r["lr"]): r for r in records(openpyxl.load_workbook(path)["summary"])}
    assert {key: (r["runs"], r["knn_top1_final_mean"]) for key, r in summary.items()} == {
        ("lars", 0.25): (1, 78.0), ("sgd", 0.03): (2, 84.5), ("sgd", 0.06): (1, 83.0)}


def test_summary_and_chart_keep_two_settings_of_a_method_option_apart(tmp_path):
    """SwAV with its queue and without it, in one study at one optimizer, lr and budget, were one summary row: the
    setting is also its method options, shown after the statistics (a long text, not a printed title column), and a
    chart line names the options in which it differs from the other lines."""
    path = tmp_path / "results.xlsx"
    queue = {"prototypes": 512, "sinkhorn_eps": 0.05, "queue_length": 1920}
    no_queue = {"prototypes": 512, "sinkhorn_eps": 0.03, "queue_length": 0}
    for options, seed, final in [(queue, 0, 77.0), (no_queue, 0, 83.0), (no_queue, 1, 84.0)]:
        results.append_run(path, make_run(method="swav", study="cpu", method_options=options, seed=seed,
                                          knn_top1_final=final), make_curves())
    book = openpyxl.load_workbook(path)
    summary = {json.loads(r["method_options"])["queue_length"]: r for r in records(book["summary"])}
    assert {q: (r["runs"], r["knn_top1_final_mean"]) for q, r in summary.items()} == {1920: (1, 77.0), 0: (2, 83.5)}
    assert rows(book["summary"])[0][-1] == "method_options"
    assert book["summary"].print_title_cols == f"$A:${get_column_letter(len(results.SUMMARY_KEYS))}"
    chart_xml = read_part(path, "xl/charts/chart1.xml")
    assert "<v>swav ours sinkhorn_eps 0.05, queue_length 1920 (1 run)</v>" in chart_xml
    assert "<v>swav ours sinkhorn_eps 0.03, queue_length 0 (2 runs)</v>" in chart_xml


def test_summary_keeps_validation_scores_apart_from_test_scores(tmp_path):
    """A search scores its base policy on the validation split, then re-checks it on the test set: same study, aug,
    epochs and seed, two different numbers that must not be averaged."""
    path = tmp_path / "results.xlsx"
    validation = "fashionmnist: 54000 train / 6000 validation images (scored instead of test)"
    for data, final in [(validation, 79.65), ("fashionmnist: 60000 train / 10000 test images", 81.0)]:
        results.append_run(path, make_run(study="search", dataset="fashionmnist", aug="original", seed=0, data=data,
                                          knn_top1_final=final), [])
    summary = {r["data"]: r for r in records(openpyxl.load_workbook(path)["summary"])}
    assert {d: (r["runs"], r["knn_top1_final_mean"]) for d, r in summary.items()} == {
        validation: (1, 79.65), "fashionmnist: 60000 train / 10000 test images": (1, 81.0)}


def make_trials(study, n):
    return [{"study": study, "trial": t, "policy": {"ops": [["Solarize", 0.2, 128]]}, "proxy_score": 40.0 + t,
             "state": "COMPLETE", "seconds": 12.5 * t, "seed": 0} for t in range(n)]


def test_search_trials_round_trip(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), make_curves(2))
    results.append_search_trials(path, make_trials("s1", 2))
    results.append_search_trials(path, [{**make_trials("s2", 1)[0], "method": "simclr", "dataset": "cifar10",
                                         "spec": "ours-clahe", "test_top1": 70.25, "state": "PRUNED"}])
    book = openpyxl.load_workbook(path)
    assert book.sheetnames[-2:] == ["search", "reference"] and len(records(book["runs"])) == 1
    trials = records(book["search"])
    assert rows(book["search"])[0] == results.SEARCH_COLUMNS
    assert [(t["study"], t["trial"], t["proxy_score"], t["state"]) for t in trials] == [
        ("s1", 0, 40.0, "COMPLETE"), ("s1", 1, 41.0, "COMPLETE"), ("s2", 0, 40.0, "PRUNED")]
    assert json.loads(trials[0]["policy"]) == {"ops": [["Solarize", 0.2, 128]]} and trials[1]["seconds"] == 12.5
    assert trials[2]["spec"] == "ours-clahe" and trials[2]["test_top1"] == 70.25 and trials[0]["method"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", trials[0]["time"])
    for bad, word in (({**make_trials("s", 1)[0], "proxy": 1}, "proxy"), ({"study": "s", "trial": 0}, "policy")):
        with pytest.raises(ValueError, match=word):
            results.append_search_trials(path, [bad])
    assert len(records(openpyxl.load_workbook(path)["search"])) == 3


def test_search_trials_survive_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "results.xlsx"
    results.append_search_trials(path, make_trials("s", 1))
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(UserError, match="unsaved-.*json"):
        results.append_search_trials(path, make_trials("s", 3))
    assert path.read_bytes() == before
    [fallback] = tmp_path.glob("results.unsaved-*.json")
    assert [t["trial"] for t in json.loads(fallback.read_text())["search_trials"]] == [0, 1, 2]


def _append_after(barrier, path, kind):
    barrier.wait()
    if kind == "search":
        results.append_search_trials(path, make_trials("s", 2))
    else:
        results.append_run(path, make_run(aug=kind), make_curves(2))


def test_concurrent_appends_all_land(tmp_path):
    path = tmp_path / "results.xlsx"
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_append_after, args=(barrier, path, kind))
               for kind in ("original", "ours", "search")]
    for worker in workers:
        worker.start()
    barrier.wait()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    book = openpyxl.load_workbook(path)
    runs = records(book["runs"])
    assert sorted(r["run_id"] for r in runs) == ["r0001", "r0002"]
    assert sorted(r["aug"] for r in runs) == ["original", "ours"] and len(records(book["search"])) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.xlsx"]


def test_no_lock_file_is_left_beside_the_workbook(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), make_curves(1))
    results.append_search_trials(path, make_trials("s", 1))
    assert [p.name for p in tmp_path.iterdir()] == ["results.xlsx"]  # the lock is in the temp dir (test_workbook_store)


def test_check_writable(tmp_path):
    results.check_writable(tmp_path / "new.xlsx")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing.xlsx"
    existing.write_bytes(b"contents")
    os.utime(existing, (1_000_000, 1_000_000))
    results.check_writable(existing)
    assert existing.read_bytes() == b"contents" and existing.stat().st_mtime == 1_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["existing.xlsx"]
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "missing" / "r.xlsx", tmp_path, tmp_path / "file" / "r.xlsx"):
        with pytest.raises(UserError, match="results workbook"):
            results.check_writable(bad)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_check_writable_refuses_proc_even_as_root():
    with pytest.raises(UserError, match="results workbook /proc/results.xlsx: its directory /proc is not writable"):
        results.check_writable("/proc/results.xlsx")


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() == 0, reason="root ignores file permissions")
def test_check_writable_read_only_dir_and_file(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        results.check_writable(tmp_path / "ro" / "r.xlsx")
    (tmp_path / "r.xlsx").write_bytes(b"x")
    (tmp_path / "r.xlsx").chmod(0o444)
    with pytest.raises(UserError, match="the file is not writable"):
        results.check_writable(tmp_path / "r.xlsx")


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


@pytest.mark.parametrize("app_lock", [".~lock.results.xlsx#", "~$results.xlsx"])
def test_a_workbook_open_in_a_spreadsheet_app_is_not_written_and_its_rows_fold_back_later(tmp_path, capsys, app_lock):
    """LibreOffice (.~lock.NAME#) or Excel (~$NAME) has the workbook open: a row appended now used to be overwritten
    when the user saved the sheet. Now it goes to a side file, and the next write after the app closes folds it in."""
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(aug="first"), make_curves(2))
    (tmp_path / app_lock).write_text("user,host,...")
    results.check_writable(path)
    assert "is open in a spreadsheet app" in capsys.readouterr().err  # said at the start of a run
    before = path.read_bytes()
    with pytest.raises(UserError, match="open in a spreadsheet app .*saved to .*results.unsaved-.*json"):
        results.append_run(path, make_run(aug="while open", knn_top1_final=51.25), make_curves(3, offset=1))
    with pytest.raises(UserError, match="open in a spreadsheet app"):
        results.append_search_trials(path, make_trials("open", 2))
    assert path.read_bytes() == before and len(list(tmp_path.glob("results.unsaved-*.json"))) == 2
    (tmp_path / app_lock).unlink()  # the user closes the app
    assert results.append_run(path, make_run(aug="after"), []) == "r0003"
    assert "folded 2 earlier unsaved file(s) back" in capsys.readouterr().out
    book = openpyxl.load_workbook(path)
    runs = records(book["runs"])
    assert [(r["run_id"], r["aug"]) for r in runs] == [("r0001", "first"), ("r0002", "while open"), ("r0003", "after")]
    assert runs[1]["knn_top1_final"] == 51.25 and [r["run_id"] for r in records(book["curves"])].count("r0002") == 3
    assert [r["study"] for r in records(book["search"])] == ["open", "open"]
    assert not list(tmp_path.glob("results.unsaved-*.json"))
    assert {r["aug"] for r in records(book["summary"])} == {"first", "while open", "after"}


def test_user_columns_are_kept(tmp_path):
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), [])
    book = openpyxl.load_workbook(path)
    book["runs"].cell(1, len(results.RUN_COLUMNS) + 1, "notes")
    book["runs"].cell(2, len(results.RUN_COLUMNS) + 1, "my note")
    book.save(path)
    assert results.append_run(path, make_run(script="=not a formula"), []) == "r0002"
    runs = rows(openpyxl.load_workbook(path)["runs"])
    assert runs[1][-1] == "my note" and runs[2][runs[0].index("script")] == "=not a formula"


def test_an_older_workbook_takes_the_new_layout_until_it_has_runs(tmp_path):
    old_columns = [c for c in results.RUN_COLUMNS if c not in ("head", "debias", "mochi", "policy", "seed",
                                                               "method_options")]
    empty, used = tmp_path / "empty.xlsx", tmp_path / "used.xlsx"
    for path, data in ((empty, []), (used, [["r0001", "2024-01-01T00:00:00", "moco_augmented.py"]])):
        book = openpyxl.Workbook()
        book.active.title = "runs"
        for values in [[*old_columns, "notes"], *data]:
            book["runs"].append(values)
        book.save(path)
        results.append_run(path, make_run(seed=1), [])
    assert rows(openpyxl.load_workbook(empty)["runs"])[0] == [*results.RUN_COLUMNS, "notes"]
    header, first, second = rows(openpyxl.load_workbook(used)["runs"])
    assert header == [*old_columns, "notes", "seed"]
    assert first[:3] == ["r0001", "2024-01-01T00:00:00", "moco_augmented.py"]
    assert second[0] == "r0002" and second[-1] == 1


def test_unknown_key_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="knn_top_1"):
        results.append_run(tmp_path / "r.xlsx", make_run(knn_top_1=3.0), [])
    with pytest.raises(ValueError, match="run_id"):
        results.append_run(tmp_path / "r.xlsx", make_run(run_id="mine"), [])
    assert not (tmp_path / "r.xlsx").exists()


def test_default_path_is_repo_root():
    assert results.default_path() == REPO / "results.xlsx"


def test_reference_sheet_holds_every_published_number_with_its_source(tmp_path):
    """reference/published.csv is the one copy of the published numbers: the sheet shows each of its rows, as
    numbers, and no number comes without a source."""
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), [])
    older = openpyxl.load_workbook(path)  # a workbook written before published.csv gained rows
    older["reference"].delete_rows(3, 30)
    older.save(path)
    results.append_run(path, make_run(), [])
    sheet = openpyxl.load_workbook(path)["reference"]
    shown = [row[:7] for row in sheet.iter_rows(values_only=True) if row[0] is not None]  # the seed curves: right
    with open(REPO / "reference" / "published.csv", newline="") as file:
        header, *lines = list(csv.reader(file))
    assert shown[0] == tuple(header) == tuple(results.REFERENCE_COLUMNS) and len(lines) >= 23
    assert shown[1:] == [(*line[:4], int(line[4]), line[5], float(line[6])) for line in lines]
    assert all(line[0] and 0 < float(line[6]) <= 100 for line in lines)
    assert ("seed augmentation study (soonwonh/Modified-Moco, Moco_Cifar10.xlsx)", 200, 85.01) in \
        [(line[0], int(line[4]), float(line[6])) for line in lines]


# --- in a real spreadsheet app: LibreOffice prints every sheet in order, the chartsheet on a page of its own ----------

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")


def render_pdf_pages(workbooks, tmp_path):
    """Convert workbooks to PDF with LibreOffice headless; return {workbook: [text of each page]}."""
    needs("LibreOffice (soffice) and poppler-utils (pdftoppm, pdftotext)",
          SOFFICE and shutil.which("pdftoppm") and shutil.which("pdftotext"))
    out = tmp_path / "pdf"
    profile = (tmp_path / "lo-profile").as_uri()  # a private profile: concurrent soffice runs do not clash
    subprocess.run([SOFFICE, f"-env:UserInstallation={profile}", "--headless", "--convert-to", "pdf", "--outdir",
                    str(out), *map(str, workbooks)], check=True, capture_output=True, timeout=300)
    pages = {}
    for workbook in workbooks:
        pdf = out / f"{Path(workbook).stem}.pdf"
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True)
        pages[workbook] = text.stdout.split("\f")[:-1]
    return pages


def rasterise(pdf, page, tmp_path):
    from PIL import Image  # Pillow comes with torchvision

    prefix = tmp_path / f"{pdf.stem}-page"
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", str(page), "-l", str(page), str(pdf), str(prefix)],
                   check=True, timeout=120)
    [png] = tmp_path.glob(f"{prefix.name}-*{page}.png")
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def ink_and_colour(pixels):
    """Share of non-white pixels, and of coloured ones (the series lines; text, axes and grid are grey)."""
    non_white = (pixels < 235).any(axis=-1).mean()
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1) > 60).mean()
    return non_white, coloured


def test_workbook_renders_in_libreoffice(tmp_path, monkeypatch):
    full, empty = tmp_path / "full.xlsx", tmp_path / "empty.xlsx"
    for k, aug in enumerate(("original", "ours", "ours-clahe")):
        results.append_run(full, make_run(aug=aug, epochs=30, args=LONG_ARGS, seed=k),
                           [{"epoch": e, "loss": 7 - e / 10, "knn_top1": 30 + 12 * (1 - 0.9 ** e) + 2 * k}
                            for e in range(1, 31)])
    monkeypatch.setattr(results, "SEED_SERIES", [])
    results.append_run(empty, make_run(args=LONG_ARGS), [])  # the same chart, with no series to draw
    # the committed v1 runs: kNN at epochs 4 and 8 only, and a run at init with one point; none of them used to show
    sparse = tmp_path / "sparse.xlsx"
    results.append_run(sparse, make_run(epochs=8), [{"epoch": e, "loss": 7 - e / 10, "knn_top1": 30.0 + e if e % 4 == 0
                                                     else None} for e in range(1, 9)])
    results.append_run(sparse, make_run(epochs=0), [{"epoch": 0, "loss": None, "knn_top1": 58.0}])
    pages = render_pdf_pages([full, empty, sparse], tmp_path)
    sparse_page = next(i for i, text in enumerate(pages[sparse], 1) if "kNN top-1 by epoch" in text)
    sparse_colour = ink_and_colour(rasterise(tmp_path / "pdf" / "sparse.pdf", sparse_page, tmp_path))[1]

    chart_pages = [[i for i, text in enumerate(pages[book], 1) if "kNN top-1 by epoch" in text]
                   for book in (full, empty)]
    assert all(len(found) == 1 for found in chart_pages), f"the chart's title is on pages {chart_pages}"
    full_ink, full_colour = ink_and_colour(rasterise(tmp_path / "pdf" / "full.pdf", chart_pages[0][0], tmp_path))
    empty_ink, empty_colour = ink_and_colour(rasterise(tmp_path / "pdf" / "empty.pdf", chart_pages[1][0], tmp_path))
    assert full_ink > 0.01 and full_ink > empty_ink
    assert full_colour > 0.002 and full_colour > 5 * empty_colour + 0.001, (full_colour, empty_colour)
    assert sparse_colour > 2 * empty_colour + 0.0005, (sparse_colour, empty_colour)
    legend = pages[full][chart_pages[0][0] - 1]
    assert "moco ours-clahe (1 run)" in legend and "seed study: 7 transforms" in legend

    # Printed as a person reads it: the summary, the chart (without its data columns), then the runs, script not cut
    # off, and the long args only on the `args` sheet
    runs_page = next(i for i, text in enumerate(pages[full], 1) if "moco_augmented.py" in text)
    # (the summary prints on 4 pages side by side, its 12 key columns on each)
    assert "knn_top1_final_mean" in pages[full][0] and chart_pages[0][0] < runs_page <= 6, (chart_pages, runs_page)
    assert not any("knn_top1_mean" in text for text in pages[full])
    args_page = next(i for i, text in enumerate(pages[full], 1) if "option_79" in text)
    assert args_page > runs_page


def test_a_workbook_of_another_layout_is_refused_before_training(tmp_path):
    """A `runs` sheet without run_id used to raise a ValueError after training (the row went to .unsaved-*.json)."""
    path = tmp_path / "foreign.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "runs"
    book.active.append(["experiment", "accuracy"])
    book.active.append(["mine", 91.0])
    book.save(path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="its `runs` sheet has no run_id column"):
        results.check_writable(path)
    assert path.read_bytes() == before
    header_only = tmp_path / "header-only.xlsx"
    book.active.delete_rows(2)
    book.save(header_only)
    results.check_writable(header_only)  # no rows yet: the append lays it out anew
    (tmp_path / "damaged.xlsx").write_bytes(b"not a zip")
    results.check_writable(tmp_path / "damaged.xlsx")  # left to the append, which moves it aside with a note


def test_a_broken_published_csv_costs_no_row(tmp_path, monkeypatch, capfd):
    """The reference sheet is rebuilt on every write; a bad edit of published.csv leaves it as it was, in one line."""
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(), [])
    broken = tmp_path / "published.csv"
    broken.write_text(",".join(results.REFERENCE_COLUMNS) + "\nsome paper,MoCo,CIFAR-10,ResNet-18,200,kNN,~85\n")
    monkeypatch.setattr(results, "PUBLISHED_CSV", broken)
    assert results.append_run(path, make_run(aug="second"), []) == "r0002"
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: the reference sheet was left as it was") and "~85" in err
    reference = openpyxl.load_workbook(path)["reference"]
    assert reference.cell(2, 7).value == 82.6 and reference.max_row > 20  # the sheet of the first write


def test_a_corrupt_workbook_is_moved_aside_and_the_row_lands_in_a_new_one(tmp_path, capfd):
    path = tmp_path / "results.xlsx"
    path.write_bytes(b"not a zip file")
    run_id = results.append_run(path, make_run(), make_curves(1))
    assert rows(openpyxl.load_workbook(path)["runs"])[1][0] == run_id == "r0001"
    assert len(list(tmp_path.glob("results.corrupt-*.xlsx"))) == 1 and "moved it to" in capfd.readouterr().err


def test_long_texts_fit_their_cells(tmp_path):
    """The reference sheet's config column was cut at the next column and `ours-brightness_contrast` at 22
    characters in `summary`."""
    path = tmp_path / "results.xlsx"
    results.append_run(path, make_run(aug="ours-brightness_contrast"), [])
    book = openpyxl.load_workbook(path)
    reference = book["reference"]
    for r in range(2, len(results.published()) + 2):
        config = reference.cell(r, 4)
        lines_shown = reference.row_dimensions[r].height / 15 if reference.row_dimensions[r].height else 1
        assert config.alignment.wrap_text and lines_shown * reference.column_dimensions["D"].width >= len(config.value)
        assert reference.column_dimensions["A"].width >= len(reference.cell(r, 1).value)  # used to run into `method`
    summary = book["summary"]
    aug = rows(summary)[0].index("aug") + 1
    assert summary.column_dimensions[openpyxl.utils.get_column_letter(aug)].width >= len("ours-brightness_contrast")
