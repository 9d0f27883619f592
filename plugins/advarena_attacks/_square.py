"""The random search shared by ``square`` (Linf) and ``square-l2`` (Andriushchenko et al. 2020):
the margin loss on the model's scores, the schedule of the square size, per-example square
windows, and the query loop with its per-example query count. Score access only: everything
runs under ``torch.no_grad()`` and reads nothing but the model's outputs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from advarena.api import Attack
from advarena.params import param

from ._losses import margin

# The active set is re-gathered (one host sync) at query indices that are powers of two and at
# every multiple of this: O(log n + n / 64) syncs per run, never one per query, and an example
# fooled at query t is carried along (uncounted, frozen) for at most min(t, 64) more queries.
COMPACT_EVERY = 64

# propose(x, x_best, i, p, generator) -> candidate, for the active examples (4-d tensors).
Proposal = Callable[[torch.Tensor, torch.Tensor, int, float, torch.Generator | None],
                    torch.Tensor]


def p_schedule(p_init: float, i: int, n_iters: int) -> float:
    """The fraction ``p`` of pixels a square covers at iteration ``i`` (0-based) of ``n_iters``:
    the authors' piecewise-constant schedule for 10000 iterations, halving ``p`` at iterations
    10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, rescaled to ``n_iters`` (paper sec. 3 and
    its appendix; the authors' ``p_selection``, AutoAttack's with ``resc_schedule``)."""
    it = int(i / n_iters * 10000)
    for k, bound in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if it <= bound:
            return p_init / 2 ** k
    return p_init / 512


def as_images(x: torch.Tensor) -> torch.Tensor:
    """View a batch as ``(B, C, H, W)``: ``(B, H, W)`` gets one channel, ``(B, D)`` is one row."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], 1, 1, -1)


def random_corners(n: int, s: int, h: int, w: int, generator, device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example top-left corners of an ``s x s`` window inside ``h x w``, uniform over the
    ``(h - s + 1)(w - s + 1)`` positions (the paper's Algorithms 2-3: ``r, s ~ U{0, ..., w-h}``;
    the authors' code draws from ``{0, ..., w-h-1}`` and never touches the last row/column with
    the largest squares)."""
    rows = torch.randint(0, h - s + 1, (n,), generator=generator, device=device)
    cols = torch.randint(0, w - s + 1, (n,), generator=generator, device=device)
    return rows, cols


def window_mask(rows: torch.Tensor, cols: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """``(B, 1, H, W)`` boolean mask of each example's window."""
    r = torch.arange(h, device=rows.device)[None] - rows[:, None]
    c = torch.arange(w, device=cols.device)[None] - cols[:, None]
    inside = ((r >= 0) & (r < s))[:, :, None] & ((c >= 0) & (c < s))[:, None, :]
    return inside[:, None]


def extract(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, s: int) -> torch.Tensor:
    """Each example's ``s x s`` window of ``t`` (``(B, C, H, W)``), as ``(B, C, s, s)``."""
    b, c, _, w = t.shape
    ar = torch.arange(s, device=t.device)
    ri = (rows[:, None] + ar)[:, None, :, None].expand(b, c, s, w)
    ci = (cols[:, None] + ar)[:, None, None, :].expand(b, c, s, s)
    return t.gather(2, ri).gather(3, ci)


def place(patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, h: int, w: int
          ) -> torch.Tensor:
    """Put each example's ``(C, s, s)`` patch at its window of an ``(H, W)`` zero image."""
    b, c, s, _ = patch.shape
    r = (torch.arange(h, device=patch.device)[None] - rows[:, None]).clamp(0, s - 1)
    q = (torch.arange(w, device=patch.device)[None] - cols[:, None]).clamp(0, s - 1)
    out = patch.gather(2, r[:, None, :, None].expand(b, c, h, s))
    out = out.gather(3, q[:, None, None, :].expand(b, c, h, w))
    return out * window_mask(rows, cols, s, h, w)


def random_signs(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform +-1 of ``shape``."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def random_search(model, x: torch.Tensor, y: torch.Tensor, x_init: torch.Tensor,
                  n_queries: int, p_init: float, propose: Proposal, generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Square Attack's loop (Algorithm 1): from ``x_init``, per example, query a candidate and
    keep it if it lowers the margin ``z_y - max_{k != y} z_k``; stop querying an example once
    it is misclassified. At most ``n_queries`` model evaluations per example, the first one at
    ``x_init``.

    Returns ``(x_best, queries)``: ``queries[i]`` is the number of model evaluations example
    ``i`` used (1 to ``n_queries``; carried-along evaluations of already-fooled examples between
    two compactions are not counted: their outputs are discarded).
    """
    with torch.no_grad():
        logits = model(x_init)
        loss_min = -margin(logits, y)
        fooled = logits.argmax(1) != y
        x_best = x_init.clone()
        queries = torch.ones_like(y)
        idx = torch.arange(len(y), device=y.device)
        n_iters = n_queries - 1  # the iterations after the initial query
        for i in range(n_iters):
            k = i + 1
            if k & (k - 1) == 0 or k % COMPACT_EVERY == 0:
                idx = idx[~fooled[idx]]  # one host sync (its size)
                if idx.numel() == 0:
                    break
            x_cur, xb = x[idx], x_best[idx]
            cand = propose(x_cur, xb, i, p_schedule(p_init, i, n_iters), generator)
            logits = model(cand)
            m = -margin(logits, y[idx])
            live = ~fooled[idx]
            wrong = logits.argmax(1) != y[idx]
            take = live & ((m < loss_min[idx]) | wrong)
            x_best[idx] = torch.where(take.view(-1, *[1] * (x.dim() - 1)), cand, xb)
            loss_min[idx] = torch.where(take, m, loss_min[idx])
            fooled[idx] = fooled[idx] | (live & wrong)
            queries[idx] = queries[idx] + live.to(queries.dtype)
        return x_best, queries


def square_side(p: float, h: int, w: int, minimum: int) -> int:
    """Side of a square covering the fraction ``p`` of the ``h x w`` pixels, at least
    ``minimum`` and at most ``min(h, w)``."""
    return min(max(int(round(math.sqrt(p * h * w))), minimum), h, w)


class SquareBase(Attack):
    """Parameters and ``run`` shared by ``square`` and ``square-l2``; a subclass supplies
    :meth:`start` (the initial point) and :meth:`proposal` (the candidate rule). No ``name``:
    never registered itself."""

    eps: float = param(0.3, ge=0, help="budget")
    n_queries: int = param(5000, ge=1, help="query budget per example")
    p_init: float = param(0.8, gt=0, le=1, help="initial fraction of pixels per square")

    def start(self, x: torch.Tensor, eps: float, bounds, generator) -> torch.Tensor:
        raise NotImplementedError

    def proposal(self, shape, eps: float, bounds) -> Proposal:
        raise NotImplementedError

    def run(self, model, inputs, labels, eps, generator=None):
        x = as_images(inputs)

        def scores(z):
            return model(z.reshape(len(z), *inputs.shape[1:]))

        with torch.no_grad():
            x_init = self.start(x, eps, model.bounds, generator)
            x_best, queries = random_search(
                scores, x, labels, x_init, self.n_queries, self.p_init,
                self.proposal(x.shape, eps, model.bounds), generator)
        # Plain attributes, not parameters: this call's counts, and every call's in order (the
        # harness attacks in batches; torch.cat(attack.query_log) covers them all).
        self.last_queries = queries
        self.__dict__.setdefault("query_log", []).append(queries)
        return x_best.reshape(inputs.shape)
