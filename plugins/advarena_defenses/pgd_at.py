"""PGD adversarial training (Madry et al. 2018; the baseline of 000)."""

from __future__ import annotations

from advarena.api import Defense
from advarena.params import param

from ._adv import family_value

# Madry et al.: MNIST eps 0.3, 40 steps of 0.01; CIFAR-10 eps 8/255, 7 steps of 2/255 (000
# sec. V uses the CIFAR setting on its ImageNet subset, with I in {3, 7}).
EPS_BY_FAMILY = {"mnist": 0.3, "cifar": 8 / 255}
STEP_BY_FAMILY = {"mnist": 0.01, "cifar": 2 / 255}
STEPS_BY_FAMILY = {"mnist": 40, "cifar": 7}


class PGDAdversarialTraining(Defense):
    """PGD adversarial training: minimise ``J(x_pgd)``, the min-max problem of Madry et al.

    Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks" (ICLR 2018), as the "PGD" baseline of Seiler et al. (000, sec. V:
    "eps = 8, lambda = 2 and I in {3, 7}", in /255 units, "the default settings used on
    CIFAR10 by [20]"; Table I times I = 3 and I = 7).

    Kind: adversarial training (owns the ``loss`` hook). Each batch, the ``pgd`` attack plugin
    (uniform random start in the eps-ball, then I signed-gradient steps, each projected onto the
    ball and the box) crafts ``x_pgd`` through ``ctx.run_attack`` (threat model checked, model
    in eval mode while crafting), and the network is trained on ``x_pgd`` only, as Madry et al.
    do. Composed regularisers are evaluated on ``x_pgd`` (the only batch forwarded).

    Dataset-family defaults (Madry et al.'s two settings): MNIST-like eps 0.3, step 0.01,
    I = 40; CIFAR-like eps 8/255, step 2/255, I = 7 (000 also trains I = 3 to save time). The toy
    family uses the MNIST setting.

    Cost (measured, example-passes and sweeps alike): I + 1 forward and I + 1 backward per
    example (I crafting steps of
    one forward and one sweep each, then one training forward and sweep), 000 Table I's
    "PGD (I = 7)" and "PGD (I = 3)" rows.

    000 (Fig. 4, Table II) reports lower clean accuracy for PGD-trained models than for the base
    model. On the 8x8 digits (family "mnist") the MNIST budget 0.3 is most of a digit's contrast:
    PGD training at 0.3 leaves ``mlp-toy`` near 40% clean accuracy after 10 epochs (``none``:
    95%), although it does raise PGD accuracy at 0.3 from 0 to 13-18%. At eps 0.1 (the tests'
    setting) clean accuracy stays within a few points of ``none`` and PGD accuracy at 0.1 rises
    by about 20 points, as Madry et al. report on MNIST.

    Parameters:
        eps (float | None, None): Linf budget (None: 0.3 MNIST-like, 8/255 CIFAR-like).
        step_size (float | None, None): step per iteration (None: 0.01 / 2/255).
        steps (int | None, None): iterations I (None: 40 MNIST-like, 7 CIFAR-like).
        random_start (bool, True): Madry's uniform random start.

    Example::

        advarena run --defense pgd-at
        advarena.defense("pgd-at", steps=3)          # 000's cheaper setting
    """

    name = "pgd-at"
    paper = "Madry et al. 2018; 000 sec. V"
    kind = "adversarial training"

    eps: float | None = param(None, ge=0, help="Linf budget (None: 0.3 MNIST-like, 8/255 CIFAR)")
    step_size: float | None = param(None, gt=0,
                                    help="step per iteration (None: 0.01 MNIST-like, 2/255 CIFAR)")
    steps: int | None = param(None, ge=1, help="PGD iterations I (None: 40 MNIST-like, 7 CIFAR)")
    random_start: bool = param(True, help="uniform random start in the eps-ball (Madry)")

    def settings(self, info) -> tuple[float, float, int]:
        return (family_value(self.eps, EPS_BY_FAMILY, info),
                family_value(self.step_size, STEP_BY_FAMILY, info),
                family_value(self.steps, STEPS_BY_FAMILY, info))

    def training_attacks(self) -> tuple[str, ...]:
        return ("pgd",)

    def loss(self, model, x, y, ctx):
        eps, step, steps = self.settings(ctx.info)
        attack = ctx.attack("pgd", eps=eps, steps=steps, step_size=step,
                            random_start=self.random_start)
        x_adv = ctx.run_attack(attack, model, x, y, eps=eps)
        logits_adv = model(x_adv)
        return ctx.cross_entropy(logits_adv, y) + ctx.regularizers(model, x_adv, y, logits_adv)
