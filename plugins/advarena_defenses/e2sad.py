"""e2SAD: efficient two-step adversarial defense (004, Algorithm 1)."""

from __future__ import annotations

import torch

from advarena.api import Defense
from advarena.params import param

from ._adv import crafting, family_value, random_unit, smooth_targets, soft_cross_entropy

# 004 sec. 4.1 (MNIST): alpha 0.6, lambda 0.1, eps1 0.3, eps2 0.1; sec. 4.2 (SVHN, a "cifar"-
# family dataset here): alpha 0.6, lambda 0.3, eps1 24/255, eps2 8/255.
LAM_BY_FAMILY = {"mnist": 0.1, "cifar": 0.3}
EPS1_BY_FAMILY = {"mnist": 0.3, "cifar": 24 / 255}
EPS2_BY_FAMILY = {"mnist": 0.1, "cifar": 8 / 255}


def second_point(model, x_adv: torch.Tensor, eps2: float, xi: float, bounds,
                 generator) -> tuple[torch.Tensor, torch.Tensor]:
    """e2SAD's second step (004 eq. 7): ``x~ = x_adv + eps2 * sign(grad_{x~} CE(f(x_adv),
    f(x~)))``, returned with the start point ``x~_0`` where the gradient was taken.

    At ``x~ = x_adv`` the gradient is exactly zero (the CE of a distribution with itself is at
    its minimum over the second argument: its gradient w.r.t. the logits is ``q - p = 0``), so
    the sign would be 0 and ``x~`` would equal ``x_adv``. The gradient is therefore taken at
    ``x~_0 = x_adv + xi * d`` with ``d`` a random unit-L2 direction, as VAT's finite difference
    does: to first order it is ``H (x~_0 - x_adv)`` with H the Hessian of the CE at ``x_adv``,
    whose sign is the step. ``x~`` is clipped to the input box only, not to any eps-ball
    (004 sec. 4.1: "we do not clamp the second adversarial point to be within a norm ball").
    Model in eval mode; ``f(x_adv)`` is a constant target. Two forwards and one sweep.
    """
    with crafting(model):
        with torch.no_grad():
            p_logits = model(x_adv)
        start = (x_adv + xi * random_unit(x_adv, generator)).requires_grad_(True)
        dissimilarity = soft_cross_entropy(p_logits, model(start), reduction="sum")
        (grad,) = torch.autograd.grad(dissimilarity, start)
    x_tilde = (x_adv + eps2 * grad.sign()).clamp(*bounds)
    return x_tilde.detach(), start.detach()


class E2SAD(Defense):
    """e2SAD: ``alpha J(x) + (1 - alpha) J(x_adv) + lambda mean_i CE(f(x_adv_i), f(x~_i))``.

    Paper: "Efficient Two-Step Adversarial Defense for Deep Neural Networks" (004), Algorithm 1,
    eq. 6-8, sec. 3.3 (label smoothing) and sec. 4 (settings):

    1. ``x_adv = x + eps1 * sign(grad_x CE(y, f(x)))`` (eq. 6: FGSM), crafted with the ``fgsm``
       attack plugin through ``ctx.run_attack`` (threat model checked; hard labels; box-clipped);
    2. ``x~ = x_adv + eps2 * sign(grad_{x~} CE(f(x_adv), f(x~)))`` (eq. 7), see
       :func:`second_point`: the gradient vanishes exactly at ``x~ = x_adv``, so it is taken at a
       small random offset ``x_adv + xi d`` (``xi`` = 1e-3, unit-L2 ``d``), and ``x~`` is clipped
       to the box only;
    3. loss (eq. 8) with soft targets (true class 0.75, the rest spread uniformly: sec. 3.3 and
       4.1 "0.75 ... 0.25") in both cross-entropies against labels.

    Choices: in the dissimilarity term D = CE(f(x_adv), f(x~)) the gradient flows through both
    distributions (eq. 8 writes both with theta and says nothing of a stop-gradient). The soft
    targets are this defense's ``targets`` hook (so it cannot be combined with
    ``label-smoothing``; set ``smoothing=1`` for hard labels). Composed regularisers are added on
    the clean logits.

    Precision: both steps run in float32 under ``--amp`` (the FGSM step through
    ``ctx.run_attack``, the second step in ``ctx.attack_precision``): the second step's
    gradient is a first-order effect of the 1e-3 offset, below bfloat16's rounding.

    Kind: adversarial training (owns the ``loss`` and ``targets`` hooks).

    Cost (measured, example-passes): 6 forward + 5 backward per example: FGSM (1 + 1), the
    second step (a forward for the target ``f(x_adv)``, one at ``x~_0`` and its backward), then
    training forwards on ``x``, ``x_adv`` and ``x~`` and one training sweep back through the
    three. Its three sweeps are 004's "only two steps of gradient calculation" to find the
    adversaries plus the training step.

    Parameters:
        alpha (float, 0.6): weight of the clean loss.
        lam (float | None, None): weight of the dissimilarity term (None: 0.1 MNIST-like, 0.3
            CIFAR/SVHN-like).
        eps1 (float | None, None): FGSM step (None: 0.3 MNIST-like, 24/255 CIFAR/SVHN-like).
        eps2 (float | None, None): second step (None: 0.1 MNIST-like, 8/255 CIFAR/SVHN-like).
        smoothing (float, 0.75): target probability of the true class (1 for hard labels).
        xi (float, 1e-3): L2 radius of the random offset the second gradient is taken at.

    Example::

        advarena run --defense e2sad
    """

    name = "e2sad"
    paper = "e2SAD (004) Algorithm 1, eq. 6-8"
    kind = "adversarial training"

    alpha: float = param(0.6, ge=0, le=1, help="weight of the clean loss")
    lam: float | None = param(None, ge=0,
                              help="weight of the CE dissimilarity (None: 0.1 MNIST, 0.3 SVHN)")
    eps1: float | None = param(None, ge=0, help="FGSM step (None: 0.3 MNIST, 24/255 SVHN)")
    eps2: float | None = param(None, ge=0, help="second step (None: 0.1 MNIST, 8/255 SVHN)")
    smoothing: float = param(0.75, gt=0, le=1, help="target probability of the true class")
    xi: float = param(1e-3, gt=0, help="L2 radius of the random offset from x_adv")

    def settings(self, info) -> tuple[float, float, float]:
        return (family_value(self.lam, LAM_BY_FAMILY, info),
                family_value(self.eps1, EPS1_BY_FAMILY, info),
                family_value(self.eps2, EPS2_BY_FAMILY, info))

    def targets(self, labels, num_classes):
        if self.smoothing >= 1:
            return None
        return smooth_targets(labels, num_classes, self.smoothing)

    def adversarial_points(self, model, x, y, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_adv, x~)`` for a batch (Algorithm 1, lines 2-3)."""
        _, eps1, eps2 = self.settings(ctx.info)
        x_adv = ctx.run_attack(ctx.attack("fgsm", eps=eps1), model, x, y, eps=eps1)
        with ctx.attack_precision():  # float32 under --amp, like the FGSM step
            x_tilde, _ = second_point(model, x_adv, eps2, self.xi, ctx.info.bounds,
                                      ctx.generator)
        return x_adv, x_tilde

    def training_attacks(self) -> tuple[str, ...]:
        return ("fgsm",)

    def loss(self, model, x, y, ctx):
        lam = self.settings(ctx.info)[0]
        x_adv, x_tilde = self.adversarial_points(model, x, y, ctx)
        logits = model(x)
        logits_adv = model(x_adv)
        logits_tilde = model(x_tilde)
        return (self.alpha * ctx.cross_entropy(logits, y)
                + (1 - self.alpha) * ctx.cross_entropy(logits_adv, y)
                + lam * soft_cross_entropy(logits_adv, logits_tilde)
                + ctx.regularizers(model, x, y, logits))
