"""Step-LL: one signed-gradient step towards the least-likely class (Kurakin et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advarena.api import Attack, ThreatModel
from advarena.params import param


class StepLL(Attack):
    """Single-step least-likely class method ("step l.l."): one step of size eps *against* the
    gradient of the loss of the class the model finds least likely,

    ``y_LL = argmin_y p(y | x)``,  ``x_adv = clip_box(x - eps * sign(grad_x J(x, y_LL)))``.

    Paper: Kurakin, Goodfellow, Bengio, "Adversarial Machine Learning at Scale" (ICLR 2017),
    "one-step target class methods" (step l.l., the target being the least-likely class);
    the iterative version ("iter. l.l.") is in
    Kurakin et al., "Adversarial Examples in the Physical World" (2017). Tramèr et al.,
    "Ensemble Adversarial Training" (ICLR 2018), use it (as Step-LL) to craft training examples.

    Threat model: Linf, bounded by eps, untargeted in how advarena scores it (any wrong class
    counts), white-box gradients. The labels are not used: the target is the model's own
    least-likely class, so the attack needs no ground truth (Kurakin et al. use it to avoid
    label leaking). It is a single step, so it is declared ``single_step``: advarena's sanity
    check expects iterative attacks to be at least as strong.

    Parameters:
        eps (float, 0.3): Linf budget (advarena's MNIST-like default; Kurakin et al. use
            2..16 grey levels on ImageNet).

    Cost: one forward and one backward pass.

    Example::

        x_adv = advarena.attack("step-ll", eps=0.1)(model, x, y)
    """

    name = "step-ll"
    paper = "Kurakin, Goodfellow, Bengio 2017 (ICLR), step l.l."
    # The advarena plugin API this class is written for (declared, not inherited: see
    # advarena's docs/plugins.md, "Plugin API versioning").
    api_version = "1"
    threat_model = ThreatModel(norm="linf")
    single_step = True

    eps: float = param(0.3, ge=0, help="Linf budget")

    def run(self, model, inputs, labels, eps, generator=None):
        x = inputs.detach().requires_grad_(True)
        logits = model(x)
        least_likely = logits.detach().argmin(1)
        # Summed, so every example's gradient is its own, whatever the batch size.
        loss = F.cross_entropy(logits, least_likely, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return (inputs - eps * grad.sign()).clamp(*model.bounds)
