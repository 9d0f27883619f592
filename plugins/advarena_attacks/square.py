"""Square Attack (Linf): score-based random search with square-shaped updates."""

from __future__ import annotations

import torch

from advarena.api import ThreatModel
from advarena.params import param

from ._square import SquareBase, random_corners, random_signs, square_side, window_mask


def spend_no_query_on_nothing(cand: torch.Tensor, flipped: torch.Tensor, x_best: torch.Tensor
                              ) -> torch.Tensor:
    """``cand``, except where it equals ``x_best`` (the box clipped the whole window back to
    its current value): there the window with the opposite signs, ``flipped``. The authors'
    code redraws the signs until the window changes; AutoAttack's and torchattacks' copies do
    not and spend a query on an unchanged point (on digits, with its black background, about 2
    points of robust accuracy at 300 queries)."""
    same = ((cand - x_best).abs() < 1e-7).flatten(1).all(1)
    return torch.where(same.view(-1, *[1] * (cand.dim() - 1)), flipped, cand)


class SquareLinf(SquareBase):
    """Square Attack under Linf (Algorithm 2 of the paper): a random search that uses only the
    model's scores, never a gradient (so gradient masking cannot blind it).

    * Start: vertical stripes, ``x + eps * s`` with ``s`` a random sign per example, channel and
      column (sec. 3.1), clipped to the box.
    * Each iteration, per example: a square window of side ``round(sqrt(p * h * w))`` at a
      uniform position; its values are set to ``x +- eps`` (one random sign per channel), the
      rest kept, and the candidate is kept if it lowers the margin ``z_y - max_{k != y} z_k`` of
      the logits (sec. 3, the margin loss). ``p`` follows the paper's schedule from ``p_init``,
      halved at fixed fractions of the budget (:func:`._square.p_schedule`).
    * An example is no longer queried once misclassified.

    Queries are counted per example: after each call, ``attack.last_queries`` holds a
    ``(B,)`` integer tensor (on the inputs' device) of the model evaluations each example used,
    the initial point included (so between 1 and ``n_queries``), and ``attack.query_log`` the
    list of every call's tensor, in order (the harness calls once per batch:
    ``torch.cat(attack.query_log)`` lines up with the examples); the success count is the
    harness's. Misclassified clean examples are not skipped (the attack is not told), they
    usually stop after one query.

    Paper: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search" (ECCV 2020) sec. 3, Algorithm 2; sec. 3.1
    (initialisation).

    Threat model: Linf, bounded by eps, untargeted, score access (logits only, under
    ``torch.no_grad()``).

    Choices the paper leaves open, and how they are made here:

    * ``p_init`` 0.8, AutoAttack's (and the authors' setting for adversarially trained models);
      the paper uses 0.05 on undefended ImageNet models.
    * Window positions uniform over all positions, per example, as the paper's Algorithm 2; the
      authors' code excludes the last position (``randint(0, h - s)``) and caps ``s`` at
      ``h - 1``; here ``s`` is capped at ``min(h, w)``.
    * As in the authors' code, a candidate that would not change the window (box clipping) is
      not spent: here its channel signs are flipped (for one channel the same as the authors'
      redraw; for several, a flip instead of a fresh draw); see
      :func:`spend_no_query_on_nothing`.
    * A candidate is kept if it lowers the margin or misclassifies the example.
    * Inputs that are not images are viewed as ``(B, 1, 1, D)`` (one row of pixels).
    * The active set is compacted (one host sync) at powers of two and every 64 queries
      (``_square.COMPACT_EVERY``), never per query; fooled examples carried along until then are
      frozen and not counted.

    Parameters:
        eps (float, 0.3): Linf budget.
        n_queries (int, 5000): query budget per example, the initial point included
            (AutoAttack: 5000; torchattacks' ``n_queries=q`` makes up to ``q + 1``).
        p_init (float, 0.8): initial fraction of pixels a square covers.

    Cost: at most ``n_queries`` forward passes per example, no backward pass.

    Example::

        attack = advarena.attack("square", eps=0.3, n_queries=1000)
        x_adv = attack(model, x, y)
        attack.last_queries.float().mean()
    """

    name = "square"
    paper = "Andriushchenko et al. 2020 sec. 3, Alg. 2"
    threat_model = ThreatModel(norm="linf", access="score")

    eps: float = param(0.3, ge=0, help="Linf budget")

    def start(self, x, eps, bounds, generator):
        b, c, _, w = x.shape
        return (x + eps * random_signs((b, c, 1, w), generator, x)).clamp(*bounds)

    def proposal(self, shape, eps, bounds):
        _, c, h, w = shape
        lo, hi = bounds

        def propose(xc, xb, i, p, gen):
            s = square_side(p, h, w, 1)
            rows, cols = random_corners(len(xc), s, h, w, gen, xc.device)
            inside = window_mask(rows, cols, s, h, w)
            step = eps * random_signs((len(xc), c, 1, 1), gen, xc)
            cand = torch.where(inside, (xc + step).clamp(lo, hi), xb)
            flipped = torch.where(inside, (xc - step).clamp(lo, hi), xb)
            return spend_no_query_on_nothing(cand, flipped, xb)

        return propose
