"""The white-box protocol's definitions: robust <= clean, worst case = per-example AND over
attacks, an input-independent model cannot be attacked, and the headline flag sits at
headline_eps only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advarena.errors import ParameterError
from advarena.evaluation import EvalContext, unpack_outcomes
from advarena.models import Classifier
from advarena.plugins import default_registry
from advarena.protocols.white_box import WhiteBox

EPS = (0.05, 0.1, 0.3)
HEADLINE = 0.1
N_EVAL = 120


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models train fastest on one thread, and on a CPU shared with other processes
    multi-threaded torch spins in its thread barriers (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_ctx(model, splits, n: int = N_EVAL, batch_size: int = 50) -> EvalContext:
    reg = default_registry()
    attacks = {"fgsm": reg.create("attacks", "fgsm"), "pgd": reg.create("attacks", "pgd", steps=5)}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(splits.test), generator=gen)[:n]
    return EvalContext(info=splits.info, data=splits.test.subset(idx), train=splits.train,
                       device=torch.device("cpu"), seed=0, attacks=attacks,
                       batch_size=batch_size, model=model)


def evaluate(model, splits, **kw):
    proto = WhiteBox(attacks=("fgsm", "pgd"), eps=EPS, headline_eps=HEADLINE)
    return proto.evaluate(make_ctx(model, splits, **kw))


def bits(m) -> list[bool]:
    out = unpack_outcomes(m.extra["outcomes"])
    assert len(out) == m.n
    assert sum(out) == pytest.approx(m.value * m.n)
    return out


@pytest.fixture(scope="module")
def records(digits_model):
    model, splits = digits_model
    return evaluate(model, splits)


def split(records):
    clean = [m for m in records if m.metric == "accuracy"]
    robust = [m for m in records if m.metric == "robust_accuracy"]
    worst = [m for m in records if m.metric == "worst_case_accuracy"]
    return clean, robust, worst


def test_record_layout(records):
    clean, robust, worst = split(records)
    assert len(clean) == 1
    assert {(m.attack, m.eps) for m in robust} == {(a, e) for a in ("fgsm", "pgd") for e in EPS}
    assert len(robust) == 2 * len(EPS)
    assert sorted(m.eps for m in worst) == sorted(EPS)
    for m in records:
        # the gradient shares count the correctly classified examples only
        assert m.n == N_EVAL or m.extra.get("denominator") == "correctly classified"
        assert m.ci_low <= m.value <= m.ci_high
        assert m.ci_high - m.ci_low > 0
        assert 0 <= m.value <= 1


def test_robust_accuracy_never_exceeds_clean(records):
    (clean,), robust, _ = split(records)
    clean_bits = bits(clean)
    assert clean.value > 0.5  # the fixture model learned something, so the check has teeth
    for m in robust:
        assert m.value <= clean.value, (m.attack, m.eps)
        # per example: robust implies correct on the clean input
        assert all(c for c, r in zip(clean_bits, bits(m)) if r), (m.attack, m.eps)


def test_attacks_are_actually_applied(records):
    (clean,), robust, worst = split(records)
    strongest = max(EPS)
    assert all(m.value < clean.value for m in robust if m.eps == strongest)
    assert next(m for m in worst if m.eps == strongest).value < clean.value


def test_worst_case_is_per_example_and(records):
    _, robust, worst = split(records)
    for w in worst:
        same_eps = [m for m in robust if m.eps == w.eps]
        assert len(same_eps) == 2
        for m in same_eps:
            assert w.value <= m.value
        expected = [all(col) for col in zip(*(bits(m) for m in same_eps))]
        assert bits(w) == expected
        assert w.value == pytest.approx(sum(expected) / len(expected))
        assert w.attack == "worst-case"


def test_headline_flag_only_at_headline_eps(records):
    _, robust, worst = split(records)
    flagged = [m for m in worst if m.extra.get("headline")]
    assert [m.eps for m in flagged] == [HEADLINE]
    assert all(m.extra.get("headline") is False for m in worst if m.eps != HEADLINE)
    assert not any(m.extra.get("headline") for m in robust)


def test_outcomes_are_independent_of_batch_size(digits_model):
    """The attacks are deterministic (FGSM) so batching must not change who is robust."""
    model, splits = digits_model
    proto = WhiteBox(attacks=("fgsm",), eps=(0.1,), headline_eps=0.1)
    a = proto.evaluate(make_ctx(model, splits, batch_size=N_EVAL))
    b = proto.evaluate(make_ctx(model, splits, batch_size=7))
    assert [m.extra["outcomes"] for m in a] == [m.extra["outcomes"] for m in b]


class ZeroSlope(nn.Module):
    """Logits that do not depend on the input value (its gradient is exactly zero)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(0, 1, n_classes))

    def forward(self, x):
        return self.bias + 0.0 * x.flatten(1).sum(1, keepdim=True)


class Constant(nn.Module):
    """Logits that never touch the input at all."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(0, 1, n_classes))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def _check_input_independent(module_cls, splits):
    model = Classifier(module_cls(splits.info.num_classes), splits.info.bounds).eval()
    records = evaluate(model, splits)
    (clean,), robust, worst = split(records)
    # the constant prediction is the last class: right on about a tenth of the examples
    assert 0 < clean.value < 1
    for m in robust + worst:
        assert m.value == clean.value, (m.metric, m.attack, m.eps)
        assert bits(m) == bits(clean)


def test_model_with_zero_input_gradient_has_robust_equal_clean(digits_model):
    _check_input_independent(ZeroSlope, digits_model[1])


def test_model_ignoring_its_input_has_robust_equal_clean(digits_model):
    _check_input_independent(Constant, digits_model[1])


def test_headline_eps_must_be_in_sweep():
    with pytest.raises(ParameterError):
        WhiteBox(eps=(0.1, 0.2), headline_eps=0.3)
    with pytest.raises(ParameterError):
        WhiteBox(eps=(-0.1, 0.1), headline_eps=0.1)


def test_unbounded_attack_is_refused(digits_model):
    from advarena.api import Attack, ThreatModel

    class Minimal(Attack):
        name = "test-minimal"
        threat_model = ThreatModel(norm="l2", budget="minimal")

        def run(self, model, inputs, labels, eps, generator=None):
            return inputs

    model, splits = digits_model
    ctx = make_ctx(model, splits, n=10)
    ctx.attacks = {"test-minimal": Minimal()}
    with pytest.raises(ParameterError):
        WhiteBox(attacks=("test-minimal",), eps=(0.1,), headline_eps=0.1).evaluate(ctx)


@pytest.mark.parametrize("n", [7, 10, 100, 400])
def test_interval_contains_the_estimate_at_the_extremes(n):
    from advarena.evaluation import accuracy_measurement

    none = accuracy_measurement("robust_accuracy", torch.zeros(n, dtype=torch.bool))
    every = accuracy_measurement("robust_accuracy", torch.ones(n, dtype=torch.bool))
    assert none.value == 0.0 and every.value == 1.0
    assert none.ci_low <= none.value and every.value <= every.ci_high


def test_sanity_flags_accept_white_box_records(records):
    from advarena.sanity import compute_flags

    flat = [{"protocol": "white-box", "metric": m.metric, "value": m.value, "n": m.n,
             "ci_low": m.ci_low, "ci_high": m.ci_high, "attack": m.attack, "eps": m.eps,
             "extra": m.extra} for m in records]
    flags = compute_flags(flat, flat, {"fgsm"})
    assert all(f.value in (0.0, 1.0) for f in flags)
