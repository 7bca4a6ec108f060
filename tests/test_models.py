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


def resnet_parameter_count(blocks, channels, expansion, stem_kernel):
    """Parameters of a torchvision ResNet without fc, written out: convs have no bias, every BatchNorm has 2 per
    channel; BasicBlock = two 3x3 convs; Bottleneck = 1x1, 3x3, 1x1 (expansion 4); a downsample (1x1 conv + BN)
    where the stride or the channel count changes."""
    total = 3 * channels[0] * stem_kernel ** 2 + 2 * channels[0]
    inplanes = channels[0]
    for stage, (n, planes) in enumerate(zip(blocks, channels)):
        for b in range(n):
            out = planes * expansion
            if expansion == 1:
                total += inplanes * planes * 9 + 2 * planes + planes * planes * 9 + 2 * planes
            else:
                total += inplanes * planes + 2 * planes + planes * planes * 9 + 2 * planes + planes * out + 2 * out
            if b == 0 and (stage > 0 or inplanes != out):
                total += inplanes * out + 2 * out
            inplanes = out
    return total


@pytest.mark.parametrize("arch,blocks,expansion", [("resnet18", (2, 2, 2, 2), 1), ("resnet34", (3, 4, 6, 3), 1),
                                                   ("resnet50", (3, 4, 6, 3), 4)])
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("cifar_stem", [True, False])
def test_width_scales_every_stage(arch, blocks, expansion, width, cifar_stem):
    net = build_backbone(arch, cifar_stem=cifar_stem, width=width)
    channels = [int(c * width) for c in (64, 128, 256, 512)]  # 0.25: 16-32-64-128
    assert [getattr(net, f"layer{i}")[0].conv1.in_channels for i in (1,)] == [channels[0]]
    assert [getattr(net, f"layer{i}")[-1].conv1.out_channels for i in (1, 2, 3, 4)] == channels
    assert net.conv1.out_channels == channels[0] and net.feat_dim == channels[3] * expansion
    expected = resnet_parameter_count(blocks, channels, expansion, 3 if cifar_stem else 7)
    assert sum(p.numel() for p in net.parameters()) == expected
    size = 32 if cifar_stem else 64
    assert net(torch.randn(2, 3, size, size)).shape == (2, channels[3] * expansion)


def test_full_width_is_torchvisions_resnet():
    """width 1.0 builds torchvision's network unchanged (11,168,832 parameters for the CIFAR-stem ResNet-18)."""
    assert sum(p.numel() for p in build_backbone("resnet18").parameters()) == 11_168_832
    narrow = build_backbone("resnet18", width=0.25)
    assert all(m.weight.std() > 0 for m in narrow.modules() if isinstance(m, nn.Conv2d))


def test_width_keeps_split_batchnorm():
    net = build_backbone("resnet18", bn_splits=4, width=0.25)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, SplitBatchNorm) and m.num_splits == 4 for m in norms)
