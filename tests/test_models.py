import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import SplitBatchNorm, build_backbone, projection_head


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


def test_projection_head_linear_or_mlp():
    assert isinstance(projection_head(512, 128), nn.Linear)
    mlp = projection_head(512, 128, 2048)
    assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp[0].out_features == 2048 and mlp(torch.randn(4, 512)).shape == (4, 128)
