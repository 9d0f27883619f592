"""Deep Defense: a differentiable DeepFool-perturbation regulariser (Yan, Guo, Zhang, 002)."""

from __future__ import annotations

import dataclasses

import torch

from advarena.params import param

from ._adv import crafting, flat_l2
from ._stages import FineTuning


# Cap of r in the misclassified term exp(d r): a DeepFool step as large as the image itself is a
# failure of the linearisation, not a margin (see DeepDefense).
MAX_WRONG_RATIO = 1.0


@dataclasses.dataclass
class DeepFoolResult:
    """What :func:`differentiable_deepfool` returns.

    delta: the perturbations ``(1 + overshoot) * r_tot``, in the autograd graph of the weights.
    correct: whether each example was classified correctly at the start (set T of eq. 6).
    reached: whether each example crossed its boundary within the iterations.
    """

    delta: torch.Tensor
    correct: torch.Tensor
    reached: torch.Tensor


def differentiable_deepfool(model, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                            overshoot: float, create_graph: bool = True) -> DeepFoolResult:
    """Multi-class L2 DeepFool (Moosavi-Dezfooli et al. 2016, Alg. 2) for every example of the
    batch, with every step kept in the autograd graph (``create_graph=True``), so that
    ``delta`` is a differentiable function of the weights, 002's "recursive-flavoured
    regularizer network" (sec. 3.3) built by double backprop instead of a hand-written reverse
    network.

    As in the authors' code (deepdefense.pytorch, ``forward_correct`` / ``forward_wrong``):
    a correctly classified example moves towards the nearest linearised boundary among all other
    classes; a misclassified one moves from its current predicted class towards its true label
    (the source class follows the current prediction). An example stops moving once it has
    crossed (its later steps are masked). Linearisation points are ``x + (1 + overshoot) r_tot``
    (Moosavi-Dezfooli's reference code); no box clipping (002 regularises the perturbation norm,
    not a valid attack).

    Cost: ``steps`` iterations, each one forward pass and K gradient sweeps (one per class, each
    with ``create_graph``), whether or not examples have already crossed, so the cost is fixed.
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    r_tot = torch.zeros_like(x)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    correct = torch.ones(n, dtype=torch.bool, device=x.device)
    for i in range(steps):
        # Past the first step the point depends on the weights (a non-leaf of the graph).
        point = x + (1 + overshoot) * r_tot
        if not (create_graph and point.requires_grad):
            point = point.detach().requires_grad_(True)
        out = model(point)
        pred = out.detach().argmax(1)
        if i == 0:
            correct = pred == y
        else:
            crossed = torch.where(correct, pred != y, pred == y)
            active = active & ~crossed
        num_classes = out.shape[1]
        grads = torch.stack([
            torch.autograd.grad(out[:, k].sum(), point, retain_graph=True,
                                create_graph=create_graph)[0].reshape(n, -1)
            for k in range(num_classes)], dim=1)  # (n, K, D)
        # Source class: the label for correct examples, the current prediction otherwise.
        src = torch.where(correct, y, pred)
        f = out - out.gather(1, src.view(-1, 1))  # (n, K)
        w = grads - grads[rows, src].unsqueeze(1)  # (n, K, D)
        w_sq = w.pow(2).sum(2).clamp_min(1e-12)
        # Candidates: every other class (correct), only the true label (misclassified).
        classes = torch.arange(num_classes, device=x.device).view(1, -1)
        allowed = torch.where(correct.view(-1, 1), classes != src.view(-1, 1),
                              classes == y.view(-1, 1))
        dist = (f.detach().abs() / w_sq.detach().sqrt()).masked_fill(~allowed, float("inf"))
        l_hat = dist.argmin(1)
        f_l = f[rows, l_hat]
        w_l = w[rows, l_hat]
        # Moosavi-Dezfooli: r = (|f'| + 1e-4) / ||w'||^2 * w'.
        r_i = ((f_l.abs() + 1e-4) / w_sq[rows, l_hat]).view(-1, 1) * w_l
        r_i = r_i * active.view(-1, 1).to(r_i.dtype)
        r_tot = r_tot + r_i.view_as(x)
    reached = ~active if steps > 1 else torch.zeros_like(active)
    return DeepFoolResult(delta=(1 + overshoot) * r_tot, correct=correct, reached=reached)


class DeepDefense(FineTuning):
    """Deep Defense: ``J + lambda * sum_T exp(-c r) + lambda * sum_F exp(d r)`` with
    ``r = ||Delta||_2 / ||x||_2`` and ``Delta`` a differentiable DeepFool perturbation.

    Paper: Yan, Guo, Zhang, "Deep Defense: Training DNNs with Improved Adversarial Robustness"
    (002), sec. 3 (eq. 3 and 6; T = correctly classified training examples, F = misclassified),
    sec. 4 ("lambda = 15, c = 25, d = 5 for MNIST and CIFAR-10"; "the Euclidean norm"; fine-tuned
    from the reference models). The combination with FGSM training (supplement sec. 2, "simply
    adding the cross entropy loss corresponding to FGS adversarial examples") is
    ``deep-defense+fgsm-at``.

    Kind: regulariser (the ``regularizer`` hook; composes with ``fgsm-at``'s loss), and
    ``needs_reference = True``: the trainer starts from the trained ``none`` model of the same
    dataset, architecture and seed, which this defense fine-tunes by 002's schedule, the one
    ``deepfool-at`` and ``parseval`` (with ``finetune``) follow too ("identical fine-tuning
    policies and hyper-parameters for different defense methods", sec. 4; supplement Table 3):
    ``epochs`` (5 MNIST-like, 50 CIFAR-like) at ``lr`` = 5e-4, the last ``cut_epochs`` (1, 10)
    at half of it, with the suite's optimizer and batch size (002: SGD, momentum 0.9, weight
    decay 5e-4, batches of 100).

    ``Delta`` comes from :func:`differentiable_deepfool`: ``steps`` DeepFool iterations with every
    gradient taken with ``create_graph=True``, so the regulariser's gradient reaches the weights
    through the perturbation itself (double backprop), not only through the logits.

    Choices where the paper is silent, from the authors' code (deepdefense.pytorch): 5 DeepFool
    iterations during training (``--max-iter 5``), overshoot 0.02; the regulariser is summed over
    the batch and divided by the batch size (``loss_var.sum() / train_batch``), i.e. averaged like
    the cross-entropy; misclassified examples are pushed towards their true label. The DeepFool
    points are computed in eval mode (as the harness does for attacks), while the cross-entropy
    uses the training-mode forward. In the misclassified term, r is capped at 1 (a perturbation
    as large as the image: the linearisation failed, typically on vanishing gradients of an
    untrained network; uncapped, ``exp(d r)`` overflows and the loss becomes infinite). Correctly
    classified examples are not capped (``exp(-c r)`` cannot overflow). With a trained reference,
    as the method requires, the cap is not reached in practice (002 reports rho_2 of 0.1-0.3).

    Precision: under ``--amp`` the differentiable DeepFool and the penalty run in float32
    (``ctx.attack_precision``, as every training-time attack); its linearisation divides by
    gradient differences that half precision rounds badly.

    Cost (measured, example-passes): 1 + steps forward and K * steps + 1 + steps backward per
    example (K classes): the cross-entropy forward, then per DeepFool iteration one forward and
    K gradient sweeps, and the one training sweep back through the cross-entropy's forward and
    every iteration's (1 + K * steps sweeps): 6 + 56 for 10 classes and 5 iterations. 002's
    reverse network computes the K gradients in one K-wide reverse pass, the same work. The
    second-order work of the training sweep (back through the inner gradients) shows in the
    time, not in the counts.

    Parameters:
        lam (float, 15.0): lambda (002: 15 for MNIST/CIFAR-10, 5 for ImageNet).
        c (float, 25.0): scale for correctly classified examples (002: 25; 70 for NIN; 500
            ImageNet).
        d (float, 5.0): scale for misclassified examples.
        steps (int, 5): DeepFool iterations kept in the graph (authors' code: 5).
        overshoot (float, 0.02): DeepFool overshoot.
        epochs, cut_epochs, lr: the fine-tuning schedule (None: 002's, see above).

    Example::

        advarena run --defense deep-defense
        advarena run --defense deep-defense+fgsm-at
    """

    name = "deep-defense"
    paper = "Yan, Guo, Zhang 2018 (002) sec. 3, eq. 6"
    kind = "regulariser"
    needs_reference = True

    lam: float = param(15.0, ge=0, help="weight lambda of the regulariser")
    c: float = param(25.0, gt=0, help="scale c for correctly classified examples")
    d: float = param(5.0, gt=0, help="scale d for misclassified examples")
    steps: int = param(5, ge=1, help="DeepFool iterations kept differentiable")
    overshoot: float = param(0.02, ge=0, help="DeepFool overshoot")

    def perturbation(self, model, x, y) -> DeepFoolResult:
        with crafting(model):
            return differentiable_deepfool(model, x, y, steps=self.steps,
                                           overshoot=self.overshoot)

    def penalty(self, result: DeepFoolResult, x: torch.Tensor) -> torch.Tensor:
        """``lambda * mean_k R_k`` with ``R = exp(-c r)`` on T and ``exp(d r)`` on F."""
        ratio = flat_l2(result.delta, tiny=1e-12) / flat_l2(x).clamp_min(1e-12)
        # exp(d r) overflows for absurd ratios (vanishing gradients, e.g. an untrained network),
        # and an inf in the unused branch of ``where`` would turn the gradient into NaN.
        wrong_ratio = ratio.clamp(max=MAX_WRONG_RATIO)
        terms = torch.where(result.correct, torch.exp(-self.c * ratio),
                            torch.exp(self.d * wrong_ratio))
        return self.lam * terms.mean()

    def regularizer(self, model, x, y, logits, ctx):
        with ctx.attack_precision():  # the inner DeepFool in float32 under --amp
            return self.penalty(self.perturbation(model, x, y), x)
