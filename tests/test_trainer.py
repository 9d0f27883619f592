"""The shared trainer: passes per example are measured by hooks on the network (never reported
by the defense), data copies come from the augmented set, and epochs are recorded."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advarena.api import Defense, DatasetInfo, TensorData
from advarena.models import Classifier
from advarena.params import param
from advarena.plugins import default_registry
from advarena.trainer import PassCounter, TrainConfig, TrainingSession

INFO = DatasetInfo("tiny", (1, 4, 4), 3)
N_TRAIN = 40
BATCH = 16  # 40 = 16 + 16 + 8: a short last batch, so per-example weighting matters


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models train fastest on one thread, and on a CPU shared with other processes
    multi-threaded torch spins in its thread barriers (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_data(n: int, seed: int) -> TensorData:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = (torch.rand(n, 1, 4, 4, generator=gen) * 0.5 + y.view(-1, 1, 1, 1) * 0.25).clamp(0, 1)
    return TensorData(x, y)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def session(defense: Defense, *, epochs: int = 2, n_val: int = 12,
            batch: int = BATCH) -> TrainingSession:
    config = TrainConfig(epochs=epochs, batch_size=batch, lr=1e-2)
    return TrainingSession(tiny_net(), INFO, tiny_data(N_TRAIN, 1), tiny_data(n_val, 2), config,
                           defense, device=torch.device("cpu"), seed=0)


def fit(defense: Defense, **kw) -> tuple[TrainingSession, dict]:
    s = session(defense, **kw)
    defense.fit(s)
    return s, s.cost()


# -- fixture defenses --------------------------------------------------------------------------

class FGSMHalf(Defense):
    """0.5 J(x) + 0.5 J(x_adv), one FGSM example crafted per batch through ctx.run_attack."""

    name = "test-fgsm-half"
    eps: float = param(0.1, ge=0)

    def training_attacks(self):
        return ("fgsm",)

    def loss(self, model, x, y, ctx):
        x_adv = ctx.run_attack(ctx.attack("fgsm"), model, x, y, eps=self.eps)
        return 0.5 * ctx.cross_entropy(model(x), y) + 0.5 * ctx.cross_entropy(model(x_adv), y)


class PGDOnly(Defense):
    """Madry-style: train on PGD examples only (I crafting steps, then one training pass)."""

    name = "test-pgd-only"
    steps: int = param(3, ge=1)

    def training_attacks(self):
        return ("pgd",)

    def loss(self, model, x, y, ctx):
        atk = ctx.attack("pgd", steps=self.steps)
        x_adv = ctx.run_attack(atk, model, x, y, eps=0.1)
        return ctx.cross_entropy(model(x_adv), y)


class KLSmooth(Defense):
    """A second forward pass on a perturbed copy, tied to the first by a KL term: one sweep."""

    name = "test-kl"

    def regularizer(self, model, x, y, logits, ctx):
        noisy = (x + 0.05 * torch.randn(x.shape, generator=ctx.generator)).clamp(0, 1)
        return F.kl_div(F.log_softmax(model(noisy), 1), F.softmax(logits, 1),
                        reduction="batchmean")


class CountSteps(Defense):
    name = "test-count-steps"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "calls", [])

    def after_step(self, model, ctx):
        assert not torch.is_grad_enabled()
        self.calls.append((ctx.epoch, ctx.step))


class TwoStages(Defense):
    name = "test-two-stages"

    def fit(self, session):
        session.train(epochs=1)
        session.train(epochs=2, lr=1e-3)


def registry_defense(name: str, **params) -> Defense:
    return default_registry().create("defenses", name, **params)


# -- passes ----------------------------------------------------------------------------------

def test_plain_defense_is_one_forward_one_backward():
    s, cost = fit(registry_defense("none"))
    assert cost["forward_per_example"] == pytest.approx(1.0)
    assert cost["backward_per_example"] == pytest.approx(1.0)
    assert cost["data_copies"] == pytest.approx(1.0)
    assert cost["passes_per_example"] == pytest.approx(2.0)


@pytest.mark.parametrize("n", [1, 3])
def test_gda_costs_n_plus_one_copies_at_one_pass_each(n):
    s, cost = fit(registry_defense("gda", n=n))
    assert cost["data_copies"] == pytest.approx(n + 1)
    assert cost["forward_per_example"] == pytest.approx(1.0)
    assert cost["backward_per_example"] == pytest.approx(1.0)
    assert cost["passes_per_example"] == pytest.approx((n + 1) * 2)
    # every augmented example is trained on once per epoch
    assert s.trained_examples == (n + 1) * N_TRAIN * cost["epochs"]


def test_gda_brelu_costs_like_gda():
    _, cost = fit(registry_defense("gda-brelu", n=2))
    assert cost["data_copies"] == pytest.approx(3)
    assert (cost["forward_per_example"], cost["backward_per_example"]) == pytest.approx((1, 1))


def test_fgsm_crafting_counts_three_forward_three_backward():
    # crafting: 1 forward + 1 backward; training: forwards on x and x_adv and one sweep back
    # through both branches (2 backward example-passes; 000's unit: 1 sweep)
    _, cost = fit(FGSMHalf())
    assert cost["forward_per_example"] == pytest.approx(3.0)
    assert cost["backward_per_example"] == pytest.approx(3.0)
    assert cost["backward_sweeps_per_example"] == pytest.approx(2.0)
    assert cost["passes_per_example"] == pytest.approx(6.0)
    assert "example-passes" in cost["pass_unit"] and "sweeps" in cost["sweep_unit"]


@pytest.mark.parametrize("steps", [1, 3])
def test_pgd_training_counts_steps_plus_one_of_each(steps):
    # 000 Table I: PGD-I is (I + 1) F + (I + 1) B, in both units
    _, cost = fit(PGDOnly(steps=steps))
    assert cost["forward_per_example"] == pytest.approx(steps + 1)
    assert cost["backward_per_example"] == pytest.approx(steps + 1)
    assert cost["backward_sweeps_per_example"] == pytest.approx(steps + 1)


def test_second_forward_without_second_backward_sweep():
    # 000 Table I: virtual-alpha's KL is 2 F + 1 B in sweeps; the one sweep flows back through
    # both forwards, 2 backward example-passes of work
    _, cost = fit(KLSmooth())
    assert cost["forward_per_example"] == pytest.approx(2.0)
    assert cost["backward_sweeps_per_example"] == pytest.approx(1.0)
    assert cost["backward_per_example"] == pytest.approx(2.0)


def test_composition_of_regularizer_and_augmentation():
    from advarena.api import Composite

    comp = Composite([registry_defense("gda", n=1), KLSmooth()])
    _, cost = fit(comp)
    assert cost["data_copies"] == pytest.approx(2)
    assert (cost["forward_per_example"], cost["backward_per_example"],
            cost["backward_sweeps_per_example"]) == pytest.approx((2, 2, 1))


def test_validation_forwards_are_not_counted():
    # accuracy() runs forwards after every epoch; none of them may be counted as training passes
    _, short = fit(registry_defense("none"), n_val=4)
    _, long = fit(registry_defense("none"), n_val=200)
    assert short["forward_per_example"] == long["forward_per_example"] == pytest.approx(1.0)


def test_pass_counter_counts_examples_and_sweeps():
    net = tiny_net()
    counter = PassCounter(net)
    x = torch.rand(5, 1, 4, 4)
    net(x)  # inactive: not counted
    assert (counter.forward_examples, counter.sweeps) == (0, 0)
    counter.active = True
    a, b = net(x), net(x[:3])
    (a.sum() + b.sum()).backward()  # two branches, one sweep: 5 + 3 rows of backward work
    assert (counter.forward_examples, counter.backward_examples, counter.sweeps) == (8, 8, 1)
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(net(xg).sum(), xg)  # autograd.grad is a sweep too
    assert (counter.forward_examples, counter.backward_examples, counter.sweeps) == (13, 13, 2)
    counter.remove()
    net(x).sum().backward()
    assert (counter.forward_examples, counter.backward_examples, counter.sweeps) == (13, 13, 2)


def counted(fn) -> tuple[int, int, int]:
    net = tiny_net()
    counter = PassCounter(net)
    counter.active = True
    fn(net)
    counter.remove()
    return counter.forward_examples, counter.backward_examples, counter.sweeps


def test_batched_gradients_count_like_the_loop_they_replace():
    """One ``autograd.grad(..., is_grads_batched=True)`` with M cotangents is M backward passes
    of work: it counts as the same M gradients taken one by one."""
    x = torch.rand(5, 1, 4, 4)
    cot = torch.eye(3).unsqueeze(1).expand(3, 5, 3)  # one cotangent per class

    def batched(net):
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(net(xg), xg, cot, is_grads_batched=True)

    def looped(net):
        xg = x.clone().requires_grad_(True)
        out = net(xg)
        for c in cot:
            torch.autograd.grad(out, xg, c, retain_graph=True)

    assert counted(batched) == counted(looped) == (5, 15, 3)


def test_deepfool_crafting_counts_like_its_looped_fallback(monkeypatch):
    """The DeepFool plugin takes its per-class gradients in one batched call; its fallback (for
    layers without a batching rule) loops. Both do the same work and count the same."""
    from advarena_attacks import deepfool

    x, y = tiny_data(12, 3).x, tiny_data(12, 3).y
    attack = default_registry().create("attacks", "deepfool", max_iter=3)

    def craft(net):
        attack(Classifier(net, (0.0, 1.0)), x, y)

    batched = counted(craft)

    def looped_input_grads(outputs, x, cotangents):
        return torch.stack([torch.autograd.grad(outputs, x, c, retain_graph=True)[0]
                            for c in cotangents])

    monkeypatch.setattr(deepfool, "input_grads", looped_input_grads)
    looped = counted(craft)
    assert batched == looped
    assert batched[1] > batched[0]  # several class gradients per forward


# -- records ---------------------------------------------------------------------------------

def test_epoch_records_and_validation_accuracy():
    epochs = 3
    s, cost = fit(registry_defense("none"), epochs=epochs, n_val=12)
    assert [h.epoch for h in s.history] == list(range(epochs))
    assert {h.stage for h in s.history} == {0}
    n_val = len(s.val)
    for h in s.history:
        assert h.seconds >= 0 and math.isfinite(h.train_loss)
        # an accuracy on n_val examples is a multiple of 1/n_val
        assert 0 <= h.val_accuracy <= 1
        assert h.val_accuracy * n_val == pytest.approx(round(h.val_accuracy * n_val))
    assert cost["epochs"] == epochs and cost["stages"] == 1
    assert cost["final_val_accuracy"] == s.history[-1].val_accuracy
    assert cost["final_val_accuracy"] == pytest.approx(s.accuracy(s.model, s.val))
    curve = cost["val_accuracy_curve"]
    assert [v for _, v in curve] == [h.val_accuracy for h in s.history]
    times = [t for t, _ in curve]
    assert times == sorted(times)
    assert cost["total_seconds"] == pytest.approx(sum(h.seconds for h in s.history))
    assert min(h.seconds for h in s.history) <= cost["median_epoch_seconds"] <= \
        max(h.seconds for h in s.history)


def test_training_reduces_loss():
    s, _ = fit(registry_defense("none"), epochs=8)
    assert s.history[-1].train_loss < s.history[0].train_loss


def test_no_validation_split_gives_nan_accuracy():
    s, cost = fit(registry_defense("none"), n_val=0)
    assert all(math.isnan(h.val_accuracy) for h in s.history)
    assert math.isnan(cost["final_val_accuracy"])


def test_after_step_called_once_per_step():
    d = CountSteps()
    epochs = 3
    s, _ = fit(d, epochs=epochs)
    steps_per_epoch = math.ceil(N_TRAIN / BATCH)
    assert d.calls == [(e, i) for e in range(epochs) for i in range(steps_per_epoch)]


def test_multi_stage_fit_records_each_stage():
    s, cost = fit(TwoStages())
    assert cost["stages"] == 2
    assert [(h.stage, h.epoch) for h in s.history] == [(0, 0), (1, 0), (1, 1)]
    assert cost["forward_per_example"] == pytest.approx(1.0)
    assert cost["backward_per_example"] == pytest.approx(1.0)


def test_model_is_left_in_eval_mode_and_trained():
    s = session(registry_defense("none"))
    before = [p.detach().clone() for p in s.model.parameters()]
    s.defense.fit(s)
    assert not s.model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, s.model.parameters()))


def test_training_is_reproducible_with_the_same_seed():
    a, _ = fit(registry_defense("gda", n=1))
    b, _ = fit(registry_defense("gda", n=1))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_run_attack_output_respects_the_threat_model():
    s = session(registry_defense("fgsm-at"))  # a defense that declares the fgsm it builds
    from advarena.trainer import StepContext

    ctx = StepContext(s, s.defense, 0, 0)
    x, y = s.data.x[:8], s.data.y[:8]
    x_adv = ctx.run_attack(ctx.attack("fgsm"), s.model, x, y, eps=0.1)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    # a classifier keeps its own bounds
    clf = Classifier(s.model, (0.0, 1.0))
    assert ctx.run_attack(ctx.attack("fgsm"), clf, x, y, eps=0.0).equal(x)


@pytest.mark.parametrize("kw", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0},
                                {"optimizer": "rmsprop"}, {"val_fraction": 1.0}])
def test_train_config_validates(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)


# -- the training-cost protocol's overhead statistic ---------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 5, 6, 9, 20])
def test_median_interval_is_the_binomial_order_statistic_interval(n):
    from scipy.stats import binom

    from advarena.protocols.training_cost import median_interval

    values = [float(v) for v in torch.randperm(n, generator=torch.Generator().manual_seed(n))]
    low, high, coverage = median_interval(values)
    ranked = sorted(values)
    # the widest j (from the outside) with coverage >= 95%, else the full range
    best = 1
    for j in range(1, (n + 1) // 2 + 1):
        if 1 - 2 * binom.cdf(j - 1, n, 0.5) >= 0.95:
            best = j
    assert (low, high) == (ranked[best - 1], ranked[n - best])
    assert coverage == pytest.approx(1 - 2 * binom.cdf(best - 1, n, 0.5))
    assert low <= statistics_median(values) <= high


def statistics_median(values):
    import statistics

    return statistics.median(values)


def test_overhead_is_the_median_of_interleaved_per_repeat_ratios(monkeypatch):
    """Each repeat times both roles back to back, in alternating order; a slow moment of the
    machine (planted: one repeat's reference 50x slower) spoils one ratio, not the result."""
    import types

    from advarena.protocols import training_cost
    from advarena.protocols.training_cost import TrainingCost

    order: list[str] = []
    clock = {"t": 0.0}
    cost = {"reference": 1.0, "model": 3.0}

    class Timed(Defense):
        name = "test-timed"

        def __init__(self, role):  # noqa: D107
            self.role = role

        def fit(self, session):
            order.append(self.role)
            slow = 50.0 if (self.role == "reference" and len(order) == 6) else 1.0
            clock["t"] += cost[self.role] * slow

    monkeypatch.setattr(training_cost.time, "perf_counter", lambda: clock["t"])
    data = tiny_data(8, 0)
    ctx = types.SimpleNamespace(
        train_records={"model": {"spec": {"train": {"epochs": 1}}}},
        splits=types.SimpleNamespace(train=data), info=INFO, device=torch.device("cpu"), seed=0,
        reference=None, progress=lambda *a: None,
        fresh_model=lambda role: types.SimpleNamespace(net=tiny_net(), transform=None),
        defense_of=lambda role: Timed(role))
    m = TrainingCost(timing_repeats=5, timing_examples=8)._same_cell_overhead(ctx)
    assert sorted(order[:2]) == ["model", "reference"]  # the warm-up, then alternating
    assert order[2:6] == ["reference", "model", "model", "reference"]
    assert m.extra["ratios"][1] == pytest.approx(3 / 50)  # the spoiled repeat
    assert m.value == pytest.approx(3.0)
    assert m.ci_low <= 3.0 <= m.ci_high and m.extra["statistic"].startswith("median")
