"""Fixture plugin: plugins that change process-wide torch state and finish their own call
(``tests/test_hostile.py``).

Defenses: ``hostile-nograd-defense`` trains, then calls ``torch.set_grad_enabled(False)``;
``hostile-float64-defense`` trains, then calls ``torch.set_default_dtype(torch.float64)``;
``hostile-augment-defense`` zeroes, in place, the training data its ``augment`` receives
(with ``val_fraction = 0`` that used to be the harness's cached split).

Attacks: ``hostile-nograd`` turns grad mode off, ``hostile-flags`` turns on deterministic
algorithms and anomaly mode, changes the thread count and the working directory; both return
their inputs. Protocols ``wb-nograd`` and ``wb-flags`` (in ``hostile_tensors``) run them.
"""

from __future__ import annotations

import os

import torch

from advarena.api import Attack, Defense, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


class HostileNoGradDefense(Defense):
    """Trains plainly, then leaves grad mode off."""

    name = "hostile-nograd-defense"

    def fit(self, session):
        session.train()
        torch.set_grad_enabled(False)


class HostileFloat64Defense(Defense):
    """Trains plainly, then leaves the default dtype at float64."""

    name = "hostile-float64-defense"

    def fit(self, session):
        session.train()
        torch.set_default_dtype(torch.float64)


class HostileAugmentDefense(Defense):
    """Zeroes the training data it is given, in place."""

    name = "hostile-augment-defense"

    def augment(self, data, info, generator=None):
        data.x.zero_()
        return data


class HostileNoGrad(Attack):
    """Leaves grad mode off."""

    name = "hostile-nograd"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        torch.set_grad_enabled(False)
        return inputs.clone()


class HostileFlags(Attack):
    """Leaves deterministic algorithms and anomaly mode on, another thread count and working
    directory."""

    name = "hostile-flags"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        torch.use_deterministic_algorithms(True)
        torch.set_anomaly_enabled(True)
        torch.set_num_threads(torch.get_num_threads() + 1)
        os.chdir(os.path.dirname(os.path.abspath(__file__)))
        return inputs.clone()


@hookimpl
def advarena_register_attacks():
    return [HostileNoGrad, HostileFlags]


@hookimpl
def advarena_register_defenses():
    return [HostileNoGradDefense, HostileFloat64Defense, HostileAugmentDefense]


