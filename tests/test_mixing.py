"""mixing.py and --mix: i-Mix and Un-Mix against formulas written out here, the CutMix box, exact resume, every method
end to end through pretrain.py, and one line for each bad value."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RUN, error_of, kill_after_first_epoch, log_of, method_options, sheet_rows

import pretrain
from losses import contrast_cross_entropy, moco_infonce
from methods import BYOL, SimSiam, SwAV
from mixing import Draw, Mixer

TINY = [*TINY_RUN, "--epochs", "1", "--knn-every", "0", "--linear-epochs", "0"]
SMALL_HEADS = {"byol": dict(proj_hidden=64, pred_hidden=64), "simsiam": dict(proj_dim=64, pred_hidden=16),
               "swav": dict(proj_hidden=64, prototypes=10, queue_length=0, freeze_prototypes_steps=0)}


def two_targets_by_hand(logits, lam, perm):
    """mean_i [λ_i·CE(logits_i, i) + (1 − λ_i)·CE(logits_i, π(i))], one image at a time."""
    total = 0.0
    for i in range(logits.shape[0]):
        log_p = logits[i] - torch.logsumexp(logits[i], dim=0)
        total += -lam[i] * log_p[i] - (1 - lam[i]) * log_p[perm[i]]
    return total / logits.shape[0]


def test_imix_moco_is_two_cross_entropies_over_the_batch_keys_then_the_queue():
    torch.manual_seed(0)
    q, k, queue = (F.normalize(torch.randn(n, 8, dtype=torch.float64), dim=1) for n in (6, 6, 20))
    draw = Mixer("imix", 1.0).draw(6, torch.device("cpu"), step=0)
    got = draw.loss(lambda t: contrast_cross_entropy(q, torch.cat([k, queue]), 0.2, t))
    logits = torch.cat([q @ k.t(), q @ queue.t()], dim=1) / 0.2
    assert got.item() == pytest.approx(two_targets_by_hand(logits, draw.lam, draw.perm).item(), rel=1e-10)
    assert sorted(draw.perm.tolist()) == list(range(6)) and bool((draw.lam >= 0.5).all())  # λ_i = max(b, 1 − b)


def test_unmix_moco_term_is_infonce_with_each_sources_key_as_the_positive():
    torch.manual_seed(1)
    q, k, queue = (F.normalize(torch.randn(n, 8, dtype=torch.float64), dim=1) for n in (5, 5, 12))
    draw = Mixer("unmix", 1.0).draw(5, torch.device("cpu"), step=0)
    assert draw.perm.tolist() == [4, 3, 2, 1, 0] and not draw.cutmix and len(set(draw.lam.tolist())) == 1
    got = draw.loss(lambda t: moco_infonce(q, k[t], queue, 0.1, reduction="none"))
    lam, expected = draw.lam[0].item(), 0.0
    for i, j in enumerate(draw.perm.tolist()):
        def infonce(positive):
            logits = torch.cat([(q[i] @ positive).view(1), queue @ q[i]]) / 0.1
            return -(logits[0] - torch.logsumexp(logits, dim=0))
        expected += lam * infonce(k[i]) + (1 - lam) * infonce(k[j])
    assert got.item() == pytest.approx(expected.item() / 5, rel=1e-10)


def test_unmix_alternates_mixup_and_cutmix_and_the_box_leaves_exactly_lambda_of_each_image():
    mixer = Mixer("unmix", 1.0)
    torch.manual_seed(3)
    assert not mixer.draw(8, torch.device("cpu"), step=4).cutmix
    for seed in range(20):
        torch.manual_seed(seed)
        draw = mixer.draw(8, torch.device("cpu"), step=7)
        assert draw.cutmix
        images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 28, 28)  # image i is all i
        mixed, lam = draw.images(images)
        own = (mixed == images).all(dim=1).float().mean(dim=(1, 2))  # the share of each image left as it was
        assert torch.allclose(own, lam.float()) and torch.equal(mixed[0][mixed[0] != 0].unique(), torch.tensor([7.]))
        top, left, height, width = draw.box  # unclipped, its area is 1 − λ as drawn, to the pixel
        if top > 0 and left > 0 and top + height < 1 and left + width < 1:
            assert abs((1 - lam[0].item()) - (1 - draw.lam[0].item())) < 2 * 28 / 28 ** 2 + 1e-6


@pytest.mark.parametrize("method", [BYOL, SimSiam, SwAV])
def test_imix_at_lambda_1_with_the_identity_is_the_plain_loss(method, monkeypatch):
    extra = dict(local_crops=2) if method is SwAV else {}
    torch.manual_seed(0)
    plain = method(method_options(method, width=0.25, **SMALL_HEADS[method.name], **extra), 10, True, 1)
    mixing = copy.deepcopy(plain)
    mixing.mixer = Mixer("imix", 1.0)
    monkeypatch.setattr(mixing.mixer, "draw", lambda n, device, step: Draw(torch.arange(n), torch.ones(n)))
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)] + [torch.randn(8, 3, 9, 9)] * (2 * bool(extra))
    for model in (plain, mixing):
        model.start_step(0, 0, 10, 1)
    assert mixing(views).item() == pytest.approx(plain(views).item(), rel=1e-5)


def test_unmix_simsiam_adds_the_mixed_views_two_weighted_targets_to_the_plain_loss():
    torch.manual_seed(0)
    model = SimSiam(method_options(SimSiam, width=0.25, mix="unmix", **SMALL_HEADS["simsiam"]), 10, True, 1)
    views = [torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)]
    model.start_step(0, 2, 10, 1)  # an even step: Mixup
    torch.manual_seed(5)
    got = model(views).item()
    torch.manual_seed(5)
    draw = model.mixer.draw(6, torch.device("cpu"), step=2)
    lam = draw.lam[0].item()
    with torch.no_grad():  # BatchNorm in training mode: the same batches give the same outputs again
        z1, z2 = (model.projector(model.backbone(v)) for v in views)
        p1, p2 = model.prediction_mlp(z1), model.prediction_mlp(z2)
        mixed = lam * views[0] + (1 - lam) * views[0].flip(0)
        p = model.prediction_mlp(model.projector(model.backbone(mixed)))
        cos = lambda a, b: F.cosine_similarity(a, b, dim=0).item()
        plain = -sum(cos(p1[i], z2[i]) + cos(p2[i], z1[i]) for i in range(6)) / 6 / 2
        branch = -sum(lam * cos(p[i], z2[i]) + (1 - lam) * cos(p[i], z2[5 - i]) for i in range(6)) / 6 / 2
    assert got == pytest.approx(plain + branch, rel=1e-5)


@pytest.mark.parametrize("method,kind,extra", [
    ("moco", "imix", ["--moco-k", "64", "--bn-splits", "2"]), ("moco", "unmix", ["--moco-k", "64", "--bn-splits", "2"]),
    ("simclr", "imix", []), ("simclr", "unmix", []), ("byol", "imix", []), ("byol", "unmix", []),
    ("simsiam", "imix", []), ("simsiam", "unmix", []),
    ("swav", "imix", ["--local-crops", "2", "--prototypes", "10"]),
    ("swav", "unmix", ["--local-crops", "2", "--prototypes", "10"])])
def test_every_method_mixes_end_to_end_through_pretrain(tmp_path, method, kind, extra):
    record = pretrain.main(["--method", method, *TINY, *extra, "--mix", kind, "--mix-alpha", "0.5",
                            "--results", str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / "run")])
    (row,) = sheet_rows(tmp_path / "r.xlsx")
    assert row["mix"] == record["mix"] == f"{kind} 0.5" and row["knn_top1_final"] is not None


@pytest.mark.parametrize("method,kind,extra", [("moco", "imix", ["--moco-k", "64", "--bn-splits", "2"]),
                                               ("simclr", "unmix", [])])
def test_a_mixing_run_resumed_bare_gives_the_same_loss(tmp_path, method, kind, extra):
    def argv(name):
        return ["--method", method, *TINY, "--epochs", "2", *extra, "--mix", kind, "--results",
                str(tmp_path / "r.xlsx"), "--results-dir", str(tmp_path / name)]

    pretrain.main(argv("straight"))
    kill_after_first_epoch(*pretrain.parse_args(argv("killed")))
    pretrain.main(["--method", method, "--resume", str(tmp_path / "killed" / "checkpoint_last.pth")])
    losses = [float(log_of(tmp_path / name)[-1]["loss"]) for name in ("straight", "killed")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    rows = sheet_rows(tmp_path / "r.xlsx")
    assert [row["mix"] for row in rows] == [f"{kind} 1"] * 2


@pytest.mark.parametrize("extra,message", [
    (["--method", "moco", "--mix", "imix", "--mix-alpha", "0"], "error: --mix-alpha must be > 0, got 0.0"),
    (["--method", "supervised", "--mix", "unmix"],
     "error: --mix unmix: supervised has no views to mix between (methods that mix: moco, simclr, byol, simsiam, swav)"),
    (["--method", "moco", "--mix", "imix", "--symmetric"], "error: --mix imix mixes MoCo's query view against its"),
    (["--method", "moco", "--mix", "cutout"], "argument --mix: invalid choice: 'cutout'"),
])
def test_bad_mixing_is_one_line(tmp_path, capsys, extra, message):
    line = error_of([*extra, *TINY, "--results", str(tmp_path / "r.xlsx")], capsys, pretrain.main)
    assert message in line
    assert not (tmp_path / "r.xlsx").exists()
