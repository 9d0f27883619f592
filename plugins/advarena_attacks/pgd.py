"""PGD: projected gradient descent with a random start (Madry et al.)."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import linf_limits, sign_step
from ._losses import LOSS_CHOICES, LossName, objective_gradient


class PGD(Attack):
    """Projected gradient descent under Linf: a uniform random start in the eps-ball, then
    ``steps`` signed-gradient steps, each projected back onto the ball and the box.

    Paper: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR
    2018); used by Seiler et al. (000) sec. V for PGD training and by Yan et al. (002,
    supplement) for PGD accuracy (eps 0.1 MNIST, 0.01 CIFAR).

    Threat model: Linf, bounded by eps, untargeted, white-box gradients.

    Parameters:
        eps (float, 0.3): Linf budget.
        steps (int, 40): number of gradient steps (Madry's MNIST setting).
        step_size (float | None, None): step per iteration; None means ``2.5 * eps / steps``,
            Madry et al.'s rule, which lets the iterate cross the ball from any start.
        random_start (bool, True): start from a uniform point of the ball; without it the
            attack is I-FGSM/BIM.
        loss ('ce' | 'margin' | 'dlr', 'ce'): the objective ascended: Madry's cross-entropy,
            C&W's logit margin ``max_{j != y} z_j - z_y`` or Croce & Hein's DLR (eq. 6). The
            last two do not go blind when the softmax saturates (see ``_losses``).

    Every step is batched and free of host synchronisation; there is no early stop, so the
    cost is exactly ``steps`` forward-plus-backward passes.

    Example::

        x_adv = advarena.attack("pgd", eps=0.3, steps=40)(model, x, y)
    """

    name = "pgd"
    paper = "Madry et al. 2018; 000 sec. V, 002 supplement"
    threat_model = ThreatModel(norm="linf")

    eps: float = param(0.3, ge=0, help="Linf budget")
    steps: int = param(40, ge=1, help="number of gradient steps")
    step_size: float | None = param(None, gt=0, help="step per iteration (None: 2.5*eps/steps)")
    random_start: bool = param(True, help="uniform random start in the eps-ball")
    loss: LossName = param("ce", help="objective: ce | margin | dlr", choices=LOSS_CHOICES)

    def run(self, model, inputs, labels, eps, generator=None):
        step = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        lower, upper = linf_limits(inputs, eps, model.bounds)
        x_adv = inputs
        if self.random_start:
            noise = torch.rand(inputs.shape, generator=generator, device=inputs.device,
                               dtype=inputs.dtype)
            x_adv = torch.clamp(inputs + (2 * noise - 1) * eps, lower, upper)
        for _ in range(self.steps):
            grad = objective_gradient(model, x_adv, labels, self.loss)
            x_adv = sign_step(x_adv, grad, step, lower, upper)
        return x_adv
