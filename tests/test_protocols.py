"""The protocols' definitions on small cases whose answer is known (issue 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advarena
from advarena.evaluation import EvalContext, unpack_outcomes
from advarena.models import Classifier
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.protocols.minimal_perturbation import (eps_ref, eps_ref_search,
                                                     fgsm_accuracy_curve,
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


@pytest.mark.parametrize("chunk", [1, 7, 16, 2000])
def test_eps_ref_early_stopping_scan_finds_the_full_grids_first_hit(setup, chunk):
    """The chunked scan stops early; it must land on the grid point scoring the whole grid
    finds (chunk sizes that do and do not divide the grid), and say when none is reached."""
    model, _, data = setup
    grid = torch.arange(0, 1.0 + 1e-2 / 2, 1e-2)
    full = fgsm_accuracy_curve(model, data.x, data.y, grid, N)
    first = float(grid[(full <= 0.5).nonzero()[0, 0]])
    assert eps_ref_search(model, data.x, data.y, N, resolution=1e-2, chunk=chunk) == (
        pytest.approx(first), True)
    # A grid that stops short of the first hit: eps_max, not reached.
    short = first - 2e-2
    if short > 0:
        assert eps_ref_search(model, data.x, data.y, N, eps_max=short, resolution=1e-2,
                              chunk=chunk) == (short, False)


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


def rec(protocol, metric, value, *, eps=None, attack=None, lo=None, hi=None, n=None, bits=None,
        **extra):
    if bits is not None:
        from advarena.evaluation import accuracy_measurement

        m = accuracy_measurement(metric, torch.tensor(bits, dtype=torch.bool))
        extra["outcomes"] = m.extra["outcomes"]
        value, n, lo, hi = m.value, m.n, m.ci_low, m.ci_high
    return {"protocol": protocol, "metric": metric, "value": value, "eps": eps,
            "attack": attack, "ci_low": lo, "ci_high": hi, "n": n, "extra": extra}


def _sanity_records(*, zero=0.0, nonfinite=0.0, top=0.0, square_bits=None, success=0.99,
                    nonfinite_logits=0, fgsm=0.6):
    """A white-box, black-box and minimal-perturbation record set (100 examples)."""
    grad_bits = [1] * 50 + [0] * 50
    return [
        rec("white-box", "accuracy", 0.9, lo=0.85, hi=0.95, n=100),
        rec("white-box", "zero_gradient_share", zero, n=90),
        rec("white-box", "nonfinite_gradient_share", nonfinite, n=90),
        rec("white-box", "worst_case_accuracy", 0.5, eps=0.1, lo=0.45, hi=0.55, norm="linf"),
        rec("white-box", "worst_case_accuracy", top, eps=0.3, lo=max(0, top - 0.05),
            hi=top + 0.05, norm="linf"),
        rec("white-box", "robust_accuracy", None, eps=0.1, attack="fgsm",
            bits=[1] * round(100 * fgsm) + [0] * round(100 * (1 - fgsm)), norm="linf",
            access="gradient"),
        rec("white-box", "robust_accuracy", None, eps=0.1, attack="pgd", bits=grad_bits,
            norm="linf", access="gradient",
            **({"nonfinite_logits": nonfinite_logits} if nonfinite_logits else {})),
        rec("white-box", "robust_accuracy", None, eps=0.1, attack="square",
            bits=square_bits or grad_bits, norm="linf", access="score"),
        rec("black-box", "transfer_accuracy", None, eps=0.1, attack="fgsm@none",
            bits=[1] * 70 + [0] * 30, source_attack="fgsm"),
        # of the 90 correctly classified examples: deepfool fools the first k, cw-l2 the last
        rec("minimal-perturbation", "success_rate", None, attack="deepfool",
            bits=[1] * round(90 * success) + [0] * (100 - round(90 * success))),
        rec("minimal-perturbation", "success_rate", None, attack="cw-l2",
            bits=[0] * 80 + [1] * 10 + [0] * 10),
        rec("minimal-perturbation", "success_rate", 0.1, attack="coordinate-greedy", n=100,
            bits=[1] * 10 + [0] * 90),
    ]


def test_sanity_flags_fire_on_planted_problems():
    records = _sanity_records(zero=0.5, nonfinite=0.1, top=0.6, fgsm=0.2, success=0.5,
                              square_bits=[1] * 5 + [0] * 95, nonfinite_logits=3)
    records.append(rec("white-box", "worst_case_accuracy", 0.1, eps=0.2, lo=0.05, hi=0.15,
                       norm="linf"))
    flags = {f.metric: f.extra["detail"] for f in compute_flags(records, [], {"fgsm"})
             if f.value}
    assert set(flags) == {"flag_zero_gradients", "flag_non_finite", "flag_large_eps_not_broken",
                          "flag_accuracy_rises_with_eps",
                          "flag_iterative_weaker_than_single_step",
                          "flag_gradient_free_beats_white_box", "flag_minimal_attacks_fail"}
    assert "exactly zero on 50.0%" in flags["flag_zero_gradients"]
    assert "NaN/inf" in flags["flag_non_finite"] and "pgd" in flags["flag_non_finite"]
    assert "square" in flags["flag_gradient_free_beats_white_box"]
    # deepfool 45 and cw-l2 10 others: 55 of 90 together
    assert "together fool 61.1%" in flags["flag_minimal_attacks_fail"]
    assert "cw-l2 11.1%" in flags["flag_minimal_attacks_fail"]
    # budgeted minimal searches (coordinate greedy at 11%) are not held to it
    assert "coordinate-greedy" not in flags["flag_minimal_attacks_fail"]


def test_sanity_flags_stay_down_on_an_honest_evaluation():
    # Square finds 1 example the gradient attacks miss: too few to mean masking; a weak cw-l2
    # (11% alone) is covered by deepfool (99%)
    records = _sanity_records(square_bits=[1] * 49 + [0] * 51)
    flags = compute_flags(records, [], {"fgsm"})
    assert {f.metric for f in flags} == {
        "flag_zero_gradients", "flag_non_finite", "flag_large_eps_not_broken",
        "flag_accuracy_rises_with_eps", "flag_iterative_weaker_than_single_step",
        "flag_gradient_free_beats_white_box", "flag_minimal_attacks_fail"}
    assert not any(f.value for f in flags), [f.extra["detail"] for f in flags if f.value]


def test_a_check_whose_inputs_were_not_measured_is_not_recorded():
    records = [rec("minimal-perturbation", "success_rate", None, attack="cw-l2",
                   bits=[1] * 50 + [0] * 50)]
    assert compute_flags(records, [], {"fgsm"}) == []  # no clean accuracy: nothing to scale by
    records[0]["extra"]["denominator"] = "correctly classified"
    (f,) = compute_flags(records, [], {"fgsm"})
    assert f.metric == "flag_minimal_attacks_fail" and f.value == 1.0
    assert compute_flags(records, [], {"fgsm"}, "main") == []  # the other cell's checks only


@pytest.mark.parametrize("suite", shipped_suites())
def test_every_shipped_suite_expands_and_validates_without_data(suite):
    plan = make_plan(load_suite(suite), default_registry())
    kinds = plan.counts()
    assert kinds["train"] and kinds["eval"]
    # Sanity flags read white-box, black-box and minimal-perturbation records (000 Table I's
    # suite runs training-cost alone, and has none).
    checked = {"white-box", "black-box", "minimal-perturbation"} & set(load_suite(suite).protocols)
    assert bool(kinds.get("flags")) == bool(checked)
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
    assert {"reference", "substitute-none", "substitute-ifgsm-at", "member-cnn-001-4"} <= roles


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


def test_a_score_based_attack_at_some_eps_only_does_not_look_like_a_rise():
    # Square ran at eps 0.1 only (score_eps): the protocol's worst case there is lower than at
    # 0.2, but over the attacks that ran at every eps (pgd) accuracy falls
    pgd = {0.1: [1] * 60 + [0] * 40, 0.2: [1] * 55 + [0] * 45}
    records = [rec("white-box", "robust_accuracy", None, eps=e, attack="pgd", bits=b,
                   norm="linf", access="gradient") for e, b in pgd.items()]
    records.append(rec("white-box", "robust_accuracy", None, eps=0.1, attack="square",
                       bits=[1] * 20 + [0] * 80, norm="linf", access="score"))
    records += [rec("white-box", "worst_case_accuracy", None, eps=0.1, bits=[1] * 20 + [0] * 80,
                    norm="linf"),
                rec("white-box", "worst_case_accuracy", None, eps=0.2, bits=pgd[0.2],
                    norm="linf")]
    flags = {f.metric: f.value for f in compute_flags(records, [], {"fgsm"}, "main")}
    assert flags["flag_accuracy_rises_with_eps"] == 0.0
    # the same records with pgd rising for real are flagged
    records[1] = rec("white-box", "robust_accuracy", None, eps=0.2, attack="pgd",
                     bits=[1] * 90 + [0] * 10, norm="linf", access="gradient")
    flags = {f.metric: f.value for f in compute_flags(records, [], {"fgsm"}, "main")}
    assert flags["flag_accuracy_rises_with_eps"] == 1.0
