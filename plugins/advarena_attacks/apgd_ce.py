"""APGD-CE: Croce and Hein's step-size-free PGD on the cross-entropy loss (or another loss)."""

from __future__ import annotations

from advarena.params import param

from ._apgd import APGDBase, apgd_checkpoints  # noqa: F401  (apgd_checkpoints: public here)
from ._losses import LOSS_CHOICES, LossName, objective


class APGDCE(APGDBase):
    """Auto-PGD on the cross-entropy loss (Linf): PGD with momentum whose step size starts at
    ``2 * eps`` and is halved, per example, at checkpoints where progress stalled, restarting
    from the best point found so far.

    Algorithm 1 of the paper, per example and fully batched:

    * ``x^(1) = P(x^(0) + eta * sign(grad f(x^(0))))`` with ``eta = 2 eps``;
    * ``z = P(x^(k) + eta * sign(grad f(x^(k))))``,
      ``x^(k+1) = P(x^(k) + m (z - x^(k)) + (1 - m)(x^(k) - x^(k-1)))``, momentum ``m = 0.75``;
    * at each checkpoint ``w_j`` (:func:`apgd_checkpoints`) the step is halved and the iterate
      reset to the best (highest-loss) point when condition 1 (fewer than ``rho * (w_j -
      w_{j-1})`` of the steps since the last checkpoint increased the loss) or condition 2 (the
      step was not halved at the last checkpoint and the best loss has not improved since) holds.
      As in the authors' code, the step after a reset uses the gradient stored with the best
      point and the momentum term ``x_max - x^(k-1)``. At the first checkpoint condition 2
      follows the paper (no halving happened at ``w_0 = 0``); the authors' code skips it there.

    ``P`` clips to the eps-ball and the box. Random start (the authors' code): ``x^(0) = P(x + eps
    * t / ||t||_inf)``, ``t`` uniform in ``[-1, 1]^d``. With ``n_restarts > 1`` the attack is run
    again, from new random starts, on the examples not yet misclassified (the early stop between
    restarts syncs with the host once; the step loop never does).

    Returned per example: the last iterate that was misclassified, if any (the harness re-scores
    it), else the highest-loss point found. Checkpoint tests are tensor operations: no host
    synchronisation in the step loop.

    ``loss`` swaps the objective (the algorithm is unchanged): ``ce`` (the paper's APGD-CE),
    ``margin`` (C&W's ``max_{j != y} z_j - z_y``) or ``dlr`` (eq. 6; the same as ``apgd-dlr``).
    Cross-entropy goes blind when the softmax saturates; the other two do not (see ``_losses``).

    Paper: Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (ICML 2020) sec. 3, Algorithm 1.

    Threat model: Linf, bounded by eps, untargeted, white-box gradients.

    Parameters:
        eps (float, 0.3): Linf budget (the paper: 0.3 on MNIST, 8/255 on CIFAR-10).
        steps (int, 100): iterations N_iter (the paper: 100).
        n_restarts (int, 1): runs from new random starts on the examples still correct.
        random_start (bool, True): start from a random point of the ball (else from ``x``).
        rho (float, 0.75): condition-1 threshold.
        momentum (float, 0.75): weight ``m`` of the new step against the previous move.
        loss ('ce' | 'margin' | 'dlr', 'ce'): the objective maximised.

    Cost: per restart ``steps`` backward and ``steps + 1`` forward passes (the final iterate is
    only scored).

    Example::

        x_adv = advarena.attack("apgd-ce", eps=0.3, steps=100)(model, x, y)
    """

    name = "apgd-ce"
    paper = "Croce & Hein 2020 sec. 3"

    loss: LossName = param("ce", help="objective: ce | margin | dlr", choices=LOSS_CHOICES)

    def schedule(self, model, inputs, labels):
        fn = objective(self.loss)
        for _ in range(self.n_restarts):
            yield lambda todo: fn
