"""The Defense contract.

A defense says how a model is trained and what stands in front of it at inference, through a few
optional hooks that the shared trainer calls (so every defense's cost is measured the same way):

==================  ====================================================================
hook                used by, for example
==================  ====================================================================
``activation``      ``brelu``: every swappable ReLU becomes another activation
``augment``         ``gda``: the training set is replaced once before training (N+1 copies)
``targets``         ``label-smoothing``: soft targets for the cross-entropy
``batch_targets``   distillation's student stage: a step's soft targets by training-set row
``loss``            ``fgsm-at``, ``pgd-at``, ``e2sad``: the training loss of one batch
``regularizer``     ``vat``, ``deep-defense``: a term added to whatever loss is in force
``after_step``      ``parseval``: a projection after each optimiser step
``input_transform`` ``feature-squeezing``, ``aec``: a module placed in front of the classifier
``schedule``        ``deep-defense``: the stages (epochs, lr, optimizer) of the default ``fit``
``fit``             ``distillation``, ``rad``: several stages, each a call of ``session.train``
==================  ====================================================================

``needs_reference = True`` makes the trainer start from the trained undefended (``none``) model
of the same dataset, architecture and seed, for defenses that fine-tune (``deep-defense``).
``schedule`` gives the epochs and learning rate of each training stage of the default ``fit``
(002's fine-tuning schedule, shared by ``deep-defense``, ``deepfool-at`` and ``parseval``).

Defenses compose (:class:`Composite`): ``gda-brelu`` is ``gda`` with ``brelu``, and a user may ask
for ``deep-defense+fgsm-at``. Hooks of the parts are chained; at most one part may override
``loss``, ``activation``, ``input_transform``, ``targets`` (or ``batch_targets``) or ``fit``
(checked when the composition is built). A multi-stage ``fit`` trains each stage through the
composition's other hooks (its stages delegate to ``session.defense``), so a composition trains
what its name says.

The contract imports no implementation: the ``ctx`` and ``session`` arguments are the trainer's
``advarena.trainer.StepContext`` and ``TrainingSession`` (duck-typed here, so that the trainer,
which imports this module, is not imported back).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import ParameterError
from ..models import ActivationFactory, InputTransform
from ..params import Plugin
from .data import DatasetInfo, TensorData


class Defense(Plugin):
    """Base class of defense plugins. Every hook is optional; the defaults train plainly."""

    kind: ClassVar[str] = "training"
    needs_reference: ClassVar[bool] = False

    def parts(self) -> list["Defense"]:
        """The atomic defenses this one is made of (itself, unless a composition)."""
        return [self]

    def training_attacks(self) -> tuple[str, ...]:
        """Names of the attack plugins this defense builds inside training (``ctx.attack``,
        ``make_attack``), from its parameters. Their code enters the defense's cell keys, so
        editing one of them retrains the defense; building an attack not named here fails the
        cell."""
        return ()

    def owns(self, hook: str) -> bool:
        """Whether this defense takes over ``hook`` in a composition (at most one part may own
        each of ``loss``, ``activation``, ``input_transform``, ``targets``, ``fit``). By default,
        whether its class overrides the hook (``batch_targets`` counts as ``targets``); a
        defense whose override is a no-op for some parameters says so here (``virtual-alpha``'s
        KL variants do not take over ``loss``)."""
        return _overrides(self, hook) or (hook == "targets"
                                          and _overrides(self, "batch_targets"))

    def activation(self, info: DatasetInfo) -> ActivationFactory | None:
        return None

    def augment(self, data: TensorData, info: DatasetInfo,
                generator: torch.Generator) -> TensorData:
        return data

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """Soft targets (rows summing to 1) for ``labels``, or None for hard labels."""
        return None

    def batch_targets(self, labels: torch.Tensor, ctx: "StepContext") -> torch.Tensor | None:
        """The soft targets of one step's ``labels``, with the step in view: ``ctx.rows`` are the
        batch's row indices into the stage's (augmented) training set, so a stage can hold
        per-example targets that are no function of the label (a teacher's soft labels). The
        default is :meth:`targets`."""
        return self.targets(labels, ctx.info.num_classes)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             ctx: "StepContext") -> torch.Tensor:
        """The loss of one training batch. The default is the cross-entropy plus every
        regularizer of the (composed) defense, sharing one forward pass."""
        logits = model(x)
        return ctx.cross_entropy(logits, y) + ctx.regularizers(model, x, y, logits)

    def regularizer(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    logits: torch.Tensor, ctx: "StepContext") -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module, ctx: "StepContext") -> None:
        return None

    def input_transform(self, info: DatasetInfo) -> InputTransform | None:
        return None

    def schedule(self, info: DatasetInfo, config) -> list[dict] | None:
        """The stages the default :meth:`fit` trains, each a dict of ``session.train`` keywords
        (``epochs``, ``lr``, and optionally ``optimizer``, ``momentum``, ``weight_decay``,
        ``batch_size``: a paper's fine-tuning schedule), or None for one stage at the suite's
        settings. ``config`` is the suite's training configuration."""
        return None

    def fit(self, session: "TrainingSession") -> None:
        """Train ``session.model``. Multi-stage defenses call ``session.train`` several times."""
        stages = self.schedule(session.info, session.config)
        if stages is None:
            session.train()
            return
        for stage in stages:
            session.train(**stage)


# A dataset description for construction-time checks of schedules (which read the family).
_PROBE = DatasetInfo("probe", (1,), 2, family="mnist")


def _overrides(part: Defense, hook: str) -> bool:
    return getattr(type(part), hook) is not getattr(Defense, hook)


def _owns(part: Defense, hook: str) -> bool:
    return part.owns(hook)


class Composite(Defense):
    """Several defenses applied together; built by the registry for names such as ``a+b``."""

    kind = "composition"

    def __init__(self, components: list[Defense], name: str | None = None) -> None:
        # Not a dataclass __init__: a composition has no parameters of its own.
        self._parts: list[Defense] = []
        for c in components:
            self._parts.extend(c.parts())
        self._name = name or "+".join(p.name for p in self._parts)
        for hook in ("loss", "activation", "input_transform", "fit", "targets"):
            owners = [p.name for p in self._parts if _owns(p, hook)]
            if len(owners) > 1:
                raise ParameterError(
                    f"defenses {' and '.join(owners)} both define '{hook}' and cannot be combined")
        self._check_schedules(_PROBE)

    def _check_schedules(self, info) -> None:
        """A fine-tuning schedule of one part and another part's own multi-stage ``fit`` (which
        would not follow it) cannot be combined; nor can two different schedules. Checked at
        construction on a probe dataset (schedules depend on the dataset family only) and again
        in :meth:`fit`."""
        try:
            schedules = {p.name: p.schedule(info, None) for p in self._parts}
        except Exception:  # noqa: BLE001 - a schedule that needs the real config: fit checks
            return
        owner = self._owner("fit")
        tuned = [n for n, s in schedules.items() if s is not None
                 and (owner is None or n != owner.name)]
        if owner is not None and tuned and schedules[owner.name] is None:
            raise ParameterError(f"{' and '.join(tuned)} fine-tunes by a schedule that "
                                 f"{owner.name}'s own training stages would not follow; "
                                 "they cannot be combined")
        if len({repr(s) for s in schedules.values() if s is not None}) > 1:
            raise ParameterError(f"defenses {' and '.join(n for n, s in schedules.items() if s)}"
                                 " ask for different training schedules and cannot be combined")

    @property  # type: ignore[override]
    def name(self) -> str:  # noqa: D401 - a per-instance name
        return self._name

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return any(p.needs_reference for p in self._parts)

    def __repr__(self) -> str:
        return f"Composite({self._parts!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Composite) and self._parts == other._parts

    def parts(self) -> list[Defense]:
        return list(self._parts)

    def training_attacks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for p in self._parts for a in p.training_attacks()))

    def params(self) -> dict:
        return {p.name: p.params() for p in self._parts}

    def spec(self) -> dict:
        return {"name": self._name, "params": self.params()}

    def _owner(self, hook: str) -> Defense | None:
        return next((p for p in self._parts if _owns(p, hook)), None)

    def activation(self, info: DatasetInfo) -> ActivationFactory | None:
        owner = self._owner("activation")
        return owner.activation(info) if owner else None

    def input_transform(self, info: DatasetInfo) -> InputTransform | None:
        owner = self._owner("input_transform")
        return owner.input_transform(info) if owner else None

    def augment(self, data: TensorData, info: DatasetInfo,
                generator: torch.Generator) -> TensorData:
        for p in self._parts:
            data = p.augment(data, info, generator)
        return data

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        owner = self._owner("targets")
        return owner.targets(labels, num_classes) if owner else None

    def batch_targets(self, labels, ctx):
        owner = self._owner("targets")
        return owner.batch_targets(labels, ctx) if owner else None

    def loss(self, model, x, y, ctx):
        owner = self._owner("loss")
        return owner.loss(model, x, y, ctx) if owner else Defense.loss(self, model, x, y, ctx)

    def regularizer(self, model, x, y, logits, ctx):
        terms = [t for p in self._parts
                 if (t := p.regularizer(model, x, y, logits, ctx)) is not None]
        return sum(terms) if terms else None

    def after_step(self, model, ctx) -> None:
        for p in self._parts:
            p.after_step(model, ctx)

    def schedule(self, info, config):
        """The one schedule the parts ask for (None if none does); two different ones cannot be
        combined."""
        found = {p.name: s for p in self._parts
                 if (s := p.schedule(info, config)) is not None}
        if len({repr(s) for s in found.values()}) > 1:
            raise ParameterError(f"defenses {' and '.join(found)} ask for different training "
                                 "schedules and cannot be combined")
        return next(iter(found.values()), None)

    def fit(self, session) -> None:
        owner = self._owner("fit")
        if owner is None:
            Defense.fit(self, session)
            return
        # A multi-stage fit runs its own stages; a fine-tuning schedule of another part would
        # silently not run, unless the owner itself trains by the schedule (deepfool-at).
        self._check_schedules(session.info)
        owner.fit(session)
