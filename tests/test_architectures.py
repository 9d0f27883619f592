"""Architecture plugins: shapes, gradients, activation swapping and paper parameter counts.

Every expected parameter count below is derived by hand from the paper's layer description
(the arithmetic is written out), never copied from running the code.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import advarena
from advarena.api.data import DatasetInfo
from advarena.errors import ParameterError
from advarena.plugins import default_registry

torch.set_num_threads(2)

DIGITS = DatasetInfo("digits", (1, 8, 8), 10)
MNIST = DatasetInfo("mnist", (1, 28, 28), 10)
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, family="cifar")
TOY = DatasetInfo("moons", (2,), 2, family="toy")
INFOS = {"image": (DIGITS, MNIST, CIFAR), "vector": (TOY,)}

# Slim settings where the paper-sized network is needlessly slow for shape checks.
FAST_PARAMS = {"vgg13-bn-gap": {"width": 8}}

# ReLUs per network, counted from each paper's layer list.
EXPECTED_ACTIVATIONS = {
    "cnn-001": 3,           # after each of the three convs
    "resnet-001": 4,        # conv1, conv2, first 1x1 conv, after the shortcut sum
    "mlp-toy": 2,           # two hidden layers
    "lenet5": 4,            # conv1, conv2, fc120, fc84
    "mlp-002": 2,           # 500 and 150 hidden units
    "convnet-002": 4,       # conv1..conv4
    "nin-002": 8,           # 3 blocks of 3 convs, minus none after the last 1x1 conv
    "cnn-004-mnist": 3,     # Table 4: two convs, fc1024
    "cnn-004-svhn": 4,      # Table 5: three convs, fc512
    "vgg13-bn-gap": 10,     # ten 3x3 convs
    "resnet32": 1 + 15 * 2,  # stem + 2 per basic block (3 stages x 5 blocks)
    "resnet50": 1 + 16 * 3,  # stem + 3 per bottleneck (3 + 4 + 6 + 3 blocks)
}


def entries():
    return default_registry().entries("architectures")


def cases():
    out = []
    for e in entries():
        for kind in e.cls.inputs:
            for info in INFOS[kind]:
                out.append(pytest.param(e.name, info, id=f"{e.name}-{info.name}"))
    return out


def build(name, info, activation=nn.ReLU, **params):
    params = {**FAST_PARAMS.get(name, {}), **params}
    return advarena.architecture(name, **params).build(info, activation)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def dense(nin, nout):
    return nin * nout + nout


def brelu():
    return nn.Hardtanh(0.0, 1.0)  # BReLU with t = 1


def test_registry_has_every_architecture():
    assert {e.name for e in entries()} == set(EXPECTED_ACTIVATIONS)
    for e in entries():
        assert e.cls.paper and (e.cls.__doc__ or "").strip()
        assert set(e.cls.inputs) <= set(INFOS)


@pytest.mark.parametrize("name,info", cases())
def test_logits_shape_and_backward(name, info):
    net = build(name, info)
    x = torch.rand(2, *info.input_shape, requires_grad=True)
    out = net(x)
    assert out.shape == (2, info.num_classes)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,info", cases())
def test_activation_swap_replaces_every_relu(name, info, monkeypatch):
    relu_net = build(name, info)
    n_relu = sum(isinstance(m, nn.ReLU) for m in relu_net.modules())
    assert n_relu == EXPECTED_ACTIVATIONS[name]

    net = build(name, info, brelu)
    acts = [m for m in net.modules() if isinstance(m, nn.Hardtanh)]
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert len(acts) == n_relu

    # Each activation module serves one call site (no module reused, as torchvision does) and
    # no functional ReLU is left in a forward pass.
    calls = {id(m): 0 for m in acts}
    for m in acts:
        m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls[id(mod)] + 1))

    def no_relu(*a, **k):
        raise AssertionError("functional relu called")

    for owner, attr in ((torch, "relu"), (torch, "relu_"), (nn.functional, "relu"),
                        (torch.Tensor, "relu"), (torch.Tensor, "relu_")):
        monkeypatch.setattr(owner, attr, no_relu)
    net(torch.rand(2, *info.input_shape))
    assert set(calls.values()) == {1}


@pytest.mark.parametrize("name", [e.name for e in entries() if "vector" not in e.cls.inputs])
def test_image_architectures_reject_vector_inputs(name):
    with pytest.raises(ParameterError, match="image"):
        build(name, TOY)


def test_cnn_001_mnist_parameter_count():
    # 001 sec. 4: Conv(64, 8x8) - Conv(128, 6x6) - Conv(128, 5x5) - dense(10); cleverhans
    # strides/padding: 28 -('same', stride 2)-> 14 -(6x6 valid, stride 2)-> 5 -(5x5 valid)-> 1.
    expected = conv(1, 64, 8) + conv(64, 128, 6) + conv(128, 128, 5) + dense(128 * 1 * 1, 10)
    assert n_params(build("cnn-001", MNIST)) == expected == 710_218


def test_cnn_001_small_input_rule_keeps_layers():
    # digits 8x8: kernels 8, 6, 5 scaled by 8/28 and rounded up -> 3, 2, 2; 8 -> 4 -> 2 -> 1.
    convs = [m for m in build("cnn-001", DIGITS).modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size[0]) for m in convs] == [(64, 3), (128, 2), (128, 2)]
    expected = conv(1, 64, 3) + conv(64, 128, 2) + conv(128, 128, 2) + dense(128, 10)
    assert n_params(build("cnn-001", DIGITS)) == expected


def test_resnet_001_mnist_parameter_count():
    # Convs 1-2 as cnn-001 (28 -> 14 -> 5), two 1x1 convs (128 -> 128), max-pool 3x3 (stride 3)
    # 5 -> 1, dense(10).
    expected = (conv(1, 64, 8) + conv(64, 128, 6) + 2 * conv(128, 128, 1)
                + dense(128 * 1 * 1, 10))
    assert n_params(build("resnet-001", MNIST)) == expected


def test_lenet5_mnist_parameter_count():
    # 28x28 padded to 32: C1 6@5x5 -> 28, pool -> 14, C3 16@5x5 -> 10, pool -> 5,
    # C5 120 (dense on 16*5*5), F6 84, output 10.
    expected = (conv(1, 6, 5) + conv(6, 16, 5) + dense(16 * 5 * 5, 120) + dense(120, 84)
                + dense(84, 10))
    assert n_params(build("lenet5", MNIST)) == expected == 61_706


def test_mlp_002_mnist_parameter_count():
    # 002: four-layer MLP 784-500-150-10.
    expected = dense(784, 500) + dense(500, 150) + dense(150, 10)
    assert n_params(build("mlp-002", MNIST)) == expected
    assert n_params(build("mlp-002", MNIST, hidden=(20,))) == dense(784, 20) + dense(20, 10)


def test_convnet_002_cifar_parameter_count():
    # conv5x5 32, 32, 64 (pad 2) with pools 32 -> 16 -> 8 -> 4, conv 4x4 64 (-> 1x1), conv 1x1 10.
    expected = (conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5) + conv(64, 64, 4)
                + conv(64, 10, 1))
    assert n_params(build("convnet-002", CIFAR)) == expected


def test_nin_002_cifar_parameter_count():
    # conv5x5-192, cccp 160, cccp 96 | conv5x5-192, cccp 192, cccp 192 | conv3x3-192, cccp 192,
    # cccp 10, global average pooling.
    expected = (conv(3, 192, 5) + conv(192, 160, 1) + conv(160, 96, 1)
                + conv(96, 192, 5) + 2 * conv(192, 192, 1)
                + conv(192, 192, 3) + conv(192, 192, 1) + conv(192, 10, 1))
    assert n_params(build("nin-002", CIFAR)) == expected


def test_cnn_004_mnist_parameter_count():
    # 004 Table 4: conv 32@5x5 pad 2, pool 2, conv 64@5x5 pad 2, pool 2 (28 -> 14 -> 7),
    # fc 1024, fc 10.
    expected = conv(1, 32, 5) + conv(32, 64, 5) + dense(64 * 7 * 7, 1024) + dense(1024, 10)
    assert n_params(build("cnn-004-mnist", MNIST)) == expected == 3_274_634


def test_cnn_004_svhn_parameter_count():
    # 004 Table 5 on 32x32: conv 32@5x5 -> 28, conv 64@5x5 -> 24, pool -> 12,
    # conv 128@3x3 -> 10, pool -> 5, fc 512, fc 10.
    expected = (conv(3, 32, 5) + conv(32, 64, 5) + conv(64, 128, 3) + dense(128 * 5 * 5, 512)
                + dense(512, 10))
    assert n_params(build("cnn-004-svhn", CIFAR)) == expected


def test_vgg13_bn_gap_parameter_count():
    # VGG13: stages of two 3x3 convs with 64, 128, 256, 512, 512 channels, no conv bias
    # (BN follows), BN has weight and bias per channel, then GAP and dense(512, 10).
    widths = [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    expected = sum(conv(cin, cout, 3, bias=False) + 2 * cout
                   for cin, cout in zip([3] + widths[:-1], widths)) + dense(512, 10)
    assert n_params(advarena.architecture("vgg13-bn-gap").build(CIFAR)) == expected


def test_resnet32_parameter_count():
    # He et al. sec. 4.2, n = 5: conv3x3 16, stages of 5 blocks (two 3x3 convs each) with 16,
    # 32, 64 channels, option-A shortcuts (no parameters), BN (2 per channel) after each conv,
    # GAP, dense(64, 10).
    def stage(cin, cout):
        first = conv(cin, cout, 3, bias=False) + conv(cout, cout, 3, bias=False) + 4 * cout
        return first + 4 * (2 * conv(cout, cout, 3, bias=False) + 4 * cout)

    expected = (conv(3, 16, 3, bias=False) + 2 * 16 + stage(16, 16) + stage(16, 32)
                + stage(32, 64) + dense(64, 10))
    n = n_params(build("resnet32", CIFAR))
    assert n == expected
    assert abs(n - 0.46e6) < 0.01e6  # "0.46M" in He et al. Table 6


def test_resnet50_matches_torchvision():
    tv = torchvision.models.resnet50(weights=None, num_classes=10)
    # >= 64 px keeps the ImageNet stem: same layout, same parameter names (built, not run).
    ours = build("resnet50", DatasetInfo("big", (3, 64, 64), 10))
    assert n_params(ours) == n_params(tv)
    ours.load_state_dict(tv.state_dict())
    # < 64 px: the 7x7 stem conv becomes 3x3, nothing else changes.
    small = build("resnet50", CIFAR)
    assert n_params(small) == n_params(tv) - conv(3, 64, 7, bias=False) + conv(3, 64, 3, False)
    assert isinstance(small.maxpool, nn.Identity) and small.conv1.stride == (1, 1)
