"""Fixture plugin: a defense that swaps the activation (so it cannot be combined with
``brelu``) and one that only adds a regularizer (so it can)."""

from __future__ import annotations

from torch import nn

from advarena.api import Defense
from advarena.hookimpl import hookimpl
from advarena.params import param


class TanhActivation(Defense):
    """Every swappable ReLU becomes a tanh."""

    name = "tanh-act"

    def activation(self, info):
        return nn.Tanh


class L2Logits(Defense):
    """Adds ``weight * mean(logits**2)`` to the loss."""

    name = "l2-logits"
    weight: float = param(0.1, ge=0)

    def regularizer(self, model, x, y, logits, ctx):
        return self.weight * logits.pow(2).mean()


@hookimpl
def advarena_register_defenses():
    return [TanhActivation, L2Logits]
