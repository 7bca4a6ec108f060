"""README's tables of the study, from its rows of results.xlsx:
    python study-fashionmnist-cpu/methods_table.py [results.xlsx]            # the methods table (methods.sh)
    python study-fashionmnist-cpu/methods_table.py --mixing [results.xlsx]   # MoCo with --mix (mixing.sh)
    python study-fashionmnist-cpu/methods_table.py --precision [results.xlsx]  # MoCo in bf16 vs fp32 (bf16.sh)
    python study-fashionmnist-cpu/methods_table.py --augmentations [results.xlsx]  # the seed's specs (augmentations.sh)
    python study-fashionmnist-cpu/methods_table.py --proxy [results.xlsx]    # the search's proxy vs the study
Per method: its trained runs (aug `ours`, no mixing) and the same network at init (`--epochs 0`, aug `eval`), seed by
seed. Augmentations: MoCo's runs of the seed's five specs, each paired seed by seed with `original` and with `ours`.
Mixing: MoCo's runs of each --mix kind against its plain runs, seed by seed. Precision: MoCo's bf16 runs (study
fashionmnist-cpu-bf16) against its fp32 runs, seed by seed, and their curves epoch by epoch. Proxy: the seed's five
specs as the study scores them (MoCo, 5 epochs, kNN on the test set, mean over seeds) and as each proxy study scores
them (augmentations.sh step 2), and Spearman's rank correlation of each with the study; then the same for the study's
own test kNN after each earlier epoch (the budget alone, without a validation split's noise)."""
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import openpyxl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results import options_apart  # noqa: E402
from stats import by_seed, mean_std, paired_difference, rank_agreement  # noqa: E402

STUDY, METHODS = "fashionmnist-cpu", ["moco", "simclr", "byol", "simsiam", "swav", "supervised"]
SPECS = ["original", "ours", "ours-solarize", "ours-clahe", "ours-brightness_contrast"]  # the seed's comparison


def sheet_rows(path, name):
    rows = openpyxl.load_workbook(path, read_only=True)[name].iter_rows(values_only=True)
    header = next(rows)
    return [dict(zip(header, values)) for values in rows]


def study_rows(runs, study=STUDY, precision="fp32"):
    """The study's runs in one precision: README's commands without --precision train bf16 on a CPU with AMX."""
    return [row for row in runs if row["study"] == study and row["precision"] == precision]


def methods_table(rows):
    """A row per method, epoch budget, optimizer and method options (a method whose recipe changed keeps its earlier
    runs' row); the last column names the options in which a method's rows differ."""
    print("| method | epochs | seeds | kNN top-1 final | kNN top-1 best | linear top-1 | the same network at init: kNN / "
          "linear | kNN - init, paired | minutes a run | images/s | optimizer, lr | hardware | options apart |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ours = [r for r in rows if r["epochs"] and r["aug"] == "ours" and not r.get("mix")]
    recipe = lambda r: (r["method"], r["epochs"], r.get("optimizer") or "", r.get("lr") or 0,
                        r.get("method_options") or "{}")
    groups = sorted({recipe(r) for r in ours if r["method"] in METHODS},
                    key=lambda group: (METHODS.index(group[0]), *group[1:]))
    apart = dict(zip(groups, options_apart([(group[0], json.loads(group[-1])) for group in groups])))
    for group in groups:
        (method, epochs, optimizer, lr, _), trained = group, [r for r in ours if recipe(r) == group]
        # each out dir of a method runs its network at init: the same run, so one a seed (the later, as by_seed)
        seeds = {r["seed"] for r in trained}
        init = list({r["seed"]: r for r in rows if r["method"] == method and not r["epochs"]
                     and r["seed"] in seeds}.values())  # the row's own seeds
        gain = paired_difference(by_seed(trained), by_seed(init))
        if gain is not None:
            gain = f"{gain.mean:+.2f}" + ("" if gain.low is None else f" [{gain.low:.2f}, {gain.high:.2f}]")
        column = lambda runs, name: mean_std([r[name] for r in runs])
        print(f"| {method} | {epochs} | {', '.join(str(r['seed']) for r in trained)} | {column(trained, 'knn_top1_final')} | "
              f"{column(trained, 'knn_top1_best')} | {column(trained, 'linear_top1')} | "
              f"{column(init, 'knn_top1_final')} / {column(init, 'linear_top1')} | {gain or ''} | "
              f"{mean_std([r['wall_time_s'] / 60 for r in trained])} | {column(trained, 'images_per_s')} | "
              f"{f'{optimizer} {lr:g}' if optimizer else ''} | {hardware(trained)} | {apart[group]} |")
    pixels = [r for r in rows if r["method"] == "pixels"][:1]
    if pixels:
        knn, linear = pixels[0]["knn_top1_final"], pixels[0]["linear_top1"]
        print(f"| raw pixels (28 px) | | | {knn:.2f} | | {linear:.2f} | | | | | | | |")


def hardware(runs):
    """Each machine that ran some of the runs, with how many when they differ: minutes and images/s are their mean."""
    counts = Counter(run.get("hardware") or "?" for run in runs)
    return " / ".join(name if len(counts) == 1 else f"{name} ({n})" for name, n in counts.items())


def augmentations_table(rows):
    """Each spec paired seed by seed with `original` (the seed study's comparison) and, for the ablations and a
    searched policy (a policy file), with `ours` (what removing one op costs; whether the search beat it)."""
    moco = [r for r in rows if r["method"] == "moco" and r["epochs"] == 5 and not r.get("mix")]
    print("| spec | seeds | kNN top-1 final | linear top-1 | kNN final vs original, paired (95% CI) "
          "| linear vs original, paired (95% CI) | kNN final vs ours, paired (95% CI) | linear vs ours, paired (95% CI) |")
    print("|---|---|---|---|---|---|---|---|")
    paired = lambda runs, reference, metric: ("" if runs[0]["aug"] == reference else str(paired_difference(
        by_seed(runs, metric), by_seed([r for r in moco if r["aug"] == reference], metric))))
    for spec in [*SPECS, *sorted({r["aug"] for r in moco if r["aug"].endswith(".json")})]:  # then searched policies
        runs = sorted((r for r in moco if r["aug"] == spec), key=lambda r: r["seed"])
        if not runs:
            continue
        column = lambda name: mean_std([r[name] for r in runs])
        print(f"| {spec} | {', '.join(str(r['seed']) for r in runs)} | {column('knn_top1_final')} | "
              f"{column('linear_top1')} | {paired(runs, 'original', 'knn_top1_final')} | "
              f"{paired(runs, 'original', 'linear_top1')} | "
              f"{'' if spec == 'original' else paired(runs, 'ours', 'knn_top1_final')} | "
              f"{'' if spec == 'original' else paired(runs, 'ours', 'linear_top1')} |")


def mixing_table(rows):
    moco = [r for r in rows if r["method"] == "moco" and r["epochs"] and r["aug"] == "ours"]
    plain = [r for r in moco if not r.get("mix")]
    print("| MoCo | seeds | kNN top-1 final | kNN top-1 best | linear top-1 | kNN final vs plain, paired (95% CI) "
          "| linear vs plain, paired (95% CI) | minutes a run | images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mix in [None, *sorted({r["mix"] for r in moco if r.get("mix")})]:
        runs = [r for r in moco if r.get("mix") == mix]
        column = lambda name: mean_std([r[name] for r in runs])
        paired = ["" if mix is None else str(paired_difference(by_seed(runs, metric), by_seed(plain, metric)))
                  for metric in ("knn_top1_final", "linear_top1")]
        print(f"| {f'--mix {mix}' if mix else 'plain'} | {', '.join(str(r['seed']) for r in runs)} | "
              f"{column('knn_top1_final')} | {column('knn_top1_best')} | {column('linear_top1')} | {paired[0]} | "
              f"{paired[1]} | {mean_std([r['wall_time_s'] / 60 for r in runs])} | {column('images_per_s')} |")


def precision_table(path, all_runs):
    runs = {"fp32": [r for r in study_rows(all_runs) if r["method"] == "moco" and r["epochs"] and r["aug"] == "ours"
                     and not r.get("mix")],
            "bf16": [r for r in study_rows(all_runs, STUDY + "-bf16", "bf16") if r["method"] == "moco" and r["epochs"]]}
    seeds = sorted({r["seed"] for r in runs["bf16"]} & {r["seed"] for r in runs["fp32"]})  # the pairs
    runs = {precision: [r for r in group if r["seed"] in seeds] for precision, group in runs.items()}
    print("| MoCo | seeds | kNN top-1 final | linear top-1 | kNN final vs fp32, paired (95% CI) "
          "| linear vs fp32, paired (95% CI) | minutes a run | images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, group in runs.items():
        column = lambda name: mean_std([r[name] for r in group])
        paired = ["" if precision == "fp32" else str(paired_difference(by_seed(group, metric),
                                                                       by_seed(runs["fp32"], metric)))
                  for metric in ("knn_top1_final", "linear_top1")]
        print(f"| {precision} | {', '.join(str(r['seed']) for r in group)} | {column('knn_top1_final')} | "
              f"{column('linear_top1')} | {paired[0]} | {paired[1]} | "
              f"{mean_std([r['wall_time_s'] / 60 for r in group])} | {column('images_per_s')} |")
    curves = sheet_rows(path, "curves")
    print("\n| seed | epoch | loss fp32 / bf16 | kNN top-1 fp32 / bf16 | epoch s fp32 / bf16 |\n|---|---|---|---|---|")
    for seed in seeds:
        pair = [[c for c in curves if c["run_id"] == next(r["run_id"] for r in runs[p] if r["seed"] == seed)]
                for p in ("fp32", "bf16")]
        for a, b in zip(*pair):
            print(f"| {seed} | {a['epoch']} | {a['loss']:.4f} / {b['loss']:.4f} | {a['knn_top1']:.2f} / "
                  f"{b['knn_top1']:.2f} | {a['epoch_s']:.0f} / {b['epoch_s']:.0f} |")


def proxy_table(path, runs):
    """Each proxy is a study named fashionmnist-cpu-proxy[-VARIANT] (augmentations.sh step 2): its column and its rank
    correlation with the study. Then the study's own test kNN after each earlier epoch ranked against its final: at
    MoCo's constant lr (--no-cos) epoch E of a 5-epoch run is what an E-epoch run trains, so this is the budget alone,
    scored on the whole test set."""
    study = [r for r in study_rows(runs) if r["method"] == "moco" and r["epochs"] == 5 and not r.get("mix")]
    proxies = sorted({r["study"] for r in runs if (r["study"] or "").startswith(STUDY + "-proxy")})
    proxies = {name: [r for r in runs if r["study"] == name] for name in proxies}  # a proxy's precision is its own
    cell = lambda runs, spec: (f"{mean_std([r['knn_top1_final'] for r in runs if r['aug'] == spec])} "
                               f"({', '.join(str(r['seed']) for r in runs if r['aug'] == spec) or 'not run'})")
    precisions = {name: ", ".join(sorted({r["precision"] for r in proxy})) for name, proxy in proxies.items()}
    columns = "".join(f" {name} ({precisions[name]}): validation kNN top-1 (seeds) |" for name in proxies)
    print(f"| spec | study: kNN top-1 final (seeds) |{columns}")
    print(f"|---|---|{'---|' * len(proxies)}")
    for spec in SPECS:
        print(f"| {spec} | {cell(study, spec)} | {' | '.join(cell(proxy, spec) for proxy in proxies.values())} |")
    mean = lambda runs, spec: statistics.fmean(values) if (values := [r["knn_top1_final"] for r in runs
                                                                       if r["aug"] == spec]) else None
    study_score = {spec: mean(study, spec) for spec in SPECS}
    ranked = lambda runs: rank_agreement({spec: mean(runs, spec) for spec in SPECS}, study_score)  # noqa: E731
    shown = lambda rho: "n/a (under 3 specs in both)" if rho is None else f"{rho:.2f}"  # noqa: E731
    print()
    for name, proxy in proxies.items():
        print(f"Spearman's rank correlation of {name} with the study: {shown(ranked(proxy))}")
    knn_at = {(c["run_id"], c["epoch"]): c["knn_top1"] for c in sheet_rows(path, "curves")}
    for epoch in range(1, max((r["epochs"] for r in study), default=0)):
        stopped = [{**r, "knn_top1_final": knn_at[r["run_id"], epoch]} for r in study  # as if each run ended there
                   if knn_at.get((r["run_id"], epoch)) is not None]
        per_seed = [ranked([r for r in stopped if r["seed"] == seed]) for seed in sorted({r["seed"] for r in study})]
        print(f"The study's test kNN after epoch {epoch}, ranked against its final: {shown(ranked(stopped))} (mean "
              f"over seeds); seed by seed {', '.join(shown(rho) for rho in per_seed)}")


def main(*argv):
    path = next((a for a in argv if not a.startswith("--")), "results.xlsx")
    runs = sheet_rows(path, "runs")  # read once; every table filters it
    if "--precision" in argv:
        precision_table(path, runs)
    elif "--augmentations" in argv:
        augmentations_table(study_rows(runs))
    elif "--proxy" in argv:
        proxy_table(path, runs)
    else:
        ("--mixing" in argv and mixing_table or methods_table)(study_rows(runs))


if __name__ == "__main__":
    main(*sys.argv[1:])
