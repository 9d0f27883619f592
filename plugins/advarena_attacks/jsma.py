"""JSMA: the Jacobian-based saliency map attack (targeted, L0)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from advarena.api import Attack, ThreatModel
from advarena.errors import ParameterError
from advarena.params import param

from ._minimal import active_indices, input_grads, predict_logits

# Pair scores are formed for (examples x rows x features) at a time; this many elements at most.
_PAIR_BLOCK = 1 << 22


def _top_two(sal: torch.Tensor, allowed: torch.Tensor, new: torch.Tensor, room: torch.Tensor,
             sign: float):
    """Per example the two allowed features with the largest ``sign * sal`` (ART's rule).

    ``allowed`` marks the features that may change, ``new`` those not changed yet, ``room`` how
    many more features the example may change: the second feature must fit the budget together
    with the first. With a single allowed feature, ``p == q`` (it changes once). Returns
    ``(p, q, found)``; ``found`` is False where no feature is allowed.
    """
    s = sign * sal
    v1, p = torch.where(allowed, s, float("-inf")).max(1)
    cost_p = new.gather(1, p[:, None]).to(torch.int32)
    ok2 = allowed & (new.to(torch.int32) + cost_p <= room[:, None])
    ok2 = ok2.scatter(1, p[:, None], False)
    v2, q = torch.where(ok2, s, float("-inf")).max(1)
    found = v1 > float("-inf")
    q = torch.where(v2 > float("-inf"), q, p)
    return p, q, found


def _pair_saliency(a: torch.Tensor, b: torch.Tensor, allowed: torch.Tensor, new: torch.Tensor,
                   room: torch.Tensor, sign: float):
    """Papernot et al.'s pair saliency map: per example the allowed pair ``p != q`` maximising
    ``(a_p + a_q) * |b_p + b_q|`` with ``sign * (a_p + a_q) > 0`` and ``sign * (b_p + b_q) < 0``
    (``a``: derivative of the target logit, ``b``: of the sum of the other logits, both (A, n)).

    A pair is allowed when both features are and changing both fits the budget. Where no pair
    meets the sign conditions the allowed pair with the largest ``sign * (a_p + a_q)`` is taken
    (ART's rule), and with fewer than two allowed features the best single one, so the search
    never stalls. The (A, rows, n) score blocks keep memory bounded; the loop runs over row
    blocks of the feature axis, never over examples. Returns ``(p, q, found)``.
    """
    A, n = a.shape
    sa, sb = sign * a, sign * b
    cost = new.to(torch.int32)
    best_s = a.new_full((A,), float("-inf"))
    best_i = torch.zeros(A, dtype=torch.long, device=a.device)
    fb_s = a.new_full((A,), float("-inf"))
    fb_i = torch.zeros(A, dtype=torch.long, device=a.device)
    rows = max(1, _PAIR_BLOCK // max(1, A * n))
    cols = torch.arange(n, device=a.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        a2 = sa[:, r0:r1, None] + sa[:, None, :]
        b2 = sb[:, r0:r1, None] + sb[:, None, :]
        ok = (allowed[:, r0:r1, None] & allowed[:, None, :]
              & (cols[r0:r1, None] != cols[None, :])
              & (cost[:, r0:r1, None] + cost[:, None, :] <= room[:, None, None]))
        score = torch.where(ok & (a2 > 0) & (b2 < 0), -a2 * b2, float("-inf")).flatten(1)
        fall = torch.where(ok, a2, float("-inf")).flatten(1)
        v, i = score.max(1)
        take = v > best_s
        best_s, best_i = torch.where(take, v, best_s), torch.where(take, i + r0 * n, best_i)
        v, i = fall.max(1)
        take = v > fb_s
        fb_s, fb_i = torch.where(take, v, fb_s), torch.where(take, i + r0 * n, fb_i)
    has_pair, has_fb = best_s > float("-inf"), fb_s > float("-inf")
    pick = torch.where(has_pair, best_i, fb_i)
    p, q = pick // n, pick % n
    p1, q1, found1 = _top_two(a, allowed, new, room, sign)
    single = ~has_pair & ~has_fb
    return torch.where(single, p1, p), torch.where(single, q1, q), has_pair | has_fb | found1


class JSMA(Attack):
    """Jacobian-based saliency map attack: raise (or lower) the two most salient features by
    theta at a time until the model predicts the target class.

    Paper: Papernot, McDaniel, Jha, Fredrikson, Celik, Swami, "The Limitations of Deep Learning
    in Adversarial Settings" (EuroS&P 2016), sec. III and Algorithm 3. Zantedeschi et al. (001)
    sec. 4.1 run it "with the default parameters from the authors' code: gamma = 1, theta =
    0.1" (their code being ART's ``SaliencyMapMethod``), and use theta = 0.1 in sec. 3.2.

    Threat model: L0, minimal (no eps: it stops at the target or when gamma's share of the
    features is used), targeted, white-box gradients.

    Each iteration, per running example, two features of the search domain are changed by
    ``theta * (hi - lo)`` each (theta < 0 lowers them), clipped to the box. Which two is the
    ``saliency`` rule, with ``Z`` the logits and ``t`` the target:

    * ``"target"`` (default): the two largest ``dZ_t/dx_i``: ART's rule, i.e. 001's code.
      On the digits CNN of the tests it matches ART feature for feature.
    * ``"pair"``: Papernot et al.'s pair saliency map (eq. 10 over pairs, on logits as in
      cleverhans): the pair maximising ``(a_p + a_q) * |b_p + b_q|`` with ``a_p + a_q > 0`` and
      ``b_p + b_q < 0``, ``a = grad Z_t``, ``b = grad sum_{k != t} Z_k``; ART's rule where no
      pair qualifies. O(n_features^2) per example (in row blocks of bounded memory). On logits
      it needs more features than ``"target"`` on the digits CNN, hence not the default.
    * ``"margin"``: the two largest derivatives of the margin ``Z_t - max_{k != t} Z_k``
      (advarena's variant, same cost as ``"target"``, typically fewer features).

    A feature leaves the search domain when it reaches the box edge it is pushed towards
    (Algorithm 3); features already there are never in it.

    Feature budget: at most ``floor(gamma * n_features)`` features of an example ever change: a
    new feature is only taken if it fits the budget (changed features may change again). An
    example stops when it is classified as its target, or when no feature may change any more.
    (ART instead tests ``used / n <= gamma`` after each pair, so it can exceed the share by one
    feature; at the default gamma = 1 the two agree.)

    Targets (``target``): ``"random"`` (default) draws per example a class other than the true
    label uniformly from ``generator`` (001 used ART's default, a random class other than the
    prediction; for the correctly classified examples attacked here the two coincide);
    ``"next"`` is ``(y + 1) mod K``; ``"least-likely"`` the class with the lowest clean logit.
    :meth:`choose_targets` returns them (the same draw as a call with the same seed).

    Returns per example the first point classified as its target; the input itself where the
    model already misclassifies it (distance 0) or where the target is not reached (a targeted
    attack that misses its target has failed, even if the label changed on the way).

    Cost and synchronisation: per iteration one forward pass and one backward pass (two for
    ``"pair"``, one vmapped call) on the running examples only. One host synchronisation per
    iteration refreshes the set of running examples; it is also the loop's end test (the
    number of iterations depends on the data).

    Parameters:
        theta (float, 0.1): change per feature per step, as a share of the box width (001:
            0.1); negative lowers features.
        gamma (float, 1.0): largest share of the features that may change (001: 1).
        target ("random" | "next" | "least-likely", "random"): how target classes are chosen.
        saliency ("target" | "pair" | "margin", "target"): which two features change.

    Example::

        x_adv = advarena.attack("jsma", theta=0.1, gamma=1.0)(model, x, y)
    """

    name = "jsma"
    paper = "Papernot et al. 2016, sec. III and Alg. 3; 001 sec. 3.2 and 4.1"
    threat_model = ThreatModel(norm="l0", budget="minimal", targeted=True)

    theta: float = param(0.1, ge=-1, le=1, help="change per feature per step (share of box)")
    gamma: float = param(1.0, gt=0, le=1, help="largest share of features changed")
    target: Literal["random", "next", "least-likely"] = param(
        "random", help="target class rule", choices=("random", "next", "least-likely"))
    saliency: Literal["target", "pair", "margin"] = param(
        "target", help="which features change: ART's rule, Papernot's pairs, or the margin",
        choices=("target", "pair", "margin"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.theta == 0:
            raise ParameterError(f"{self.display_name()}: parameter 'theta' must not be 0")

    def choose_targets(self, model, inputs, labels, generator=None) -> torch.Tensor:
        """The target class per example (for ``"random"``, the first draw from ``generator``)."""
        return self._targets(predict_logits(model, inputs), labels, generator)

    def _targets(self, logits, labels, generator):
        k = logits.shape[1]
        if self.target == "next":
            return (labels + 1) % k
        if self.target == "least-likely":
            return logits.scatter(1, labels[:, None], float("inf")).argmin(1)
        offset = torch.randint(1, k, labels.shape, generator=generator, device=labels.device)
        return (labels + offset) % k

    def run(self, model, inputs, labels, eps=None, generator=None):
        lo, hi = model.bounds
        x = inputs.detach()
        shape = x.shape[1:]
        x_flat = x.flatten(1)
        n = x_flat.shape[1]
        logits0 = predict_logits(model, x)
        targets = self._targets(logits0, labels, generator)
        increase = self.theta > 0
        sign = 1.0 if increase else -1.0
        step = abs(self.theta) * (hi - lo)
        edge = hi if increase else lo
        budget = math.floor(self.gamma * n + 1e-9)

        cur = x_flat.clone()
        domain = (cur < hi) if increase else (cur > lo)
        changed = torch.zeros_like(domain)
        reached = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        running = logits0.argmax(1) == labels
        idx = active_indices(running)
        max_iter = n * math.ceil(1 / abs(self.theta) + 1e-9) + 1
        onehot = F.one_hot(targets, logits0.shape[1]).to(x.dtype)
        for _ in range(max_iter):
            if idx.numel() == 0:
                break
            xa = cur[idx].view(-1, *shape).requires_grad_(True)
            logits = model(xa)
            hit = logits.argmax(1) == targets[idx]
            reached[idx] = hit
            oh = onehot[idx]
            if self.saliency == "pair":
                cot = torch.stack([oh, 1 - oh])
            elif self.saliency == "margin":
                other = logits.detach().scatter(1, targets[idx][:, None], float("-inf")).argmax(1)
                cot = (oh - F.one_hot(other, oh.shape[1]).to(oh.dtype))[None]
            else:
                cot = oh[None]
            g = input_grads(logits, xa, cot).flatten(2)
            ch = changed[idx]
            room = budget - ch.sum(1).to(torch.int32)
            # Features that may still change: in the domain, and within the budget if new.
            allowed = domain[idx] & (ch | (room[:, None] >= 1))
            if self.saliency == "pair":
                p, q, found = _pair_saliency(g[0], g[1], allowed, ~ch, room, sign)
            else:
                p, q, found = _top_two(g[0], allowed, ~ch, room, sign)
            go = ~hit & found
            with torch.no_grad():
                row = cur[idx]
                delta = sign * step
                new = row.scatter(1, p[:, None], (row.gather(1, p[:, None]) + delta).clamp(lo, hi))
                new = new.scatter(1, q[:, None], (row.gather(1, q[:, None]) + delta).clamp(lo, hi))
                new = torch.where(go[:, None], new, row)
                cur[idx] = new
                changed[idx] = new != x_flat[idx]
                domain[idx] = domain[idx] & (new != edge)
            idx = idx[active_indices(go)]
        if idx.numel():
            reached[idx] = predict_logits(model, cur[idx].view(-1, *shape)).argmax(1) == \
                targets[idx]
        out = torch.where(reached[:, None], cur, x_flat).view_as(x)
        return out
