"""BYOL, SimSiam and SwAV (methods.py) against their formulas; multi-crop through the real loader; each method end to end
through pretrain.py, its learning check against the same network at initialisation, and exact resume."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import error_of, kill_after_first_epoch, log_of, method_options, sheet_rows

import methods
import pretrain
import training
from augmentations import build_multicrop
from datasets import load_splits
from loading import TransformDataset, make_train_loader
from methods import BYOL, SimSiam, SwAV
from optim import build_optimizer

SMALL = {BYOL: dict(proj_hidden=64, proj_dim=16, pred_hidden=32), SimSiam: dict(proj_dim=32, pred_hidden=8),
         SwAV: dict(proj_hidden=64, proj_dim=16, prototypes=20, queue_length=0)}
# 16 px: a quarter of the 32-px compute; the kNN monitor then scores the 1,500 synthetic images in a few seconds.
TINY = ["--dataset", "synthetic", "--subset", "64", "--batch-size", "32", "--workers", "0", "--crop-size", "16",
        "--width", "0.25"]  # a quarter of the channels: these runs check wiring, not learning


def small(method, **overrides):
    """The method with narrow heads, seeded; unit tests feed it 16-px images."""
    torch.manual_seed(0)
    return method(method_options(method, **{**SMALL[method], **overrides}), 10, True, 1)


def images(n=4, size=16, views=2):
    return [torch.randn(n, 3, size, size) for _ in range(views)]


# ---------------------------------------------------------------- BYOL

def test_byol_tau_rises_from_tau_base_to_1_on_a_cosine_of_the_global_step():
    model = small(BYOL, tau_base=0.96)
    steps, epochs, seen = 5, 4, []
    for epoch in range(epochs):
        for step in range(steps):
            model.before_step(epoch, step, steps, epochs)
            k, total = epoch * steps + step, epochs * steps
            assert model.tau.item() == pytest.approx(1 - (1 - 0.96) * (math.cos(math.pi * k / total) + 1) / 2, abs=1e-7)
            seen.append(model.tau.item())
    assert seen[0] == pytest.approx(0.96) and seen[10] == pytest.approx(0.98)  # k = K/2: halfway to 1
    assert all(a < b for a, b in zip(seen, seen[1:])) and seen[-1] < 1


def test_byol_target_gets_no_gradient_and_is_the_ema_of_the_online_network():
    model = small(BYOL, tau_base=0.5)  # a low tau moves the target far enough for the comparison to tell
    trained = {id(p) for p in model.trainable_parameters()}
    assert not any(p.requires_grad or id(p) in trained for p in model.target.parameters())
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    initial = [p.detach().clone() for p in model.target.parameters()]
    expected = [p.clone() for p in initial]
    for step in range(3):
        model.before_step(0, step, 3, 1)
        tau = model.tau.item()
        expected = [tau * t + (1 - tau) * o.detach() for t, o in zip(expected, model.online.parameters())]
        loss = model(images())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.target.parameters())
        assert model.prediction_mlp[0].weight.grad is not None and model.backbone.conv1.weight.grad is not None
        optimizer.step()
    for e, t in zip(expected, model.target.parameters()):
        assert torch.allclose(t, e, atol=1e-6)
    assert max((t - i).abs().max().item() for t, i in zip(model.target.parameters(), initial)) > 1e-3
    assert any(key.startswith("target.") for key in model.state_dict())  # checkpoints and resume carry it
    assert model.monitor_encoder is model.backbone is model.online[0]


def test_byol_tau_base_defaults_to_the_papers_value_for_the_stem():
    options = method_options(BYOL, **SMALL[BYOL])
    assert [BYOL(options, 10, cifar_stem, 1).tau_base for cifar_stem in (True, False)] == [0.99, 0.996]
    options.tau_base = 0.9
    assert BYOL(options, 10, False, 1).tau.item() == pytest.approx(0.9)


@pytest.mark.parametrize("method", [BYOL, SimSiam, SwAV])
def test_both_stems_train_a_step(method):
    """The CIFAR stem at 16 px and the ImageNet stem (7x7 conv + max-pool) at 64 px both give a finite loss and
    gradients in the backbone's first layer."""
    for cifar_stem, size in ((True, 16), (False, 64)):
        torch.manual_seed(0)
        model = method(method_options(method, **SMALL[method]), 10, cifar_stem, 1)
        model.before_step(0, 0, 10, 1)
        loss = model(images(size=size))
        loss.backward()
        assert torch.isfinite(loss) and model.backbone.conv1.weight.grad.abs().sum() > 0
        assert model.backbone.conv1.kernel_size == ((3, 3) if cifar_stem else (7, 7))


# ---------------------------------------------------------------- SimSiam

def test_simsiam_gradient_flows_only_through_the_predictor_branch():
    model = small(SimSiam).eval()  # BatchNorm on running statistics: the same projections can be recomputed here
    views, params = images(), model.trainable_parameters()
    loss = model(views)
    z1, z2 = (model.projector(model.backbone(v)) for v in views)
    p1, p2 = model.prediction_mlp(z1), model.prediction_mlp(z2)

    def cos(a, b):
        return F.cosine_similarity(a, b, dim=1).mean()

    stop_gradient = -(cos(p1, z2.detach()) + cos(p2, z1.detach())) / 2
    no_stop = -(cos(p1, z2) + cos(p2, z1)) / 2
    assert loss.item() == pytest.approx(stop_gradient.item(), abs=1e-6)
    got = torch.autograd.grad(loss, params)
    expected = torch.autograd.grad(stop_gradient, params, retain_graph=True)
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
    other = torch.autograd.grad(no_stop, params)  # the comparison can tell the two apart
    assert not all(torch.allclose(g, o, atol=1e-6) for g, o in zip(got, other))


# ---------------------------------------------------------------- SwAV

@pytest.mark.parametrize("optimizer_name", ["lars", "sgd"])
def test_swav_prototypes_are_frozen_for_the_first_epoch_then_renormalised_every_step(optimizer_name):
    model = small(SwAV)
    # A large weight decay: the frozen prototypes must not shrink either.
    optimizer = build_optimizer(optimizer_name, model.param_groups(), 0.5, 0.05)
    initial = model.prototypes.weight.detach().clone()
    backbone_before = model.backbone.conv1.weight.detach().clone()
    assert torch.allclose(initial.norm(dim=1), torch.ones(20))
    steps_per_epoch = 3
    for k in range(2 * steps_per_epoch):
        model.before_step(*divmod(k, steps_per_epoch), steps_per_epoch, 2)
        assert model.frozen == (k < steps_per_epoch)
        loss = model(images())
        optimizer.zero_grad()
        loss.backward()
        weight = model.prototypes.weight
        if k < steps_per_epoch:
            assert weight.grad is not None and torch.count_nonzero(weight.grad) == 0
        else:  # what this step used: unit rows
            assert torch.allclose(weight.norm(dim=1), torch.ones(20), atol=1e-6) and weight.grad.abs().sum() > 0
        optimizer.step()
        if k < steps_per_epoch:
            assert torch.equal(weight, initial), f"the prototypes moved at step {k}"
    assert not torch.allclose(model.prototypes.weight, initial, atol=1e-4)  # trained after the first epoch
    assert not torch.equal(model.backbone.conv1.weight, backbone_before)
    explicit = small(SwAV, freeze_prototypes_steps=1)
    explicit.before_step(0, 0, 10, 2)
    assert explicit.frozen
    explicit.before_step(0, 1, 10, 2)
    assert not explicit.frozen


def test_swav_queue_holds_the_newest_global_projections_and_joins_sinkhorn_once_full(monkeypatch):
    model = small(SwAV, queue_length=8, queue_start=1)
    rows, real_sinkhorn = [], methods.sinkhorn
    monkeypatch.setattr(methods, "sinkhorn", lambda s, *a, **k: rows.append(s.shape[0]) or real_sinkhorn(s, *a, **k))
    history = []
    with torch.no_grad():
        for epoch, step in [(0, 0), (1, 0), (1, 1), (1, 2)]:
            model.before_step(epoch, step, 4, 2)
            views = images(n=4) + images(n=4, size=8, views=1)  # two global crops and one local crop
            model(views)
            z = F.normalize(model.projector(model.backbone(torch.cat(views[:2]))), dim=1).view(2, 4, -1)
            history.append(z)
    # before --queue-start: batch only; then filling (4, then 8 of 8 entries): batch only; full: 8 queued + 4
    assert rows == [4, 4, 4, 4, 4, 4, 12, 12]
    assert torch.allclose(model.queue, torch.cat([history[-1], history[-2]], dim=1), atol=1e-5)


def test_swav_codes_come_from_the_global_crops_and_every_crop_is_predicted(monkeypatch):
    model = small(SwAV)
    seen = {}
    real_loss = methods.swav_loss
    monkeypatch.setattr(methods, "swav_loss", lambda s, c, t: seen.update(scores=len(s), codes=len(c), t=t)
                        or real_loss(s, c, t))
    loss = model(images(views=2) + images(size=8, views=2))
    assert seen == dict(scores=4, codes=2, t=0.1) and torch.isfinite(loss)


@pytest.mark.parametrize("method", [BYOL, SimSiam, SwAV])
def test_loss_is_fp32_under_bf16_autocast(method):
    model = small(method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(images())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


# ---------------------------------------------------------------- multi-crop

def test_multicrop_gives_the_asked_sizes_and_counts_through_the_loader():
    base = load_splits("synthetic", subset=16).pretrain
    dataset = TransformDataset(base, build_multicrop("simclr", 32, 18, (0.05, 0.3), None, n_global=2, n_local=3))
    runtime = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    loader = make_train_loader(runtime, dataset, 8, 0, seed=1)
    loader.sampler.set_epoch(0)
    first = [views for views, _ in loader]
    assert len(first) == 2
    for views in first:
        assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 18, 18)] * 3
        assert all(v.dtype == torch.uint8 for v in views)
    again = [views for views, _ in loader]  # the same epoch draws the same views (seed, epoch, index)
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
    assert not torch.equal(first[0][2], first[0][3])  # the local crops are independent draws


def test_run_options_build_multicrop_with_the_default_local_size():
    options = method_options(SwAV, local_crops=4)
    crops, recorded = training.train_views(SwAV, options, training.resolve_policy("simclr", 32), 32)
    assert (crops.n_global, crops.n_local, recorded) == (2, 4, "2+4")
    views = crops(load_splits("synthetic", subset=4).pretrain[0][0])
    assert [v.shape[-1] for v in views] == [32, 32, 18, 18, 18, 18]  # 9/16 of 32 px


@pytest.mark.parametrize("method", ["moco", "simclr", "byol", "simsiam"])
def test_local_crops_are_refused_by_methods_that_do_not_train_on_them(method, capsys):
    line = error_of(["--method", method, "--local-crops", "2", *TINY], capsys, pretrain.main)
    assert f"--local-crops 2: {method} does not train on local crops" in line and "swav" in line


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize("method,extra,head,optimizer", [
    ("byol", [], "mlp 4096-256, predictor 4096-256", "lars"),
    ("simsiam", [], "mlp 2048-2048, predictor 512-2048", "sgd"),
    ("swav", ["--local-crops", "2", "--queue-length", "32", "--queue-start", "0", "--freeze-prototypes-steps", "1"],
     "mlp 2048-128, 3000 prototypes", "lars"),
])
def test_each_new_method_trains_end_to_end_through_pretrain(tmp_path, method, extra, head, optimizer):
    pretrain.main(["--method", method, *TINY, "--epochs", "1", "--linear-epochs", "1", *extra,
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


# ---------------------------------------------------------------- exact resume

@pytest.mark.parametrize("method,extra", [
    ("byol", []),
    ("swav", ["--local-crops", "2", "--queue-length", "32", "--queue-start", "0", "--freeze-prototypes-steps", "1"]),
])
def test_bare_resume_continues_exactly(tmp_path, method, extra):
    def argv(name):
        return ["--method", method, *TINY, "--epochs", "2", "--knn-every", "0", "--linear-epochs", "0", *extra,
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
