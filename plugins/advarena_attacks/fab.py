"""FAB: the fast adaptive boundary attack under Linf (Croce & Hein 2020), a minimal attack."""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import batch_view

# Bisection steps of the projection: the multiplier is found to (box width) * 2^-40.
_BISECT = 40


def project_linf_box(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor,
                     bounds: tuple[float, float]) -> torch.Tensor:
    """The smallest-Linf ``delta`` (rows of ``t``, ``w``: ``(n, d)``; ``c``: ``(n,)``) with
    ``<w, delta> = c`` and ``t + delta`` in the box, or, where the box makes the hyperplane
    unreachable, the box point that gets closest to it (the paper's eq. 5 with the box
    constraint, as the authors' ``projection_linf`` solves it).

    The minimiser is ``delta_i(l) = clip(l * sign(c w_i), lo - t_i, hi - t_i)`` for the least
    ``l >= 0`` with ``<w, delta(l)> = c``: ``<w, delta(l)>`` is monotone in ``l``, so ``l`` is
    found by bisection on ``[0, hi - lo]`` (a fixed number of batched steps, no host sync; the
    authors sort the breakpoints instead, to the same answer).
    """
    lo, hi = bounds
    direction = torch.sign(c)[:, None] * torch.sign(w)
    low, high = lo - t, hi - t
    target = c.abs()
    a = torch.zeros_like(c)
    b = torch.full_like(c, hi - lo)

    def reach(lam):
        d = torch.clamp(lam[:, None] * direction, low, high)
        return d, (w * d).sum(1) * torch.sign(c)

    for _ in range(_BISECT):
        mid = (a + b) / 2
        short = reach(mid)[1] < target
        a = torch.where(short, mid, a)
        b = torch.where(short, b, mid)
    return reach(b)[0]


class FAB(Attack):
    """Fast adaptive boundary attack (untargeted, Linf): from the clean input, repeatedly
    linearise the classifier, take the class ``k`` whose linearised boundary is closest in Linf
    (``|f_k - f_y| / ||grad (f_k - f_y)||_1``), project both the current point and the original
    input onto that hyperplane within the box (:func:`project_linf_box`), and step to a convex
    combination of the two projections, biased towards the original input:

    ``x <- clip((x + eta d_x)(1 - alpha) + (x_0 + eta d_0) alpha)``,
    ``alpha = min(||d_x|| / (||d_x|| + ||d_0||), alpha_max)``.

    Whenever the point is adversarial it is recorded if it is the closest so far and then pulled
    back towards the input, ``x <- x_0 + beta (x - x_0)``. Returned: per example the closest
    adversarial point found, the input itself where none was (the harness measures the norm).

    Paper: Croce, Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary
    Attack" (ICML 2020) sec. 3 (eqs. 5-9, Algorithm 1); used in AutoAttack (Croce & Hein 2020b).

    Threat model: Linf, minimal (no eps), untargeted, white-box gradients.

    Choices the paper leaves open, as the authors' code (and torchattacks.FAB) make them: one run
    from the clean input (the random restarts, which need an eps to size them, are not
    implemented); examples already misclassified are returned unchanged; the gradients of all
    ``f_k - f_y`` come from one backward pass per class; the projection is solved by bisection
    (see :func:`project_linf_box`).

    Parameters:
        steps (int, 100): iterations (AutoAttack: 100; torchattacks' default: 10).
        alpha_max (float, 0.1): largest weight of the original input's projection.
        eta (float, 1.05): overshoot of each projection.
        beta (float, 0.9): backward step towards the input after a success.

    Cost: per iteration one forward pass, ``classes`` backward passes and one forward pass to
    test the new point; batched, no host synchronisation.

    Example::

        x_adv = advarena.attack("fab", steps=100)(model, x, y)
    """

    name = "fab"
    paper = "Croce & Hein 2020 (FAB) sec. 3, Alg. 1"
    threat_model = ThreatModel(norm="linf", budget="minimal")

    steps: int = param(100, ge=1, help="iterations")
    alpha_max: float = param(0.1, ge=0, le=1, help="largest weight of the input's projection")
    eta: float = param(1.05, ge=1, help="overshoot of each projection")
    beta: float = param(0.9, gt=0, lt=1, help="backward step after a success")

    def run(self, model, inputs, labels, eps, generator=None):
        x0 = inputs
        n = len(x0)
        with torch.no_grad():
            correct = model(x0).argmax(1) == labels
        x = x0.clone()
        best = x0.clone()
        best_norm = torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
        flat0 = x0.flatten(1)
        for _ in range(self.steps):
            df, dg = _logit_differences(model, x, labels)
            dist = df.abs() / (dg.abs().sum(2) + 1e-12)
            k = dist.argmin(1)
            w = dg[torch.arange(n, device=x.device), k]
            f = df.gather(1, k[:, None]).squeeze(1)
            flat = x.flatten(1)
            # The hyperplane f + <w, z - x> = 0, from x and from x0.
            both = project_linf_box(torch.cat([flat, flat0]), torch.cat([w, w]),
                                    torch.cat([-f, -f - (w * (flat0 - flat)).sum(1)]),
                                    model.bounds)
            d1, d0 = both[:n], both[n:]
            a1 = d1.abs().amax(1).clamp_min(1e-8)
            a0 = d0.abs().amax(1).clamp_min(1e-8)
            alpha = batch_view((a1 / (a1 + a0)).clamp(0, self.alpha_max), x)
            x = ((x + self.eta * d1.view_as(x)) * (1 - alpha)
                 + (x0 + self.eta * d0.view_as(x)) * alpha).clamp(*model.bounds)
            with torch.no_grad():
                # A non-finite point (NaN gradients) is never recorded as a success.
                adv = ((model(x).argmax(1) != labels) & correct
                       & torch.isfinite(x).flatten(1).all(1))
            norm = (x - x0).flatten(1).abs().amax(1)
            closer = adv & (norm < best_norm)
            best = torch.where(batch_view(closer, x), x, best)
            best_norm = torch.where(closer, norm, best_norm)
            x = torch.where(batch_view(adv, x), x0 + self.beta * (x - x0), x)
        return best


def _logit_differences(model, x, y):
    """``f_k(x) - f_y(x)`` and its input gradient for every class ``k`` (shapes ``(B, K)`` and
    ``(B, K, d)``); the true class gets a huge difference so it is never the closest."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grads = [torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True)[0].flatten(1)
             for k in range(logits.shape[1])]
    g = torch.stack(grads, 1)
    idx = torch.arange(len(y), device=y.device)
    df = (logits - logits[idx, y][:, None]).detach()
    dg = g - g[idx, y][:, None]
    df[idx, y] = 1e10
    return df, dg
