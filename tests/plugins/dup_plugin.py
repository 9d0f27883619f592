"""Fixture plugin: an attack whose name clashes with the first-party ``fgsm``."""

from __future__ import annotations

from advarena.api import Attack, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


class ImpostorFGSM(Attack):
    """Claims the name ``fgsm``."""

    name = "fgsm"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


@hookimpl
def advarena_register_attacks():
    return [ImpostorFGSM]
