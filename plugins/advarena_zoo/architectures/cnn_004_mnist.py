"""e2SAD's MNIST CNN (Table 4)."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .layers import ZooArchitecture, flat_size

E2SAD = ("Efficient Two-Step Adversarial Defense for Deep Neural Networks (e2SAD), "
         "anonymous authors, under double-blind review")


class CNN004MNIST(ZooArchitecture):
    """e2SAD paper, sec. 4.1 and appendix A.1, Table 4 ("CNN model configuration for the MNIST
    dataset"): Conv(32, 5x5, stride 1, pad 2) - ReLU - MaxPool(2x2) - Conv(64, 5x5, stride 1,
    pad 2) - ReLU - MaxPool(2x2) - FC(1024) - ReLU - FC(10), softmax left to the loss. The table
    lists no dropout and none is used. ReLUs are ``activation()``.

    Sizing: the padded convs keep the map, so only the pools shrink it (MNIST 28 -> 7, 64x7x7 =
    3136 features; digits 8 -> 2, 256 features); FC(1024)'s input comes from a dummy forward.
    """

    name = "cnn-004-mnist"
    paper = E2SAD + ", appendix A.1, Table 4"

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        features = nn.Sequential(
            nn.Conv2d(shape[0], 32, 5, padding=2), activation(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), activation(), nn.MaxPool2d(2), nn.Flatten())
        return nn.Sequential(*features, nn.Linear(flat_size(features, shape), 1024), activation(),
                             nn.Linear(1024, info.num_classes))
