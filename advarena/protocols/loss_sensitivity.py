"""Loss-sensitivity protocol (001 sec. 4.1; 000 Fig. 5-6; 004 Fig. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..api import Measurement, Protocol
from ..evaluation import EvalContext, mean_measurement
from ..models import loss_gradient
from ..params import param


class LossSensitivity(Protocol):
    """How sharply the loss reacts to input changes.

    * ``loss_sensitivity``: ``(1/M) sum_i ||dJ(theta, x_i, y_i)/dx_i||_2`` over the test
      examples (001 sec. 4.1, Table 3), each example's own gradient, with a bootstrap interval.
    * ``fgsm_loss`` per eps: the mean loss on FGSM examples against eps (000 Fig. 6).
    * ``loss_landscape``: the mean loss of the defended model on the grid
      ``x + e1 * sign(g_own) + e2 * sign(g_ref)`` (clipped to the box), ``g_own`` the defended
      model's loss gradient and ``g_ref`` the undefended reference's (000 Fig. 5, 004 Fig. 4).
      Both steps run over ``[-landscape_radius, landscape_radius]`` (``landscape_points``
      each, 0 included when the count is odd), so the surface shows both signs of each
      direction as 000 Fig. 5 does (000 spans [-16, 16] along the unprotected model's gradient
      and [-8, 32] along the related model's, in /255; a symmetric range here, one radius for
      both). The grid (``steps``, shared by both axes; ``loss[i][j]`` is at ``e1 = steps[i]``,
      ``e2 = steps[j]``) and the loss surface (mean over ``landscape_examples`` examples) are
      stored in the record's ``extra`` for plots; ``value`` is the surface's mean.
    """

    name = "loss-sensitivity"
    paper = "001 sec. 4.1; 000 Fig. 5-6; 004 Fig. 4"

    fgsm_eps: tuple[float, ...] = param((0.0, 0.05, 0.1, 0.2, 0.3, 0.5), ge=0,
                                        help="eps values of the loss-against-eps curve")
    landscape_radius: float = param(0.3, gt=0,
                                    help="largest step, either sign, along each direction")
    landscape_points: int = param(11, ge=2, help="grid points per direction")
    landscape_examples: int = param(32, ge=1, help="examples averaged in the landscape")

    def evaluate(self, ctx: EvalContext) -> list[Measurement]:
        model, x, y = ctx.model, ctx.data.x, ctx.data.y
        grads = loss_gradient(model, x, y, ctx.batch_size)
        norms = grads.flatten(1).norm(dim=1)
        out = [mean_measurement("loss_sensitivity", norms, seed=ctx.seed)]
        lo, hi = model.bounds
        for eps in self.fgsm_eps:
            x_adv = (x + eps * grads.sign()).clamp(lo, hi)
            with torch.no_grad():
                losses = torch.cat([F.cross_entropy(model(x_adv[i:i + ctx.batch_size]),
                                                    y[i:i + ctx.batch_size], reduction="none")
                                    for i in range(0, len(x), ctx.batch_size)])
            out.append(mean_measurement("fgsm_loss", losses, attack="fgsm", eps=eps,
                                        seed=ctx.seed))
        out.append(self._landscape(ctx, grads))
        return out

    def _landscape(self, ctx: EvalContext, own_grads: torch.Tensor) -> Measurement:
        k = min(self.landscape_examples, len(ctx.data))
        x, y = ctx.data.x[:k], ctx.data.y[:k]
        d_own = own_grads[:k].sign()
        ref = ctx.reference if ctx.reference is not None else ctx.model
        d_ref = loss_gradient(ref, x, y).sign()
        steps = torch.linspace(-self.landscape_radius, self.landscape_radius,
                               self.landscape_points, device=x.device)
        # All grid points of all examples in one batch: points^2 * k forward passes.
        e1, e2 = torch.meshgrid(steps, steps, indexing="ij")
        pts = (x.unsqueeze(0) + e1.reshape(-1, 1, *[1] * (x.dim() - 1)) * d_own.unsqueeze(0)
               + e2.reshape(-1, 1, *[1] * (x.dim() - 1)) * d_ref.unsqueeze(0))
        pts = pts.clamp(*ctx.model.bounds).reshape(-1, *x.shape[1:])
        labels = y.repeat(len(e1.reshape(-1)))
        with torch.no_grad():
            losses = torch.cat([F.cross_entropy(ctx.model(pts[i:i + 4096]),
                                                labels[i:i + 4096], reduction="none")
                                for i in range(0, len(pts), 4096)])
        surface = losses.reshape(self.landscape_points, self.landscape_points, k).mean(-1)
        return Measurement("loss_landscape", float(surface.mean()), k,
                           extra={"steps": steps.tolist(), "loss": surface.tolist(),
                                  "axes": ["sign gradient of this model",
                                           "sign gradient of the undefended reference"]})
