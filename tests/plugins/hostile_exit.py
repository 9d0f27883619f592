"""Fixture plugin: plugins that try to take the run's outcome (``tests/test_hostile.py``).

Defenses (in ``fit``): ``hostile-sysexit-defense`` calls ``sys.exit(0)``,
``hostile-kbint-defense`` raises ``KeyboardInterrupt``, ``hostile-genexit-defense`` raises
``GeneratorExit``, ``hostile-base-defense`` raises a custom ``BaseException``,
``hostile-thread-defense`` trains and leaves a non-daemon thread running (for 3 s, so a test
process is not kept alive).

Attack: ``hostile-exit0`` ends its process with status 0 (``os._exit(0)``): only ever run it in
a worker process (protocol ``wb-exit0`` in ``hostile_tensors``).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from advarena.api import Attack, Defense, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


class HostileBaseException(BaseException):
    """Neither an Exception nor one of Python's own."""


class HostileSysExitDefense(Defense):
    """sys.exit(0) in fit."""

    name = "hostile-sysexit-defense"

    def fit(self, session):
        sys.exit(0)


class HostileKbIntDefense(Defense):
    """Raises KeyboardInterrupt in fit (no Ctrl-C was pressed)."""

    name = "hostile-kbint-defense"

    def fit(self, session):
        raise KeyboardInterrupt


class HostileGenExitDefense(Defense):
    """Raises GeneratorExit in fit."""

    name = "hostile-genexit-defense"

    def fit(self, session):
        raise GeneratorExit("hostile")


class HostileBaseDefense(Defense):
    """Raises a custom BaseException in fit."""

    name = "hostile-base-defense"

    def fit(self, session):
        raise HostileBaseException("hostile base exception")


class HostileThreadDefense(Defense):
    """Trains, and leaves a non-daemon thread running."""

    name = "hostile-thread-defense"

    def fit(self, session):
        session.train()
        threading.Thread(target=time.sleep, args=(3.0,), name="hostile-thread").start()


class HostileExit0(Attack):
    """Ends its process with status 0."""

    name = "hostile-exit0"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        os._exit(0)


@hookimpl
def advarena_register_attacks():
    return [HostileExit0]


@hookimpl
def advarena_register_defenses():
    return [HostileSysExitDefense, HostileKbIntDefense, HostileGenExitDefense,
            HostileBaseDefense, HostileThreadDefense]
