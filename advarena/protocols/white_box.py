"""White-box protocol: every bounded attack against the defended model itself."""

from __future__ import annotations

from ..api import Protocol
from ..errors import ParameterError
from ..evaluation import EvalContext, accuracy_measurement
from ..params import param


class WhiteBox(Protocol):
    """Accuracy under each attack run against the defended model itself, over an eps sweep,
    and per eps the worst case over attacks taken per example.

    Papers: the white-box tables of all five papers; 001 sec. 4.3 (Fig. 3-5) sweeps FGSM eps,
    and defines white-box as "crafted on the model trained through [the defense]". The input
    transform of a defense is part of the attacked model (non-differentiable transforms through
    BPDA, see :class:`advarena.models.Classifier`).

    Definitions (choices documented here and tested):

    * ``accuracy``: clean accuracy on the evaluation examples.
    * ``robust_accuracy`` (per attack, per eps): an example counts as robust when the model
      classifies both the clean input and the attack's output correctly, so robust accuracy
      can never exceed clean accuracy (the convention of RobustBench).
    * ``worst_case_accuracy`` (per eps): robust only if *every* attack failed on that example;
      the record at ``headline_eps`` is marked ``headline`` for the leaderboard.
    * ``repeated_error_rate`` (per ``repeated`` attack): 003 sec. 4.4's "additional attacks" on
      the robust learner: the attacker attacks the defended model again with attacks of its
      own choosing (003: coordinate greedy and Adam, which search for a minimal perturbation
      within their iteration budget); the record is the share of examples that end up
      misclassified (clean errors included, as 003's error rates are).

    Each record carries the per-example outcomes, so two defenses scored on the same examples
    can be compared with a paired test.
    """

    name = "white-box"
    paper = "000-004 white-box tables; 001 sec. 4.3"

    attacks: tuple[str, ...] = param(("fgsm", "pgd"), help="bounded attacks to run")
    eps: tuple[float, ...] = param((0.02, 0.05, 0.1, 0.2, 0.3), ge=0, help="eps sweep")
    headline_eps: float = param(0.1, ge=0, help="the eps the leaderboard ranks by")
    repeated: tuple[str, ...] = param((), help="003's additional attacks on the robust learner")

    def attack_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.attacks, *self.repeated)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.attacks or not self.eps:
            raise ParameterError("white-box: needs at least one attack and one eps")
        if self.headline_eps not in self.eps:
            raise ParameterError(f"white-box: headline_eps {self.headline_eps} is not in the "
                                 f"eps sweep {list(self.eps)}")

    def evaluate(self, ctx: EvalContext):
        x, y = ctx.data.x, ctx.data.y
        clean = ctx.correct(ctx.model, x, y)
        records = [accuracy_measurement("accuracy", clean)]
        for name in self.attacks:
            if ctx.attack(name).threat_model.budget != "bounded":
                raise ParameterError(f"white-box: attack '{name}' is not a bounded attack")
        # Worst case is taken within one norm: eps means different things across norms.
        norms = sorted({ctx.attack(a).threat_model.norm for a in self.attacks})
        total = len(self.eps) * len(self.attacks)
        done = 0
        for eps in self.eps:
            headline = abs(eps - self.headline_eps) < 1e-12
            for norm in norms:
                worst = clean.clone()
                for name in self.attacks:
                    if ctx.attack(name).threat_model.norm != norm:
                        continue
                    x_adv = ctx.run_attack(ctx.attack(name), ctx.model, x, y, eps=eps)
                    robust = clean & ctx.correct(ctx.model, x_adv, y)
                    worst &= robust
                    records.append(accuracy_measurement("robust_accuracy", robust, attack=name,
                                                        eps=eps, norm=norm))
                    done += 1
                    ctx.progress("attacks", done, total)
                records.append(accuracy_measurement("worst_case_accuracy", worst,
                                                    attack="worst-case", eps=eps, norm=norm,
                                                    headline=headline))
        for name in self.repeated:
            attack = ctx.attack(name)
            eps = None if attack.threat_model.budget == "minimal" else attack.default_eps()
            x_adv = ctx.run_attack(attack, ctx.model, x, y, eps=eps)
            records.append(accuracy_measurement("repeated_error_rate",
                                                ~(clean & ctx.correct(ctx.model, x_adv, y)),
                                                attack=name, eps=eps))
        return records
