"""Fixture plugin: two "defenses" that only hide gradients, for the headline and sanity tests
(issue 11). Neither changes a single prediction of the undefended model, so an honest
evaluation must score them like ``none`` and the sanity flags must say what they do.

* ``logit-scale``: the trained undefended model (``needs_reference``: its weights) with its last
  linear layer multiplied by ``scale``. Predictions are unchanged; the softmax saturates, so the
  cross-entropy's input gradient underflows to exactly zero on confidently classified examples
  (the mechanism of defensive distillation at T = 100; Carlini and Wagner 2016).
* ``nan-grad``: plain training behind an input transform that is the identity forward and
  returns NaN gradients backward (``sign(NaN)`` steps go nowhere or out of the box).
"""

from __future__ import annotations

import torch
from torch import nn

from advarena.api import Defense
from advarena.hookimpl import hookimpl
from advarena.models import InputTransform
from advarena.params import param


class LogitScale(Defense):
    """The reference model with its logits scaled by ``scale`` (same predictions)."""

    name = "logit-scale"
    paper = "test fixture (issue 11): gradient masking by logit scaling"
    needs_reference = True

    scale: float = param(100.0, gt=0, help="factor on the last linear layer")

    def fit(self, session) -> None:
        last = [m for m in session.model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(self.scale)
            if last.bias is not None:
                last.bias.mul_(self.scale)


class _NanBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class NanGradTransform(InputTransform):
    """Identity forward, NaN backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NanBackward.apply(x)


class NanGrad(Defense):
    """Plain training behind an input transform whose backward pass returns NaN."""

    name = "nan-grad"
    paper = "test fixture (issue 11): non-finite input gradients"

    def input_transform(self, info):
        return NanGradTransform()


@hookimpl
def advarena_register_defenses():
    return [LogitScale, NanGrad]
