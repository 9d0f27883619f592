"""The Protocol contract: one column group of the matrix.

A protocol names the extra trained models it needs (shared by every defense, since their specs do
not mention the defense), may prepare defense-independent data once (for example transfer sets
crafted on substitutes), and evaluates one defended model into :class:`Measurement` records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..params import Plugin
from .records import Measurement

if TYPE_CHECKING:
    from ..evaluation import EvalContext


class Protocol(Plugin):
    """Base class of protocol plugins.

    Suites configure a protocol through its parameters (attacks, eps sweep, example count).
    ``needs_training = True`` marks a protocol that measures how the model was trained (it
    reads ``ctx.train_records``); it is skipped for external models, which advarena never
    trained.
    """

    needs_training: ClassVar[bool] = False

    def attack_names(self) -> tuple[str, ...]:
        """The attack plugins this protocol runs (configured from the suite's ``[attacks.*]``
        tables and part of its cells' keys); by default its ``attacks`` parameter."""
        return tuple(getattr(self, "attacks", ()))

    def shared_models(self, setting: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Extra models this protocol needs, as ``{role: train spec}``. A train spec is a dict
        with keys ``defense`` (name), ``defense_params``, ``architecture``, ``seed``; the planner
        turns each into a train cell shared by all defenses. ``setting`` holds the dataset and
        architecture names of the cell."""
        return {}

    def prepare(self, ctx: "EvalContext") -> dict[str, Any]:
        """Defense-independent work (run once per dataset and shared models): return tensors
        (stored as safetensors) keyed by name. ``ctx.model`` is None here."""
        return {}

    def evaluate(self, ctx: "EvalContext") -> list[Measurement]:
        raise NotImplementedError
