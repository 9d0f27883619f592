"""Square Attack (L2): score-based random search with square-shaped L2 updates."""

from __future__ import annotations

import functools

import torch

from advarena.api import ThreatModel
from advarena.params import param

from ._grad import normalize, per_example_norm
from ._square import (SquareBase, extract, place, random_corners, random_signs, square_side,
                      window_mask)


def _rings(a: int, b: int) -> torch.Tensor:
    """The authors' ``pseudo_gaussian_pert_rectangles(a, b)``: concentric rectangles around the
    centre of an ``a x b`` array, the k-th (from the centre, k = 0, 1, ...) adding ``1/(k+1)^2``,
    normalised to unit L2 norm (an empty array for ``a = 0``)."""
    out = torch.zeros(a, b, dtype=torch.float64)
    ca, cb = a // 2, b // 2
    for k in range(max(ca, cb) + 1):
        out[max(ca - k, 0):min(ca - k + 2 * k + 1, a),
            max(cb - k, 0):min(cb - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
    return out / out.norm() if out.numel() else out


def _to_ball(x: torch.Tensor, delta: torch.Tensor, eps: float, bounds) -> torch.Tensor:
    """``x + eps * delta / ||delta||_2`` clipped to the box (the authors' rescaling: every
    candidate uses the whole budget; the clipping only shrinks it)."""
    return (x + eps * normalize(delta, 2)).clamp(*bounds)


@functools.lru_cache(maxsize=64)
def bump(s: int) -> torch.Tensor:
    """The paper's update shape ``eta`` (sec. 3.2, Fig. 2): an ``s x s`` square of two halves,
    rings of ``+1/(k+1)^2`` over the top ``s // 2`` rows and their negative over the rest, with
    unit L2 norm (the authors' ``meta_pseudo_gaussian_pert``, before its random transpose)."""
    out = torch.cat([_rings(s // 2, s), -_rings(s - s // 2, s)])
    return (out / out.norm()).float()


class SquareL2(SquareBase):
    """Square Attack under L2 (Algorithm 3 of the paper): a random search that uses only the
    model's scores, never a gradient.

    * Start (sec. 3.2): a grid of ``h // 5``-sized bumps ``eta`` (see :func:`bump`), each with a
      random sign per channel, rescaled to L2 norm eps and clipped to the box.
    * Each iteration, per example, with ``delta = x_best - x``: two windows of side
      ``s = round(sqrt(p h w))`` (odd, at least 3) at uniform positions; window 1 gets a new
      ``+-eta`` (random sign per channel, random orientation) plus its old content normalised,
      rescaled so that it takes the L2 mass of both windows plus whatever budget
      ``eps^2 - ||delta||^2`` is left (split over the channels); window 2 is emptied; the whole
      ``delta`` is rescaled to norm eps and the candidate clipped to the box. It is kept if it
      lowers the margin ``z_y - max_{k != y} z_k`` of the logits. ``p`` follows the schedule of
      ``square``.
    * An example is no longer queried once misclassified.

    Queries are counted per example: after each call ``attack.last_queries`` holds a ``(B,)``
    integer tensor of the model evaluations each example used (1 to ``n_queries``, the initial
    point included) and ``attack.query_log`` every call's, in order (as ``square``).

    Paper: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search" (ECCV 2020) sec. 3.2, Algorithm 3; the update follows
    the authors' ``square_attack_l2``.

    Threat model: L2, bounded by eps, untargeted, score access (logits only, under
    ``torch.no_grad()``).

    Choices the paper leaves open, and how they are made here:

    * ``p_init`` 0.8 (AutoAttack's); the paper uses 0.1 on undefended ImageNet models.
    * Window positions per example, uniform over all positions (the paper); the authors' code
      draws one position for the whole batch from ``{0, ..., h - s - 1}``, so it never moves the
      last row or column (see ``square``). The orientation of ``eta`` (transposed or not) is
      drawn per example, the authors' once per batch.
    * The side is capped at ``min(h, w)`` (made odd by going down if needed): the image can be
      smaller than the paper's minimum of 3 only for inputs under 3 x 3.
    * Initial bumps of side ``max(h // 5, 1)`` (``h // 5`` is 0 below 5 pixels).
    * Inputs that are not images are viewed as ``(B, 1, 1, D)``.
    * The active set is compacted at powers of two and every 64 queries, as in ``square``.

    Parameters:
        eps (float, 0.5): L2 budget (as ``fgsm-l2``'s scale on 8x8 digits; AutoAttack uses 0.5
            on CIFAR-10).
        n_queries (int, 5000): query budget per example, the initial point included.
        p_init (float, 0.8): initial fraction of pixels a square covers.

    Cost: at most ``n_queries`` forward passes per example, no backward pass.

    Example::

        attack = advarena.attack("square-l2", eps=0.5, n_queries=1000)
        x_adv = attack(model, x, y)
    """

    name = "square-l2"
    paper = "Andriushchenko et al. 2020 sec. 3.2, Alg. 3"
    threat_model = ThreatModel(norm="l2", access="score")

    eps: float = param(0.5, ge=0, help="L2 budget")

    def start(self, x, eps, bounds, generator):
        return _to_ball(x, self._initial(x, generator), eps, bounds)

    def proposal(self, shape, eps, bounds):
        _, c, h, w = shape

        def propose(xc, xb, i, p, gen):
            n = len(xc)
            s = square_side(p, h, w, 3)
            s = s if s % 2 else (s + 1 if s + 1 <= min(h, w) else s - 1)
            s = max(s, 1)
            delta = xb - xc
            r1, c1 = random_corners(n, s, h, w, gen, xc.device)
            r2, c2 = random_corners(n, s, h, w, gen, xc.device)
            m1, m2 = window_mask(r1, c1, s, h, w), window_mask(r2, c2, s, h, w)
            old = extract(delta, r1, c1, s)
            old = old / (old.square().sum((2, 3), keepdim=True).sqrt() + 1e-10)
            # Budget for window 1: the mass of both windows (per channel) plus what is left.
            mass = (delta * (m1 | m2)).square().sum((2, 3), keepdim=True)
            spare = (eps ** 2 - per_example_norm(delta, 2) ** 2).clamp_min(0) / c
            eta = bump(s).to(xc)
            flip = torch.rand(n, generator=gen, device=xc.device) < 0.5
            eta = torch.where(flip.view(-1, 1, 1, 1), eta.T, eta)
            new = eta * random_signs((n, c, 1, 1), gen, xc) + old
            new = new / new.square().sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
            new = new * (spare + mass).sqrt()
            delta = torch.where(m1, place(new, r1, c1, h, w), delta * ~m2)
            return _to_ball(xc, delta, eps, bounds)

        return propose

    @staticmethod
    def _initial(x, generator):
        """The starting grid of bumps, each with a random sign per example and channel."""
        b, c, h, w = x.shape
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        delta = torch.zeros_like(x)
        eta = bump(s).to(x)
        for top in range(start, h - s + 1, s):
            for left in range(start, w - s + 1, s):
                sign = random_signs((b, c, 1, 1), generator, x)
                delta[:, :, top:top + s, left:left + s] += eta * sign
        return delta
