"""I-FGSM / BIM: the iterative fast gradient sign method (Kurakin et al.)."""

from __future__ import annotations

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import kurakin_steps, linf_limits, pixel_unit, sign_step
from ._losses import LOSS_CHOICES, LossName, objective_gradient


def ifgsm_schedule(eps: float, steps: int | None, step_size: float | None,
                   bounds: tuple[float, float]) -> tuple[int, float]:
    """The (steps, step size) pair of I-FGSM and of the gradient-ensemble attack.

    ``steps`` None: Kurakin et al.'s rule as 000 uses it, ``I = min(eps + 4, 1.25 * eps)`` in grey
    levels (see :func:`kurakin_steps`), with a step of one grey level (1/255 on [0, 1]) unless
    ``step_size`` is given. ``steps`` given and ``step_size`` None: 004's ``a = eps / N``.
    """
    n = kurakin_steps(eps, bounds) if steps is None else steps
    if step_size is not None:
        return n, step_size
    return n, (pixel_unit(bounds) if steps is None else eps / steps)


class IFGSM(Attack):
    """Iterative FGSM (basic iterative method): ``steps`` signed-gradient steps of size
    ``step_size`` from the clean input, each clipped to the eps-ball and the box
    (``clamp_{x,eps}``). No random start (that is ``pgd``).

    Paper: Kurakin, Goodfellow, Bengio, "Adversarial examples in the physical world" (ICLR
    workshop 2017) sec. 2.2; the e2SAD paper (004) sec. 2 ("IFGSM", ``a = eps/N``, N in {10, 20,
    30}); Seiler et al. (000) sec. III (step 1/255, ``I = min(eps + 4, 1.25 eps)`` in /255 units).

    Threat model: Linf, bounded by eps, untargeted, white-box gradients.

    Step rule, covering both papers:

    * ``steps`` None (default): 000's/Kurakin's ``I = min(eps + 4, 1.25 eps)`` with eps counted
      in grey levels of the box (``(high - low)/255``, i.e. /255 on [0, 1]), rounded up, at least
      1; ``step_size`` None then means one grey level (1/255).
    * ``steps`` given, ``step_size`` None: 004's ``a = eps / steps``.
    * both given: used as they are.

    Parameters:
        eps (float, 0.3): Linf budget (004: 0.3 on MNIST; 000: 4, 8, 16 /255).
        steps (int | None, None): number of steps; None for Kurakin's rule above.
        step_size (float | None, None): step per iteration; None for the rule above.
        loss ('ce' | 'margin' | 'dlr', 'ce'): the objective ascended (Kurakin et al.: ce; see
            ``pgd``).

    Cost: exactly ``steps`` forward-plus-backward passes, batched, no host synchronisation.

    Example::

        x_adv = advarena.attack("ifgsm", eps=0.3, steps=10)(model, x, y)   # 004: a = 0.03
        x_adv = advarena.attack("bim", eps=8 / 255)(model, x, y)           # 000: 10 steps of 1/255
    """

    name = "ifgsm"
    aliases = ("bim",)
    paper = "Kurakin et al. 2017 sec. 2.2; 004 sec. 2; 000 sec. III"
    threat_model = ThreatModel(norm="linf")

    eps: float = param(0.3, ge=0, help="Linf budget")
    steps: int | None = param(None, ge=1,
                              help="number of steps (None: min(eps+4, 1.25*eps) in /255 units)")
    step_size: float | None = param(
        None, gt=0, help="step per iteration (None: 1/255 if steps is None, else eps/steps)")
    loss: LossName = param("ce", help="objective: ce | margin | dlr", choices=LOSS_CHOICES)

    def run(self, model, inputs, labels, eps, generator=None):
        steps, step = ifgsm_schedule(eps, self.steps, self.step_size, model.bounds)
        lower, upper = linf_limits(inputs, eps, model.bounds)
        x_adv = inputs
        for _ in range(steps):
            grad = objective_gradient(model, x_adv, labels, self.loss)
            x_adv = sign_step(x_adv, grad, step, lower, upper)
        return x_adv
