"""Virtual alpha: training on superimposed images (Seiler, Trautmann, Kerschke, 000 sec. IV)."""

from __future__ import annotations

from typing import Literal

import torch

from advarena.api import Defense
from advarena.params import param

from ._adv import kl_from_logits


def partner_index(n: int, generator: torch.Generator, device) -> torch.Tensor:
    """For each of ``n`` batch positions, the position of another example of the batch.

    A random permutation ``pi`` of the batch is drawn and every ``pi[i]`` is paired with
    ``pi[i+1]`` (cyclically): a uniformly random cyclic derangement, so no example is ever paired
    with itself (a plain permutation has fixed points) and every example is used once as the
    overlay. Needs ``n >= 2``.
    """
    order = torch.randperm(n, generator=generator, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def sample_alpha(n: int, variant: str, alpha: float, p: int, q: int,
                 generator: torch.Generator, device) -> torch.Tensor:
    """Per-example mixing weights: ``alpha`` for the fixed variants; for ``beta-kl`` a draw of
    Beta(p, q), taken as the p-th smallest of p + q - 1 uniforms (exact for integer p, q, and
    drawn from the session's generator)."""
    if variant != "beta-kl":
        return torch.full((n,), float(alpha), device=device)
    u = torch.rand(n, p + q - 1, generator=generator, device=device)
    return u.sort(dim=1).values[:, p - 1]


class VirtualAlpha(Defense):
    """Virtual alpha: ``x~ = (1 - alpha) x + alpha x_r`` with another training image ``x_r``
    and the label of ``x``; three variants.

    Paper: Seiler, Trautmann, Kerschke, "Enhancing Resilience of Deep Learning Networks by Means
    of Transferable Adversaries" (000), sec. IV, eq. 4:

    * ``fixed``: train on ``x~`` with a fixed alpha (0.4 in Table I): ``J(x~, y)``;
    * ``fixed-kl``: "following the idea of [26] (VAT)", ``J(x, y) + lambda * KL(p(x) || p(x~))``
      with the fixed alpha, lambda = 10;
    * ``beta-kl`` (default; the paper's recommended "alpha ~ B(2, 4), KL_lambda=10"): as
      ``fixed-kl`` with ``alpha ~ Beta(p, q)``, p = 2, q in {4, 6, 10}.

    Kind: training data / regulariser. ``fixed`` owns the ``loss`` hook (it replaces the
    training batch), so it composes with regularisers and soft targets, not with another
    loss-owning defense. The KL variants are a ``regularizer`` only (evaluated on the clean
    logits of whatever loss is in force) and do not take over ``loss`` (:meth:`owns`), so
    ``virtual-alpha+fgsm-at`` is fgsm-at's loss plus the KL term.

    Choices (the paper is silent on them):

    * ``x_r`` is another image of the same training batch: a random permutation of the batch,
      each example paired with the next one cyclically, so never with itself (a plain
      permutation's fixed points would mix an image with itself). A one-example batch has no
      other image; ``x_r`` is then drawn from the session's training set, redrawn while equal
      to ``x``.
    * alpha is drawn per example (``beta-kl``) from the session's generator. Beta(2, q) has
      support (0, 1) (mean 2/(2+q)); draws above the paper's "alpha in (0, 0.5)" are kept, not
      clipped, as the paper samples the distribution as is.
    * ``p(x)`` is a constant target in the KL (no gradient through it), as in VAT, whose idea
      the paper follows; the gradient reaches the weights through ``p(x~)`` and ``J(x)``.
      ``x~`` is a convex combination of two images in the box, so it stays in the box.

    Cost (measured): ``fixed`` 1 forward + 1 backward (trains on ``x~`` only: "the first method
    does not require any additional passes"); ``fixed-kl`` and ``beta-kl`` 2 forward + 1
    backward *sweep* ("a second forward-pass to calculate the KL-Divergence - but no additional
    backward-pass"), 000 Table I's unit (``backward_sweeps_per_example``); the one sweep flows
    back through both forwards, 2 backward example-passes of work (``backward_per_example``).

    000 reports that ``beta-kl`` (Beta(2, 4), lambda 10) converges faster than the base model
    on its ImageNet subset (Fig. 4, Table I). On the 8x8 digits (``mlp-toy``) the KL variants
    with lambda = 10 converge more slowly than ``none`` (about 10-12 points behind after 5
    epochs, level by about 15 epochs); ``fixed`` keeps pace.

    Parameters:
        variant ("fixed" | "fixed-kl" | "beta-kl", "beta-kl"): which of the three methods.
        alpha (float, 0.4): the fixed weight of ``x_r`` (``fixed``, ``fixed-kl``).
        p (int, 2): first Beta parameter (``beta-kl``).
        q (int, 4): second Beta parameter (``beta-kl``; the paper tries 4, 6, 10).
        lam (float, 10.0): weight lambda of the KL term (KL variants).

    Example::

        advarena run --defense virtual-alpha
        advarena.defense("virtual-alpha", variant="fixed", alpha=0.4)
    """

    name = "virtual-alpha"
    paper = "Seiler et al. (000) sec. IV, eq. 4"
    kind = "training data"

    variant: Literal["fixed", "fixed-kl", "beta-kl"] = param(
        "beta-kl", help="fixed (train on x~), fixed-kl or beta-kl (J(x) + lambda KL)")
    alpha: float = param(0.4, ge=0, le=1, help="fixed weight of the overlaid image")
    p: int = param(2, ge=1, help="Beta(p, q) first parameter (beta-kl)")
    q: int = param(4, ge=1, help="Beta(p, q) second parameter (beta-kl; 4, 6 or 10)")
    lam: float = param(10.0, ge=0, help="weight of the KL term (KL variants)")

    def mix(self, x: torch.Tensor, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x~, x_r, alpha)`` for a batch: the superimposed images, the overlaid images and
        the per-example weights."""
        n = x.shape[0]
        if n >= 2:
            x_r = x[partner_index(n, ctx.generator, x.device)]
        else:
            x_r = self._other_training_image(x, ctx)
        a = sample_alpha(n, self.variant, self.alpha, self.p, self.q, ctx.generator, x.device)
        a = a.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1 - a) * x + a * x_r, x_r, a.view(-1)

    @staticmethod
    def _other_training_image(x: torch.Tensor, ctx) -> torch.Tensor:
        pool = ctx.session.data.x
        for _ in range(100):
            i = torch.randint(0, len(pool), (1,), generator=ctx.session.cpu_generator)
            cand = pool[i.to(pool.device)].to(x.device)
            if not torch.equal(cand, x):
                return cand
        return torch.zeros_like(x)  # every training image equals x: nothing else to overlay

    def owns(self, hook: str) -> bool:
        if hook == "loss":
            return self.variant == "fixed"
        return super().owns(hook)

    def loss(self, model, x, y, ctx):
        if self.variant != "fixed":  # the default loss; the KL term is the regulariser
            return super().loss(model, x, y, ctx)
        x_mix, _, _ = self.mix(x, ctx)
        logits = model(x_mix)
        return ctx.cross_entropy(logits, y) + ctx.regularizers(model, x_mix, y, logits)

    def regularizer(self, model, x, y, logits, ctx):
        if self.variant == "fixed":
            return None
        x_mix, _, _ = self.mix(x, ctx)
        return self.lam * kl_from_logits(logits.detach(), model(x_mix))
