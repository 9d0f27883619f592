"""Defensive distillation (Papernot et al. 2016), as evaluated by Chen, Li, Vorobeychik (003)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from advarena.api import Defense
from advarena.params import param

from ._stages import CRAFT_BATCH, reset_parameters


def soft_labels(teacher: torch.nn.Module, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(teacher(x) / T)``, the teacher in eval mode, batched, without gradients."""
    was = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            return torch.cat([F.softmax(teacher(x[i:i + CRAFT_BATCH]) / temperature, dim=1)
                              for i in range(0, len(x), CRAFT_BATCH)])
    finally:
        teacher.train(was)


class Tempered(nn.Module):
    """``net(x) / T``: the network as a distillation stage trains it (softmax at temperature
    T). The weights are ``net``'s; the deployed classifier is ``net`` itself (T = 1)."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


class DistillationStage(Defense):
    """One training stage of distillation: every hook is the composed defense's (``parent``:
    its augmentation, loss, regularisers and after-step hook), trained on :class:`Tempered`
    logits. The teacher stage (``teacher`` None) keeps the parent's targets (hard labels, or
    ``label-smoothing``'s); the student stage's targets are the teacher's soft labels of the
    stage's own training inputs, computed once after the parent's augmentation (so
    ``gda+distillation``'s noisy copies are labelled by the teacher too) and looked up by
    ``ctx.rows``."""

    def __init__(self, parent: Defense, session, temperature: float,
                 teacher: nn.Module | None = None) -> None:  # noqa: D107 - no user parameters
        self.parent = parent
        self.session = session
        self.temperature = float(temperature)
        self.teacher = teacher
        self.soft: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"DistillationStage({'student' if self.teacher is not None else 'teacher'})"

    def augment(self, data, info, generator):
        data = self.parent.augment(data, info, generator)
        if self.teacher is not None:
            with self.session.measure("soft_labels", model=self.teacher):
                self.soft = soft_labels(self.teacher, data.x, self.temperature)
        return data

    def targets(self, labels, num_classes):
        return self.parent.targets(labels, num_classes)

    def batch_targets(self, labels, ctx):
        if self.teacher is None:
            return self.parent.batch_targets(labels, ctx)
        if ctx.rows is None or len(ctx.rows) != len(labels):
            raise RuntimeError("distillation's student targets need the batch's rows "
                               "(a loss scored other examples than the batch's)")
        return self.soft[ctx.rows]

    def loss(self, model, x, y, ctx):
        return self.parent.loss(model, x, y, ctx)

    def regularizer(self, model, x, y, logits, ctx):
        return self.parent.regularizer(model, x, y, logits, ctx)

    def after_step(self, model, ctx):
        return self.parent.after_step(model, ctx)


class Distillation(Defense):
    """Defensive distillation: a teacher network trained at temperature T labels the training
    set with its soft labels ``softmax(z / T)``; a student network of the same architecture is
    trained on those labels at the same T and deployed at T = 1 (its raw logits).

    Paper: Papernot, McDaniel, Wu, Jha, Swami, "Distillation as a Defense to Adversarial
    Perturbations against Deep Neural Networks" (IEEE S&P 2016, arXiv 1511.04508), evaluated
    by Chen, Li, Vorobeychik (003) sec. 3.2 and Tables 1-5 with T = 1 and T = 100.

    Default T = 100: the classic setting of Papernot et al. and the variant 003 reports as more
    robust ("the distillation method performs more robustly when T = 100 than T = 1") and uses
    in its repeated-attack and distortion tables. ``temperature=1`` is 003's other variant.

    Procedure (two trainer stages): the teacher (a copy of the network, re-initialised) is
    trained with the cross-entropy of ``softmax(z / T)`` against the hard labels; its soft
    labels of the training set are computed once (eval mode); the student (the session's
    network, with the initial weights ``none`` would get) is trained with the cross-entropy
    between those soft labels and ``softmax(z / T)``. No ``T^2`` rescaling of the loss
    (Papernot et al. do not use one; with Adam it would not matter). The deployed classifier
    returns the student's logits, i.e. T = 1.

    Composition (``distillation`` owns ``fit`` only): both stages train through the composed
    defense's hooks (:class:`DistillationStage`) on the temperature-T logits, so a composition
    trains what its name says:

    * ``gda+distillation``: teacher and student both train on the N + 1 copies; the teacher
      labels the student's copies (noisy ones included);
    * ``vat+distillation``, ``deep-defense+distillation``: the regulariser in both stages, on
      the logits at T (the network each stage trains);
    * ``fgsm-at+distillation`` (any loss owner): its loss in both stages, on the logits at T;
      the student's cross-entropies (clean and adversarial) are against the soft labels of the
      batch's clean inputs, as hard-label adversarial training uses the clean label;
    * ``distillation+parseval``: the retraction after every step of both stages;
    * ``label-smoothing+distillation``: the *teacher* trains on the smoothed labels (the
      student's targets are the teacher's soft labels, which already are soft).

    Defenses with their own multi-stage ``fit`` (``rad``, ``aec``, ``feature-squeezing``, ...)
    are refused at construction (two ``fit`` owners).

    Cost: two full trainings (teacher, student), each ``epochs`` epochs at the composed
    defense's passes (1 forward + 1 backward alone), plus one teacher forward pass over the
    student's training set for the soft labels (measured by ``session.measure`` as one-off
    work): about 2x ``none``.

    Parameters:
        temperature (float, 100.0): the distillation temperature T (003: 1 or 100).
        teacher_epochs (int | None, None): teacher epochs (None: the suite's epochs).
        student_epochs (int | None, None): student epochs (None: the suite's epochs).

    Example::

        advarena run --defense distillation
        advarena run --defense gda+distillation
    """

    name = "distillation"
    paper = "Papernot et al. 2016 (arXiv 1511.04508); evaluated in 003 sec. 3.2"
    kind = "training targets"

    temperature: float = param(100.0, gt=0, help="distillation temperature T (003: 1 or 100)")
    teacher_epochs: int | None = param(None, ge=1, help="teacher epochs (None: suite's)")
    student_epochs: int | None = param(None, ge=1, help="student epochs (None: suite's)")

    def fit(self, session) -> None:
        teacher = copy.deepcopy(session.model)
        reset_parameters(teacher)
        T = self.temperature
        session.train(epochs=self.teacher_epochs, model=Tempered(teacher, T),
                      defense=DistillationStage(session.defense, session, T))
        session.train(epochs=self.student_epochs, model=Tempered(session.model, T),
                      defense=DistillationStage(session.defense, session, T, teacher=teacher))
