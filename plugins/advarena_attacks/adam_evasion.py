"""Adam evasion: 003's attacker objective minimised with Adam, stopped at misclassification."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._minimal import (BatchedAdam, BestNorm, active_indices, evasion_objective, flat_norm,
                       misclassified, random_starts, smallest_success, view_as_batch)


class AdamEvasion(Attack):
    """Adam evasion (adam): minimise 003's ``Q(x') = f(x') + c(x', x)`` with Adam on the input,
    projected onto the box, until the model misclassifies.

    Paper: Chen, Li, Vorobeychik (003), sec. 3.1 ("the adversary uses Adam to solve the same
    optimization problem as in Equation 3"), with Adam from Kingma and Ba 2015. As for
    ``coordinate-greedy``: ``f = z_y - max_{k != y} z_k`` (the multi-class margin),
    ``c = exp(lambda * sqrt(sum (x' - x)^2 + 1))``, lambda = 0 by default as in 003 (then ``c`` is
    the constant 1 and the attack is Adam descent on the margin); the distance stays small
    because each example stops at its first misclassified iterate.

    Threat model: L2 cost, minimal (no eps), untargeted, white-box gradients.

    Per example: ``x'_0 = x`` (and ``restarts`` random starts, as in ``coordinate-greedy``:
    ``x`` plus uniform noise in ``[-lr, lr] * (hi - lo)``); each step one Adam update (beta1 0.9,
    beta2 0.999, eps 1e-8, bias-corrected; learning rate ``lr * (hi - lo)``) of ``x'`` on
    ``grad Q``, then a clip to the box. Adam is batched by hand so that an example that has
    stopped keeps its moments instead of drifting. Returned per example: the successful point
    closest to ``x`` in L2 over the starts; ``x`` itself where the model already misclassifies
    it (distance 0) or where no start succeeds within ``steps`` steps. A start stops early once
    it is at least as far from ``x`` as a success another start of the same example found.

    003 gives no learning rate or iteration count; the defaults are advarena's: ``lr`` 0.01 of
    the box width (Adam's steps are about ``lr`` per coordinate, so the first crossing of the
    boundary overshoots by little) and ``steps`` 1000. 003's distortion metric is
    ``sqrt(sum (x' - x)^2) / n``.

    Cost and synchronisation: one forward and one backward pass per step on the running
    examples only; one host synchronisation per step refreshes that set (the per-example
    early stop, which also ends the loop).

    Parameters:
        steps (int, 1000): Adam steps per start.
        lr (float, 0.01): Adam learning rate, as a share of the box width.
        restarts (int, 0): random starts in addition to the one from ``x``.
        lam (float, 0.0): lambda of the cost ``exp(lambda * sqrt(||x' - x||^2 + 1))`` (003: 0).

    Example::

        x_adv = advarena.attack("adam-evasion", lr=0.01)(model, x, y)
    """

    name = "adam-evasion"
    paper = "Chen, Li, Vorobeychik (003) sec. 3.1, eq. 3; Kingma and Ba 2015"
    threat_model = ThreatModel(norm="l2", budget="minimal")

    steps: int = param(1000, ge=1, help="Adam steps per start")
    lr: float = param(0.01, gt=0, help="Adam learning rate (share of box width)")
    restarts: int = param(0, ge=0, help="random starts besides the one from x")
    lam: float = param(0.0, ge=0, help="lambda of the exponential cost (003: 0)")

    def run(self, model, inputs, labels, eps=None, generator=None):
        lo, hi = model.bounds
        x = inputs.detach()
        lr = self.lr * (hi - lo)
        s = self.restarts + 1
        x_ref = x.repeat(s, *([1] * (x.dim() - 1)))
        y = labels.repeat(s)
        cur = random_starts(x, self.restarts, lr, (lo, hi), generator)
        adam = BatchedAdam(cur, lr)
        success = torch.zeros(len(cur), dtype=torch.bool, device=x.device)
        best = BestNorm(x)
        idx = torch.arange(len(cur), device=x.device)
        for _ in range(self.steps):
            if idx.numel() == 0:
                break
            xa = cur[idx].requires_grad_(True)
            logits = model(xa)
            done = misclassified(logits, y[idx])
            q = evasion_objective(logits, xa, x_ref[idx], y[idx], self.lam)
            (g,) = torch.autograd.grad(q.sum(), xa)
            with torch.no_grad():
                success[idx] = done
                xd = xa.detach()
                best.update(idx, flat_norm(xd - x_ref[idx]), done)
                # A start already as far from x as another start's success cannot win.
                go = ~done & ~best.beaten(idx, flat_norm(xd - x_ref[idx]))
                # Only the running examples take the Adam step (only their moments advance).
                pos = active_indices(go)
                idx = idx[pos]
                cur[idx] = adam.step(xd[pos], g[pos], idx).clamp(lo, hi)
        if idx.numel():
            with torch.no_grad():
                success[idx] = misclassified(model(cur[idx]), y[idx])
        out = smallest_success(x, cur, success)
        with torch.no_grad():
            already = misclassified(model(x), labels)
        return torch.where(view_as_batch(already, x), x, out)
