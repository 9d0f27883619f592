"""Label smoothing (Szegedy et al. 2016; as a defense in 001 and inside e2SAD in 004)."""

from __future__ import annotations

from advarena.api import Defense
from advarena.params import param

from ._adv import smooth_targets


class LabelSmoothing(Defense):
    """Label smoothing: train against soft targets instead of one-hot labels.

    Paper: Zantedeschi, Nicolae, Rawat, "Efficient Defenses Against Adversarial Attacks" (001),
    sec. 2 and 4: a cheap stand-in for defensive distillation ("converting class labels into
    soft targets (value close to 1 for the target class and the rest of the weight distributed
    on the other classes)"), "with the weight of the true label set to 0.9". The e2SAD paper
    (004, sec. 3.3 and 4.1) uses the same construction with 0.75 on the true class and 0.25
    spread uniformly over the others; pass ``weight=0.75`` for that setting.

    Kind: training targets. Each target row has ``weight`` on the true class and
    ``(1 - weight) / (K - 1)`` on each of the K - 1 other classes, so it sums to 1. The trainer's
    ``ctx.cross_entropy`` uses these rows for every cross-entropy term of the loss in force, so
    label smoothing composes with loss-owning defenses (``label-smoothing+fgsm-at``).

    Cost: 1 forward + 1 backward pass per example, as ``none``.

    001 reports that label smoothing does not strengthen its CNN and even lowers the empirical
    robustness (Table 2) and raises loss sensitivity (Table 3).

    Parameters:
        weight (float, 0.9): target probability of the true class (001: 0.9; 004: 0.75).

    Example::

        advarena run --defense label-smoothing
        advarena.defense("label-smoothing", weight=0.75)   # 004's setting
    """

    name = "label-smoothing"
    paper = "Zantedeschi et al. 2017 (001) sec. 4; e2SAD (004) sec. 3.3"
    kind = "training targets"

    weight: float = param(0.9, gt=0, le=1,
                          help="target probability of the true class (001: 0.9; 004: 0.75)")

    def targets(self, labels, num_classes):
        return smooth_targets(labels, num_classes, self.weight)
