"""Gradient helpers shared by the first-party attacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the inputs.

    Summed, not averaged, so each example's gradient is its own loss gradient whatever the batch
    size (a batch-mean loss would shrink every gradient by the batch size).
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float,
                 bounds: tuple[float, float]) -> torch.Tensor:
    """Clip into the Linf ball around ``x`` and then into the input box (both convex, and the
    box contains ``x``, so the result lies in their intersection)."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv.clamp(*bounds)
