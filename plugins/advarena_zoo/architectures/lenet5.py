"""LeNet-5 as used by Chen, Li & Vorobeychik 2017."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .layers import ZooArchitecture, auto_padding, flat_size


class LeNet5(ZooArchitecture):
    """LeNet-5 (LeCun et al. 1998), the classifier of Chen, Li & Vorobeychik 2017, sec. 4
    ("We use LeNet-5 ... to perform the binary classification"); 003 gives no layer details,
    so this is the classic layout: Conv(6, 5x5) - act - MaxPool(2) - Conv(16, 5x5) - act -
    MaxPool(2) - FC(120) - act - FC(84) - act - FC(classes), logits out.

    Modern simplifications (our guess at what 003 ran): ReLU (``activation()``) instead of
    scaled tanh, max-pooling instead of trainable subsampling, a fully connected C3 instead of
    LeNet's partial connection table, a linear output instead of RBF units, C5 as a dense layer.

    Sizing: LeNet-5 was designed for 32x32 inputs with 28x28 digits centred in them, so inputs
    smaller than 32 px get padding 2 on the first conv (MNIST: 32 -> 28 -> 14 -> 10 -> 5, 16x5x5
    = 400 features, as in the classic net). The second conv is valid unless its map is too small
    to leave one pixel after the pool (digits 8x8: then it is padded 'same'; 8 -> 4 -> 2, 64
    features). FC(120)'s input size comes from a dummy forward.
    """

    name = "lenet5"
    paper = ("Chen, Li, Vorobeychik. Evaluation of Defensive Methods for DNNs Against Multiple "
             "Adversarial Evasion Models. 2017, sec. 4 (LeNet-5: LeCun et al. 1998)")

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        side = min(shape[1:])
        pad1 = 2 if side < 32 else 0
        (pad2,) = auto_padding((side + 2 * pad1 - 4) // 2, [("conv", 5), ("pool", 2)])
        features = nn.Sequential(
            nn.Conv2d(shape[0], 6, 5, padding=pad1), activation(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2), activation(), nn.MaxPool2d(2), nn.Flatten())
        return nn.Sequential(
            *features, nn.Linear(flat_size(features, shape), 120), activation(),
            nn.Linear(120, 84), activation(), nn.Linear(84, info.num_classes))
