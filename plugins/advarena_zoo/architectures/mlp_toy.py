"""Zantedeschi et al. 2017's toy network (Fig. 2)."""

from __future__ import annotations

import math

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory
from advarena.params import param

from .layers import IMAGE, VECTOR, ZooArchitecture, mlp


class MLPToy(ZooArchitecture):
    """Zantedeschi, Nicolae & Rawat 2017, Fig. 2: "a soft-max neural network with two dense
    hidden layers and RELU activation function", used on the 2-D toy sets (circles,
    half-moons).

    Layers: Linear(D, hidden) - act - Linear(hidden, hidden) - act - Linear(hidden, classes),
    logits out. The paper gives no width; ``hidden`` defaults to 64 (our choice). Image inputs
    are flattened, so D = C*H*W.
    """

    name = "mlp-toy"
    paper = ("Zantedeschi, Nicolae, Rawat. Efficient Defenses Against Adversarial Attacks. "
             "AISec 2017, Fig. 2")
    inputs = (VECTOR, IMAGE)

    hidden: int = param(64, help="units in each of the two hidden layers (not given in the paper)",
                        ge=1)

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        return mlp(math.prod(shape), (self.hidden, self.hidden), info.num_classes, activation)
