"""Auto-PGD (Croce & Hein 2020, Algorithm 1), one algorithm for every objective: ``apgd-ce``,
``apgd-dlr`` and ``apgd-t`` differ only in the loss they maximise and in the schedule of runs
(restarts, target classes), so they subclass :class:`APGDBase` and supply those two."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from advarena.api import Attack, ThreatModel
from advarena.params import param

from ._grad import batch_view, linf_limits, loss_and_gradient, sign_step
from ._losses import Objective

# A run of the schedule: given the indices of the examples it attacks, their objective.
RunObjective = Callable[[torch.Tensor], Objective]


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


class APGDBase(Attack):
    """The shared parameters and algorithm; subclasses define :meth:`schedule` (no ``name``
    here, so the registry never lists this class)."""

    threat_model = ThreatModel(norm="linf")

    eps: float = param(0.3, ge=0, help="Linf budget")
    steps: int = param(100, ge=1, help="iterations")
    n_restarts: int = param(1, ge=1, help="random restarts on examples still correct")
    random_start: bool = param(True, help="random start in the eps-ball")
    rho: float = param(0.75, gt=0, le=1, help="condition-1 threshold")
    momentum: float = param(0.75, ge=0, le=1, help="momentum weight of the new step")

    def schedule(self, model, inputs: torch.Tensor, labels: torch.Tensor
                 ) -> Iterator[RunObjective]:
        """The runs to make, in order; each after the first attacks only the examples that no
        earlier run fooled."""
        raise NotImplementedError

    def run(self, model, inputs, labels, eps, generator=None):
        lower, upper = linf_limits(inputs, eps, model.bounds)
        runs = self.schedule(model, inputs, labels)
        everyone = torch.arange(len(labels), device=labels.device)
        x_adv, fooled, loss_max = self._single_run(model, inputs, labels, lower, upper, eps,
                                                   next(runs)(everyone), generator)
        for make in runs:
            # Between runs only: one host sync to drop the examples already fooled.
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            out, f, lm = self._single_run(model, inputs[todo], labels[todo], lower[todo],
                                          upper[todo], eps, make(todo), generator)
            # Keep a run's point where it fools the model or raises the loss.
            better = f | (lm > loss_max[todo])
            x_adv[todo] = torch.where(batch_view(better, out), out, x_adv[todo])
            loss_max[todo] = torch.where(better, lm, loss_max[todo])
            fooled[todo] = f
        return x_adv

    def _single_run(self, model, x, y, lower, upper, eps, loss, generator):
        """One APGD run maximising ``loss``; returns (output, fooled, best loss) per example."""
        if self.random_start:
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
            t = t / batch_view(t.flatten(1).abs().amax(1).clamp_min(1e-12), t)
            x_cur = torch.clamp(x + eps * t, lower, upper)
        else:
            x_cur = x.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        m = self.momentum

        loss_cur, grad, logits = loss_and_gradient(model, x_cur, y, loss=loss)
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
            loss_new, grad_new, logits = loss_and_gradient(
                model, x_new, y, need_grad=k < self.steps - 1, loss=loss)
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
