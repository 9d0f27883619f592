"""Fixture plugin: hostile plugins, each failing in one way, for the isolation tests
(``tests/test_isolation.py``) and the Ray time limit (``tests/test_ray.py``).

Attacks (use them in a suite's white-box ``attacks``): ``hostile-raise`` raises,
``hostile-nan`` returns NaN, ``hostile-shape`` drops an example, ``hostile-out-of-ball`` moves
every pixel by twice the budget, ``hostile-hang`` never returns, ``hostile-crash`` ends its
process (``os._exit``: only ever run it in a worker process).

Defenses: ``hostile-raise-defense`` raises in its loss, ``hostile-nan-defense`` returns a NaN
loss (so its weights become NaN), ``hostile-hang-defense`` never finishes training,
``hostile-crash-defense`` ends its process.

Protocol: ``hostile-nan-metric`` reports a NaN metric.

Loaded in-process with ``tests/conftest.py``'s ``fixture_plugin``, or installed for a
subprocess through a temporary dist-info with an ``advarena`` entry point.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from advarena.api import Attack, Defense, Measurement, Protocol, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


def _hang() -> None:
    while True:  # sleeps in short steps: a kill must be what ends it
        time.sleep(0.05)


class HostileRaise(Attack):
    """Raises inside ``run``."""

    name = "hostile-raise"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        raise RuntimeError("hostile attack failure")


class HostileNaN(Attack):
    """Returns NaN everywhere."""

    name = "hostile-nan"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return torch.full_like(inputs, float("nan"))


class HostileShape(Attack):
    """Drops the last example."""

    name = "hostile-shape"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs[:-1].clone()


class HostileOutOfBall(Attack):
    """Moves every pixel by twice the budget (staying inside the input box)."""

    name = "hostile-out-of-ball"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        lo, hi = model.bounds
        up = inputs + 2 * eps
        return torch.where(up <= hi, up, inputs - 2 * eps).clamp(lo, hi)


class HostileHang(Attack):
    """Never returns."""

    name = "hostile-hang"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        _hang()


class HostileCrash(Attack):
    """Ends the process it runs in, as a crash in native code would."""

    name = "hostile-crash"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        os._exit(7)


class HostileRaiseDefense(Defense):
    """Raises in its training loss."""

    name = "hostile-raise-defense"

    def loss(self, model, x, y, ctx):
        raise RuntimeError("hostile defense failure")


class HostileNaNDefense(Defense):
    """A NaN training loss: every weight becomes NaN after the first step."""

    name = "hostile-nan-defense"

    def loss(self, model, x, y, ctx):
        return F.cross_entropy(model(x), y) * float("nan")


class HostileHangDefense(Defense):
    """Never finishes training."""

    name = "hostile-hang-defense"

    def fit(self, session):
        _hang()


class HostileCrashDefense(Defense):
    """Ends the process it trains in."""

    name = "hostile-crash-defense"

    def fit(self, session):
        os._exit(7)


class HostileNaNMetric(Protocol):
    """Reports one NaN metric."""

    name = "hostile-nan-metric"

    def evaluate(self, ctx):
        return [Measurement("hostile_metric", float("nan"), len(ctx.data))]


class HostileWritesData(Protocol):
    """Writes into the dataset the harness shares with every cell (read-only by contract)."""

    name = "hostile-writes-data"

    def evaluate(self, ctx):
        ctx.splits.train.x.zero_()
        ctx.splits.test.y.fill_(0)
        return [Measurement("hostile_metric", 0.5, len(ctx.data))]


@hookimpl
def advarena_register_attacks():
    return [HostileRaise, HostileNaN, HostileShape, HostileOutOfBall, HostileHang, HostileCrash]


@hookimpl
def advarena_register_defenses():
    return [HostileRaiseDefense, HostileNaNDefense, HostileHangDefense, HostileCrashDefense]


@hookimpl
def advarena_register_protocols():
    return [HostileNaNMetric, HostileWritesData]
