"""Gradient-ensemble transfer (000 sec. V-C, Tables II-III)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..api import Measurement, Protocol
from ..errors import ParameterError
from ..evaluation import EvalContext, accuracy_measurement
from ..params import param

# Ensemble members are seeded apart from defended models (the run seeds) and substitutes (run
# seed + 1000): member k of run seed s has seed 2000 + s * members + k, so the members of two
# run seeds never coincide (independent replicates).
MEMBER_SEED_OFFSET = 2000


def member_seed(seed: int, members: int, k: int) -> int:
    """Seed of member ``k`` (0-based) of the pool of ``members`` for run seed ``seed``."""
    return MEMBER_SEED_OFFSET + seed * members + k


class EnsembleTransfer(Protocol):
    """Transfer of adversarial examples crafted on ensembles of independently seeded undefended
    models with the ``gradient-ensemble`` attack.

    Paper: Seiler et al. (000) sec. V-C: six undefended models; the gradient-ensemble attack
    (eq. 2-3) on 1, 3 and 5 of them at eps 4, 8, 16 /255; only images that *every* ensemble
    member misclassifies are kept; the defended model's accuracy on those adversarials ("Adv.")
    and on their clean originals ("True") is reported, with how many images were kept
    (Table II); Table III repeats this across architectures.

    The members (and the extracted sets) do not depend on the defense: they are trained and
    crafted once and shared. Each run seed has its own pool of ``members`` seeds
    (:func:`member_seed`), disjoint from every other run seed's, so seeds are independent
    replicates; of the pool only the ``max(sizes)`` members the ensembles use are trained (000
    trains six models and uses at most five). Listing ``architectures`` other than the defended model's own
    gives the cross-architecture rows of Table III.

    Records per (architecture, size, eps): ``adv_accuracy`` ("Adv."), ``true_accuracy``
    ("True"), ``kept`` (value = number of images kept); ``attack`` reads
    ``gradient-ensemble@<arch>x<size>``.
    """

    name = "ensemble-transfer"
    paper = "000 sec. V-C, Tables II-III"

    members: int = param(6, ge=1, help="pool of independently seeded undefended models "
                                       "(000: six; the largest ensemble's are trained)")
    sizes: tuple[int, ...] = param((1, 3, 5), ge=1, help="ensemble sizes")
    eps: tuple[float, ...] = param((4 / 255, 8 / 255, 16 / 255), ge=0, help="attack budgets")
    architectures: tuple[str, ...] = param((), help="member architectures (empty: the model's)")
    attacks: tuple[str, ...] = param(("gradient-ensemble",), help="the ensemble attack")

    def __post_init__(self) -> None:
        super().__post_init__()
        if max(self.sizes) > self.members:
            raise ParameterError(f"ensemble-transfer: size {max(self.sizes)} needs at least "
                                 f"that many members, got members={self.members}")
        if len(self.attacks) != 1:
            raise ParameterError("ensemble-transfer: takes exactly one attack")

    def _archs(self, setting_arch: str) -> list[str]:
        return list(self.architectures) or [setting_arch]

    def shared_models(self, setting: dict[str, Any]) -> dict[str, dict[str, Any]]:
        seed = setting["seed"]
        return {f"member-{arch}-{k}": {"defense": "none", "architecture": arch,
                                       "seed": member_seed(seed, self.members, k)}
                for arch in self._archs(setting["architecture"])
                for k in range(max(self.sizes))}

    def _member_archs(self, ctx: EvalContext) -> list[str]:
        return sorted({role.split("-", 1)[1].rsplit("-", 1)[0] for role in ctx.shared
                       if role.startswith("member-")})

    def prepare(self, ctx: EvalContext) -> dict[str, torch.Tensor]:
        x, y = ctx.data.x, ctx.data.y
        attack = ctx.attack(self.attacks[0])
        out: dict[str, torch.Tensor] = {}
        jobs = [(a, n, e) for a in self._member_archs(ctx) for n in self.sizes for e in self.eps]
        for i, (arch, size, eps) in enumerate(jobs):
            members = [ctx.shared[f"member-{arch}-{k}"] for k in range(size)]
            x_adv = ctx.run_attack(attack, members, x, y, eps=eps)
            fooled_all = torch.ones(len(x), dtype=torch.bool, device=x.device)
            for m in members:
                fooled_all &= ~ctx.correct(m, x_adv, y)
            keep = fooled_all.nonzero().flatten()
            out[f"{arch}|{size}|{eps!r}|x"] = x_adv[keep]
            out[f"{arch}|{size}|{eps!r}|index"] = keep
            ctx.progress("crafting", i + 1, len(jobs))
        return out

    def evaluate(self, ctx: EvalContext) -> list[Measurement]:
        x, y = ctx.data.x, ctx.data.y
        out = []
        for arch in self._member_archs(ctx):
            for size in self.sizes:
                for eps in self.eps:
                    index = ctx.prepared[f"{arch}|{size}|{eps!r}|index"].long()
                    x_adv = ctx.prepared[f"{arch}|{size}|{eps!r}|x"]
                    label = f"{self.attacks[0]}@{arch}x{size}"
                    if len(index):  # no accuracy on an empty set; `kept` still says 0
                        adv = ctx.correct(ctx.model, x_adv, y[index])
                        true = ctx.correct(ctx.model, x[index], y[index])
                        # Which examples were kept, so records of two defenses pair up.
                        examples = hashlib.sha256(index.cpu().numpy().tobytes()).hexdigest()[:16]
                        for metric, mask in (("adv_accuracy", adv), ("true_accuracy", true)):
                            out.append(accuracy_measurement(metric, mask, attack=label, eps=eps,
                                                            members=size, examples=examples,
                                                            member_architecture=arch))
                    out.append(Measurement("kept", float(len(index)), len(x), attack=label,
                                           eps=eps, extra={"members": size}))
        return out
