"""Fixture plugin: malformed outputs (``tests/test_hostile.py``).

Protocols: ``hostile-none-metric`` returns ``Measurement(None, ...)``,
``hostile-dict-attack`` a measurement whose ``attack`` is a dict, ``hostile-wrong-types`` one
whose ``value`` and ``n`` were reassigned to a string and a float after construction.

Defense: ``hostile-extra-state-defense`` has an input transform whose extra state is a dict,
not a tensor (so its weights cannot be stored as safetensors).
"""

from __future__ import annotations

from torch import nn

from advarena.api import Defense, Measurement, Protocol
from advarena.hookimpl import hookimpl


class HostileNoneMetric(Protocol):
    """A metric named None."""

    name = "hostile-none-metric"

    def evaluate(self, ctx):
        return [Measurement(None, 0.5, len(ctx.data))]


class HostileDictAttack(Protocol):
    """A dict where the attack's name goes."""

    name = "hostile-dict-attack"

    def evaluate(self, ctx):
        return [Measurement("m", 0.5, len(ctx.data), attack={"name": "fgsm"})]


class HostileWrongTypes(Protocol):
    """Fields reassigned to the wrong types after construction."""

    name = "hostile-wrong-types"

    def evaluate(self, ctx):
        m = Measurement("m", 0.5, len(ctx.data))
        m.value = "high"
        m.n = 2.5
        return [m]


class _ExtraState(nn.Module):
    def forward(self, x):
        return x

    def get_extra_state(self):
        return {"not": "a tensor"}

    def set_extra_state(self, state):
        pass


class HostileExtraStateDefense(Defense):
    """An input transform whose extra state is not a tensor."""

    name = "hostile-extra-state-defense"

    def input_transform(self, info):
        return _ExtraState()


@hookimpl
def advarena_register_defenses():
    return [HostileExtraStateDefense]


@hookimpl
def advarena_register_protocols():
    return [HostileNoneMetric, HostileDictAttack, HostileWrongTypes]
