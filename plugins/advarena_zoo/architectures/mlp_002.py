"""Yan et al. 2018's four-layer MLP for MNIST."""

from __future__ import annotations

import math

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory
from advarena.params import param

from .layers import IMAGE, VECTOR, ZooArchitecture, mlp


class MLP002(ZooArchitecture):
    """Yan, Guo & Zhang 2018 (Deep Defense), sec. 4.2 and supplement Table 4: the "four-layer
    MLP" reference for MNIST, 784-500-150-10 (four layers of units counting the input).

    The widths are not in the paper's text copy; they come from the authors' released code
    (github.com/ZiangYan/deepdefense.pytorch, ``models/mnist.py``, class ``MLP``): Linear(784,
    500) - ReLU - Linear(500, 150) - ReLU - Linear(150, 10). ReLUs are ``activation()``. Inputs
    are flattened, so any image size or a 2-D vector works.
    """

    name = "mlp-002"
    paper = ("Yan, Guo, Zhang. Deep Defense: Training DNNs with Improved Adversarial Robustness. "
             "NeurIPS 2018, sec. 4.2, supplement Table 4")
    inputs = (IMAGE, VECTOR)

    hidden: tuple[int, ...] = param((500, 150), help="hidden layer widths", ge=1)

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        return mlp(math.prod(shape), self.hidden, info.num_classes, activation)
