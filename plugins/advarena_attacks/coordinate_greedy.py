"""Coordinate greedy: one coordinate at a time, the one with the steepest partial derivative."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._minimal import (BestNorm, active_indices, evasion_objective, flat_norm, misclassified,
                       random_starts, smallest_success, view_as_batch)


class CoordinateGreedy(Attack):
    """Coordinate greedy evasion (cg): repeatedly move the single input coordinate whose
    partial derivative of the attacker's objective is largest in magnitude, until the model
    misclassifies; several starts, the closest success kept.

    Paper: Chen, Li, Vorobeychik, "Evaluation of Defensive Methods for DNNs Against Multiple
    Adversarial Evasion Models" (003), sec. 3.1, eq. 2-3 (after Li et al. 2016's coordinate
    greedy). The attacker minimises ``Q(x') = f(x') + c(x', x)``, ``c = exp(lambda *
    sqrt(sum (x' - x)^2 + 1))``, its partial derivatives as in 003's displayed formula. 003's
    ``f`` is a binary score; for K classes advarena uses the margin ``f = z_y - max_{k != y}
    z_k`` (negative exactly when the example is misclassified). 003 sets lambda = 0 ("we can
    find adversarial examples with small modification cost using any lambda, even when
    lambda = 0"), the default here: ``c`` is then the constant 1 and only ``f`` drives the
    search; the distance is kept small by stopping at the first misclassified point.

    Threat model: L2 cost, minimal (no eps), untargeted, white-box gradients.

    Per example and start, at every step: ``g = grad_x' Q``; among the coordinates that can
    still move downhill (not at the box edge that ``-sign(g_j)`` points to), take
    ``j = argmax |g_j|`` and set ``x'_j <- clip_box(x'_j - step_size * (hi - lo) * sign(g_j))``
    (batched: one ``argmax``/``scatter`` per step for the whole batch). An example stops at its
    first misclassified iterate, or after ``steps`` steps, or when no coordinate can move.

    Random restarts (003: "random restarts strategy is applied to randomly select the starting
    points"): start 0 is ``x`` itself; each of the ``restarts`` others starts at ``x`` plus
    uniform noise in ``[-step_size, step_size] * (hi - lo)`` per coordinate (near ``x``, since
    a start far away could only find far-away points). All starts run together as one batch.
    Returned per example: the successful point closest to ``x`` in L2 over all starts; ``x``
    itself where the model already misclassifies it (distance 0) or where no start succeeds.
    A start stops early once its next point would be at least as far from ``x`` as the
    closest success another start of the same example has already found (it cannot win).

    003 gives no step size or iteration count; the defaults are advarena's: ``step_size``
    0.1 (001's JSMA step, a visible but small change of one pixel) and ``steps`` 1000 (enough
    to move several hundred coordinates, more than the digits CNN or an MNIST LeNet needs).
    003's distortion metric is ``sqrt(sum (x' - x)^2) / n``: the L2 norm divided by n.

    Cost and synchronisation: one forward and one backward pass per step on the running
    (example, start) pairs only; one host synchronisation per step refreshes that set, which is
    the per-example early stop the algorithm needs (and ends the loop when it is empty).

    Parameters:
        steps (int, 1000): coordinate updates per start.
        step_size (float, 0.1): change of the chosen coordinate, as a share of the box width.
        restarts (int, 1): random starts in addition to the one from ``x``.
        lam (float, 0.0): lambda of the cost ``exp(lambda * sqrt(||x' - x||^2 + 1))`` (003: 0).

    Example::

        x_adv = advarena.attack("coordinate-greedy", restarts=2)(model, x, y)
        distortion = (x_adv - x).flatten(1).norm(dim=1) / x[0].numel()   # 003's d(x', x)
    """

    name = "coordinate-greedy"
    paper = "Chen, Li, Vorobeychik (003) sec. 3.1, eq. 2-3; Li et al. 2016"
    threat_model = ThreatModel(norm="l2", budget="minimal")

    steps: int = param(1000, ge=1, help="coordinate updates per start")
    step_size: float = param(0.1, gt=0, le=1, help="change per update (share of box width)")
    restarts: int = param(1, ge=0, help="random starts besides the one from x")
    lam: float = param(0.0, ge=0, help="lambda of the exponential cost (003: 0)")

    def run(self, model, inputs, labels, eps=None, generator=None):
        lo, hi = model.bounds
        x = inputs.detach()
        step = self.step_size * (hi - lo)
        s = self.restarts + 1
        x_ref = x.repeat(s, *([1] * (x.dim() - 1)))
        y = labels.repeat(s)
        cur = random_starts(x, self.restarts, step, (lo, hi), generator)
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
                g = g.flatten(1)
                xf = xa.detach().flatten(1)
                movable = ((g > 0) & (xf > lo)) | ((g < 0) & (xf < hi))
                score = torch.where(movable, g.abs(), torch.full_like(g, -1.0))
                j = score.argmax(1, keepdim=True)
                val = (xf.gather(1, j) - step * g.gather(1, j).sign()).clamp(lo, hi)
                new = xf.scatter(1, j, val).view_as(xa)
                best.update(idx, flat_norm(xa.detach() - x_ref[idx]), done)
                go = ~done & movable.any(1) & ~best.beaten(idx, flat_norm(new - x_ref[idx]))
                cur[idx] = torch.where(view_as_batch(go, xa), new, xa.detach())
                success[idx] = done
            idx = idx[active_indices(go)]
        if idx.numel():
            with torch.no_grad():
                success[idx] = misclassified(model(cur[idx]), y[idx])
        out = smallest_success(x, cur, success)
        with torch.no_grad():
            already = misclassified(model(x), labels)
        return torch.where(view_as_batch(already, x), x, out)
