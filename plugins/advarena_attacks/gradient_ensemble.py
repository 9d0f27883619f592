"""The gradient-ensemble attack of Seiler, Trautmann and Kerschke (000 eq. 2-3)."""

from __future__ import annotations

from advarena.api import Attack, ThreatModel
from advarena.models import as_members, bounds_of
from advarena.params import param

from ._grad import linf_limits, normalized_gradient_sum, sign_step
from .ifgsm import ifgsm_schedule


class GradientEnsemble(Attack):
    """I-FGSM on an ensemble whose members' input gradients are each normalised to unit L2 norm
    (per example) and summed, so every model pulls with the same weight:

    ``g_n = grad J_n / ||grad J_n||_2`` (eq. 2), ``x_i = clip(x_{i-1} + lambda *
    sign(sum_n g_n))`` (eq. 3), clipped to the eps-ball ("pixel-wise clipping") and the box after
    every step. With one model it is I-FGSM (000, footnote to sec. V-C): same steps, same
    output. A zero gradient contributes nothing (its normalised form is taken as 0).

    Paper: Seiler, Trautmann, Kerschke, "Enhancing Resilience of Deep Learning Networks by Means
    of Transferable Adversaries" (000), sec. III eq. 2-3; used by the ensemble-transfer
    protocol (sec. V-C). It receives the ensemble's members (``accepts_ensemble``), not their
    averaged logits.

    Threat model: Linf, bounded by eps, untargeted, white-box gradients of every member.

    Parameters:
        eps (float, 8/255): Linf budget; 000 uses 4, 8, 16 /255.
        steps (int | None, None): iterations; None is 000's ``I = min(eps + 4, 1.25 eps)`` with
            eps in grey levels (/255 on [0, 1]), rounded up (the ``ifgsm`` rule).
        step_size (float | None, None): lambda; None is one grey level (000: "lambda = 1", i.e.
            1/255 on [0, 1]) when ``steps`` is None, else ``eps / steps`` as for ``ifgsm``.

    Cost: ``steps`` forward-plus-backward passes through every member; batched, no host
    synchronisation.

    Example::

        x_adv = advarena.attack("gradient-ensemble", eps=8 / 255)([m1, m2, m3], x, y)
    """

    name = "gradient-ensemble"
    paper = "Seiler et al. (000) sec. III eq. 2-3"
    threat_model = ThreatModel(norm="linf")
    accepts_ensemble = True

    eps: float = param(8 / 255, ge=0, help="Linf budget")
    steps: int | None = param(None, ge=1,
                              help="iterations (None: min(eps+4, 1.25*eps) in /255 units)")
    step_size: float | None = param(
        None, gt=0, help="lambda (None: 1/255 if steps is None, else eps/steps)")

    def run(self, model, inputs, labels, eps, generator=None):
        members = as_members(model)  # one model or a list of them
        bounds = bounds_of(members)
        steps, step = ifgsm_schedule(eps, self.steps, self.step_size, bounds)
        lower, upper = linf_limits(inputs, eps, bounds)
        x_adv = inputs
        for _ in range(steps):
            direction = normalized_gradient_sum(members, x_adv, labels)
            x_adv = sign_step(x_adv, direction, step, lower, upper)
        return x_adv
