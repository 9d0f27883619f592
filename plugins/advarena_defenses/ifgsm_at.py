"""I-FGSM adversarial training (Kurakin et al. 2017; the e2SAD paper's strong baseline, 004)."""

from __future__ import annotations

from advarena.api import Defense
from advarena.params import param

from ._adv import family_value

# 004 sec. 4: MNIST eps 0.3 with k = 30 steps of a = eps/k = 0.01; SVHN (a "cifar"-family
# dataset here) eps 24/255 with k = 10 ("attack steps=10"). alpha = 0.6 in both.
EPS_BY_FAMILY = {"mnist": 0.3, "cifar": 24 / 255}
STEPS_BY_FAMILY = {"mnist": 30, "cifar": 10}


class IFGSMAdversarialTraining(Defense):
    """I-FGSM adversarial training: ``alpha * J(x) + (1 - alpha) * J(x_ifgsm)``.

    Paper: the e2SAD paper (004), sec. 2 eq. 3 ("we adopt the adversarial training equation
    proposed in (Goodfellow et al., 2015)", with FGSM and IFGSM examples), sec. 4: "IFGSM
    adversaries under the total noise level of eps = 0.3 and step size of 0.01 (k = 30)" on
    MNIST, and "alpha = 0.6, eps = 24/255, attack steps=10" on SVHN. I-FGSM is Kurakin et al.'s
    basic iterative method: k signed-gradient steps of ``a = eps / k`` from the clean input,
    each clipped to the eps-ball and the box, no random start.

    Kind: adversarial training (owns the ``loss`` hook). Each batch the ``ifgsm`` attack plugin
    crafts ``x_ifgsm`` through ``ctx.run_attack`` (threat model checked, model in eval mode while
    crafting, hard labels); the loss is the weighted sum of the clean and adversarial
    cross-entropies plus every composed regulariser on the clean logits.

    Cost (measured, example-passes): k + 2 forward and k + 2 backward per example (k crafting
    steps of one forward and one backward, then training forwards on ``x`` and ``x_ifgsm`` and
    one training sweep back through both; k + 1 sweeps): 32 + 32 with 004's MNIST setting, the "30 steps of gradient computation" that 004
    contrasts with e2SAD's two.

    Parameters:
        alpha (float, 0.6): weight of the clean loss (004).
        eps (float | None, None): Linf budget (None: 0.3 MNIST-like, 24/255 CIFAR/SVHN-like).
        steps (int | None, None): I-FGSM steps k (None: 30 MNIST-like, 10 CIFAR/SVHN-like);
            the step size is ``eps / k`` (004).

    Example::

        advarena run --defense ifgsm-at
        advarena.defense("ifgsm-at", steps=10)
    """

    name = "ifgsm-at"
    paper = "Kurakin et al. 2017; 004 sec. 2 eq. 3 and sec. 4"
    kind = "adversarial training"

    alpha: float = param(0.6, ge=0, le=1, help="weight of the clean loss (004: 0.6)")
    eps: float | None = param(None, ge=0,
                              help="Linf budget (None: 0.3 MNIST-like, 24/255 CIFAR/SVHN-like)")
    steps: int | None = param(None, ge=1,
                              help="I-FGSM steps k, step size eps/k (None: 30 MNIST, 10 SVHN)")

    def settings(self, info) -> tuple[float, int]:
        return (family_value(self.eps, EPS_BY_FAMILY, info),
                family_value(self.steps, STEPS_BY_FAMILY, info))

    def training_attacks(self) -> tuple[str, ...]:
        return ("ifgsm",)

    def loss(self, model, x, y, ctx):
        eps, steps = self.settings(ctx.info)
        # step_size None with steps given is eps/steps too; it keeps eps = 0 valid.
        attack = ctx.attack("ifgsm", eps=eps, steps=steps, step_size=(eps / steps) or None)
        x_adv = ctx.run_attack(attack, model, x, y, eps=eps)
        logits = model(x)
        logits_adv = model(x_adv)
        return (self.alpha * ctx.cross_entropy(logits, y)
                + (1 - self.alpha) * ctx.cross_entropy(logits_adv, y)
                + ctx.regularizers(model, x, y, logits))
