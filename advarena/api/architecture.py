"""The Architecture contract: ``build(info, activation) -> nn.Module`` returning logits."""

from __future__ import annotations

from torch import nn

from ..models import ActivationFactory
from ..params import Plugin
from .data import DatasetInfo


class Architecture(Plugin):
    """Base class of architecture plugins.

    ``build`` sizes the network to ``info.input_shape`` and ``info.num_classes`` and uses
    ``activation()`` for every nonlinearity that a defense may swap (ReLU by default, BReLU for
    ``brelu``).
    """

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        raise NotImplementedError
