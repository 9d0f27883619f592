"""The harness's threat-model check (run_checked / check_output) and the first-party attacks'
threat-model properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advarena
from advarena.errors import ParameterError, ThreatModelViolation
from advarena.models import AveragedLogits, Classifier, predict
from advarena.plugins import Registry, make_plugin_manager
from advarena.threat import ABS_TOL, perturbation_norm


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(seed: int = 0, bounds=(0.0, 1.0)) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), bounds)


@pytest.fixture
def batch():
    """Inputs well inside [0, 1] (so a small shift stays in the box) and labels."""
    gen = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(5, 1, 4, 4, generator=gen)
    y = torch.randint(0, 3, (5,), generator=gen)
    return x, y


@pytest.fixture
def bad(fixture_plugin):
    return fixture_plugin("bad_attacks")


@pytest.fixture
def bad_registry(bad):
    """The installed plugins plus the bad attacks, as a user with that plugin would have."""
    return Registry(make_plugin_manager([bad]))


# --- violations are caught and named --------------------------------------------------------

VIOLATIONS = [
    ("bad-out-of-ball", {}, r"left the linf ball of eps=0\.1 on 5 of 5 examples"),
    ("bad-non-finite", {}, r"non-finite values for 1 of 5 examples"),
    ("bad-non-finite", {"value": float("inf")}, r"non-finite"),
    ("bad-shape", {}, r"returned shape \(4, 1, 4, 4\) for inputs of shape \(5, 1, 4, 4\)"),
    ("bad-out-of-box", {}, r"left the input box \[0\.0, 1\.0\]"),
    ("bad-dtype", {}, r"returned dtype torch\.float64, expected torch\.float32"),
    ("bad-not-tensor", {}, r"returned list, not a tensor"),
]


@pytest.mark.parametrize("name,params,violation", VIOLATIONS,
                         ids=[f"{v[0]}-{i}" for i, v in enumerate(VIOLATIONS)])
def test_violations_are_caught_through_the_public_call(bad_registry, batch, name, params,
                                                       violation):
    x, y = batch
    attack = bad_registry.create("attacks", name, **params)
    with pytest.raises(ThreatModelViolation, match=violation) as info:
        attack(tiny_model(), x, y, eps=0.1)
    msg = str(info.value)
    assert f"attack '{name}'" in msg
    # Attributed to the plugin that registered it.
    assert "bad_attacks" in msg


def test_violation_names_an_attack_built_directly(bad, batch):
    x, y = batch
    with pytest.raises(ThreatModelViolation, match="attack 'bad-out-of-ball'"):
        bad.OutOfBall()(tiny_model(), x, y, eps=0.05)


def test_out_of_box_is_caught_below_the_box_too(bad, batch):
    x, y = batch
    model = tiny_model(bounds=(0.0, 0.7))
    x = x.clamp(max=0.7)

    class Below(bad.OutOfBox):
        name = "probe-below"

        def run(self, model, inputs, labels, eps, generator=None):
            out = inputs.clone()
            out.view(len(out), -1)[-1, -1] = model.bounds[0] - self.excess
            return out

    with pytest.raises(ThreatModelViolation, match=r"input box \[0\.0, 0\.7\]"):
        Below()(model, x, y, eps=1.0)
    # A box other than [0, 1]: 0.71 is inside [0, 1] but outside [0, 0.7].
    with pytest.raises(ThreatModelViolation, match="input box"):
        bad.OutOfBox(excess=0.01)(model, x, y, eps=1.0)


def test_a_violation_within_tolerance_is_not_one(bad, batch):
    x, y = batch
    # A few ulps outside the ball or box is float arithmetic, not an attack bug.
    bad.OutOfBall(factor=1.0 + 1e-7)(tiny_model(), x, y, eps=0.1)
    bad.OutOfBox(excess=ABS_TOL / 10)(tiny_model(), x, y, eps=1.0)


def test_a_small_but_real_linf_excess_is_caught(bad, batch):
    x, y = batch
    with pytest.raises(ThreatModelViolation, match="linf ball"):
        bad.OutOfBall(factor=1.001)(tiny_model(), x, y, eps=0.1)


# --- L2 ball --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_on_the_sphere_passes(bad, batch, seed):
    x, y = batch
    eps = 0.2  # no coordinate can move by more than 0.2: the box [0, 1] is never reached
    x_adv = bad.L2Scaled(scale=1.0)(tiny_model(), x, y, eps=eps, seed=seed)
    norms = perturbation_norm(x_adv - x, "l2")
    # It really is on the sphere (up to float32 rounding), not comfortably inside it.
    assert torch.allclose(norms, torch.full_like(norms, eps), rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [1.001, 1.0001])
def test_l2_slightly_outside_is_caught(bad, batch, scale):
    x, y = batch
    with pytest.raises(ThreatModelViolation, match=r"'probe-l2-scaled'.*l2 ball of eps=0\.2"):
        bad.L2Scaled(scale=scale)(tiny_model(), x, y, eps=0.2)


def test_l2_ball_is_measured_in_l2(bad, batch):
    x, y = batch
    # Inside the L2 ball although its L1 norm is several times eps.
    x_adv = bad.L2Scaled(scale=0.9)(tiny_model(), x, y, eps=0.2)
    assert float((x_adv - x).abs().sum(dim=(1, 2, 3)).min()) > 0.4
    # Every coordinate within eps (so inside the Linf ball), but the L2 norm is 4 * eps.
    class Corner(bad.L2Scaled):
        name = "probe-l2-corner"

        def run(self, model, inputs, labels, eps, generator=None):
            return inputs + eps

    with pytest.raises(ThreatModelViolation, match="l2 ball"):
        Corner()(tiny_model(), x, y, eps=0.2)


def test_perturbation_norms():
    delta = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]])
    assert perturbation_norm(delta, "linf").tolist() == [4.0, 0.0]
    assert perturbation_norm(delta, "l2").tolist() == [5.0, 0.0]
    assert perturbation_norm(delta, "l0").tolist() == [2.0, 0.0]
    with pytest.raises(ValueError):
        perturbation_norm(delta, "l1")


# --- budgets and labels ---------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, float("nan"), "0.1", True, None])
def test_bad_eps_raises_parameter_error(bad, batch, eps):
    x, y = batch

    class NoDefault(bad.Identity):
        name = "probe-no-default"

        def default_eps(self):
            return None

    attack = NoDefault() if eps is None else advarena.attack("fgsm")
    with pytest.raises(ParameterError, match="eps"):
        attack(tiny_model(), x, y, eps=eps)


def test_default_eps_is_the_attack_parameter(bad, batch):
    x, y = batch
    bad.Identity.calls.clear()
    bad.Identity(eps=0.07)(tiny_model(), x, y)
    bad.Identity(eps=0.07)(tiny_model(), x, y, eps=0.2)
    assert [c[1] for c in bad.Identity.calls] == [0.07, 0.2]


def test_eps_on_a_minimal_attack_raises(bad, batch):
    x, y = batch
    attack = bad.Minimal()
    with pytest.raises(ParameterError, match="minimal attack takes no eps"):
        attack(tiny_model(), x, y, eps=0.1)
    assert torch.equal(attack(tiny_model(), x, y), x)


def test_mismatched_labels_raise(batch):
    x, y = batch
    with pytest.raises(ParameterError, match="5 inputs but 4 labels"):
        advarena.attack("fgsm")(tiny_model(), x, y[:4], eps=0.1)


# --- the model's mode is restored -----------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored(bad, batch, training):
    x, y = batch
    model = tiny_model().train(training)
    bad.Identity.calls.clear()
    bad.Identity()(model, x, y, eps=0.1)
    (modes, _), = bad.Identity.calls
    assert not any(modes[id(m)] for m in model.modules()), "the attack must see eval mode"
    assert all(m.training == training for m in model.modules())


def test_model_mode_is_restored_when_the_attack_raises(bad, batch):
    x, y = batch
    model = tiny_model().train()
    with pytest.raises(RuntimeError, match="probe failure"):
        bad.Raising()(model, x, y, eps=0.1)
    assert all(m.training for m in model.modules())


def test_model_mode_is_restored_after_a_violation(bad, batch):
    x, y = batch
    model = tiny_model().train()
    with pytest.raises(ThreatModelViolation):
        bad.OutOfBall()(model, x, y, eps=0.1)
    assert model.training


def test_ensemble_member_modes_are_restored(bad, batch):
    x, y = batch
    members = [tiny_model(0).train(), tiny_model(1).eval()]
    for cls in (bad.Identity, bad.EnsembleIdentity):
        bad.Identity.calls.clear()
        cls()(members, x, y, eps=0.1)
        (modes, _), = bad.Identity.calls
        # Every module of every member is in eval mode while the attack runs (a wrapper that
        # averages the members' logits has no mode-dependent behaviour of its own).
        assert not any(modes[id(m)] for member in members for m in member.modules())
        assert [m.training for m in members] == [True, False]


def test_submodule_modes_are_restored(bad, batch):
    x, y = batch
    model = tiny_model().train()
    model.net[1].eval()  # frozen layer inside a training model
    before = [m.training for m in model.modules()]
    bad.Identity()(model, x, y, eps=0.1)
    assert [m.training for m in model.modules()] == before


@pytest.mark.parametrize("wrap", ["averaged-logits", "classifier"])
def test_wrapped_model_mode_is_restored(bad, batch, wrap):
    x, y = batch
    inner = [tiny_model(0).eval(), tiny_model(1).eval()]
    wrapper = AveragedLogits(inner) if wrap == "averaged-logits" else Classifier(inner[0])
    bad.Identity()(wrapper, x, y, eps=0.1)
    assert not any(m.training for m in inner)


# --- first-party attacks on a trained model -------------------------------------------------


@pytest.fixture(scope="module")
def digits_batch(digits_model):
    model, splits = digits_model
    return model, splits.test.x[:200], splits.test.y[:200]


def accuracy(model, x, y) -> float:
    return float((predict(model, x) == y).float().mean())


@pytest.mark.parametrize("name,params", [
    ("fgsm", {}), ("pgd", {"steps": 10}), ("pgd", {"steps": 5, "random_start": False}),
    ("pgd", {"steps": 5, "step_size": 0.5}),
])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 1.5])
def test_first_party_outputs_stay_in_box_and_ball(digits_batch, name, params, eps):
    model, x, y = digits_batch
    attack = advarena.attack(name, **params)
    x_adv = attack(model, x, y, eps=eps)
    # Checked independently of check_output, with no tolerance beyond float32 rounding.
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= eps * (1 + 1e-6)
    # The raw run (bypassing the harness) obeys the same constraints.
    raw = attack.run(model, x, y, eps, torch.Generator().manual_seed(0))
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0
    assert float((raw - x).abs().max()) <= eps * (1 + 1e-6)
    if eps == 0.0:
        assert torch.equal(x_adv, x)


def test_fgsm_moves_every_free_pixel_by_eps(digits_batch):
    model, x, y = digits_batch
    eps = 0.1
    x_adv = advarena.attack("fgsm")(model, x, y, eps=eps)
    delta = (x_adv - x).abs()
    x_req = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    free = (grad != 0) & (x - eps >= 0) & (x + eps <= 1)
    assert free.any()
    assert torch.allclose(delta[free], torch.full_like(delta[free], eps), atol=1e-6)
    assert torch.equal(torch.sign(x_adv - x)[free], torch.sign(grad)[free])


def test_attacks_lower_accuracy_of_the_trained_model(digits_batch):
    model, x, y = digits_batch
    clean = accuracy(model, x, y)
    assert accuracy(model, advarena.attack("fgsm")(model, x, y, eps=0.2), y) < clean
    assert accuracy(model, advarena.attack("pgd", steps=10)(model, x, y, eps=0.2), y) < clean


def test_attack_does_not_change_the_model(digits_batch):
    model, x, y = digits_batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    advarena.attack("pgd", steps=3)(model, x, y, eps=0.1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_pgd_is_deterministic_under_the_same_seed(digits_batch):
    model, x, y = digits_batch
    pgd = advarena.attack("pgd", steps=5, random_start=True)
    a = pgd(model, x, y, eps=0.1, seed=3)
    b = pgd(model, x, y, eps=0.1, seed=3)
    assert torch.equal(a, b)


def test_pgd_random_start_differs_across_seeds(digits_batch):
    model, x, y = digits_batch
    pgd = advarena.attack("pgd", steps=5, random_start=True)
    a = pgd(model, x, y, eps=0.1, seed=1)
    b = pgd(model, x, y, eps=0.1, seed=2)
    assert not torch.equal(a, b)


def test_pgd_without_random_start_ignores_the_seed(digits_batch):
    model, x, y = digits_batch
    pgd = advarena.attack("pgd", steps=5, random_start=False)
    assert torch.equal(pgd(model, x, y, eps=0.1, seed=1), pgd(model, x, y, eps=0.1, seed=2))


def i_fgsm(model, x, y, eps, step, steps):
    """Basic iterative method (Kurakin et al.): signed steps, each clipped to the eps-ball and
    the box, from the clean input."""
    x_adv = x.clone()
    for _ in range(steps):
        x_req = x_adv.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x_req), y, reduction="sum")
        grad, = torch.autograd.grad(loss, x_req)
        x_adv = x_adv + step * grad.sign()
        x_adv = torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0.0, 1.0)
    return x_adv


@pytest.mark.parametrize("steps,step_size", [(1, 0.1), (4, 0.04), (6, 0.05)])
def test_pgd_without_random_start_is_i_fgsm(digits_batch, steps, step_size):
    model, x, y = digits_batch
    eps = 0.1
    pgd = advarena.attack("pgd", steps=steps, step_size=step_size, random_start=False)
    expected = i_fgsm(model, x, y, eps, step_size, steps)
    assert torch.allclose(pgd(model, x, y, eps=eps), expected, atol=1e-6, rtol=0)


def test_one_pgd_step_of_size_eps_is_fgsm(digits_batch):
    model, x, y = digits_batch
    pgd = advarena.attack("pgd", steps=1, step_size=0.15, random_start=False)
    fgsm = advarena.attack("fgsm")
    assert torch.allclose(pgd(model, x, y, eps=0.15), fgsm(model, x, y, eps=0.15), atol=1e-6)


def test_pgd_default_step_size_follows_madry(digits_batch):
    model, x, y = digits_batch
    eps, steps = 0.1, 4
    auto = advarena.attack("pgd", steps=steps, random_start=False)
    explicit = advarena.attack("pgd", steps=steps, step_size=2.5 * eps / steps,
                               random_start=False)
    assert torch.equal(auto(model, x, y, eps=eps), explicit(model, x, y, eps=eps))


def test_larger_eps_is_not_weaker_for_pgd(digits_batch):
    model, x, y = digits_batch
    pgd = advarena.attack("pgd", steps=10)
    accs = [accuracy(model, pgd(model, x, y, eps=eps), y) for eps in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert accs[0] == accuracy(model, x, y)
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0]


def test_fgsm_on_an_ensemble_attacks_the_averaged_logits(digits_batch):
    model, x, y = digits_batch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        other = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))).eval()
    fgsm = advarena.attack("fgsm")
    a = fgsm([model, other], x, y, eps=0.1)
    # .eval(): a fresh wrapper is in training mode, and run_checked would restore that mode
    # onto the shared model (see test_wrapped_model_mode_is_restored).
    b = fgsm(AveragedLogits([model, other]).eval(), x, y, eps=0.1)
    assert torch.equal(a, b)
    assert not model.training and not other.training
