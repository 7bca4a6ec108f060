"""README's study tables (study-fashionmnist-cpu/methods_table.py) from a small results.xlsx written by results.py."""
import importlib.util
import math
import statistics
from pathlib import Path

import results

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("methods_table", REPO / "study-fashionmnist-cpu" / "methods_table.py")
methods_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(methods_table)
T_975_DF2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (a printed table's 4.303)


def study_run(aug, seed, knn, linear, epochs=5, **overrides):
    return {"study": "fashionmnist-cpu", "script": "search_augment.py", "method": "moco", "dataset": "fashionmnist",
            "arch": "resnet18", "aug": aug, "crop_size": 28, "epochs": epochs, "precision": "fp32", "seed": seed,
            "knn_top1_final": knn, "knn_top1_best": knn, "linear_top1": linear, "wall_time_s": 600.0,
            "images_per_s": 300.0, **overrides}


def study_workbook(tmp_path):
    path = tmp_path / "results.xlsx"
    knn = {"original": [81.0, 80.0, 82.0], "ours": [83.0, 82.5, 84.0], "ours-solarize": [82.0, 82.5, 83.5]}
    rank = {"original": 1, "ours": 3, "ours-solarize": 2}  # the study's order of the three specs
    for aug, scores in knn.items():
        for seed, score in enumerate(scores):  # epoch 1 in reverse order, epochs 2-4 in the study's, on every seed
            curve = [{"epoch": e, "knn_top1": 70.0 + seed + (4 - rank[aug] if e == 1 else rank[aug])}
                     for e in (1, 2, 3, 4)]
            results.append_run(path, study_run(aug, seed, score, score + 3), [*curve, {"epoch": 5, "knn_top1": score}])
    for seed in range(3):
        results.append_run(path, study_run("eval", seed, 75.0, 78.0, epochs=0), [])
    results.append_run(path, study_run("ours", 0, 70.0, 71.0, mix="imix"), [])  # another study's row, not in the tables
    results.append_run(path, study_run("ours", 1, 99.0, 99.0, precision="bf16"), [])
    return path, knn


def table(text, first_cell):
    """The cells of the markdown row whose first cell is `first_cell`."""
    return next([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
                if line.startswith(f"| {first_cell} |"))


def test_methods_table_row_is_the_ours_runs_alone(tmp_path, capsys):
    path, knn = study_workbook(tmp_path)
    methods_table.main(str(path))
    moco = table(capsys.readouterr().out, "moco")
    assert moco[1:3] == ["5", "0, 1, 2"]  # not the other specs', the mixing's or the bf16 runs' seeds
    assert moco[3] == f"{statistics.mean(knn['ours']):.2f} ± {statistics.stdev(knn['ours']):.2f}"
    gain = [k - 75.0 for k in knn["ours"]]
    assert moco[7].startswith(f"+{statistics.mean(gain):.2f}")


def test_methods_table_gives_a_longer_recipe_its_own_row(tmp_path, capsys):
    path, knn = study_workbook(tmp_path)
    longer = [84.0, 86.0]
    for seed, score in enumerate(longer):
        results.append_run(path, study_run("ours", seed, score, score + 3, epochs=8), [])
    results.append_run(path, study_run("eval", 0, 77.0, 78.0, epochs=0), [])  # its own out dir's init run of seed 0
    methods_table.main(str(path))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| moco |")]
    assert [row.split("|")[2].strip() for row in rows] == ["5", "8"]
    eight = [cell.strip() for cell in rows[1].strip("|").split("|")]
    assert eight[2] == "0, 1" and eight[3] == f"{statistics.mean(longer):.2f} ± {statistics.stdev(longer):.2f}"
    init = [77.0, 75.0]  # the row's seeds' init runs, one a seed: the later of seed 0's two (as the pairing takes it)
    assert eight[6].startswith(f"{statistics.mean(init):.2f} ± {statistics.stdev(init):.2f} / ")
    assert eight[7].startswith(f"+{statistics.mean([k - i for k, i in zip(longer, init)]):.2f}")


def test_methods_table_gives_another_optimizer_at_the_same_epochs_its_own_row(tmp_path, capsys):
    path, _ = study_workbook(tmp_path)
    for seed, score in enumerate([85.0, 86.0]):
        results.append_run(path, study_run("ours", seed, score, score + 3, optimizer="lars", lr=0.25), [])
    methods_table.main(str(path))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| moco |")]
    assert [(row[2], row[3], row[-3]) for row in rows] == [("0, 1, 2", "83.17 ± 0.76", ""),
                                                           ("0, 1", "85.50 ± 0.71", "lars 0.25")]


def test_methods_table_gives_other_method_options_their_own_row_and_names_them(tmp_path, capsys):
    """Two SwAV settings at one optimizer, lr and budget (--sinkhorn-eps 0.05 and 0.02) are two recipes."""
    path = tmp_path / "results.xlsx"
    options = lambda eps: f'{{"prototypes": 512, "sinkhorn_eps": {eps}, "queue_length": 1920}}'
    for eps, seed, knn in [(0.05, 0, 77.0), (0.02, 0, 80.0), (0.02, 1, 82.0)]:
        results.append_run(path, study_run("ours", seed, knn, knn + 3, method="swav", optimizer="adam",
                                           lr=5e-4, method_options=options(eps)), [])
    methods_table.main(str(path))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| swav |")]
    assert [(row[2], row[3], row[-1]) for row in rows] == [("0, 1", "81.00 ± 1.41", "sinkhorn_eps 0.02"),
                                                           ("0", "77.00", "sinkhorn_eps 0.05")]


def test_methods_table_names_each_machine_that_ran_a_row(tmp_path, capsys):
    """Minutes and images/s are means over the row's runs: two 2-core machines trained at speeds 2x apart."""
    path = tmp_path / "results.xlsx"
    for seed, machine in enumerate(["Intel Xeon (2 cores)", "AMD EPYC (2 cores)", "AMD EPYC (2 cores)"]):
        results.append_run(path, study_run("ours", seed, 83.0, 86.0, hardware=machine), [])
    results.append_run(path, study_run("ours", 0, 90.0, 91.0, method="supervised", hardware="AMD EPYC (2 cores)"), [])
    methods_table.main(str(path))
    out = capsys.readouterr().out
    assert table(out, "moco")[-2] == "Intel Xeon (2 cores) (1) / AMD EPYC (2 cores) (2)"
    assert table(out, "supervised")[-2] == "AMD EPYC (2 cores)"


def test_augmentations_table_pairs_each_spec_with_original_seed_by_seed(tmp_path, capsys):
    path, knn = study_workbook(tmp_path)
    methods_table.main("--augmentations", str(path))
    out = capsys.readouterr().out
    assert table(out, "original")[4:] == ["", "", "", ""]
    assert table(out, "ours")[6:] == ["", ""]
    solarize_vs_ours = [a - b for a, b in zip(knn["ours-solarize"], knn["ours"])]  # -1.0, 0.0, -0.5
    assert table(out, "ours-solarize")[6].startswith(f"{sum(solarize_vs_ours) / 3:+.2f} [")
    for spec in ("ours", "ours-solarize"):
        row = table(out, spec)
        assert row[1] == "0, 1, 2"
        differences = [a - b for a, b in zip(knn[spec], knn["original"])]
        mean = sum(differences) / 3
        half = T_975_DF2 * math.sqrt(sum((d - mean) ** 2 for d in differences) / 2) / math.sqrt(3)
        assert row[4].startswith(f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]")
        assert row[4] == row[5]  # linear is kNN + 3 on every run: the same differences
    assert table(out, "ours")[4].endswith("*") and not table(out, "ours-solarize")[4].endswith("*")
    assert "ours-clahe" not in out  # not run yet: no row


def test_augmentations_table_pairs_a_searched_policy_file_with_ours(tmp_path, capsys):
    path, knn = study_workbook(tmp_path)
    searched = [84.0, 82.0, 85.5]
    for seed, score in enumerate(searched):
        results.append_run(path, study_run("study/searched.json", seed, score, score + 3), [])
    methods_table.main("--augmentations", str(path))
    row = table(capsys.readouterr().out, "study/searched.json")
    differences = [a - b for a, b in zip(searched, knn["ours"])]  # +1.0, -0.5, +1.5
    mean = sum(differences) / 3
    half = T_975_DF2 * math.sqrt(sum((d - mean) ** 2 for d in differences) / 2) / math.sqrt(3)
    assert row[1] == "0, 1, 2" and row[6] == f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
    assert row[7] == row[6]  # linear is kNN + 3 on every run: the same differences


def test_proxy_table_ranks_each_proxy_against_the_study(tmp_path, capsys):
    path, knn = study_workbook(tmp_path)  # study order: ours 83.17 > ours-solarize 82.67 > original 81.00
    proxies = {"fashionmnist-cpu-proxy": {"original": 60.0, "ours": 50.0, "ours-solarize": 55.0},  # reversed: -1
               "fashionmnist-cpu-proxy-val5000": {"original": 60.0, "ours": 70.0, "ours-solarize": 65.0}}  # same: 1
    for study, scores in proxies.items():
        for aug, score in scores.items():
            precision = "bf16" if study.endswith("val5000") else "fp32"  # a proxy may run in its own precision
            results.append_run(path, study_run(aug, 0, score, None, epochs=2, study=study, precision=precision), [])
    methods_table.main("--proxy", str(path))
    out = capsys.readouterr().out
    assert table(out, "ours")[2:] == ["50.00 (0)", "70.00 (0)"]
    assert "| fashionmnist-cpu-proxy-val5000 (bf16): validation kNN top-1 (seeds) |" in out
    assert table(out, "ours-clahe")[1:] == ["(not run)"] * 3
    assert "fashionmnist-cpu-proxy with the study: -1.00" in out
    assert "fashionmnist-cpu-proxy-val5000 with the study: 1.00" in out
    assert "after epoch 1, ranked against its final: -1.00 (mean over seeds); seed by seed -1.00, -1.00, -1.00" in out
    assert "after epoch 4, ranked against its final: 1.00 (mean over seeds); seed by seed 1.00, 1.00, 1.00" in out
    assert "after epoch 5" not in out  # the final itself
