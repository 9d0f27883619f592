"""Minimal-perturbation robustness (001 sec. 4.1; 002 eq. 7, sec. 4.1 and supplement; 003 sec. 3)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from ..api import Measurement, Protocol
from ..api.data import TensorData
from ..errors import ParameterError
from ..evaluation import EvalContext, accuracy_measurement, mean_measurement
from ..models import loss_gradient, predict
from ..params import param

# eps_ref_model values that name no shared model.
OWN, REFERENCE = "model", "reference"
EPS_REF_ROLE = "eps-ref"


def nearest_train_distance(points: torch.Tensor, train: torch.Tensor,
                           chunk: int = 256, train_chunk: int = 8192,
                           rows: torch.Tensor | None = None) -> torch.Tensor:
    """For each point, the L2 distance to its nearest training example (``train[rows]`` where
    ``rows`` is given).

    Blocked over both sets with a running minimum, and the training examples are gathered and
    moved to the points' device one block at a time: memory stays at ``chunk x train_chunk``
    distances plus one block of ``train_chunk`` examples, whatever the sizes (never a second
    copy of the training set, on the GPU or off it).
    """
    p = points.flatten(1)
    n = len(train) if rows is None else len(rows)
    best = torch.full((len(p),), float("inf"), device=p.device, dtype=p.dtype)
    for j in range(0, n, train_chunk):
        part = train[j:j + train_chunk] if rows is None else train[rows[j:j + train_chunk]]
        t = part.flatten(1).to(p.device, p.dtype)
        for i in range(0, len(p), chunk):
            d = torch.cdist(p[i:i + chunk], t)
            best[i:i + chunk] = torch.minimum(best[i:i + chunk], d.min(dim=1).values)
    return best


def training_rows(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The examples the evaluated model was trained on, as (inputs, rows): the dataset's train
    split and the rows left after the validation hold-out, cut as the train cell cut it (the
    model's ``val_fraction`` and seed; ``rows`` None: all of them). The cut is made by the
    runner's own :func:`split_validation` applied to the row numbers, so no subset of the
    split is copied. ``ctx.train`` is the whole train split, hold-out included; a context that
    knows neither the splits nor the model's train record (a hand-built one) gets it whole."""
    spec = (ctx.train_records.get("model") or {}).get("spec")
    if ctx.splits is None or not spec:
        return ctx.train.x, None
    from ..runner import split_validation   # here: the runner imports the evaluation layer
    from ..trainer import TrainConfig

    config = TrainConfig(**spec["train"])
    source = ctx.splits.train
    index = torch.arange(len(source))
    kept, _ = split_validation(TensorData(index, index), config.val_fraction, spec["seed"])
    return source.x, kept.x


def fgsm_accuracy_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        eps: torch.Tensor, batch_size: int,
                        signs: torch.Tensor | None = None) -> torch.Tensor:
    """Accuracy of ``model`` on FGSM examples at each eps (one gradient, many eps;
    ``signs``: the gradient's signs when already computed)."""
    if signs is None:
        signs = loss_gradient(model, x, y, batch_size).sign()
    lo, hi = model.bounds
    return torch.stack([(predict(model, (x + e * signs).clamp(lo, hi), batch_size) == y)
                        .float().mean() for e in eps])


def eps_ref_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   eps_max: float = 1.0, resolution: float = 1e-3,
                   chunk: int = 16) -> tuple[float, bool]:
    """(:func:`eps_ref`, whether half the images are misclassified there). The grid is
    scanned in increasing chunks and the scan stops at the first chunk that holds a hit: the
    same grid point as scoring the whole grid, in a fraction of its forward passes (eps_ref
    is usually a tenth of ``eps_max``)."""
    grid = torch.arange(0, eps_max + resolution / 2, resolution, device=x.device)
    signs = loss_gradient(model, x, y, batch_size).sign()
    for start in range(0, len(grid), chunk):
        acc = fgsm_accuracy_curve(model, x, y, grid[start:start + chunk], batch_size, signs)
        hit = (acc <= 0.5).nonzero()
        if len(hit):
            return float(grid[start + hit[0, 0]]), True
    return eps_max, False


def eps_ref(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
            eps_max: float = 1.0, resolution: float = 1e-3) -> float:
    """The smallest FGSM eps at which at least half of ``model``'s perturbed test images are
    misclassified (002 sec. 4.1: "the smallest eps such that 50% of the perturbed images are
    misclassified"), each image perturbed along ``model``'s own gradient, on a grid of
    ``resolution``; ``eps_max`` if never reached."""
    return eps_ref_search(model, x, y, batch_size, eps_max, resolution)[0]


def _fingerprint(mask: torch.Tensor) -> str:
    """Which examples a subset holds, so two records pair up only on the same subset."""
    return hashlib.sha256(mask.nonzero().flatten().cpu().numpy().tobytes()).hexdigest()[:16]


class MinimalPerturbation(Protocol):
    """How far an input must move before the defended model changes its prediction.

    Metrics (each a mean with a bootstrap interval; ``n`` is the number of examples averaged):

    * ``rho_2`` (002 eq. 7): ``(1/|D|) sum_k ||Delta_k||_2 / ||x_k||_2`` under DeepFool.
    * ``empirical_robustness`` (001 eq. 2): the same ratio under ``fgsm-minimal``.
    * ``rho_inf`` (002 supplement eq. 2): ``||Delta||_inf / ||x||_inf`` under ``fgsm-minimal``
      (the FGS attack, as the supplement prescribes).
    * ``cw_l2``: unnormalised ``||Delta||_2`` under C&W L2 (002 supplement Table 2).
    * ``training_set_distance`` (001 sec. 4.1, Table 2): mean L2 distance from each
      ``fgsm-minimal`` adversarial image to its nearest training example, the training split
      only (the validation hold-out the model never trained on is left out; see
      :func:`training_rows`).
    * ``distortion`` per ``coordinate-greedy`` and ``adam-evasion``:
      ``sqrt(sum (x'-x)^2) / n``, n the number of features (003 sec. 3).
    * ``accuracy``: the clean accuracy on these examples (the success rates' denominator).
    * ``success_rate`` per attack: the share of the correctly classified examples whose
      returned input the model misclassifies (re-scored here). ``n`` is the number of correctly
      classified examples (``extra.denominator`` says so) and the outcomes are theirs, in test
      order; ``extra.examples`` fingerprints which examples they are, so two models' records
      are paired only when they got the same examples right.
    * ``eps_ref`` and ``accuracy_at_eps_ref`` (002 sec. 4.1, Table 1): see below.

    Denominators, as the papers define them. 002 eq. 7 and 001 eq. 2 average over the test set
    D, and their ``Delta x`` is "the perturbation required for an instance x in order for the
    model F to change its prediction" (001; DeepFool's ``r(x)`` changes the estimated label
    ``k(x)``, Moosavi-Dezfooli et al. 2016 eq. 1). So every attack here is run against the
    model's *own clean predictions*, not the labels: on a correctly classified example that is
    the usual untargeted attack, and a clean-misclassified example gets the perturbation that
    moves it out of its (wrong) predicted class, not 0. ``rho_2``, ``empirical_robustness``,
    ``rho_inf``, ``cw_l2`` and ``training_set_distance`` then average over all of D. 003 measures
    "the noise needed to make the learner misclassify an otherwise correct instance", so
    ``distortion`` averages over the correctly classified examples only.

    Failures (the re-scored prediction did not change): excluded from the mean and counted in
    ``extra.failures``. An attack that fails returns its input, so there is no perturbation to
    count; 0 would score the examples the attack could not move as the most fragile ones, and
    any finite stand-in (a cap, the last iterate) would be a number of the attack's schedule,
    not of the model. ``n`` is then ``|D| - failures`` (or ``correct - failures``), and each
    record's ``extra`` says ``denominator`` (``test set`` or ``correctly classified``),
    ``examples_in_set``, ``failures`` and the attack's ``success_rate``; a success rate well
    below 1 (the sanity flag ``minimal_attacks_fail``) says the mean rests on the easier
    examples.

    eps_ref (002 sec. 4.1): "the smallest eps such that 50% of the perturbed images are
    misclassified by our regularized models", i.e. by the Deep Defense model of the same
    network, each image perturbed by FGSM on that model; every model of the network is then
    scored at 0.2, 0.5 and 1.0 eps_ref, by its plain accuracy on its own FGSM images of the whole
    test set (so "Ours" is 50.00 % at 1.0 eps_ref in every row of Table 1). ``eps_ref_model``
    names the model eps_ref is computed on:

    * a defense name (default ``deep-defense``, the paper's): that defense trained as a shared
      model (same dataset, architecture and seed; the suite's parameters for it) and evaluated
      like every other model, so all defenses of a setting are scored at one eps;
    * ``model``: the evaluated model itself (each model at its own 50 % point; then
      ``accuracy_at_eps_ref`` at 1.0 is at most 0.5 by construction and ``eps_ref`` itself is
      the comparable number);
    * ``reference``: the suite's undefended reference (advarena's earlier variant; not 002's).

    eps is searched on a 1e-3 grid up to ``eps_ref_max``; ``extra.reached`` is false where the
    model kept more than half its accuracy up to ``eps_ref_max``.
    """

    name = "minimal-perturbation"
    paper = "001 sec. 4.1; 002 eq. 7, sec. 4.1 and supplement; 003 sec. 3"

    attacks: tuple[str, ...] = param(
        ("deepfool", "fgsm-minimal", "cw-l2", "coordinate-greedy", "adam-evasion"),
        help="minimal attacks to run")
    eps_ref_fractions: tuple[float, ...] = param((0.2, 0.5, 1.0), gt=0,
                                                 help="multiples of eps_ref to score")
    eps_ref_max: float = param(1.0, gt=0, help="the largest eps searched for eps_ref")
    eps_ref_model: str = param(
        "deep-defense", help="the model eps_ref is computed on: a defense name (002: "
        "'deep-defense'), 'model' (the evaluated one) or 'reference' (the undefended one)")

    # Which metric each attack feeds, how its perturbation is measured, whether it is divided
    # by the input's norm, and the set it averages over (see the class docstring).
    METRICS = {"deepfool": ("rho_2", "l2", True, "test set"),
               "fgsm-minimal": ("empirical_robustness", "l2", True, "test set"),
               "cw-l2": ("cw_l2", "l2", False, "test set"),
               "coordinate-greedy": ("distortion", "l2/n", False, "correctly classified"),
               "adam-evasion": ("distortion", "l2/n", False, "correctly classified")}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps_ref_model.strip():
            raise ParameterError("minimal-perturbation: eps_ref_model must name a model")

    def shared_models(self, setting: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if self.eps_ref_model in (OWN, REFERENCE):
            return {}
        return {EPS_REF_ROLE: {"defense": self.eps_ref_model}}

    def evaluate(self, ctx: EvalContext) -> list[Measurement]:
        x = ctx.data.x
        pred = predict(ctx.model, x, ctx.batch_size)
        clean = pred == ctx.data.y
        subsets = {"test set": torch.ones_like(clean), "correctly classified": clean}
        train_x = None
        # The clean accuracy on these examples: the success rates' denominator.
        out: list[Measurement] = [accuracy_measurement("accuracy", clean)]
        for name in self.attacks:
            attack = ctx.attack(name)
            if attack.threat_model.budget != "minimal":
                raise ParameterError(f"minimal-perturbation: '{name}' is not a minimal attack")
            # Against the model's own predictions: Delta is what changes the prediction.
            x_adv = ctx.run_attack(attack, ctx.model, x, pred)
            changed = ctx.correct(ctx.model, x_adv, pred).logical_not()
            rate = None
            if clean.any():
                success = accuracy_measurement("success_rate", changed[clean], attack=name,
                                               denominator="correctly classified",
                                               examples=_fingerprint(clean))
                out.append(success)
                rate = success.value
            metric, kind, normalised, over = self.METRICS.get(
                name, (f"{name}_l2", "l2", False, "test set"))
            in_set = subsets[over]
            found = in_set & changed
            info = {"denominator": over, "examples_in_set": int(in_set.sum()),
                    "failures": int((in_set & ~changed).sum()), "success_rate": rate}
            delta = (x_adv - x).flatten(1)
            flat_x = x.flatten(1)
            norms = delta.norm(dim=1)
            if kind == "l2/n":
                norms = norms / delta.shape[1]
            if normalised:
                norms = norms / flat_x.norm(dim=1).clamp_min(1e-12)
            if found.any():
                out.append(mean_measurement(metric, norms[found], attack=name, seed=ctx.seed,
                                            **info))
                if name == "fgsm-minimal":
                    linf = delta.abs().amax(1) / flat_x.abs().amax(1).clamp_min(1e-12)
                    out.append(mean_measurement("rho_inf", linf[found], attack=name,
                                                seed=ctx.seed, **info))
                    if train_x is None:
                        train_x, train_rows = training_rows(ctx)
                    dist = nearest_train_distance(x_adv[found], train_x, rows=train_rows)
                    out.append(mean_measurement("training_set_distance", dist, attack=name,
                                                seed=ctx.seed, **info))
            ctx.progress("attacks", self.attacks.index(name) + 1, len(self.attacks))
        out.extend(self._eps_ref(ctx))
        return out

    def attack_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.attacks, "fgsm")))

    def _eps_ref_source(self, ctx: EvalContext) -> nn.Module:
        if self.eps_ref_model == OWN:
            return ctx.model
        if self.eps_ref_model == REFERENCE:
            if ctx.reference is None:
                raise ParameterError("minimal-perturbation: eps_ref_model 'reference' needs "
                                     "the undefended reference model")
            return ctx.reference
        if EPS_REF_ROLE not in ctx.shared:
            raise ParameterError(f"minimal-perturbation: no shared '{self.eps_ref_model}' "
                                 f"model to compute eps_ref on")
        return ctx.shared[EPS_REF_ROLE]

    def _eps_ref(self, ctx: EvalContext) -> list[Measurement]:
        x, y = ctx.data.x, ctx.data.y
        source = self._eps_ref_source(ctx)
        e_ref, reached = eps_ref_search(source, x, y, ctx.batch_size, self.eps_ref_max)
        on = {"eps_ref_model": self.eps_ref_model}
        out = [Measurement("eps_ref", e_ref, len(x), attack="fgsm",
                           extra={**on, "reached": reached})]
        for f in self.eps_ref_fractions:
            # The evaluated model's own FGSM images; plain accuracy over the whole test set.
            x_adv = ctx.run_attack(ctx.attack("fgsm"), ctx.model, x, y, eps=f * e_ref)
            correct = ctx.correct(ctx.model, x_adv, y)
            out.append(accuracy_measurement("accuracy_at_eps_ref", correct, attack="fgsm",
                                            eps=f * e_ref, fraction=f, **on))
        return out
