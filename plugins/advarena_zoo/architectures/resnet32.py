"""He et al.'s CIFAR ResNet-32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .layers import ZooArchitecture


class _BasicBlock(nn.Module):
    """3x3 conv - BN - act - 3x3 conv - BN, plus the shortcut, then act."""

    def __init__(self, cin: int, cout: int, stride: int, activation: ActivationFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), activation(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = activation()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x
        if self.stride != 1 or self.extra:
            # Option A (He et al. sec. 4.2): subsample and zero-pad channels, no parameters.
            short = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
        return self.act(self.body(x) + short)


class ResNet32(ZooArchitecture):
    """He, Zhang, Ren & Sun 2016, sec. 4.2 (CIFAR-10), n = 5: the ResNet-32 of Seiler et al.
    (000, sec. VI, Table III).

    Layers: 3x3 conv (16) - BN - act; three stages of five basic blocks with 16, 32 and 64
    channels (the first block of stages 2 and 3 has stride 2); identity shortcuts, option A
    (strided subsampling and zero-padded channels) where the shape changes, as He et al. use on
    CIFAR; global average pooling; linear layer to the logits. 6n + 2 = 32 weighted layers,
    0.46M parameters. ReLUs (after each BN except the second of a block, and after each sum)
    are ``activation()``.

    Sizing: convs keep the map and global pooling ends it, so any input of at least 4x4 works
    (32 -> 32, 16, 8; digits 8 -> 8, 4, 2).
    """

    name = "resnet32"
    paper = ("He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016, "
             "sec. 4.2; used by Seiler et al., sec. VI")

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        c = self.check_input(info)[0]
        layers: list[nn.Module] = [nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                   activation()]
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(5):
                layers.append(_BasicBlock(cin, cout, 2 if stage and not i else 1, activation))
                cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(64, info.num_classes))
