import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import MoCo, SimCLR, SplitBatchNorm, build_backbone


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("cifar_stem,size", [(True, 32), (False, 64)])
def test_backbone_shapes(arch, dim, cifar_stem, size):
    net = build_backbone(arch, cifar_stem=cifar_stem)
    assert net.feat_dim == dim
    assert net(torch.randn(2, 3, size, size)).shape == (2, dim)
    assert isinstance(net.maxpool, nn.Identity) == cifar_stem
    assert net.conv1.kernel_size == ((3, 3) if cifar_stem else (7, 7))
    assert net.conv1.stride == ((1, 1) if cifar_stem else (2, 2))


def test_split_batchnorm_equals_batchnorm_per_split():
    torch.manual_seed(0)
    x = torch.randn(12, 4, 5, 5)
    split = SplitBatchNorm(4, num_splits=3)
    nn.init.uniform_(split.weight)
    nn.init.uniform_(split.bias)
    out = split(x)
    means, vars_ = [], []
    for s in range(3):  # sample n belongs to split n % 3, as in the MoCo demo
        bn = nn.BatchNorm2d(4)
        bn.load_state_dict({k: v for k, v in split.state_dict().items() if k != "running_mean" and k != "running_var"},
                           strict=False)
        part = x[s::3]
        assert torch.allclose(out[s::3], bn(part), atol=1e-5)
        means.append(bn.running_mean)
        vars_.append(bn.running_var)
    assert torch.allclose(split.running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(split.running_var, torch.stack(vars_).mean(0), atol=1e-6)
    split.eval()
    assert torch.allclose(split(x), F.batch_norm(x, split.running_mean, split.running_var, split.weight, split.bias))


def small_moco(**kw):
    torch.manual_seed(0)
    return MoCo("resnet18", dim=16, K=kw.pop("K", 32), m=kw.pop("m", 0.9), T=0.1, bn_splits=kw.pop("bn_splits", 2), **kw)


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
    model = small_moco(K=10)
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
    shuffled = model.shuffled_keys(images)
    direct = F.normalize(model.encoder_k(images), dim=1)
    assert torch.allclose(shuffled, direct, atol=1e-5)


@pytest.mark.parametrize("symmetric,n_views,enqueued", [(False, 2, 4), (True, 2, 8), (False, 3, 8), (True, 3, 12)])
def test_moco_forward_loss_and_queue(symmetric, n_views, enqueued):
    model = small_moco(symmetric=symmetric)
    views = [torch.randn(4, 3, 32, 32) for _ in range(n_views)]
    loss = model(views)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.encoder_q.backbone.conv1.weight.grad is not None
    assert model.queue_ptr.item() == enqueued % 32


def test_simclr_heads():
    model = SimCLR("resnet18", num_classes=7, projection_dim=32)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 32)
    assert model(x, classify=True).shape == (2, 7)
    assert model.projection[0].out_features == 512  # hidden layer as wide as the features, as in the paper
