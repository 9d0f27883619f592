"""FGSM: the fast gradient sign method."""

from __future__ import annotations

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import loss_gradient


class FGSM(Attack):
    """Fast gradient sign method, one step of size eps along the sign of the loss gradient.

    Paper: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR
    2015); used as attack and training signal in Zantedeschi et al. 2017 (001) sec. 2 and 4,
    Seiler et al. (000) sec. II, Chen et al. (003) and the e2SAD paper (004).

    Threat model: Linf, bounded by eps, untargeted, white-box gradients.
    ``x_adv = clip_box(x + eps * sign(grad_x J(x, y)))``.

    Parameters:
        eps (float, 0.3): Linf budget; 001 sweeps 0.01..1 on MNIST, 0..0.3 on CIFAR.

    Example::

        x_adv = advarena.attack("fgsm", eps=0.1)(model, x, y)
    """

    name = "fgsm"
    paper = "Goodfellow et al. 2015; 001 sec. 2"
    threat_model = ThreatModel(norm="linf")
    single_step = True

    eps: float = param(0.3, ge=0, help="Linf budget")

    def run(self, model, inputs, labels, eps, generator=None):
        grad = loss_gradient(model, inputs, labels)
        return (inputs + eps * grad.sign()).clamp(*model.bounds)
