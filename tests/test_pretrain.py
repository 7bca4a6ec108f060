"""pretrain.py, the general door: every method end to end (the wiring, not the learning), exact resume of BYOL's
target and SwAV's queue and prototypes, and a method added as one class (test-only)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RUN, error_of, kill_after_first_epoch, log_of, sheet_rows

import methods
import pretrain
from models import build_backbone

TINY = [*TINY_RUN, "--epochs", "1", "--linear-epochs", "1"]
TINY_16PX = [*TINY_RUN, "--crop-size", "16"]  # a quarter of the 32-px compute: the kNN monitor then takes seconds


@pytest.mark.parametrize("method,extra", [("moco", ["--moco-k", "64", "--bn-splits", "2"]), ("simclr", []),
                                          ("supervised", []), ("pixels", ["--epochs", "0"])])
def test_every_method_runs_through_pretrain(tmp_path, method, extra):
    record = pretrain.main(["--method", method, *TINY, *extra, "--results", str(tmp_path / "r.xlsx"),
                            "--results-dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["method"] == method == record["method"] and row["script"] == "pretrain.py" and row["knn_top1_final"] is not None
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


@pytest.mark.parametrize("method,extra,head,optimizer", [
    ("byol", [], "mlp 4096-256, predictor 4096-256", "lars"),
    ("simsiam", [], "mlp 2048-2048, predictor 512-2048", "sgd"),
    ("swav", ["--local-crops", "2", "--queue-length", "32", "--queue-start", "0", "--freeze-prototypes-steps", "1"],
     "mlp 2048-128, 3000 prototypes", "lars"),
])
def test_each_new_method_trains_end_to_end_through_pretrain(tmp_path, method, extra, head, optimizer):
    pretrain.main(["--method", method, *TINY_16PX, "--epochs", "1", "--linear-epochs", "1", *extra,
                   "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert (row["method"], row["head"], row["optimizer"]) == (method, head, optimizer)
    assert row["knn_top1_final"] is not None and row["linear_top1"] is not None
    assert row["crops"] == ("2+2" if method == "swav" else 2)
    state = torch.load(tmp_path / "run" / "checkpoint_last.pth", weights_only=False)["model"]
    if method == "byol":
        assert '"tau_base": 0.99' in row["method_options"] and any(k.startswith("target.") for k in state)
    if method == "swav":
        assert '"prototypes": 3000' in row["method_options"] and state["queue"].abs().sum() > 0


@pytest.mark.parametrize("method,extra", [
    ("byol", []),
    ("swav", ["--local-crops", "2", "--queue-length", "32", "--queue-start", "0", "--freeze-prototypes-steps", "1"]),
])
def test_bare_resume_continues_exactly(tmp_path, method, extra):
    def argv(name):
        return ["--method", method, *TINY_16PX, "--epochs", "2", "--knn-every", "0", "--linear-epochs", "0", *extra,
                "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / name)]

    pretrain.main(argv("straight"))
    kill_after_first_epoch(*pretrain.parse_args(argv("killed")))
    pretrain.main(["--method", method, "--resume", str(tmp_path / "killed" / "checkpoint_last.pth")])
    loss = [float(log_of(tmp_path / name)[1]["loss"]) for name in ("straight", "killed")]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
    states = [torch.load(tmp_path / name / "checkpoint_last.pth", weights_only=False)["model"]
              for name in ("straight", "killed")]
    for key in ("target.0.conv1.weight",) if method == "byol" else ("queue", "prototypes.weight"):
        assert torch.allclose(states[0][key], states[1][key], atol=1e-4), key
