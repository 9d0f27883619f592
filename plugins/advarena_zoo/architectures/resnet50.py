"""ResNet-50 (torchvision's layout) with a swappable activation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .layers import ZooArchitecture

if TYPE_CHECKING:  # torchvision pulls in torch._dynamo (1.4 s): imported only to build one
    import torchvision

SMALL_INPUT = 64  # below this side the ImageNet stem would shrink the map 4x too early


class _Bottleneck(nn.Module):
    """torchvision's Bottleneck with one activation module per call site: torchvision reuses a
    single ``self.relu`` three times, which a module swap could not tell apart. Parameter
    names match torchvision's, so its state dicts load."""

    def __init__(self, block: "torchvision.models.resnet.Bottleneck",
                 activation: ActivationFactory) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.downsample = block.downsample
        self.act1, self.act2, self.act3 = activation(), activation(), activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.act3(out + short)


class ResNet50(ZooArchitecture):
    """He, Zhang, Ren & Sun 2016, Table 1 (50-layer, bottleneck blocks 3-4-6-3): the ResNet50
    of Seiler et al. (000, sec. VI, Table III), in torchvision's layout (stride on the 3x3 conv,
    "ResNet v1.5").

    Built as ``torchvision.models.resnet50(num_classes=...)`` with every ReLU replaced by its
    own ``activation()`` instance: the stem's, and three per bottleneck (blocks are rebuilt
    because torchvision reuses one ReLU module per block).

    Sizing: inputs of at least 64 px keep the ImageNet stem (7x7 conv stride 2, 3x3 max-pool
    stride 2). Smaller inputs (CIFAR 32, MNIST 28, digits 8) get the usual CIFAR stem instead:
    3x3 conv stride 1, no max-pool, so the four stages see 32, 16, 8, 4 px on CIFAR. The stem
    conv takes the dataset's channel count. Global average pooling makes any size work.
    """

    name = "resnet50"
    paper = ("He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016, "
             "Table 1; used by Seiler et al., sec. VI")

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        c, h, w = self.check_input(info)
        import torchvision

        net = torchvision.models.resnet50(weights=None, num_classes=info.num_classes)
        if min(h, w) < SMALL_INPUT:
            net.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif c != 3:
            net.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
        # torchvision's init for convs
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.relu = activation()
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            for i, block in enumerate(stage):
                stage[i] = _Bottleneck(block, activation)
        return net
