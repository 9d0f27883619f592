"""The Attack contract (modelled on foolbox 3: attacks hold no model; ``run`` does the work and a
final call path clips nothing silently but checks everything).

A subclass implements :meth:`Attack.run`. Users and the harness call the attack object; that path
goes through :func:`advarena.threat.run_checked`, which validates the budget, runs the attack and
checks every output against the declared :class:`ThreatModel`. A violation raises
:class:`~advarena.errors.ThreatModelViolation` naming the plugin; it is never scored.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch

from ..models import ModelLike
from ..params import Plugin

Norm = Literal["linf", "l2", "l0"]


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """What an attack promises about its outputs.

    norm: the distance the budget (or the minimal search) is measured in.
    budget: ``"bounded"`` (takes eps, outputs stay in the eps-ball) or ``"minimal"`` (takes no
        eps, returns per sample the smallest adversarial found, the input itself where none).
    targeted: whether it aims at a chosen class rather than any wrong one.
    access: ``"gradient"`` (white-box gradients) or ``"transfer"``/``"score"``.
    """

    norm: Norm
    budget: Literal["bounded", "minimal"] = "bounded"
    targeted: bool = False
    access: Literal["gradient", "score", "transfer"] = "gradient"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Attack(Plugin):
    """Base class of every attack plugin.

    Class attributes: ``name``, ``paper``, ``threat_model``; parameters as annotated fields
    (bounded attacks declare ``eps``). Subclasses implement :meth:`run` only.
    """

    threat_model: ClassVar[ThreatModel]
    # Whether ``run`` accepts a list of models natively (else ensembles average logits).
    accepts_ensemble: ClassVar[bool] = False
    # One gradient step (FGSM and kin): the sanity check expects iterative attacks to be
    # at least as strong as these.
    single_step: ClassVar[bool] = False

    def run(self, model: ModelLike, inputs: torch.Tensor, labels: torch.Tensor,
            eps: float | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return adversarial inputs with the shape of ``inputs``.

        ``model`` maps inputs in ``model.bounds`` to logits (a list of models if
        ``accepts_ensemble``). ``eps`` is the budget for bounded attacks, None for minimal ones.
        ``generator`` is the source of any randomness, on the inputs' device.
        """
        raise NotImplementedError

    def __call__(self, model: ModelLike, inputs: torch.Tensor, labels: torch.Tensor, *,
                 eps: float | None = None, seed: int | None = 0) -> torch.Tensor:
        """Adversarial inputs for ``inputs``, checked against the threat model.

        ``model``: an :class:`advarena.models.Classifier` or any ``nn.Module`` returning logits
        (bounds default to [0, 1]; wrap it in ``Classifier(net, bounds=...)`` for another
        box), or a list of them. ``inputs``: floats inside the box (tensor or numpy array: a
        numpy array comes back as one); ``labels``: class indices or one-hot rows. Gradients
        are enabled inside, so this works under ``torch.no_grad()``. See
        :mod:`advarena.api_checks` for what is converted, refused and warned about."""
        from ..api_checks import prepare_call
        from ..threat import run_checked

        model, x, y, was_numpy = prepare_call(self, model, inputs, labels, eps)
        with torch.enable_grad():
            out = run_checked(self, model, x, y, eps=eps, seed=seed)
        return out.cpu().numpy() if was_numpy else out

    def default_eps(self) -> float | None:
        return getattr(self, "eps", None)
