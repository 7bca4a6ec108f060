"""pretrain.py, the general door: every method end to end, and a method added as one class (test-only)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import error_of, sheet_rows

import methods
import pretrain
from models import build_backbone

TINY = ["--width", "0.25", "--dataset", "synthetic", "--subset", "64", "--batch-size", "32", "--workers", "0", "--epochs", "1",
        "--linear-epochs", "1"]


@pytest.mark.parametrize("method,extra", [("moco", ["--moco-k", "64", "--bn-splits", "2"]), ("simclr", []),
                                          ("supervised", []), ("pixels", ["--epochs", "0"])])
def test_every_method_runs_through_pretrain(tmp_path, method, extra):
    record = pretrain.main(["--method", method, *TINY, *extra, "--results", str(tmp_path / "r.xlsx"),
                            "--results-dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["method"] == method == record["method"] and row["script"] and row["knn_top1_final"] is not None
    assert (row["supervised_top1"] is not None) == (method == "supervised")


class CenterPull(methods.Method):
    """A test-only method: pull the two views' normalised features together (collapses, but trains)."""
    name = "centerpull"
    recipe = dict(epochs=1, batch_size=32, aug="original", lr=0.05, wd=5e-4)
    views = 2

    @staticmethod
    def add_options(parser):
        parser.add_argument("--pull-weight", type=float, default=1.0)

    def __init__(self, opts, num_classes, cifar_stem, bn_splits):
        super().__init__()
        self.weight = opts.pull_weight
        self.backbone = build_backbone(opts.arch, cifar_stem, bn_splits)

    @property
    def monitor_encoder(self):
        return self.backbone

    def forward(self, views, labels=None):
        a, b = (F.normalize(self.backbone(v), dim=1) for v in views)
        return self.weight * (2 - 2 * (a * b).sum(1)).mean()


def test_a_method_added_as_one_class_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(methods.METHODS, "centerpull", CenterPull)  # the one line a real method adds to METHODS
    pretrain.main(["--method", "centerpull", "--pull-weight", "0.5", *TINY, "--results", str(tmp_path / "r.xlsx"),
                   "--results-dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["method"] == "centerpull" and row["linear_top1"] is not None and '"pull_weight": 0.5' in row["args"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pth", weights_only=False)
    assert checkpoint["method"] == "centerpull" and checkpoint["options"]["pull_weight"] == 0.5
    line = error_of(["--method", "centerpull", "--pull-weight", "x"], capsys, pretrain.main)
    assert "--pull-weight" in line


def test_help_lists_methods_datasets_and_presets(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--method", "simclr", "--help"])
    out = capsys.readouterr().out
    assert "{moco,simclr,supervised,pixels," in out and "--temperature" in out and "fashionmnist" in out
    assert "original" in out and "default: 0.5" in out
