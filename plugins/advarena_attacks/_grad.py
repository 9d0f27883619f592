"""Gradient helpers shared by the first-party attacks.

Everything here is batched and free of host synchronisation, so an attack's step loop built from
these helpers never waits on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from advarena.models import loss_gradient  # noqa: F401  (re-exported for the attacks)

from ._losses import Objective, cross_entropy

# Per-example norms below this are treated as zero (a vanishing gradient gives a zero step).
_TINY = 1e-30


def loss_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      need_grad: bool = True, loss: Objective = cross_entropy
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-example ``loss`` (cross-entropy unless given; see :mod:`._losses`), its input gradient
    (None unless ``need_grad``) and the logits (detached), from one forward and at most one
    backward pass."""
    if not need_grad:
        with torch.no_grad():
            logits = model(x)
            return loss(logits, y), None, logits
    x = x.detach().requires_grad_(True)
    logits = model(x)
    losses = loss(logits, y)
    (grad,) = torch.autograd.grad(losses.sum(), x, materialize_grads=True)
    return losses.detach(), grad, logits.detach()


def batch_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example vector ``t`` (shape ``(B,)``) to broadcast against ``like``."""
    return t.reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def per_example_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-example ``p``-norm of a batch, shaped to broadcast against ``t``."""
    return batch_view(torch.linalg.vector_norm(t.flatten(1), ord=p, dim=1), t)


def normalize(t: torch.Tensor, p: float) -> torch.Tensor:
    """``t / ||t||_p`` per example; an all-zero example stays zero (no division by zero)."""
    n = per_example_norm(t, p)
    return torch.where(n > _TINY, t / n.clamp_min(_TINY), torch.zeros_like(t))


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float,
                 bounds: tuple[float, float]) -> torch.Tensor:
    """Clip into the Linf ball around ``x`` and then into the input box (both convex, and the
    box contains ``x``, so the result lies in their intersection)."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv.clamp(*bounds)


def linf_limits(x: torch.Tensor, eps: float, bounds: tuple[float, float]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate limits of the intersection of the Linf eps-ball around ``x`` and the box.

    ``x_adv.clamp(lower, upper)`` equals :func:`project_linf` exactly (clipping to an interval
    and then to a second one that overlaps it is clipping to their intersection; only min/max
    are involved, no rounding), in one kernel instead of three.
    """
    lo, hi = bounds
    return (x - eps).clamp_min(lo), (x + eps).clamp_max(hi)


def sign_step(x_adv: torch.Tensor, direction: torch.Tensor, step: float | torch.Tensor,
              lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """One I-FGSM step: ``clamp(x_adv + step * sign(direction), lower, upper)``."""
    if isinstance(step, torch.Tensor):
        moved = x_adv + step * direction.sign()
    else:
        moved = x_adv.add(direction.sign(), alpha=step)
    return torch.clamp(moved, lower, upper)


def pixel_unit(bounds: tuple[float, float]) -> float:
    """One grey level of an 8-bit image spanning the box: ``(high - low) / 255`` (1/255 on
    [0, 1]); the unit of 000's and Kurakin et al.'s "eps in /255 units"."""
    return (bounds[1] - bounds[0]) / 255.0


def kurakin_steps(eps: float, bounds: tuple[float, float]) -> int:
    """Kurakin et al.'s iteration count ``I = min(eps + 4, 1.25 * eps)`` with eps in grey levels
    (000 sec. III, Kurakin et al. 2017 sec. 2.2), rounded up, at least 1.

    Rounding up guarantees that ``I`` steps of one grey level can reach the budget (``I >= eps``);
    for 000's budgets 4, 8, 16 it gives 5, 10, 20 either way. torchattacks' BIM (``steps=0``)
    truncates instead (eps 0.3 on [0, 1]: 80.5 -> 80 there, 81 here). The grey-level value is
    rounded to 6 decimals first, so 8/255 counts as exactly 8 despite float error.
    """
    levels = round(eps / pixel_unit(bounds), 6)
    return max(1, math.ceil(min(levels + 4.0, 1.25 * levels)))


def normalized_gradient_sum(models: Sequence[nn.Module], x: torch.Tensor,
                            y: torch.Tensor) -> torch.Tensor:
    """``sum_n grad_x J_n / ||grad_x J_n||_2`` with per-example L2 norms (000 eq. 2-3): each
    model pulls with the same weight, whatever the scale of its loss."""
    total = None
    for m in models:
        g = normalize(loss_gradient(m, x, y), 2)
        total = g if total is None else total + g
    return total
