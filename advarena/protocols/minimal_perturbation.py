"""Minimal-perturbation robustness (001 sec. 4.1; 002 eq. 7 and supplement; 003 sec. 3)."""

from __future__ import annotations

import torch
from torch import nn

from ..api import Measurement, Protocol
from ..errors import ParameterError
from ..evaluation import EvalContext, accuracy_measurement, mean_measurement
from ..models import loss_gradient, predict
from ..params import param


def nearest_train_distance(points: torch.Tensor, train: torch.Tensor,
                           chunk: int = 256, train_chunk: int = 8192) -> torch.Tensor:
    """For each point, the L2 distance to its nearest training example.

    Blocked over both sets so memory stays at ``chunk x train_chunk`` distances whatever the
    sizes (never quadratic in the dataset), with a running minimum.
    """
    p = points.flatten(1)
    t = train.flatten(1).to(p.device, p.dtype)
    best = torch.full((len(p),), float("inf"), device=p.device, dtype=p.dtype)
    for i in range(0, len(p), chunk):
        block = p[i:i + chunk]
        for j in range(0, len(t), train_chunk):
            d = torch.cdist(block, t[j:j + train_chunk])
            best[i:i + chunk] = torch.minimum(best[i:i + chunk], d.min(dim=1).values)
    return best


def fgsm_accuracy_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        eps: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Accuracy of ``model`` on FGSM examples at each eps (one gradient, many eps)."""
    grads = loss_gradient(model, x, y, batch_size).sign()
    lo, hi = model.bounds
    return torch.stack([(predict(model, (x + e * grads).clamp(lo, hi), batch_size) == y)
                        .float().mean() for e in eps])


def eps_ref(reference: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
            eps_max: float = 1.0, resolution: float = 1e-3) -> float:
    """The smallest FGSM eps at which half of the reference model's test images are
    misclassified (002 sec. 4: "the smallest eps such that 50% of the perturbed images are
    misclassified"), on a grid of ``resolution``; ``eps_max`` if never reached."""
    grid = torch.arange(0, eps_max + resolution / 2, resolution, device=x.device)
    acc = fgsm_accuracy_curve(reference, x, y, grid, batch_size)
    hit = (acc <= 0.5).nonzero()
    return float(grid[hit[0, 0]]) if len(hit) else eps_max


class MinimalPerturbation(Protocol):
    """How far an input must move before the defended model changes its prediction.

    * ``rho_2`` (002 eq. 7): mean ``||Delta||_2 / ||x||_2`` under DeepFool.
    * ``empirical_robustness`` (001 eq. 2): the same ratio under ``fgsm-minimal``.
    * ``rho_inf`` (002 supplement eq. 2): mean ``||Delta||_inf / ||x||_inf`` under
      ``fgsm-minimal`` (the FGS attack, as the supplement prescribes).
    * ``cw_l2``: mean unnormalised ``||Delta||_2`` under C&W L2 (002 Table 2).
    * ``distortion`` per ``coordinate-greedy`` and ``adam-evasion``:
      ``sqrt(sum (x'-x)^2) / n``, n the number of features (003 sec. 3).
    * ``training_set_distance`` (001 sec. 4.1, Table 2): mean L2 distance from each
      ``fgsm-minimal`` adversarial to its nearest training example.
    * ``eps_ref`` (002 sec. 4): the smallest FGSM eps that fools the *reference* model on half
      the test images, and ``accuracy_at_eps_ref`` at 0.2, 0.5 and 1.0 eps_ref for every model.
    * ``success_rate`` per attack: the share of examples the harness found adversarial.

    Choices (documented and tested): every success is re-scored here (the prediction of the
    returned input must differ from the label); the norms are averaged over examples the model
    classified correctly and the attack fooled (an example already misclassified needs no
    perturbation, and one the attack could not fool has no finite distance).
    """

    name = "minimal-perturbation"
    paper = "001 sec. 4.1; 002 eq. 7 and supplement; 003 sec. 3"

    attacks: tuple[str, ...] = param(
        ("deepfool", "fgsm-minimal", "cw-l2", "coordinate-greedy", "adam-evasion"),
        help="minimal attacks to run")
    eps_ref_fractions: tuple[float, ...] = param((0.2, 0.5, 1.0), gt=0,
                                                 help="multiples of eps_ref to score")
    eps_ref_max: float = param(1.0, gt=0, help="the largest eps searched for eps_ref")

    # Which metric each attack feeds, and how its perturbation is normalised.
    METRICS = {"deepfool": ("rho_2", "l2", True), "fgsm-minimal": ("empirical_robustness", "l2",
                                                                    True),
               "cw-l2": ("cw_l2", "l2", False), "coordinate-greedy": ("distortion", "l2/n", False),
               "adam-evasion": ("distortion", "l2/n", False)}

    def evaluate(self, ctx: EvalContext) -> list[Measurement]:
        x, y = ctx.data.x, ctx.data.y
        clean = ctx.correct(ctx.model, x, y)
        out: list[Measurement] = []
        for name in self.attacks:
            attack = ctx.attack(name)
            if attack.threat_model.budget != "minimal":
                raise ParameterError(f"minimal-perturbation: '{name}' is not a minimal attack")
            x_adv = ctx.run_attack(attack, ctx.model, x, y)
            fooled = clean & ~ctx.correct(ctx.model, x_adv, y)
            out.append(accuracy_measurement("success_rate", fooled, attack=name))
            delta = (x_adv - x).flatten(1)
            flat_x = x.flatten(1)
            metric, kind, normalised = self.METRICS.get(name, (f"{name}_l2", "l2", False))
            norms = delta.norm(dim=1)
            if kind == "l2/n":
                norms = norms / delta.shape[1]
            if normalised:
                norms = norms / flat_x.norm(dim=1).clamp_min(1e-12)
            if fooled.any():
                out.append(mean_measurement(metric, norms[fooled], attack=name, seed=ctx.seed))
                if name == "fgsm-minimal":
                    linf = delta.abs().amax(1) / flat_x.abs().amax(1).clamp_min(1e-12)
                    out.append(mean_measurement("rho_inf", linf[fooled], attack=name,
                                                seed=ctx.seed))
                    dist = nearest_train_distance(x_adv[fooled], ctx.train.x)
                    out.append(mean_measurement("training_set_distance", dist, attack=name,
                                                seed=ctx.seed))
            ctx.progress("attacks", self.attacks.index(name) + 1, len(self.attacks))
        out.extend(self._eps_ref(ctx))
        return out

    def attack_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.attacks, "fgsm")))

    def _eps_ref(self, ctx: EvalContext) -> list[Measurement]:
        x, y = ctx.data.x, ctx.data.y
        ref = ctx.reference if ctx.reference is not None else ctx.model
        e_ref = eps_ref(ref, x, y, ctx.batch_size, self.eps_ref_max)
        out = [Measurement("eps_ref", e_ref, len(x), attack="fgsm")]
        clean = ctx.correct(ctx.model, x, y)
        for f in self.eps_ref_fractions:
            x_adv = ctx.run_attack(ctx.attack("fgsm"), ctx.model, x, y, eps=f * e_ref)
            robust = clean & ctx.correct(ctx.model, x_adv, y)
            out.append(accuracy_measurement("accuracy_at_eps_ref", robust, attack="fgsm",
                                            eps=f * e_ref, fraction=f))
        return out
