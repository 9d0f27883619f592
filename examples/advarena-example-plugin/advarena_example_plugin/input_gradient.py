"""Input gradient regularization ("double backpropagation") as a defense."""

from __future__ import annotations

import torch

from advarena.api import Defense
from advarena.params import param


class InputGradientRegularization(Defense):
    """Input gradient regularization: penalise the squared L2 norm of the gradient of the
    training loss with respect to the inputs, so that small input changes move the loss less,

    ``loss = J(x, y) + lam * mean_i || grad_{x_i} J(x_i, y_i) ||_2^2``.

    Paper: Ross & Doshi-Velez, "Improving the Adversarial Robustness and Interpretability of
    Deep Neural Networks by Regularizing their Input Gradients" (AAAI 2018); the
    training technique is Drucker & LeCun's double backpropagation (IEEE Trans. Neural
    Networks, 1992).

    Kind: regulariser (the ``regularizer`` hook), so it composes with defenses that own the
    loss: ``fgsm-at+input-gradient-reg`` adds the penalty to FGSM training. ``J`` is the
    trainer's cross-entropy, with the soft targets of a composed defense when one sets them
    (``label-smoothing+input-gradient-reg``). The penalty's own gradient reaches the weights
    through a second backward pass (``create_graph=True``).

    Deterministic and differentiable: no randomness and no input transform, so every attack
    sees the true gradients of the deployed model (nothing to adapt with BPDA or EOT).

    Cost (measured by the trainer): 2 forward + 2 backward passes per example: the penalty
    takes its own forward with input gradients enabled and one gradient sweep, then the
    training sweep goes through both.

    Parameters:
        lam (float, 1.0): weight of the penalty. Ross & Doshi-Velez choose it by validation;
            1.0 is this example's choice for inputs in [0, 1].

    Example::

        advarena run --defense input-gradient-reg
        advarena.defense("input-gradient-reg", lam=10.0)
    """

    name = "input-gradient-reg"
    paper = "Ross & Doshi-Velez 2018 (AAAI); Drucker & LeCun 1992"
    api_version = "1"  # the advarena plugin API this class is written for
    kind = "regulariser"

    lam: float = param(1.0, ge=0, help="weight of the squared input-gradient norm")

    def penalty(self, model, x, y, ctx) -> torch.Tensor:
        """``mean_i ||grad_{x_i} J(x_i, y_i)||^2``, differentiable in the weights."""
        x = x.detach().requires_grad_(True)
        # ctx.cross_entropy is the batch mean; times N it is the sum, whose gradient holds
        # each example's own input gradient.
        loss = ctx.cross_entropy(model(x), y) * len(x)
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        return grad.pow(2).flatten(1).sum(1).mean()

    def regularizer(self, model, x, y, logits, ctx):
        if self.lam == 0:
            return None
        return self.lam * self.penalty(model, x, y, ctx)
