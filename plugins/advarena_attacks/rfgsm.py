"""Random + FGSM (R+FGSM): a random sign step, then FGSM with the rest of the budget."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import linf_limits, loss_gradient, sign_step


class RFGSM(Attack):
    """Random + FGSM: a random step of size ``alpha`` along the sign of Gaussian noise, then one
    FGSM step of size ``eps - alpha`` with the gradient taken at the noisy point,

    ``x' = clip_box(x + alpha * sign(N(0, I)))``,
    ``x_adv = clip_{x,eps}(x' + (eps - alpha) * sign(grad_{x'} J(x', y)))``.

    The noisy point is clipped to the box before the gradient is taken (the model is only
    defined there); the result is clipped to the eps-ball around ``x`` and the box.

    Small budgets (``eps <= alpha``): the random step is cut to ``eps`` and there is no gradient
    step, so the output is ``clip_box(x + eps * sign(N(0, I)))``. This is what 001 reports (Fig.
    5: "adversarial examples crafted with Random + FGSM and 0 < eps <= 0.05 correspond to
    Gaussian noise for alpha = 0.05") while keeping the eps-ball; no gradient is computed then.

    Paper: Zantedeschi, Nicolae, Rawat (001) sec. 4.1 ("FGSM applied after a preliminary step of
    adding Gaussian noise (within a range of alpha = 0.05); the random noise applied in the first
    step is deducted from the budget of the FGSM attack"); Tramer et al., "Ensemble Adversarial
    Training" (ICLR 2018) sec. 4.1 (R+FGSM).

    Threat model: Linf, bounded by eps, untargeted, white-box gradients; randomised (the
    ``generator`` the harness passes makes it deterministic under a seed).

    Parameters:
        eps (float, 0.3): total Linf budget (001 sweeps 0..1 on MNIST, 0..0.3 on CIFAR).
        alpha (float, 0.05): size of the random sign step (001: 0.05).

    Cost: one forward-plus-backward pass (none when ``eps <= alpha``).

    Example::

        x_adv = advarena.attack("rfgsm", eps=0.3, alpha=0.05)(model, x, y)
    """

    name = "rfgsm"
    paper = "001 sec. 4.1 (Random + FGSM); Tramer et al. 2018 sec. 4.1"
    threat_model = ThreatModel(norm="linf")
    single_step = True

    eps: float = param(0.3, ge=0, help="total Linf budget")
    alpha: float = param(0.05, ge=0, help="size of the random sign step")

    def run(self, model, inputs, labels, eps, generator=None):
        alpha = min(self.alpha, eps)
        lower, upper = linf_limits(inputs, eps, model.bounds)
        noise = torch.randn(inputs.shape, generator=generator, device=inputs.device,
                            dtype=inputs.dtype)
        x_noisy = sign_step(inputs, noise, alpha, lower, upper)
        if eps - alpha <= 0:
            return x_noisy
        grad = loss_gradient(model, x_noisy, labels)
        return sign_step(x_noisy, grad, eps - alpha, lower, upper)
