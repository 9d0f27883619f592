"""Minimal FGSM: the smallest eps on a grid at which the FGSM example changes the prediction."""

from __future__ import annotations

import math

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import loss_gradient


class FGSMMinimal(Attack):
    """FGSM with the budget raised from ``eps_step`` in steps of ``eps_step`` up to ``eps_max``
    until the prediction changes; per example, the FGSM example at the first eps that changes
    it. The gradient sign is taken once, at the clean input (the FGSM direction does not depend
    on eps), and every candidate is ``clip_box(x + k * eps_step * sign(grad))``.

    This is the attack behind 001's empirical robustness (eq. 2, Table 2: "crafted
    incrementally using FGSM with small perturbations, and the algorithm stops when the
    prediction changes") and ART's ``FastGradientMethod(minimal=True)`` /
    ``art.metrics.empirical_robustness``.

    "Changes the prediction" means "differs from ``labels``" (pass the model's own predictions as
    labels to follow ART). Examples already misclassified at eps = 0 are returned unchanged
    (their minimal perturbation is 0), as are examples no eps up to ``eps_max`` flips. All
    examples advance together; those that flipped are frozen; the loop stops early once none is
    left (one host synchronisation per eps, the algorithm's own stop test).

    The grid is ``k * eps_step`` for ``k = 1 .. floor(eps_max / eps_step)`` (with a 1e-9
    relative tolerance, so 1.0 / 0.01 gives 100 values). ART accumulates ``eps += eps_step``
    and can stop one value short (a running sum of 0.01 passes 1.0 after 99 steps).

    Paper: Zantedeschi, Nicolae, Rawat (001) sec. 4.1 eq. 2 and sec. 4.4 (Table 2).

    Threat model: Linf, minimal (no eps), untargeted, white-box gradients.

    Parameters:
        eps_step (float, 0.01): grid step; 001's FGSM sweeps use eps from 0.01 to 1 on MNIST
            (ART's default step 0.1 is too coarse to measure a minimal eps).
        eps_max (float, 1.0): largest eps tried (the whole [0, 1] box).

    Cost: one forward-plus-backward pass, then at most ``eps_max / eps_step`` forward passes.

    Example::

        x_adv = advarena.attack("fgsm-minimal", eps_step=0.01)(model, x, y)
    """

    name = "fgsm-minimal"
    paper = "001 sec. 4.1 eq. 2, sec. 4.4"
    threat_model = ThreatModel(norm="linf", budget="minimal")

    eps_step: float = param(0.01, gt=0, help="eps grid step")
    eps_max: float = param(1.0, gt=0, help="largest eps tried")

    def run(self, model, inputs, labels, eps=None, generator=None):
        n_eps = math.floor(self.eps_max / self.eps_step * (1 + 1e-9))
        direction = loss_gradient(model, inputs, labels).sign()
        with torch.no_grad():
            active = model(inputs).argmax(1) == labels
            x_adv = inputs.clone()
            view = (-1,) + (1,) * (inputs.dim() - 1)
            for k in range(1, n_eps + 1):
                if not bool(active.any()):  # early stop: every example has flipped
                    break
                candidate = (inputs + (k * self.eps_step) * direction).clamp(*model.bounds)
                flipped = active & (model(candidate).argmax(1) != labels)
                x_adv = torch.where(flipped.view(view), candidate, x_adv)
                active = active & ~flipped
        return x_adv
