"""What the headline costs (issue 11): the quick suite's headline set of attacks against the
white-box gradient set alone, per defended model.

The quick suite's white-box protocol runs every attack over its eps sweep; the headline adds to
the gradient attacks (cross-entropy and DLR losses) the score-based ones (Square) and scores the
black-box transfer sets on the defended model. Crafting those sets on the substitutes is shared
by every defense (one prepare cell per dataset and seed), so per defense the transfer attacks
cost forward passes only; the one-off crafting is reported apart (``crafting_seconds``).

Measured per defense, on a ``cnn-001`` trained here on digits (``ADVARENA_BENCH_EPOCHS``, 5 by
default) with the quick suite's attacks, parameters and eps, on ``ADVARENA_BENCH_EXAMPLES``
(default: the suite's 300) evaluation examples:

* ``seconds_gradient``, ``seconds_headline``, ``ratio_seconds``: wall time of the gradient set
  alone, of the whole headline set, and their ratio;
* ``passes_gradient``, ``passes_headline``, ``ratio_passes``: forward + backward passes per
  example (counted by a wrapper around the model), and their ratio;
* ``square_queries_per_example``: Square's model evaluations per example, per eps and mean.

Like the white-box protocol, score-based attacks run at the suite's ``score_eps`` only.

``ADVARENA_BENCH_DEFENSE`` picks the defense trained (any that needs no reference model, e.g.
``none``, ``brelu``, ``fgsm-at``, ``distillation``; default ``none``). Run: ``pytest benchmarks/bench_headline.py
--benchmark-only``.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

import advarena
from advarena.models import Classifier
from advarena.plugins import default_registry
from advarena.suite import load_suite
from advarena.threat import run_checked

DEFENSE = os.environ.get("ADVARENA_BENCH_DEFENSE", "none")
EPOCHS = int(os.environ.get("ADVARENA_BENCH_EPOCHS", "5"))


class Counting(nn.Module):
    """A model that counts the examples of its forward and backward passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.bounds = model.bounds
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_rows += len(x)
        out = self.model(x)
        if out.requires_grad:
            def count(grad, n=len(x)):
                self.backward_rows += n
                return grad
            out.register_hook(count)
        return out

    def passes(self) -> int:
        return self.forward_rows + self.backward_rows


def _train(splits, defense_name: str) -> Classifier:
    """``cnn-001`` trained with ``defense_name`` by the shared trainer (no reference model, so
    no fine-tuning defense), the quick suite's optimiser settings for ``EPOCHS`` epochs."""
    from advarena.runner import split_validation
    from advarena.trainer import TrainConfig, TrainingSession

    defense = advarena.defense(defense_name)
    suite = load_suite("quick")
    config = TrainConfig(**{**suite.train, "epochs": EPOCHS})
    torch.manual_seed(0)
    net = advarena.architecture("cnn-001").build(splits.info, defense.activation(splits.info)
                                                 or nn.ReLU)
    train, val = split_validation(splits.train, config.val_fraction, 0)
    session = TrainingSession(net, splits.info, train, val, config, defense,
                              device=torch.device("cpu"), seed=0,
                              transform=defense.input_transform(splits.info))
    defense.fit(session)
    return Classifier(session.model, splits.info.bounds, session.transform).eval()


@pytest.fixture(scope="module")
def setting():
    suite = load_suite("quick")
    reg = default_registry()
    splits = advarena.dataset("digits").load()
    n = int(os.environ.get("ADVARENA_BENCH_EXAMPLES", suite.eval.get("n_examples", 300)))
    order = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:n]
    data = splits.test.subset(order)
    wb = suite.protocols["white-box"]
    attacks = {a: reg.create("attacks", a, **suite.attacks.get(a, {})) for a in wb["attacks"]}
    bb = suite.protocols["black-box"]
    with torch.random.fork_rng(devices=[]):
        model = _train(splits, DEFENSE)
        substitute = _train(splits, "none")  # one stand-in substitute (same architecture)
    start = time.perf_counter()
    transfer = [run_checked(reg.create("attacks", a, **suite.attacks.get(a, {})), substitute,
                            data.x, data.y, eps=e)
                for a in bb["attacks"] for e in bb["eps"]] * len(bb["substitutes"])
    crafting = time.perf_counter() - start
    return {"model": model, "data": data, "attacks": attacks, "eps": wb["eps"],
            "score_eps": wb.get("score_eps") or wb["eps"],
            "transfer": transfer, "crafting_seconds": crafting}


def _run(setting, groups: set[str]) -> dict:
    """Every attack of ``groups`` (access ``gradient`` / ``score``, ``transfer``) over the eps
    sweep against the counted model: wall time, passes per example, Square's queries."""
    model = Counting(setting["model"])
    x, y = setting["data"].x, setting["data"].y
    queries: dict[str, float] = {}
    start = time.perf_counter()
    for name, attack in setting["attacks"].items():
        if attack.threat_model.access not in groups:
            continue
        score = attack.threat_model.access == "score"
        for eps in setting["score_eps"] if score else setting["eps"]:
            before = model.forward_rows
            x_adv = run_checked(attack, model, x, y, eps=eps)
            with torch.no_grad():
                model(x_adv)
            if score:
                queries[f"{name}@{eps:g}"] = (model.forward_rows - before) / len(x) - 1
    if "transfer" in groups:
        with torch.no_grad():
            for x_adv in setting["transfer"]:
                model(x_adv)
    return {"seconds": time.perf_counter() - start, "passes": model.passes() / len(x),
            "queries": queries}


def test_headline_cost_against_the_white_box_set(benchmark, setting):
    gradient = _run(setting, {"gradient"})
    head = benchmark.pedantic(_run, args=(setting, {"gradient", "score", "transfer"}),
                              rounds=1, iterations=1)
    info = benchmark.extra_info
    info.update(defense=DEFENSE, examples=len(setting["data"].x),
                seconds_gradient=gradient["seconds"], seconds_headline=head["seconds"],
                ratio_seconds=head["seconds"] / gradient["seconds"],
                passes_gradient=gradient["passes"], passes_headline=head["passes"],
                ratio_passes=head["passes"] / gradient["passes"],
                crafting_seconds=setting["crafting_seconds"])
    if head["queries"]:
        info["square_queries_per_example"] = head["queries"]
        info["square_queries_mean"] = sum(head["queries"].values()) / len(head["queries"])
    assert head["passes"] > gradient["passes"]  # the headline set adds work, never removes
    for name, q in head["queries"].items():
        budget = setting["attacks"][name.split("@")[0]].n_queries
        assert 0 < q <= budget, (name, q)
