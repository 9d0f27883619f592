"""e2SAD's SVHN CNN (Table 5)."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .cnn_004_mnist import E2SAD
from .layers import ZooArchitecture, auto_padding, flat_size

# Table 5's stack, for the padding rule: valid convs and 2x2 pools.
_OPS = [("conv", 5), ("conv", 5), ("pool", 2), ("conv", 3), ("pool", 2)]


class CNN004SVHN(ZooArchitecture):
    """e2SAD paper, sec. 4.2 and appendix A.1, Table 5 ("Model configuration for the SVHN
    dataset"): Conv(32, 5x5, stride 1, pad 0) - ReLU - Conv(64, 5x5, stride 1, pad 0) - ReLU -
    MaxPool(2x2) - Conv(128, 3x3, stride 1, pad 0) - ReLU - MaxPool(2x2) - FC(512) - ReLU -
    FC(10), softmax left to the loss. No dropout is listed and none is used. ReLUs are
    ``activation()``.

    Sizing: SVHN 32x32 gives 28 -> 24 -> 12 -> 10 -> 5, 128x5x5 = 3200 features. Inputs of at
    least 16 px keep the valid convs; for smaller ones (digits 8x8) a conv is padded 'same'
    when a valid one would leave too few pixels for the layers after it (8x8: the two 5x5 convs
    are padded, 8 -> 8 -> 8 -> 4 -> 2 -> 1). FC(512)'s input comes from a dummy forward.
    """

    name = "cnn-004-svhn"
    paper = E2SAD + ", appendix A.1, Table 5"

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        p1, p2, p3 = auto_padding(min(shape[1:]), _OPS)
        features = nn.Sequential(
            nn.Conv2d(shape[0], 32, 5, padding=p1), activation(),
            nn.Conv2d(32, 64, 5, padding=p2), activation(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=p3), activation(), nn.MaxPool2d(2), nn.Flatten())
        return nn.Sequential(*features, nn.Linear(flat_size(features, shape), 512), activation(),
                             nn.Linear(512, info.num_classes))
