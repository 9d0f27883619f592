"""APGD-T: Auto-PGD on the targeted DLR loss, over the top-k other classes (Croce & Hein 2020)."""

from __future__ import annotations

import functools

import torch

from advarena.api import ThreatModel
from advarena.params import param

from ._apgd import APGDBase
from ._losses import dlr_targeted


def _towards(target: torch.Tensor, todo: torch.Tensor):
    """The targeted DLR objective of the examples ``todo``, each towards its ``target``."""
    chosen = target[todo]
    return lambda logits, y: dlr_targeted(logits, y, chosen)


class APGDT(APGDBase):
    """Targeted Auto-PGD as AutoAttack runs it: for ``k = 2, ..., n_target_classes + 1`` in
    turn, target the class with the k-th largest clean logit and run Auto-PGD (Algorithm 1,
    the algorithm of ``apgd-ce``) maximising the targeted DLR loss

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (eq. 7),

    each run (and each of its ``n_restarts``) only on the examples no earlier run has
    misclassified. Like DLR it is invariant to shifting and positively scaling the logits.

    Success, and hence the point returned, is *any* misclassification (the last iterate whose
    prediction differs from the label), not reaching the target: the targets only steer the
    search, as in AutoAttack, which scores APGD-T as an untargeted attack. So its declared
    ThreatModel is ``targeted=False``: the harness scores ``prediction != label`` and that is
    exactly what this attack optimises for.

    Paper: Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (ICML 2020) sec. 4 (eq. 7, "APGD-T"), sec. 5 (AutoAttack:
    9 target classes, 100 iterations, 1 restart each in its standard version).

    Threat model: Linf, bounded by eps, untargeted success criterion (see above), white-box
    gradients.

    Choices the paper leaves open, as in the authors' code: targets are ranked by the *clean*
    logits (computed once, one extra forward pass); ``1e-12`` is added to the denominator;
    ``n_target_classes`` larger than ``classes - 1`` is cut to ``classes - 1``. Where no run
    fools an example, the highest-loss point over all runs is returned (AutoAttack returns the
    input; the harness scores either as robust). Needs at least 4 classes.

    Parameters:
        eps (float, 0.3): Linf budget (the paper: 0.3 on MNIST, 8/255 on CIFAR-10).
        steps (int, 100): iterations per run (AutoAttack: 100).
        n_restarts (int, 1): random restarts per target class (AutoAttack standard: 1).
        n_target_classes (int, 9): how many of the top other classes to target (AutoAttack: 9).
        random_start (bool, True): start from a random point of the ball (else from ``x``).
        rho (float, 0.75): condition-1 threshold.
        momentum (float, 0.75): weight ``m`` of the new step against the previous move.

    Cost: one forward pass, then per target class and restart ``steps`` backward and
    ``steps + 1`` forward passes on the examples still correct (at most
    ``n_target_classes * n_restarts`` runs; one host sync between runs, none in a run).

    Example::

        x_adv = advarena.attack("apgd-t", eps=0.3, n_target_classes=9)(model, x, y)
    """

    name = "apgd-t"
    paper = "Croce & Hein 2020 sec. 4 (eq. 7), sec. 5"
    threat_model = ThreatModel(norm="linf", targeted=False)

    n_target_classes: int = param(9, ge=1, help="top other classes targeted in turn")

    def schedule(self, model, inputs, labels):
        with torch.no_grad():
            ranked = model(inputs).argsort(dim=1, descending=True)
        n = min(self.n_target_classes, ranked.shape[1] - 1)
        for k in range(1, n + 1):  # rank k (0-based) is the (k+1)-th largest logit
            for _ in range(self.n_restarts):
                yield functools.partial(_towards, ranked[:, k])
