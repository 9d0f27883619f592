"""Yan et al. 2018's Network-in-Network for CIFAR-10."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory
from advarena.params import param

from .layers import ZooArchitecture


class NIN002(ZooArchitecture):
    """Yan, Guo & Zhang 2018 (Deep Defense), sec. 4.3 and supplement Table 4: the CIFAR-10
    network-in-network ("NIN", Lin, Chen & Yan 2014).

    Table 4 is missing from the paper's text copy; the layers come from the authors' released
    code (github.com/ZiangYan/deepdefense.pytorch, ``models/cifar10.py``, class ``NIN``):
    Conv(192, 5x5, pad 2) - act - Conv(160, 1x1) - act - Conv(96, 1x1) - act - MaxPool(2) -
    Dropout - Conv(192, 5x5, pad 2) - act - Conv(192, 1x1) - act - Conv(192, 1x1) - act -
    AvgPool(2) - Dropout - Conv(192, 3x3, pad 1) - act - Conv(192, 1x1) - act -
    Conv(classes, 1x1) - global average pooling, whose output is the logits (as in the authors'
    code, no ReLU after the last 1x1 conv). Dropout probability 0.5 as in their code.

    Sizing: all convs keep the map size, so any input of at least 4x4 works; the final pooling
    is global (8x8 on CIFAR) whatever the size.
    """

    name = "nin-002"
    paper = ("Yan, Guo, Zhang. Deep Defense: Training DNNs with Improved Adversarial Robustness. "
             "NeurIPS 2018, sec. 4.3, supplement Table 4 (NIN: Lin et al. 2014)")

    dropout: float = param(0.5, help="dropout probability after the first two poolings",
                           ge=0.0, lt=1.0)

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        c = self.check_input(info)[0]

        def block(cin: int, cout: int, k: int, mids: tuple[int, int]) -> list[nn.Module]:
            # k x k conv then two 1x1 "cccp" convs, each followed by act
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2), activation()]
            for a, b in zip((cout, *mids[:-1]), mids):
                layers += [nn.Conv2d(a, b, 1), activation()]
            return layers

        return nn.Sequential(
            *block(c, 192, 5, (160, 96)), nn.MaxPool2d(2), nn.Dropout(self.dropout),
            *block(96, 192, 5, (192, 192)), nn.AvgPool2d(2), nn.Dropout(self.dropout),
            nn.Conv2d(192, 192, 3, padding=1), activation(), nn.Conv2d(192, 192, 1), activation(),
            nn.Conv2d(192, info.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
