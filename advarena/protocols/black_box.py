"""Black-box transfer from substitute models (001 sec. 4.5; 004 Table 2)."""

from __future__ import annotations

from typing import Any

import torch

from ..api import Measurement, Protocol
from ..errors import ParameterError
from ..evaluation import EvalContext, accuracy_measurement
from ..params import param

# Substitutes are seeded apart from every defended model: the defender never saw them.
SUBSTITUTE_SEED_OFFSET = 1000


class BlackBox(Protocol):
    """Adversarial examples crafted on substitute models the defender never saw, scored on the
    defended model.

    Papers: Zantedeschi et al. (001) sec. 4.5 craft on an undefended model of another
    architecture (their ResNet) and test the defended CNN; the e2SAD paper (004) Table 2 uses
    naturally trained, FGSM-trained and IFGSM-trained substitutes (IFGSM eps 0.3, k 30).

    Each substitute is a train cell whose spec does not mention the defense, so it is trained
    once per dataset (and seed) and shared by every defense; its adversarial sets are crafted
    once in this protocol's ``prepare`` cell and shared too.

    Parameters:
        substitutes: defenses the substitutes are trained with (``none`` is "natural").
        substitute_architecture: their architecture ("" = the defended model's own).
        attacks, eps: the bounded attacks run on each substitute, and their budgets.

    Records: ``transfer_accuracy`` per (substitute, attack, eps), the ``attack`` field reading
    ``<attack>@<substitute>``, and ``worst_transfer_accuracy`` per eps over every substitute and
    attack (per example). As in the white-box protocol, an example counts only if the defended
    model also classifies its clean version correctly.
    """

    name = "black-box"
    paper = "001 sec. 4.5; 004 Table 2"

    substitutes: tuple[str, ...] = param(("none", "fgsm-at", "ifgsm-at"),
                                         help="defenses the substitute models are trained with")
    substitute_architecture: str = param("resnet-001", help="'' means the defended model's")
    attacks: tuple[str, ...] = param(("fgsm", "ifgsm"), help="attacks run on the substitutes")
    eps: tuple[float, ...] = param((0.1, 0.3), ge=0, help="attack budgets")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.substitutes or not self.attacks or not self.eps:
            raise ParameterError("black-box: needs substitutes, attacks and eps")

    def shared_models(self, setting: dict[str, Any]) -> dict[str, dict[str, Any]]:
        arch = self.substitute_architecture or setting["architecture"]
        return {f"substitute-{d}": {"defense": d, "architecture": arch,
                                    "seed": setting["seed"] + SUBSTITUTE_SEED_OFFSET}
                for d in self.substitutes}

    def _sets(self):
        for d in self.substitutes:
            for name in self.attacks:
                for eps in self.eps:
                    yield f"substitute-{d}", name, eps

    def prepare(self, ctx: EvalContext) -> dict[str, torch.Tensor]:
        x, y = ctx.data.x, ctx.data.y
        out = {}
        sets = list(self._sets())
        for i, (role, name, eps) in enumerate(sets):
            out[f"{role}|{name}|{eps!r}"] = ctx.run_attack(ctx.attack(name), ctx.shared[role],
                                                            x, y, eps=eps)
            ctx.progress("crafting", i + 1, len(sets))
        return out

    def evaluate(self, ctx: EvalContext) -> list[Measurement]:
        x, y = ctx.data.x, ctx.data.y
        clean = ctx.correct(ctx.model, x, y)
        out = []
        worst = {eps: clean.clone() for eps in self.eps}
        for role, name, eps in self._sets():
            x_adv = ctx.prepared[f"{role}|{name}|{eps!r}"]
            robust = clean & ctx.correct(ctx.model, x_adv, y)
            worst[eps] &= robust
            out.append(accuracy_measurement("transfer_accuracy", robust,
                                            attack=f"{name}@{role.removeprefix('substitute-')}",
                                            eps=eps, substitute=role, source_attack=name))
        for eps, mask in worst.items():
            out.append(accuracy_measurement("worst_transfer_accuracy", mask, attack="worst-case",
                                            eps=eps))
        return out
