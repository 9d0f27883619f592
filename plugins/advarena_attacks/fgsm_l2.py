"""FGSM under L2: one step of length eps along the normalised loss gradient."""

from __future__ import annotations

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import loss_gradient, normalize


class FGSML2(Attack):
    """Fast gradient method with the L2 norm: ``x_adv = clip_box(x + eps * g / ||g||_2)``,
    ``g = grad_x J(x, y)``, the norm taken per example. An example whose gradient is zero is
    returned unchanged.

    Clipping to the box keeps the output in the L2 eps-ball: the box contains ``x``, so clipping
    a coordinate of ``x + delta`` moves it toward ``x_i`` and can only shrink ``|delta_i|``.

    Paper: Zantedeschi, Nicolae, Rawat (001) sec. 3.2, toy study (Fig. 2: "Adversarial example
    crafted with Fast Gradient Sign Method with L2-norm and eps = 0.3"); Goodfellow et al. 2015.

    Threat model: L2, bounded by eps, untargeted, white-box gradients.

    Parameters:
        eps (float, 0.3): L2 budget (001's toy study: 0.3).

    Cost: one forward-plus-backward pass.

    Example::

        x_adv = advarena.attack("fgsm-l2", eps=0.3)(model, x, y)
    """

    name = "fgsm-l2"
    paper = "001 sec. 3.2 (toy study); Goodfellow et al. 2015"
    threat_model = ThreatModel(norm="l2")
    single_step = True

    eps: float = param(0.3, ge=0, help="L2 budget")

    def run(self, model, inputs, labels, eps, generator=None):
        grad = loss_gradient(model, inputs, labels)
        return (inputs + eps * normalize(grad, 2)).clamp(*model.bounds)
