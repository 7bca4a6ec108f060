"""The methods of methods.py: MoCo's parts against their formulas, SimCLR and the supervised baseline's losses."""
import pytest
import torch
import torch.nn.functional as F
from conftest import method_options, small_moco

import losses
from methods import METHODS, MoCo, SimCLR, Supervised


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
