"""PGD under L2: projected normalised-gradient ascent with a random start (Madry et al.)."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import normalize, per_example_norm
from ._losses import LOSS_CHOICES, LossName, objective_gradient


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float,
               bounds: tuple[float, float]) -> torch.Tensor:
    """Scale ``x_adv - x`` into the L2 eps-ball, then clip to the box. The box contains ``x``, so
    clipping only shrinks each ``|delta_i|`` and the result stays in the ball (it is a feasible
    point, not the exact projection onto the intersection, as in Madry et al.'s and the peers'
    code)."""
    delta = x_adv - x
    scale = (eps / per_example_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta * scale).clamp(*bounds)


class PGDL2(Attack):
    """Projected gradient ascent under L2: a random start in the eps-ball, then ``steps`` steps
    ``x <- P(x + a * g / ||g||_2)``, ``g`` the input gradient of the loss, ``P`` the projection
    above (onto the L2 ball, then the box). An example whose gradient is zero does not move.

    Paper: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR
    2018) sec. 2 (PGD on the negative loss; the L2 variant of their appendix and robustness
    library: steepest ascent for L2 is the normalised gradient).

    Threat model: L2, bounded by eps, untargeted, white-box gradients.

    Choices the paper leaves open:

    * Random start uniform in the L2 ball: a Gaussian direction with radius ``eps * u^(1/d)``,
      ``u ~ U[0, 1]``, then clipped to the box. torchattacks.PGDL2 draws the radius uniformly in
      ``[0, eps]`` instead (more mass near the centre); after a few steps the two agree.
    * Step ``2.5 * eps / steps`` unless given (Madry et al.'s rule, as ``pgd``).
    * Projection: ball then box, see :func:`project_l2`.

    Parameters:
        eps (float, 0.5): L2 budget.
        steps (int, 40): number of gradient steps.
        step_size (float | None, None): step length per iteration; None: ``2.5 * eps / steps``.
        random_start (bool, True): start from a uniform point of the ball.
        loss ('ce' | 'margin' | 'dlr', 'ce'): the objective ascended (see ``pgd``).

    Cost: exactly ``steps`` forward-plus-backward passes, batched, no host synchronisation.

    Example::

        x_adv = advarena.attack("pgd-l2", eps=0.5, steps=40)(model, x, y)
    """

    name = "pgd-l2"
    paper = "Madry et al. 2018 sec. 2"
    threat_model = ThreatModel(norm="l2")

    eps: float = param(0.5, ge=0, help="L2 budget")
    steps: int = param(40, ge=1, help="number of gradient steps")
    step_size: float | None = param(None, gt=0, help="step length (None: 2.5*eps/steps)")
    random_start: bool = param(True, help="uniform random start in the eps-ball")
    loss: LossName = param("ce", help="objective: ce | margin | dlr", choices=LOSS_CHOICES)

    def run(self, model, inputs, labels, eps, generator=None):
        step = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        x_adv = inputs
        if self.random_start:
            kw = {"generator": generator, "device": inputs.device, "dtype": inputs.dtype}
            direction = normalize(torch.randn(inputs.shape, **kw), 2)
            u = torch.rand((inputs.shape[0],), **kw)
            radius = eps * u.pow(1.0 / inputs[0].numel())
            x_adv = project_l2(inputs + direction * radius.view(-1, *[1] * (inputs.dim() - 1)),
                               inputs, eps, model.bounds)
        for _ in range(self.steps):
            grad = objective_gradient(model, x_adv, labels, self.loss)
            x_adv = project_l2(x_adv + step * normalize(grad, 2), inputs, eps, model.bounds)
        return x_adv
