"""Fixture plugin: attacks that break their declared threat model in one way each, plus a few
well-behaved probes. Loaded with the ``fixture_plugin`` fixture (``tests/conftest.py``).

Every bad attack stays correct in every respect except the one it is named after, so the test
that uses it shows which check caught it.
"""

from __future__ import annotations

import torch

from advarena.api import Attack, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


class OutOfBall(Attack):
    """Linf: moves every pixel by ``factor * eps`` (inside the box for inputs in [0.25, 0.75]
    and eps <= 0.1)."""

    name = "bad-out-of-ball"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)
    factor: float = param(2.0, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs + self.factor * eps


class NonFinite(Attack):
    """Returns NaN (or inf) in one element of the first example."""

    name = "bad-non-finite"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)
    value: float = param(float("nan"), finite=False)  # the fault it plants

    def run(self, model, inputs, labels, eps, generator=None):
        out = inputs.clone()
        out.view(len(out), -1)[0, 0] = self.value
        return out


class WrongShape(Attack):
    """Drops the last example."""

    name = "bad-shape"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs[:-1].clone()


class OutOfBox(Attack):
    """Pushes one element of the inputs to ``model.bounds[1] + excess``; the perturbation
    elsewhere is zero, and ``excess`` is chosen within eps so only the box is broken."""

    name = "bad-out-of-box"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.5, ge=0)
    excess: float = param(0.01, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        out = inputs.clone()
        out.view(len(out), -1)[0, 0] = model.bounds[1] + self.excess
        return out


class WrongDtype(Attack):
    """Returns the unperturbed inputs in float64."""

    name = "bad-dtype"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.to(torch.float64)


class NotATensor(Attack):
    """Returns a list."""

    name = "bad-not-tensor"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.tolist()


class L2Scaled(Attack):
    """L2: a random direction scaled to ``scale * eps``. ``scale=1`` lands on the sphere."""

    name = "probe-l2-scaled"
    threat_model = ThreatModel(norm="l2")
    eps: float = param(0.5, ge=0)
    scale: float = param(1.0, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        d = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype)
        d = d / d.reshape(len(d), -1).norm(dim=1).reshape(-1, *([1] * (d.dim() - 1)))
        return inputs + (self.scale * eps) * d


class Identity(Attack):
    """A well-behaved bounded attack: the inputs unchanged. Records what it was called with."""

    name = "probe-identity"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)
    # Per call: ({id(module): module.training} over every module it was given, eps). A plain
    # class attribute (not a parameter), shared by the subclasses; clear it before use.
    calls = []

    def run(self, model, inputs, labels, eps, generator=None):
        members = model if isinstance(model, (list, tuple)) else [model]
        modes = {id(m): m.training for member in members for m in member.modules()}
        Identity.calls.append((modes, eps))
        return inputs.clone()


class EnsembleIdentity(Identity):
    """Like :class:`Identity`, but takes the ensemble as a list."""

    name = "probe-ensemble-identity"
    accepts_ensemble = True


class Raising(Identity):
    """Fails inside ``run`` (after recording the modes it saw)."""

    name = "probe-raising"

    def run(self, model, inputs, labels, eps, generator=None):
        super().run(model, inputs, labels, eps, generator)
        raise RuntimeError("probe failure")


class Minimal(Attack):
    """A minimal (eps-free) attack returning its inputs."""

    name = "probe-minimal"
    threat_model = ThreatModel(norm="l2", budget="minimal")

    def run(self, model, inputs, labels, eps, generator=None):
        assert eps is None
        return inputs.clone()


BAD = [OutOfBall, NonFinite, WrongShape, OutOfBox, WrongDtype, NotATensor]
PROBES = [L2Scaled, Identity, EnsembleIdentity, Raising, Minimal]


@hookimpl
def advarena_register_attacks():
    return BAD + PROBES
