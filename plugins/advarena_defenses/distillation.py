"""Defensive distillation (Papernot et al. 2016), as evaluated by Chen, Li, Vorobeychik (003)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from advarena.api import Defense
from advarena.params import param

from ._stages import CRAFT_BATCH, IndexedStage, indexed, reset_parameters


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


class TeacherStage(IndexedStage):
    """Cross-entropy of ``softmax(logits / T)`` against the hard labels."""

    def __init__(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def loss(self, model, x, y, ctx):
        return F.cross_entropy(model(x) / self.temperature, y)


class StudentStage(IndexedStage):
    """Cross-entropy of ``softmax(logits / T)`` against the teacher's soft labels; the data is
    ``TensorData(inputs, row)`` and row ``i``'s target is ``soft[i]``."""

    def __init__(self, soft: torch.Tensor, temperature: float) -> None:
        self.soft = soft
        self.temperature = float(temperature)

    def batch_targets(self, rows: torch.Tensor) -> torch.Tensor:
        return self.soft[rows]

    def loss(self, model, x, y, ctx):
        logp = F.log_softmax(model(x) / self.temperature, dim=1)
        return -(self.batch_targets(y) * logp).sum(1).mean()


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
    trained with cross-entropy on ``softmax(z / T)`` and hard labels; its soft labels of the
    training set are computed once (eval mode); the student (the session's network, with the
    initial weights ``none`` would get) is trained with the cross-entropy between those soft
    labels and ``softmax(z / T)``. No ``T^2`` rescaling of the loss (Papernot et al. do not use
    one; with Adam it would not matter). The deployed classifier returns the student's logits,
    i.e. T = 1.

    Cost: two full trainings (teacher, student), each ``epochs`` epochs at 1 forward + 1 backward
    pass per example, plus one teacher forward pass over the training set for the soft labels
    (measured by ``session.measure`` as one-off work): about 2x ``none``.

    Parameters:
        temperature (float, 100.0): the distillation temperature T (003: 1 or 100).
        teacher_epochs (int | None, None): teacher epochs (None: the suite's epochs).
        student_epochs (int | None, None): student epochs (None: the suite's epochs).

    Example::

        advarena run --defense distillation
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
        session.train(epochs=self.teacher_epochs, model=teacher,
                      defense=TeacherStage(self.temperature))
        with session.measure("soft_labels", model=teacher):
            soft = soft_labels(teacher, session.data.x, self.temperature)
        session.train(epochs=self.student_epochs, data=indexed(session.data.x),
                      defense=StudentStage(soft, self.temperature))
