"""README's methods table, from the study's rows of results.xlsx (methods.sh writes them):
    python study-fashionmnist-cpu/methods_table.py [results.xlsx]
Per method: its trained runs (aug `ours`) and the same network at init (`--epochs 0`, aug `eval`), seed by seed."""
import sys
from pathlib import Path

import openpyxl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import mean_std, paired_difference  # noqa: E402

STUDY, METHODS = "fashionmnist-cpu", ["moco", "simclr", "byol", "simsiam", "swav", "supervised"]


def study_rows(path):
    sheet = openpyxl.load_workbook(path, read_only=True)["runs"]
    rows = sheet.iter_rows(values_only=True)
    header = next(rows)
    return [row for row in (dict(zip(header, values)) for values in rows) if row["study"] == STUDY]


def main(path="results.xlsx"):
    rows = study_rows(path)
    print("| method | seeds | kNN top-1 final | kNN top-1 best | linear top-1 | the same network at init: kNN / linear "
          "| kNN - init, paired | minutes a run | images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in METHODS:
        trained = [r for r in rows if r["method"] == method and r["epochs"]]
        init = [r for r in rows if r["method"] == method and not r["epochs"]]
        if not trained:
            continue
        by_seed = lambda runs: {r["seed"]: r["knn_top1_final"] for r in runs}
        gain = paired_difference(by_seed(trained), by_seed(init))
        if gain is not None:
            gain = f"{gain.mean:+.2f}" + ("" if gain.low is None else f" [{gain.low:.2f}, {gain.high:.2f}]")
        column = lambda runs, name: mean_std([r[name] for r in runs])
        print(f"| {method} | {', '.join(str(r['seed']) for r in trained)} | {column(trained, 'knn_top1_final')} | "
              f"{column(trained, 'knn_top1_best')} | {column(trained, 'linear_top1')} | "
              f"{column(init, 'knn_top1_final')} / {column(init, 'linear_top1')} | {gain or ''} | "
              f"{mean_std([r['wall_time_s'] / 60 for r in trained])} | {column(trained, 'images_per_s')} |")
    pixels = [r for r in rows if r["method"] == "pixels"][:1]
    if pixels:
        knn, linear = pixels[0]["knn_top1_final"], pixels[0]["linear_top1"]
        print(f"| raw pixels (28 px) | | {knn:.2f} | | {linear:.2f} | | | | |")


if __name__ == "__main__":
    main(*sys.argv[1:])
