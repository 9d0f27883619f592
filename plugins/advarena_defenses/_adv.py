"""Helpers shared by the loss- and regulariser-based defenses (label smoothing, adversarial
training, VAT, virtual alpha, Deep Defense, e2SAD, minimax). A private module: the registry
skips modules whose names start with ``_``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advarena.api import DatasetInfo


def family_value(value: Any, table: Mapping[str, Any], info: DatasetInfo) -> Any:
    """``value`` if set, else the paper's value for the dataset family (``toy`` falls back to
    ``mnist`` where a table has no entry of its own)."""
    if value is not None:
        return value
    return table.get(info.family, table["mnist"])


@contextlib.contextmanager
def crafting(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode while a defense crafts its own inner points (VAT's power iteration, e2SAD's
    second step, Deep Defense's DeepFool), as the harness does around every attack plugin it
    runs for training (:func:`advarena.threat.run_checked`): batch-norm statistics are not
    updated by perturbed inputs and dropout is off. The previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def mode_dependent(model: nn.Module) -> bool:
    """Whether the network computes differently in train and eval mode (batch norm, dropout),
    so that logits from a training forward cannot serve as an eval-mode reference."""
    return any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd))
               for m in model.modules())


def smooth_targets(labels: torch.Tensor, num_classes: int, weight: float) -> torch.Tensor:
    """Rows with ``weight`` on the true class and ``(1 - weight) / (K - 1)`` on every other
    class (Szegedy et al.'s label smoothing as 001 and 004 use it); each row sums to 1."""
    if num_classes < 2:
        return torch.ones(labels.shape[0], 1, device=labels.device)
    rest = (1.0 - weight) / (num_classes - 1)
    soft = torch.full((labels.shape[0], num_classes), rest, device=labels.device,
                      dtype=torch.float32)
    soft.scatter_(1, labels.view(-1, 1).long(), weight)
    return soft


def flat_l2(t: torch.Tensor, tiny: float = 0.0) -> torch.Tensor:
    """Per-example L2 norm over every non-batch dimension; ``tiny`` under the root keeps the
    gradient finite at zero."""
    sq = t.reshape(t.shape[0], -1).pow(2).sum(1)
    return (sq + tiny).sqrt() if tiny else sq.sqrt()


def unit_l2(t: torch.Tensor) -> torch.Tensor:
    """Each example scaled to unit L2 norm (an all-zero example stays zero)."""
    norms = flat_l2(t).clamp_min(1e-30)
    return t / norms.view(-1, *([1] * (t.dim() - 1)))


def random_unit(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random directions of unit L2 norm per example (normalised Gaussian draws)."""
    d = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return unit_l2(d)


def kl_from_logits(p_logits: torch.Tensor, q_logits: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """``KL(p || q)`` between the softmax of two logit batches, per example summed over
    classes, then averaged (``mean``) or summed (``sum``) over the batch. ``p_logits`` is used
    as given: detach it to treat ``p`` as a constant target."""
    logp = F.log_softmax(p_logits, dim=1)
    logq = F.log_softmax(q_logits, dim=1)
    kl = (logp.exp() * (logp - logq)).sum(1)
    return kl.mean() if reduction == "mean" else kl.sum()


def soft_cross_entropy(p_logits: torch.Tensor, q_logits: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """``CE(p, q) = -sum_k p_k log q_k`` between the softmax of two logit batches (e2SAD's
    dissimilarity D), averaged or summed over the batch."""
    p = F.softmax(p_logits, dim=1)
    ce = -(p * F.log_softmax(q_logits, dim=1)).sum(1)
    return ce.mean() if reduction == "mean" else ce.sum()
