"""Fixture plugin: one attack written against plugin API "0" (must be skipped with a warning)
and one against "1.9" (same major as API "1": must be accepted)."""

from __future__ import annotations

from advarena.api import Attack, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


class AncientAttack(Attack):
    """Written for API 0."""

    name = "ancient-attack"
    api_version = "0"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


class MinorBumpAttack(Attack):
    """Written for API 1.9 (a newer minor of the same major)."""

    name = "minor-bump-attack"
    api_version = "1.9"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


@hookimpl
def advarena_register_attacks():
    return [AncientAttack, MinorBumpAttack]
