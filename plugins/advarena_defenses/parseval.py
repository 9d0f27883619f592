"""Parseval training (Cisse et al. 2017; the comparison method of 002)."""

from __future__ import annotations

import torch
from torch import nn

from advarena.params import param

from ._adv import family_value
from ._stages import FineTuning

# 002 sec. 4: "beta = 0.0001 for MNIST, and beta = 0.0003 for CIFAR-10 after doing grid search".
BETA_BY_FAMILY = {"mnist": 1e-4, "cifar": 3e-4}


def parseval_layers(model: nn.Module) -> list[nn.Module]:
    """Every linear and convolutional layer (the weight matrices Parseval training constrains)."""
    return [m for m in model.modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight is not None]


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a matrix, rows = output units: conv kernels are unfolded to
    ``out x (in * kh * kw)``. Transposed convolutions store ``in x out x ...``; their rows are
    then the input channels. A view on the parameter when the weight is contiguous, a copy
    otherwise (a channels-last conv weight, ``--channels-last``): to change the weight use
    :func:`retract_layer`, which writes the result back."""
    w = layer.weight
    return w.reshape(w.shape[0], -1)


@torch.no_grad()
def retract_layer(layer: nn.Module, beta: float, fraction: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`parseval_step` on the layer's weight matrix, written back into the weight
    whatever its memory layout (a channels-last weight cannot be viewed as a matrix, and a
    retraction of a reshaped copy alone would be lost); returns the rows touched."""
    w = layer.weight
    mat = weight_matrix(layer)
    idx = parseval_step(mat, beta, fraction, generator)
    if mat.data_ptr() != w.data_ptr():  # a copy: write the retracted rows back
        w.copy_(mat.view(w.shape))
    return idx


@torch.no_grad()
def parseval_step(w: torch.Tensor, beta: float, fraction: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One Parseval retraction ``W_S <- (1 + beta) W_S - beta W_S W_S^T W_S`` on a random
    ``fraction`` of the rows S of the matrix ``w``, in place; returns the rows touched."""
    rows = w.shape[0]
    k = max(1, int(round(fraction * rows)))
    idx = torch.randperm(rows, generator=generator, device=w.device)[:k]
    ws = w[idx]
    w[idx] = (1 + beta) * ws - beta * (ws @ ws.t() @ ws)
    return idx


def parseval_deviation(layer: nn.Module) -> float:
    """``||W W^T - I||_F`` of the layer's weight matrix (0 for a Parseval-tight layer with
    orthonormal rows)."""
    w = weight_matrix(layer).detach()
    eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
    return float((w @ w.t() - eye).norm())


class ParsevalTraining(FineTuning):
    """Parseval training: after every optimiser step, retract each weight matrix towards the
    Stiefel manifold with ``W <- (1 + beta) W - beta W W^T W`` on a random 30% of its rows.

    Paper: Cisse, Bojanowski, Grave, Dauphin, Usunier, "Parseval Networks: Improving Robustness
    to Adversarial Examples" (ICML 2017), sec. 4 (the orthonormality constraint ``W W^T = I``
    kept by a retraction after each SGD step, applied to a random subset of rows "to save
    computation"); as the comparison method of Yan et al. (002, sec. 4: "a projection update is
    performed after each stochastic gradient descent iteration ... we uniformly sample 30% of
    columns to perform this update. We set beta = 0.0001 for MNIST, and beta = 0.0003 for
    CIFAR-10").

    Kind: weight constraint (the ``after_step`` hook), so it composes with any loss.

    Choices: every ``nn.Linear`` and convolution weight is constrained, the output layer
    included; a convolution kernel is unfolded to ``out x (in * kh * kw)`` (Cisse et al.'s
    unfolded-kernel view) and its rows are sampled. 002's "columns" are the rows here:
    PyTorch stores ``W`` as ``out x in``, the transpose of the convention 002's code follows.
    The subset is redrawn per layer and per step from the session's generator. Cisse et al. also
    keep residual aggregation layers convex (the weights of a sum of branches projected onto the
    simplex); the zoo's residual networks add branches with fixed unit weights, so there is
    nothing to project and this plugin does not change architectures. Where a layer has more
    rows than columns, ``W W^T`` cannot reach the identity (rank); the retraction still drives
    every singular value towards 1. Under ``--channels-last`` conv weights are not contiguous;
    the retraction works on a matrix copy and writes it back (:func:`retract_layer`).

    Training: from scratch at the suite's settings by default (Cisse et al. train Parseval
    networks from the start); ``finetune=True`` is 002's comparison, which fine-tunes Parseval
    from the same reference model and by the same schedule as Deep Defense and Adv. Train I
    (``needs_reference``; ``epochs``, ``cut_epochs``, ``lr`` as for ``deep-defense``: 5 / 50
    epochs at 5e-4, the last 1 / 10 at half).

    Cost: 1 forward + 1 backward pass per example, as ``none``; the retraction is weight-only
    work after the step (not counted as passes; shows in the epoch time).

    Parameters:
        beta (float | None, None): retraction step (None: 1e-4 MNIST-like, 3e-4 CIFAR-like).
        fraction (float, 0.3): share of rows updated per step (002: 30%).
        finetune (bool, False): fine-tune from the reference by 002's schedule.
        epochs, cut_epochs, lr: that schedule (None: 002's; see ``deep-defense``).

    Example::

        advarena run --defense parseval
        advarena run --defense parseval+fgsm-at
    """

    name = "parseval"
    paper = "Cisse et al. 2017 sec. 4; 002 sec. 4"
    kind = "weight constraint"

    beta: float | None = param(None, gt=0, help="retraction step (None: 1e-4 MNIST, 3e-4 CIFAR)")
    fraction: float = param(0.3, gt=0, le=1, help="share of rows updated after each step")
    finetune: bool = param(False, help="fine-tune from the reference by 002's schedule")

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.finetune

    def schedule(self, info, config):
        return super().schedule(info, config) if self.finetune else None

    def beta_for(self, info) -> float:
        return family_value(self.beta, BETA_BY_FAMILY, info)

    def after_step(self, model, ctx):
        beta = self.beta_for(ctx.info)
        for layer in parseval_layers(model):
            retract_layer(layer, beta, self.fraction, ctx.generator)
