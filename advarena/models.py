"""What attacks receive: a classifier that maps inputs in its box to logits.

Bounds live with the model (as in foolbox 3). A defense's input transform sits inside the
classifier; a transform marked non-differentiable is bypassed on the backward pass (BPDA,
Athalye et al. 2018, straight-through estimator), so a defense cannot look robust merely
because it breaks gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class InputTransform(nn.Module):
    """An input transform placed in front of a classifier.

    ``differentiable = False`` tells the classifier to attack it through BPDA: forward through
    the transform, backward as the identity.
    """

    differentiable: bool = True


class Classifier(nn.Module):
    """A network with its input box and an optional input transform.

    Attributes:
        net: the network returning logits.
        bounds: (low, high) of valid inputs; attacks clip to it and the harness checks it.
        transform: an optional :class:`InputTransform` applied before ``net``.
    """

    def __init__(self, net: nn.Module, bounds: tuple[float, float] = (0.0, 1.0),
                 transform: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            t = self.transform(x)
            if not getattr(self.transform, "differentiable", True):
                # BPDA: the value of t(x), the gradient of the identity.
                t = x + (t - x).detach()
            x = t
        return self.net(x)


class AveragedLogits(nn.Module):
    """An ensemble seen as one model: the mean of its members' logits."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.bounds = _common_bounds(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def _common_bounds(models: Sequence[nn.Module]) -> tuple[float, float]:
    bounds = {tuple(getattr(m, "bounds", (0.0, 1.0))) for m in models}
    if len(bounds) != 1:
        raise ValueError(f"ensemble members disagree on input bounds: {sorted(bounds)}")
    return bounds.pop()


ModelLike = nn.Module | Sequence[nn.Module]


def as_members(model: ModelLike) -> list[nn.Module]:
    """The list of models behind ``model`` (one model or an ensemble)."""
    if isinstance(model, nn.Module) and not isinstance(model, nn.ModuleList):
        return [model]
    members = list(model)
    if not members:
        raise ValueError("an ensemble needs at least one model")
    return members


def as_single(model: ModelLike) -> nn.Module:
    """One model: an ensemble is averaged in logit space."""
    members = as_members(model)
    return members[0] if len(members) == 1 else AveragedLogits(members)


def bounds_of(model: ModelLike) -> tuple[float, float]:
    return _common_bounds(as_members(model))


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels, batched, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1)
                          for i in range(0, len(x), batch_size)]) if len(x) else \
            torch.empty(0, dtype=torch.long, device=x.device)


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int | None = None) -> torch.Tensor:
    """Each example's own input gradient of its cross-entropy, in batches of ``batch_size``.

    The loss is summed, not averaged, so the gradient w.r.t. x_i is dJ(x_i, y_i)/dx_i whatever
    the batch size (a batch mean would divide it by the batch size); a model whose logits ignore
    the input gets zeros rather than an error.
    """
    step = batch_size or max(1, len(x))
    grads = []
    for i in range(0, len(x), step):
        xb = x[i:i + step].detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xb), y[i:i + step], reduction="sum")
        (g,) = torch.autograd.grad(loss, xb, materialize_grads=True)
        grads.append(g)
    return torch.cat(grads) if grads else torch.zeros_like(x)


ActivationFactory = Callable[[], nn.Module]
