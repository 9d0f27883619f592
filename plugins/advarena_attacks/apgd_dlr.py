"""APGD-DLR: Auto-PGD on the untargeted difference-of-logits-ratio loss (Croce & Hein 2020)."""

from __future__ import annotations

from ._apgd import APGDBase
from ._losses import dlr


class APGDDLR(APGDBase):
    """Auto-PGD (the algorithm of ``apgd-ce``, Algorithm 1, unchanged) maximising the untargeted
    DLR loss ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` (eq. 6), ``pi`` sorting the logits
    in decreasing order.

    DLR is invariant to shifting and to positive scaling of the logits, so a model whose softmax
    saturates (logits multiplied by a large constant, defensive distillation) cannot hide from it
    the way it hides from cross-entropy, whose gradient vanishes there (the paper, sec. 4).

    Paper: Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (ICML 2020) sec. 3 (Algorithm 1) and sec. 4 (eq. 6).

    Threat model: Linf, bounded by eps, untargeted, white-box gradients.

    Choices the paper leaves open, as in the authors' code: ``1e-12`` is added to the
    denominator (all-equal top logits); the random start, restarts and returned point are those
    of ``apgd-ce``. DLR needs at least 3 classes.

    Parameters:
        eps (float, 0.3): Linf budget (the paper: 0.3 on MNIST, 8/255 on CIFAR-10).
        steps (int, 100): iterations N_iter (the paper and AutoAttack: 100).
        n_restarts (int, 1): runs from new random starts on the examples still correct
            (AutoAttack's standard version: 1).
        random_start (bool, True): start from a random point of the ball (else from ``x``).
        rho (float, 0.75): condition-1 threshold.
        momentum (float, 0.75): weight ``m`` of the new step against the previous move.

    Cost: per restart ``steps`` backward and ``steps + 1`` forward passes.

    Example::

        x_adv = advarena.attack("apgd-dlr", eps=0.3, steps=100)(model, x, y)
    """

    name = "apgd-dlr"
    paper = "Croce & Hein 2020 sec. 3-4, eq. 6"

    def schedule(self, model, inputs, labels):
        for _ in range(self.n_restarts):
            yield lambda todo: dlr
