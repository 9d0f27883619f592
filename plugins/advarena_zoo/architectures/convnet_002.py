"""Yan et al. 2018's ConvNet for CIFAR-10."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .layers import ZooArchitecture


class ConvNet002(ZooArchitecture):
    """Yan, Guo & Zhang 2018 (Deep Defense), sec. 4.3 and supplement Table 4: the CIFAR-10
    "ConvNet" ("the same architecture as in [15]", Hinton et al. 2012; MatConvNet's CIFAR
    example network).

    Table 4 is missing from the paper's text copy; the layers come from the authors' released
    code (github.com/ZiangYan/deepdefense.pytorch, ``models/cifar10.py``, class ``ConvNet``):
    Conv(32, 5x5, pad 2) - MaxPool(2) - act - Conv(32, 5x5, pad 2) - act - AvgPool(2) -
    Conv(64, 5x5, pad 2) - act - AvgPool(2) - Conv(64, 4x4) - act - Conv(classes, 1x1), whose
    1x1 output map is the logits. (The MatConvNet original uses 3x3 stride-2 pools; the
    authors' PyTorch port, followed here, uses 2x2.)

    Sizing: on 32x32 the 4x4 conv sees a 4x4 map, i.e. it is a dense layer. For other sizes
    its kernel is the shorter side of the map it sees (MNIST 28: 3; digits 8: 1), so it stays
    dense-like; a logit map left larger than 1x1 (non-square inputs only) is average-pooled.
    """

    name = "convnet-002"
    paper = ("Yan, Guo, Zhang. Deep Defense: Training DNNs with Improved Adversarial Robustness. "
             "NeurIPS 2018, sec. 4.3, supplement Table 4")

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        c, h, w = self.check_input(info)
        k4 = max(1, min(h, w) // 8)  # side after three 2x2 pools (4 for 32x32)
        return nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.MaxPool2d(2), activation(),
            nn.Conv2d(32, 32, 5, padding=2), activation(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), activation(), nn.AvgPool2d(2),
            nn.Conv2d(64, 64, k4), activation(),
            nn.Conv2d(64, info.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
