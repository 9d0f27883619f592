"""The protocols' definitions on small cases whose answer is known (issue 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advarena
from advarena.api.data import TensorData
from advarena.evaluation import EvalContext, unpack_outcomes
from advarena.models import Classifier
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.protocols.minimal_perturbation import (eps_ref, fgsm_accuracy_curve,
                                                     nearest_train_distance)
from advarena.sanity import compute_flags
from advarena.suite import load_suite, shipped_suites

N = 80


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


@pytest.fixture(scope="module")
def setup(digits_model):
    model, splits = digits_model
    data = splits.test.subset(slice(0, N))
    return model, splits, data


def context(splits, data, attacks, **kw) -> EvalContext:
    return EvalContext(info=splits.info, data=data, train=splits.train, device=torch.device("cpu"),
                       seed=0, attacks=attacks, batch_size=N, **kw)


def test_ensemble_of_identical_models_extracts_exactly_the_ifgsm_set(setup):
    model, splits, data = setup
    proto = advarena.protocol("ensemble-transfer", members=3, sizes=(1, 3), eps=(0.1,))
    attack = advarena.attack("gradient-ensemble")
    ctx = context(splits, data, {"gradient-ensemble": attack},
                  shared={f"member-cnn-001-{k}": model for k in range(3)})
    prepared = proto.prepare(ctx)
    ifgsm = advarena.attack("ifgsm")(model, data.x, data.y, eps=0.1)
    fooled = (model(ifgsm).argmax(1) != data.y).nonzero().flatten()
    for size in (1, 3):
        index = prepared[f"cnn-001|{size}|0.1|index"]
        assert torch.equal(index, fooled)
        torch.testing.assert_close(prepared[f"cnn-001|{size}|0.1|x"], ifgsm[fooled],
                                   rtol=0, atol=1e-6)
    # Scored on the model that crafted them, every kept adversarial is misclassified ("Adv." 0)
    # and the "True" column is the clean accuracy on exactly those originals.
    ctx.model, ctx.prepared = model, prepared
    recs = {(r.metric, r.attack): r for r in proto.evaluate(ctx)}
    adv = recs[("adv_accuracy", "gradient-ensemble@cnn-001x3")]
    kept = recs[("kept", "gradient-ensemble@cnn-001x3")]
    assert adv.value == 0 and adv.n == len(fooled) and kept.value == len(fooled)


class Constant(nn.Module):
    """Logits that ignore the input."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.arange(10, dtype=torch.float32))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def test_model_ignoring_its_input_has_zero_loss_sensitivity(setup):
    _, splits, data = setup
    const = Classifier(Constant()).eval()
    ctx = context(splits, data, {}, model=const, reference=const)
    recs = {r.metric: r for r in advarena.protocol("loss-sensitivity").evaluate(ctx)}
    assert recs["loss_sensitivity"].value == 0
    # ... and its loss does not move with the FGSM eps.
    losses = [r.value for r in advarena.protocol("loss-sensitivity").evaluate(ctx)
              if r.metric == "fgsm_loss"]
    assert max(losses) == pytest.approx(min(losses))


def test_loss_sensitivity_is_the_per_example_gradient_norm(setup):
    model, splits, data = setup
    ctx = context(splits, data, {}, model=model, reference=model)
    value = next(r.value for r in advarena.protocol("loss-sensitivity").evaluate(ctx)
                 if r.metric == "loss_sensitivity")
    # One example at a time: nothing a batch could shrink.
    norms = []
    for i in range(len(data)):
        x = data.x[i:i + 1].clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), data.y[i:i + 1])
        (g,) = torch.autograd.grad(loss, x)
        norms.append(g.norm())
    assert value == pytest.approx(float(torch.stack(norms).mean()), rel=1e-4)


def test_eps_ref_halves_the_reference_accuracy(setup):
    model, _, data = setup
    e = eps_ref(model, data.x, data.y, N, resolution=1e-3)
    below, at = fgsm_accuracy_curve(model, data.x, data.y, torch.tensor([e - 1e-3, e]), N)
    assert at <= 0.5 < below
    # The one-gradient curve is the FGSM plugin's accuracy at every eps.
    x_adv = advarena.attack("fgsm")(model, data.x, data.y, eps=e)
    assert (model(x_adv).argmax(1) == data.y).float().mean() == pytest.approx(float(at))


def test_nearest_train_distance_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    points, train = torch.rand(37, 5, generator=gen), torch.rand(301, 5, generator=gen)
    blocked = nearest_train_distance(points, train, chunk=8, train_chunk=50)
    brute = torch.cdist(points, train).min(1).values
    torch.testing.assert_close(blocked, brute)


def test_black_box_from_the_model_itself_equals_white_box(setup):
    model, splits, data = setup
    fgsm = advarena.attack("fgsm")
    bb = advarena.protocol("black-box", substitutes=("none",), attacks=("fgsm",), eps=(0.1,))
    ctx = context(splits, data, {"fgsm": fgsm}, shared={"substitute-none": model})
    ctx.prepared = bb.prepare(ctx)
    ctx.model = model
    transfer = next(r for r in bb.evaluate(ctx) if r.metric == "transfer_accuracy")
    wb = advarena.protocol("white-box", attacks=("fgsm",), eps=(0.1,), headline_eps=0.1)
    white = next(r for r in wb.evaluate(ctx) if r.metric == "robust_accuracy")
    assert transfer.value == white.value
    assert unpack_outcomes(transfer.extra["outcomes"]) == unpack_outcomes(
        white.extra["outcomes"])


def test_minimal_perturbation_norms_follow_their_definitions(setup):
    model, splits, data = setup
    attacks = {"deepfool": advarena.attack("deepfool"), "fgsm": advarena.attack("fgsm")}
    proto = advarena.protocol("minimal-perturbation", attacks=("deepfool",),
                              eps_ref_model="model")
    ctx = context(splits, data, attacks, model=model, reference=model)
    recs = {r.metric: r for r in proto.evaluate(ctx)}
    # 002 eq. 7: over the test set, each example attacked away from the model's prediction.
    pred = model(data.x).argmax(1)
    x_adv = attacks["deepfool"](model, data.x, pred)
    changed = model(x_adv).argmax(1) != pred
    ratio = (x_adv - data.x).flatten(1).norm(dim=1) / data.x.flatten(1).norm(dim=1)
    assert recs["rho_2"].value == pytest.approx(float(ratio[changed].mean()), rel=1e-5)
    assert recs["rho_2"].n == int(changed.sum())
    assert recs["rho_2"].extra["failures"] == int((~changed).sum())
    right = pred == data.y
    assert recs["success_rate"].n == int(right.sum())
    assert recs["success_rate"].value == pytest.approx(float(changed[right].float().mean()))
    # With the model as its own eps_ref model, accuracy at 1.0 eps_ref is at most one half.
    at_ref = [r for r in proto.evaluate(ctx) if r.metric == "accuracy_at_eps_ref"]
    assert max(r.value for r in at_ref if r.extra["fraction"] == 1.0) <= 0.5


def rec(protocol, metric, value, *, eps=None, attack=None, lo=None, hi=None, **extra):
    return {"protocol": protocol, "metric": metric, "value": value, "eps": eps,
            "attack": attack, "ci_low": lo, "ci_high": hi, "extra": extra}


def test_sanity_flags_fire_on_planted_problems():
    records = [
        rec("white-box", "accuracy", 0.9, lo=0.85, hi=0.95),
        rec("white-box", "worst_case_accuracy", 0.2, eps=0.1, lo=0.15, hi=0.25, norm="linf"),
        rec("white-box", "worst_case_accuracy", 0.6, eps=0.3, lo=0.55, hi=0.65, norm="linf"),
        rec("white-box", "robust_accuracy", 0.2, eps=0.1, attack="fgsm", lo=0.15, hi=0.25,
            norm="linf"),
        rec("white-box", "robust_accuracy", 0.5, eps=0.1, attack="pgd", lo=0.45, hi=0.55,
            norm="linf"),
        rec("black-box", "worst_transfer_accuracy", 0.1, eps=0.3, lo=0.05, hi=0.15),
        rec("minimal-perturbation", "success_rate", 0.3, attack="deepfool"),
        rec("loss-sensitivity", "loss_sensitivity", 1e-6),
    ]
    reference = [rec("loss-sensitivity", "loss_sensitivity", 1.0)]
    raised = {f.metric for f in compute_flags(records, reference, {"fgsm"}) if f.value}
    assert raised == {"flag_large_eps_not_broken", "flag_accuracy_rises_with_eps",
                      "flag_iterative_weaker_than_single_step",
                      "flag_transfer_stronger_than_white_box", "flag_minimal_attacks_fail",
                      "flag_vanishing_gradients"}


def test_sanity_flags_stay_down_on_an_honest_evaluation():
    records = [
        rec("white-box", "accuracy", 0.9, lo=0.85, hi=0.95),
        rec("white-box", "worst_case_accuracy", 0.5, eps=0.1, lo=0.45, hi=0.55, norm="linf"),
        rec("white-box", "worst_case_accuracy", 0.0, eps=0.3, lo=0.0, hi=0.05, norm="linf"),
        rec("white-box", "robust_accuracy", 0.6, eps=0.1, attack="fgsm", lo=0.55, hi=0.65,
            norm="linf"),
        rec("white-box", "robust_accuracy", 0.5, eps=0.1, attack="pgd", lo=0.45, hi=0.55,
            norm="linf"),
        rec("black-box", "worst_transfer_accuracy", 0.7, eps=0.1, lo=0.65, hi=0.75),
        rec("minimal-perturbation", "success_rate", 0.9, attack="deepfool"),
        rec("loss-sensitivity", "loss_sensitivity", 0.5),
    ]
    reference = [rec("loss-sensitivity", "loss_sensitivity", 1.0)]
    flags = compute_flags(records, reference, {"fgsm"})
    assert len(flags) == 6 and not any(f.value for f in flags)


@pytest.mark.parametrize("suite", shipped_suites())
def test_every_shipped_suite_expands_and_validates_without_data(suite):
    plan = make_plan(load_suite(suite), default_registry())
    kinds = plan.counts()
    assert kinds["train"] and kinds["eval"] and kinds.get("flags")
    protocols = {c.labels.get("protocol") for c in plan.cells if c.kind == "eval"}
    assert protocols == set(load_suite(suite).protocols)


def test_defense_independent_work_is_shared_between_defenses():
    suite = load_suite("quick")
    a = make_plan(suite, default_registry(), ["gda-brelu"])
    b = make_plan(suite, default_registry(), ["fgsm-at"])
    shared = lambda p: {c.key for c in p.cells if c.kind == "prepare" or (  # noqa: E731
        c.kind == "train" and c.labels["role"] != "defense")}
    assert shared(a) == shared(b)
    roles = {c.labels["role"] for c in a.cells if c.kind == "train"}
    assert {"reference", "substitute-none", "substitute-ifgsm-at", "member-cnn-001-5"} <= roles


def test_gda_brelu_raises_empirical_robustness_over_none(digits_model):
    """001 Table 2: GDA + BReLU needs larger minimal FGSM perturbations than the plain CNN."""
    from advarena.runner import split_validation
    from advarena.trainer import TrainConfig, TrainingSession

    _, splits = digits_model
    train, val = split_validation(splits.train, 0.1, 0)
    data = splits.test.subset(slice(0, 200))
    robustness = {}
    for name in ("none", "gda-brelu"):
        torch.manual_seed(0)
        defense = advarena.defense(name)
        info = splits.info
        net = advarena.architecture("cnn-001").build(info, defense.activation(info) or nn.ReLU)
        session = TrainingSession(net, info, train, val, TrainConfig(epochs=8), defense,
                                  device=torch.device("cpu"), seed=0)
        defense.fit(session)
        model = Classifier(session.model).eval()
        x_adv = advarena.attack("fgsm-minimal")(model, data.x, data.y)
        fooled = (model(data.x).argmax(1) == data.y) & (model(x_adv).argmax(1) != data.y)
        ratio = (x_adv - data.x).flatten(1).norm(dim=1) / data.x.flatten(1).norm(dim=1)
        robustness[name] = float(ratio[fooled].mean())
    assert robustness["gda-brelu"] > 1.2 * robustness["none"]


def test_repeated_attacks_report_error_rates_on_the_robust_learner(setup):
    model, splits, data = setup
    attacks = {"fgsm": advarena.attack("fgsm"),
               "adam-evasion": advarena.attack("adam-evasion", steps=100)}
    wb = advarena.protocol("white-box", attacks=("fgsm",), eps=(0.1,), headline_eps=0.1,
                           repeated=("adam-evasion",))
    ctx = context(splits, data, attacks, model=model)
    recs = {r.metric: r for r in wb.evaluate(ctx)}
    error = recs["repeated_error_rate"]
    assert error.attack == "adam-evasion"
    # Every clean error counts, and the attack adds errors on this undefended model.
    assert error.value > 1 - recs["accuracy"].value
