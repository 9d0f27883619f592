"""Helpers shared by the minimal-perturbation attacks (deepfool, cw-l2, jsma, coordinate-greedy,
adam-evasion).

Conventions of those attacks, implemented here once:

* an example the model already misclassifies is returned unchanged (distance 0): it needs no
  perturbation, and a minimal attack reports the smallest one;
* an example the attack does not fool is returned unchanged too (the harness re-scores every
  output, so "unchanged" is counted as a failure there, never as a distance-0 success);
* per-example early stops are done by *compaction*: the step loop works on the indices of the
  still-active examples, refreshed with one host synchronisation (``nonzero``) per check. That
  one sync is the algorithm's early stop (the loop ends when the index set is empty); nothing
  else in the loops reads device values on the host.
"""

from __future__ import annotations

import torch
from torch import nn


def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{k != y} z_k`` per example: negative exactly when the prediction is wrong
    (ties aside)."""
    z_y = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return z_y - other


def misclassified(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The harness's success test: the arg-max prediction differs from the label."""
    return logits.argmax(1) != labels


def active_indices(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the ``True`` entries: the one host synchronisation of a check."""
    return mask.nonzero().flatten()


def input_grads(outputs: torch.Tensor, x: torch.Tensor,
                cotangents: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian products of ``outputs`` (A, K) w.r.t. ``x`` for several cotangents at once.

    ``cotangents`` has shape (M, A, K); the result (M, *x.shape). One forward pass, then one
    vmapped backward (``is_grads_batched``), which costs M backward passes of work in one call;
    layers without a batching rule fall back to M ordinary backward passes.
    """
    try:
        (g,) = torch.autograd.grad(outputs, x, cotangents, retain_graph=True,
                                   is_grads_batched=True)
        return g
    except RuntimeError:
        grads = [torch.autograd.grad(outputs, x, c, retain_graph=True)[0] for c in cotangents]
        return torch.stack(grads)


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def view_as_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example vector (B,) to broadcast against ``like`` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def evasion_objective(logits: torch.Tensor, x_adv: torch.Tensor, x: torch.Tensor,
                      labels: torch.Tensor, lam: float) -> torch.Tensor:
    """Chen et al. (003) eq. 3 per example: ``Q(x') = f(x') + c(x', x)`` with the multi-class
    margin ``f = z_y - max_{k != y} z_k`` and ``c = exp(lam * sqrt(||x' - x||_2^2 + 1))``
    (a constant when ``lam`` is 0, 003's setting)."""
    f = margin(logits, labels)
    if lam == 0:
        return f
    d2 = (x_adv - x).flatten(1).pow(2).sum(1)
    return f + torch.exp(lam * torch.sqrt(d2 + 1))


def random_starts(x: torch.Tensor, restarts: int, radius: float, bounds: tuple[float, float],
                  generator: torch.Generator | None) -> torch.Tensor:
    """``x`` followed by ``restarts`` copies of it plus uniform noise in ``[-radius, radius]``
    per coordinate, clipped to the box: shape ((restarts + 1) * B, ...)."""
    if restarts == 0:
        return x.clone()
    noise = torch.rand((restarts, *x.shape), generator=generator, device=x.device,
                       dtype=x.dtype)
    starts = (x[None] + (2 * noise - 1) * radius).clamp(*bounds)
    return torch.cat([x[None], starts]).flatten(0, 1)


class BestNorm:
    """Per example, the smallest L2 distance of a success found so far over all its starts;
    lets a start stop once it is already farther from ``x`` than that (it can no longer give
    the closest success). Starts are stacked start-major, so row ``i`` is example ``i % B``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.b = x.shape[0]
        self.norm = torch.full((self.b,), float("inf"), device=x.device, dtype=x.dtype)

    def update(self, rows: torch.Tensor, dist: torch.Tensor, success: torch.Tensor) -> None:
        cand = torch.where(success, dist, torch.full_like(dist, float("inf")))
        self.norm.scatter_reduce_(0, rows % self.b, cand, reduce="amin")

    def beaten(self, rows: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        return dist >= self.norm[rows % self.b]


def smallest_success(x: torch.Tensor, candidates: torch.Tensor,
                     success: torch.Tensor) -> torch.Tensor:
    """Per example of ``x`` (B, ...), the successful candidate closest in L2, else ``x``.

    ``candidates`` is (S * B, ...) (S starts stacked start-major), ``success`` (S * B,)."""
    b = x.shape[0]
    cand = candidates.view(-1, *x.shape)
    ok = success.view(-1, b)
    norms = (cand - x[None]).flatten(2).norm(dim=2)
    norms = torch.where(ok, norms, torch.full_like(norms, float("inf")))
    best = norms.argmin(0)
    found = ok.any(0)
    picked = cand[best, torch.arange(b, device=x.device)]
    return torch.where(view_as_batch(found, x), picked, x)


class BatchedAdam:
    """Adam (Kingma and Ba 2015; bias-corrected, beta1 0.9, beta2 0.999, eps 1e-8) on one tensor
    whose first axis is the batch. ``step`` may update a subset of the examples (``idx``): the
    others keep their moments and step counts, so an example that has stopped does not drift on
    its momentum (the reason for writing it out rather than using ``torch.optim.Adam``)."""

    def __init__(self, like: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = torch.zeros(like.shape[0], device=like.device, dtype=like.dtype)

    def step(self, param: torch.Tensor, grad: torch.Tensor,
             idx: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``param - lr * m_hat / (sqrt(v_hat) + eps)`` for the examples ``idx`` (all if
        None); ``param`` and ``grad`` hold just those examples."""
        sel = slice(None) if idx is None else idx
        m = self.b1 * self.m[sel] + (1 - self.b1) * grad
        v = self.b2 * self.v[sel] + (1 - self.b2) * grad * grad
        t = self.t[sel] + 1
        self.m[sel], self.v[sel], self.t[sel] = m, v, t
        tb = view_as_batch(t, param)
        m_hat = m / (1 - self.b1 ** tb)
        v_hat = v / (1 - self.b2 ** tb)
        return param - self.lr * m_hat / (v_hat.sqrt() + self.eps)
