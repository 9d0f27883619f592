"""Per-example attack objectives on logits, all to be *maximised*, shared by the attacks' ``loss``
parameter (``ce`` | ``margin`` | ``dlr``) and by APGD's variants.

Why more than cross-entropy: the CE gradient is ``softmax(z) - onehot(y)`` times the Jacobian of
the logits; when the softmax saturates (logits scaled up, defensive distillation at T=100) it
is zero to float precision on confidently classified examples and every CE attack stops moving
(Carlini & Wagner 2017 sec. VIII; Croce & Hein 2020 sec. 4). The margin and DLR losses act on the
logits directly: the margin's gradient scales with the logits but its sign does not change, and
DLR is invariant to any positive scaling and shift of the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from advarena.errors import ParameterError

LossName = Literal["ce", "margin", "dlr"]
LOSS_CHOICES = ("ce", "margin", "dlr")
# Croce & Hein's (and the authors' code's) guard against a zero denominator in DLR.
_DLR_TINY = 1e-12

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _need_classes(logits: torch.Tensor, n: int, what: str) -> None:
    # A shape check (a Python int): no host sync.
    if logits.shape[1] < n:
        raise ParameterError(f"the {what} loss needs at least {n} classes, the model has "
                             f"{logits.shape[1]}; use loss='margin'")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(z, y)`` per example."""
    return F.cross_entropy(logits, y, reduction="none")


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_y, max_{j != y} z_j)`` per example."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true, others.amax(1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini & Wagner's logit margin ``max_{j != y} z_j - z_y`` (2017 sec. V, their f_6 with
    kappa = infinity, untargeted): positive exactly where the example is misclassified."""
    true, other = _true_and_best_other(logits, y)
    return other - true


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted difference of logits ratio, Croce & Hein 2020 eq. 6:
    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, ``pi`` sorting the logits in decreasing
    order; ``1e-12`` is added to the denominator as in the authors' code. Needs >= 3 classes.

    Invariant to ``z -> a z + b`` for ``a > 0`` (up to the 1e-12), hence to logit scaling."""
    _need_classes(logits, 3, "DLR")
    true, other = _true_and_best_other(logits, y)
    top = logits.topk(3, dim=1).values
    return -(true - other) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, Croce & Hein 2020 eq. 7:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (1e-12 added as in the authors' code).
    Needs >= 4 classes."""
    _need_classes(logits, 4, "targeted DLR")
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    top = logits.topk(4, dim=1).values
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


OBJECTIVES: dict[str, Objective] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def objective(name: str) -> Objective:
    """The per-example objective called ``name`` (one of :data:`LOSS_CHOICES`)."""
    return OBJECTIVES[name]


def objective_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       loss: str) -> torch.Tensor:
    """Each example's input gradient of the objective ``loss`` (summed, so per example).

    ``ce`` goes through :func:`advarena.models.loss_gradient`, the one every CE attack uses, so
    an attack's default ``loss='ce'`` computes exactly what it did before the parameter existed.
    """
    if loss == "ce":
        from advarena.models import loss_gradient

        return loss_gradient(model, x, y)
    x = x.detach().requires_grad_(True)
    value = OBJECTIVES[loss](model(x), y).sum()
    (grad,) = torch.autograd.grad(value, x, materialize_grads=True)
    return grad
