"""APGD-CE: Croce and Hein's step-size-free PGD on the cross-entropy loss."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import batch_view, linf_limits, loss_and_gradient, sign_step


def apgd_checkpoints(steps: int) -> list[int]:
    """Croce & Hein's checkpoints ``w_j = ceil(p_j * steps)``, ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, for ``p_j <= 1``, without ``w_0 = 0``.

    The ``p_j`` are kept in hundredths (integers), so ``0.22 * 100`` is 22, not 22.000000000000004
    rounded up to 23. For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    p = [0, 22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 3, 6)
        if nxt > 100:
            break
        p.append(nxt)
    w = sorted({-(-pj * steps // 100) for pj in p[1:]})
    return [c for c in w if c >= 1]


class APGDCE(Attack):
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

    Cost: per restart ``steps`` backward and ``steps + 1`` forward passes (the final iterate is
    only scored).

    Example::

        x_adv = advarena.attack("apgd-ce", eps=0.3, steps=100)(model, x, y)
    """

    name = "apgd-ce"
    paper = "Croce & Hein 2020 sec. 3"
    threat_model = ThreatModel(norm="linf")

    eps: float = param(0.3, ge=0, help="Linf budget")
    steps: int = param(100, ge=1, help="iterations")
    n_restarts: int = param(1, ge=1, help="random restarts on examples still correct")
    random_start: bool = param(True, help="random start in the eps-ball")
    rho: float = param(0.75, gt=0, le=1, help="condition-1 threshold")
    momentum: float = param(0.75, ge=0, le=1, help="momentum weight of the new step")

    def run(self, model, inputs, labels, eps, generator=None):
        lower, upper = linf_limits(inputs, eps, model.bounds)
        x_adv, fooled, loss_max = self._single_run(model, inputs, labels, lower, upper, eps,
                                                   generator)
        for _ in range(self.n_restarts - 1):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            out, f, lm = self._single_run(model, inputs[todo], labels[todo], lower[todo],
                                          upper[todo], eps, generator)
            # Keep a restart's point where it fools the model or raises the loss.
            better = f | (lm > loss_max[todo])
            x_adv[todo] = torch.where(batch_view(better, out), out, x_adv[todo])
            loss_max[todo] = torch.maximum(lm, loss_max[todo])
            fooled[todo] = f
        return x_adv

    def _single_run(self, model, x, y, lower, upper, eps, generator):
        """One APGD run; returns (output, fooled, best loss) per example."""
        if self.random_start:
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
            t = t / batch_view(t.flatten(1).abs().amax(1).clamp_min(1e-12), t)
            x_cur = torch.clamp(x + eps * t, lower, upper)
        else:
            x_cur = x.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        m = self.momentum

        loss_cur, grad, logits = loss_and_gradient(model, x_cur, y)
        fooled = logits.argmax(1) != y
        x_fooled = x_cur.clone()
        x_best, loss_best, grad_best = x_cur.clone(), loss_cur.clone(), grad.clone()
        eta = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
        x_prev = x_cur
        increases = torch.zeros_like(loss_cur)
        halved_last = torch.zeros_like(fooled)  # nothing was halved at w_0 = 0
        loss_best_last = loss_best.clone()
        last_check = 0

        for k in range(self.steps):
            eta_b = batch_view(eta, x)
            z = sign_step(x_cur, grad, eta_b, lower, upper)
            if k == 0:
                x_new = z
            else:
                x_new = torch.clamp(x_cur + m * (z - x_cur) + (1 - m) * (x_cur - x_prev),
                                    lower, upper)
            loss_new, grad_new, logits = loss_and_gradient(model, x_new, y,
                                                           need_grad=k < self.steps - 1)
            wrong = logits.argmax(1) != y
            x_fooled = torch.where(batch_view(wrong, x), x_new, x_fooled)
            fooled = fooled | wrong
            improved = loss_new > loss_best
            imp_b = batch_view(improved, x)
            x_best = torch.where(imp_b, x_new, x_best)
            loss_best = torch.where(improved, loss_new, loss_best)
            if grad_new is not None:
                grad_best = torch.where(imp_b, grad_new, grad_best)
            increases = increases + (loss_new > loss_cur).to(increases.dtype)
            x_prev, x_cur, loss_cur, grad = x_cur, x_new, loss_new, grad_new

            if k + 1 in checkpoints and k + 1 < self.steps:
                cond1 = increases < self.rho * (k + 1 - last_check)
                cond2 = ~halved_last & (loss_best <= loss_best_last)
                halve = cond1 | cond2
                h_b = batch_view(halve, x)
                eta = torch.where(halve, eta / 2, eta)
                x_cur = torch.where(h_b, x_best, x_cur)
                grad = torch.where(h_b, grad_best, grad)
                loss_cur = torch.where(halve, loss_best, loss_cur)
                halved_last = halve
                loss_best_last = loss_best.clone()
                increases = torch.zeros_like(increases)
                last_check = k + 1

        return torch.where(batch_view(fooled, x), x_fooled, x_best), fooled, loss_best
