"""Bounded ReLU (Zantedeschi et al. 2017, sec. 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from advarena.api import Defense
from advarena.params import param


class BReLU(nn.Module):
    """``min(max(x, 0), t)``: a ReLU that saturates at ``t``."""

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        self.t = float(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, self.t)

    def extra_repr(self) -> str:
        return f"t={self.t}"


class BReLUDefense(Defense):
    """Bounded ReLU: every swappable ReLU of the architecture becomes ``min(max(x, 0), t)``.

    Paper: Zantedeschi, Nicolae, Rawat, "Efficient Defenses Against Adversarial Attacks"
    (001), sec. 3.1: bounding activations keeps a small input perturbation from accumulating
    through the layers; t = 1 for inputs in [0, 1].

    Kind: architecture change; training otherwise plain (1 forward + 1 backward).

    Parameters:
        t (float, 1.0): the saturation point.

    Example::

        advarena run --defense brelu
    """

    name = "brelu"
    paper = "Zantedeschi et al. 2017 (001) sec. 3.1"
    kind = "architecture"

    t: float = param(1.0, gt=0, help="saturation point of the bounded ReLU")

    def activation(self, info):
        t = self.t
        return lambda: BReLU(t)
