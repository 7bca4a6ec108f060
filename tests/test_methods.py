"""The methods of methods.py against their formulas: MoCo's parts, SimCLR and the supervised baseline's losses, BYOL's
target, SimSiam's stop-gradient, SwAV's prototypes, queue and codes; each method's loss in fp32 under autocast."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import method_options, small_moco

import losses
import methods
from methods import BYOL, METHODS, SimCLR, SimSiam, Supervised, SwAV
from optim import build_optimizer


def test_momentum_update_is_ema_of_query_encoder():
    model = small_moco()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q = [p.clone() for p in model.encoder_q.parameters()]
    k = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update()
    for pq, pk, new in zip(q, k, model.encoder_k.parameters()):
        assert torch.allclose(new, 0.9 * pk + 0.1 * pq, atol=1e-6)
    assert not any(p.requires_grad for p in model.encoder_k.parameters())


def test_enqueue_writes_at_pointer_and_wraps_around():
    model = small_moco(moco_k=10)
    keys = F.normalize(torch.randn(4, 16), dim=1)
    model.enqueue(keys)
    assert torch.equal(model.queue[:4], keys) and model.queue_ptr.item() == 4
    model.queue_ptr.fill_(8)  # 4 keys from position 8 of 10: 8, 9, then 0, 1
    more = F.normalize(torch.randn(4, 16), dim=1)
    model.enqueue(more)
    assert torch.equal(model.queue[8:10], more[:2]) and torch.equal(model.queue[0:2], more[2:])
    assert model.queue_ptr.item() == 2


def test_shuffle_bn_returns_keys_in_input_order():
    model = small_moco(bn_splits=4)
    images = torch.randn(8, 3, 32, 32)
    model.encoder_k.eval()  # eval BN: the key of an image no longer depends on its batch neighbours
    assert torch.allclose(model.shuffled_keys(images), F.normalize(model.encoder_k(images), dim=1), atol=1e-5)


@pytest.mark.parametrize("symmetric,n_views,enqueued", [(False, 2, 4), (True, 2, 8), (False, 3, 8), (True, 3, 12)])
def test_moco_forward_loss_and_queue(symmetric, n_views, enqueued):
    model = small_moco(symmetric=symmetric)
    loss = model([torch.randn(4, 3, 32, 32) for _ in range(n_views)])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None
    assert model.queue_ptr.item() == enqueued % 32


def encode_by_hand(model, views):
    """Queries and keys of two views, with every BatchNorm on running statistics, so that shuffle-BN's permutation
    cannot change a key and the test can recompute both sides."""
    model.eval()
    with torch.no_grad():
        return ([F.normalize(model.encoder_q(v), dim=1) for v in views],
                [F.normalize(model.encoder_k(v), dim=1) for v in views])


def test_moco_mlp_head_is_moco_v2s_linear_relu_linear_without_batchnorm():
    """facebookresearch/moco builder.py, mlp=True: fc = Sequential(Linear(dim_mlp, dim_mlp), ReLU(), fc). A BatchNorm
    there would normalise each query and its key over the same whole batch, past SplitBatchNorm's shuffle."""
    model = small_moco(mlp=24)
    for encoder in (model.encoder_q, model.encoder_k):
        head = encoder[1]
        assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
        assert (head[0].in_features, head[0].out_features, head[2].out_features) == (model.backbone.feat_dim, 24, 16)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


def test_symmetric_loss_is_the_sum_of_its_two_pair_losses():
    model = small_moco(symmetric=True, moco_m=0.0)  # m = 0: the key encoder becomes the query encoder's copy
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    queue = model.queue.clone()
    model.eval()
    with torch.no_grad():
        loss = model(views)  # momentum update first (key encoder := query encoder), then the loss
    (q1, q2), (k1, k2) = encode_by_hand(model, views)

    def pair(q, k):  # InfoNCE written out: -log(exp(q.k/T) / (exp(q.k/T) + sum_n exp(q.n/T)))
        pos = torch.exp((q * k).sum(1) / 0.1)
        neg = torch.exp(q @ queue.t() / 0.1).sum(1)
        return (-torch.log(pos / (pos + neg))).mean()

    assert loss.item() == pytest.approx((pair(q1, k2) + pair(q2, k1)).item(), rel=1e-5)


def test_asymmetric_loss_uses_view_0_as_query():
    model = small_moco(moco_m=0.0)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    queue = model.queue.clone()
    model.eval()
    with torch.no_grad():
        loss = model(views)
    (q1, _), (_, k2) = encode_by_hand(model, views)
    assert loss.item() == pytest.approx(losses.moco_infonce(q1, k2, queue, 0.1).item(), rel=1e-5)


def test_debias_and_mochi_reach_the_loss(monkeypatch):
    calls = []
    real_debiased, real_mochi = losses.debiased_infonce, losses.mochi_negatives
    import methods
    monkeypatch.setattr(methods, "debiased_infonce", lambda *a: calls.append(
        ("debias", a[4], None if a[5] is None else tuple(a[5].shape))) or real_debiased(*a))
    monkeypatch.setattr(methods, "mochi_negatives", lambda *a: calls.append(("mochi", a[2:])) or real_mochi(*a))
    model = small_moco(debias=0.1, mochi=[8, 4, 2], mochi_start=1)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    model.before_step(0, 0, 10, 2)  # before --mochi-start: plain queue negatives
    assert torch.isfinite(model(views))
    assert calls == [("debias", 0.1, None)]
    model.before_step(1, 0, 10, 2)
    assert torch.isfinite(model(views))
    assert calls[1:] == [("mochi", (8, 4, 2)), ("debias", 0.1, (4, 6, 16))]


def test_simclr_loss_is_nt_xent_of_the_projections():
    torch.manual_seed(0)
    model = SimCLR(method_options(SimCLR, projection_dim=32), 10, True, 1).eval()
    views = [torch.randn(3, 3, 32, 32) for _ in range(2)]
    z = [model.projection(model.backbone(v)) for v in views]
    assert model.projection[0].out_features == 512  # hidden layer as wide as the features, as in the paper
    assert model(views).item() == pytest.approx(losses.nt_xent(z[0], z[1], 0.5).item(), rel=1e-6)


def test_supervised_loss_is_cross_entropy_and_predictor_classifies():
    torch.manual_seed(0)
    model = Supervised(method_options(Supervised), 7, True, 1).eval()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 6, 3])
    logits = model.supervised_classifier(images)
    assert logits.shape == (3, 7)
    assert model(images, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("name", [name for name in METHODS if name != "pixels"])
def test_every_method_names_its_encoders_and_trains_only_what_it_should(name):
    method = METHODS[name]
    model = method(method_options(method, bn_splits=1), 10, True, 1)
    trained = {id(p) for p in model.trainable_parameters()}
    assert all(id(p) in trained for p in model.backbone.parameters())
    assert model.monitor_encoder is not None and model.backbone.feat_dim == 512
    if name == "moco":
        assert not any(id(p) in trained for p in model.encoder_k.parameters())


SMALL = {BYOL: dict(proj_hidden=64, proj_dim=16, pred_hidden=32), SimSiam: dict(proj_dim=32, pred_hidden=8),
         SwAV: dict(proj_hidden=64, proj_dim=16, prototypes=20, queue_length=0)}


def small(method, **overrides):
    """The method with narrow heads, seeded; unit tests feed it 16-px images."""
    torch.manual_seed(0)
    return method(method_options(method, **{**SMALL[method], **overrides}), 10, True, 1)


def images(n=4, size=16, views=2):
    return [torch.randn(n, 3, size, size) for _ in range(views)]


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


def test_swav_with_no_more_prototypes_than_dimensions_has_a_uniform_fixed_point_and_is_noted():
    """K <= d unit prototypes leave a unit projection orthogonal to all of them: its scores are all 0, its prediction
    uniform, and the swapped-prediction loss is ln K whatever the codes (Fashion-MNIST runs with 100 prototypes in 128
    dimensions sat at 4.6052 = ln 100). With K > d generic prototypes no unit vector scores alike against all."""
    torch.manual_seed(0)
    for k, d in ((100, 128), (128, 128)):
        prototypes = F.normalize(torch.randn(k, d), dim=1)
        if k < d:
            z = F.normalize(torch.linalg.svd(prototypes).Vh[-1], dim=0)  # spans the null space's last direction
        else:
            z = F.normalize(torch.linalg.solve(prototypes, torch.ones(k)), dim=0)  # equal scores, not zero
        scores = (z @ prototypes.t()).expand(4, k)
        assert torch.allclose(scores, scores[:1, :1].expand(4, k), atol=1e-5)
        codes = torch.softmax(torch.randn(4, k), dim=1)
        assert losses.swav_loss([scores, scores], [codes, codes]).item() == pytest.approx(math.log(k), abs=1e-4)
    notes = [SwAV.notes(method_options(SwAV, prototypes=k, proj_dim=128), 60000) for k in (100, 128, 129, 3000)]
    assert [len(n) for n in notes] == [1, 1, 0, 0] and "--prototypes 100 is at most --proj-dim 128" in notes[0][0]


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


def test_swav_prototype_scores_are_fp32_matmuls_under_bf16_autocast(monkeypatch):
    """The scores reach Sinkhorn (/eps 0.05) and the loss (/T 0.1) as an fp32 product of the bf16-autocast projections,
    not as a bf16 matmul's rounding."""
    model = small(SwAV)
    seen = []
    real_loss = methods.swav_loss
    monkeypatch.setattr(methods, "swav_loss", lambda s, c, t: seen.extend(s) or real_loss(s, c, t))
    views = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(views)
        z = model.embed(views)  # the same projections: BatchNorm in training mode uses this batch's statistics
    expected = F.linear(z.float(), model.prototypes.weight.float())
    assert all(s.dtype == torch.float32 for s in seen)
    assert torch.allclose(torch.cat(seen), expected, atol=1e-6)
