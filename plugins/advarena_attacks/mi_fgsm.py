"""MI-FGSM: the momentum iterative fast gradient sign method (Dong et al.)."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import linf_limits, normalize, sign_step
from ._losses import LOSS_CHOICES, LossName, objective_gradient


class MIFGSM(Attack):
    """Momentum iterative FGSM: accumulate the L1-normalised gradient with decay ``mu`` and step
    along the sign of the accumulated direction,

    ``g_{t+1} = mu * g_t + grad J(x_t) / ||grad J(x_t)||_1`` (per example),
    ``x_{t+1} = clip_{x,eps}(x_t + a * sign(g_{t+1}))``, from ``x_0 = x`` and ``g_0 = 0``.

    Paper: Dong et al., "Boosting Adversarial Attacks with Momentum" (CVPR 2018) sec. 3.1,
    Algorithm 1; reference [22] of Seiler et al. (000) sec. III. A zero gradient adds nothing
    to the momentum.

    Threat model: Linf, bounded by eps, untargeted, white-box gradients.

    Parameters:
        eps (float, 0.3): Linf budget (Dong et al.: 16/255 on ImageNet; 0.3 matches the other
            Linf attacks' MNIST-scale default).
        steps (int, 10): iterations T (Dong et al.: 10).
        step_size (float | None, None): step a; None is Dong et al.'s ``eps / steps``.
        decay (float, 1.0): momentum decay mu (Dong et al.: 1.0).
        loss ('ce' | 'margin' | 'dlr', 'ce'): the objective ascended (Dong et al.: ce; see
            ``pgd``). The L1 normalisation makes the update independent of the loss's scale.

    Cost: exactly ``steps`` forward-plus-backward passes, batched, no host synchronisation.

    Example::

        x_adv = advarena.attack("mi-fgsm", eps=0.3, steps=10, decay=1.0)(model, x, y)
    """

    name = "mi-fgsm"
    paper = "Dong et al. 2018 sec. 3.1; 000 ref. 22"
    threat_model = ThreatModel(norm="linf")

    eps: float = param(0.3, ge=0, help="Linf budget")
    steps: int = param(10, ge=1, help="number of iterations")
    step_size: float | None = param(None, gt=0, help="step per iteration (None: eps/steps)")
    decay: float = param(1.0, ge=0, help="momentum decay factor mu")
    loss: LossName = param("ce", help="objective: ce | margin | dlr", choices=LOSS_CHOICES)

    def run(self, model, inputs, labels, eps, generator=None):
        step = self.step_size if self.step_size is not None else eps / self.steps
        lower, upper = linf_limits(inputs, eps, model.bounds)
        x_adv = inputs
        momentum = torch.zeros_like(inputs)
        for _ in range(self.steps):
            grad = normalize(objective_gradient(model, x_adv, labels, self.loss), 1)
            momentum = momentum.mul_(self.decay).add_(grad)
            x_adv = sign_step(x_adv, momentum, step, lower, upper)
        return x_adv
