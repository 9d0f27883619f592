"""Zantedeschi et al. 2017's small ResNet."""

from __future__ import annotations

import torch
from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .cnn_001 import cleverhans_stem
from .layers import ZooArchitecture, flat_size, scaled_kernels


class _Shortcut(nn.Module):
    """1x1 conv - act - 1x1 conv, plus the identity, then act: relu(F(x) + x)."""

    def __init__(self, activation: ActivationFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(128, 128, 1), activation(), nn.Conv2d(128, 128, 1))
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class ResNet001(ZooArchitecture):
    """Zantedeschi, Nicolae & Rawat 2017, sec. 4 ("Datasets"): Conv2D(64, 8x8) -
    Conv2D(128, 6x6) - Conv2D(128, 1x1) - Conv2D(128, 1x1) - MaxPooling(3x3) - Softmax(10),
    "with an identity short-cut between layer 2 and 6", ReLU.

    Interpretation: the first two convs are those of ``cnn-001`` (64 8x8 stride 2 'same', 128
    6x6 stride 2 'valid', each with ``activation()``); the output of conv 2 is added to the
    output of the second 1x1 conv (a standard residual block, act after the first 1x1 conv and
    after the sum), before the pooling. Max-pooling 3x3 uses stride 3 (the Keras default:
    stride = pool size); flatten and a linear layer give the logits. MNIST 28x28: 128x5x5 maps,
    pooled to 1x1; CIFAR 32x32: 6x6 pooled to 2x2.

    Small inputs use ``cnn-001``'s rule (kernels scaled by side/28, rounded up: 3 and 2 for
    8x8); the pool window is clamped to the map (2x2 for 8x8).
    """

    name = "resnet-001"
    paper = ("Zantedeschi, Nicolae, Rawat. Efficient Defenses Against Adversarial Attacks. "
             "AISec 2017, sec. 4")

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        stem, side = cleverhans_stem(shape, activation, scaled_kernels(min(shape[1:]), (8, 6)))
        pool = min(3, side)
        features = nn.Sequential(*stem, _Shortcut(activation), nn.MaxPool2d(pool), nn.Flatten())
        return nn.Sequential(*features, nn.Linear(flat_size(features, shape), info.num_classes))
