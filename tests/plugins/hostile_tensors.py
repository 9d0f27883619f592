"""Fixture plugin: attacks and protocols that write into what the harness lends them
(``tests/test_hostile.py``).

Attacks: ``hostile-inplace`` crafts FGSM inside its ``inputs`` (``x = inputs; x.add_(...)``,
a common bug) and returns them; ``hostile-labels`` overwrites its ``labels``; both return
valid points, so their cells succeed and the attacks after them must see clean data.
``hostile-one-minus`` writes ``1 - x`` into ``inputs`` and returns them (outside the ball
around the clean inputs); ``hostile-zero-weights`` zeroes the model's weights.

Defense: ``hostile-reference-defense`` zeroes the weights of the reference model it is lent.

Protocols: ``wb-inplace`` is white-box with ``hostile-inplace``, ``hostile-labels`` and
``fgsm`` (in that order), ``wb-one-minus`` and ``wb-zero-weights`` white-box with one hostile
attack each (and ``wb-nograd``, ``wb-flags``, ``wb-exit0`` for the attacks of
``hostile_state`` and ``hostile_exit``); ``hostile-zero-protocol`` zeroes the defended model's weights itself;
``hostile-data-protocol`` writes into the cached dataset (``ctx.splits``, ``ctx.train``, lent
in place and fingerprinted, so its cells fail) and the train records, then reports a valid
metric.
"""

from __future__ import annotations


from advarena.api import Attack, Defense, Measurement, Protocol, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.models import loss_gradient
from advarena.params import param
from advarena.protocols.white_box import WhiteBox


class HostileInplace(Attack):
    """FGSM computed in place in its inputs."""

    name = "hostile-inplace"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        g = loss_gradient(model, inputs, labels)
        x = inputs
        lo, hi = model.bounds
        x.add_(eps * g.sign()).clamp_(lo, hi)
        return x


class HostileLabels(Attack):
    """Overwrites its labels; returns its inputs unchanged."""

    name = "hostile-labels"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        labels.fill_(0)
        return inputs.clone()


class HostileOneMinus(Attack):
    """Writes ``1 - x`` into its inputs and returns them."""

    name = "hostile-one-minus"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        inputs.mul_(-1).add_(1)
        return inputs


class HostileZeroWeights(Attack):
    """Zeroes the weights of the model it attacks."""

    name = "hostile-zero-weights"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        for p in model.parameters():
            p.data.zero_()
        return inputs.clone()


def _wb(name_: str, attacks: tuple[str, ...]) -> type:
    """White-box under another name, running ``attacks`` (one protocol cell each)."""
    return type(f"WB_{name_}", (WhiteBox,), {
        "__doc__": f"White-box with {', '.join(attacks)}.", "__module__": __name__,
        "name": name_, "__annotations__": {"attacks": tuple[str, ...]},
        "attacks": param(attacks, help="bounded attacks to run")})


WBInplace = _wb("wb-inplace", ("hostile-inplace", "hostile-labels", "fgsm"))
WBOneMinus = _wb("wb-one-minus", ("hostile-one-minus",))
WBZeroWeights = _wb("wb-zero-weights", ("hostile-zero-weights",))
# the attacks of the other hostile fixtures (hostile_state, hostile_exit)
WBNoGrad = _wb("wb-nograd", ("hostile-nograd",))
WBFlags = _wb("wb-flags", ("hostile-flags",))
WBExit0 = _wb("wb-exit0", ("hostile-exit0",))


class HostileReferenceDefense(Defense):
    """Trains plainly, after zeroing the reference model it is lent."""

    name = "hostile-reference-defense"
    needs_reference = True

    def fit(self, session):
        for p in session.reference.parameters():
            p.data.zero_()
        session.train()


class HostileZeroProtocol(Protocol):
    """Zeroes the defended model's weights, then reports a metric."""

    name = "hostile-zero-protocol"

    def evaluate(self, ctx):
        for p in ctx.model.parameters():
            p.data.zero_()
        return [Measurement("zeroed", 1.0, len(ctx.data))]


class HostileDataProtocol(Protocol):
    """Writes into the dataset and the train records it is lent, then reports a metric."""

    name = "hostile-data-protocol"

    def evaluate(self, ctx):
        for t in (ctx.splits.train.x, ctx.splits.test.x, ctx.train.x):
            t.mul_(0)
        ctx.splits.test.y.fill_(0)
        ctx.train_records["model"]["spec"]["defense"]["name"] = "poisoned"
        return [Measurement("poisoned", 1.0, len(ctx.data))]


@hookimpl
def advarena_register_attacks():
    return [HostileInplace, HostileLabels, HostileOneMinus, HostileZeroWeights]


@hookimpl
def advarena_register_defenses():
    return [HostileReferenceDefense]


@hookimpl
def advarena_register_protocols():
    return [WBInplace, WBOneMinus, WBZeroWeights, WBNoGrad, WBFlags, WBExit0,
            HostileZeroProtocol, HostileDataProtocol]
