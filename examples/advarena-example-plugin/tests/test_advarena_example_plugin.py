"""Tests of the example plugin: advarena's conformance checks in one line each, then the
properties of the two methods (not numbers copied from a run).

The fixtures ``advarena_tiny_model`` and ``advarena_tiny_splits`` come from advarena's pytest
plugin (``advarena.testing``), available wherever advarena is installed.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from advarena.testing import (check_attack, check_defense, tiny_net, tiny_splits,
                              train_config)
from advarena_example_plugin.input_gradient import InputGradientRegularization
from advarena_example_plugin.step_ll import StepLL


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads cost more than they save
    yield
    torch.set_num_threads(before)


# --- conformance: what advarena asks of every plugin ------------------------------------------


def test_step_ll_conforms():
    check_attack(StepLL)


def test_input_gradient_reg_conforms():
    check_defense(InputGradientRegularization)


def test_both_are_registered_through_the_entry_point():
    """Needs the package installed (``pip install -e .``): advarena finds it by its entry
    point and attributes it to this distribution."""
    from advarena.plugins import Registry, make_plugin_manager

    registry = Registry(make_plugin_manager())
    for kind, name, cls in (("attacks", "step-ll", StepLL),
                            ("defenses", "input-gradient-reg", InputGradientRegularization)):
        entry = registry.entry(kind, name)
        assert entry.cls is cls
        assert re.sub(r"[-_.]+", "-", entry.distribution).lower() == "advarena-example-plugin"


# --- step-ll -------------------------------------------------------------------------------------


def test_step_ll_is_one_signed_step_against_the_least_likely_class_gradient(
        advarena_tiny_model, advarena_tiny_splits):
    model = advarena_tiny_model
    x, y = advarena_tiny_splits.test.x, advarena_tiny_splits.test.y
    eps = 0.05
    x_adv = StepLL()(model, x, y, eps=eps)

    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    target = logits.argmin(1)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), xr)
    expected = (x - eps * grad.sign()).clamp(0, 1)
    assert torch.equal(x_adv, expected)
    # Unclipped coordinates with a gradient move by exactly eps.
    free = (grad != 0) & ((x - eps * grad.sign()) >= 0) & ((x - eps * grad.sign()) <= 1)
    assert torch.allclose((x_adv - x)[free].abs(), torch.full_like(x[free], eps), atol=1e-6)


def test_step_ll_moves_towards_the_least_likely_class_and_ignores_labels(
        advarena_tiny_model, advarena_tiny_splits):
    model = advarena_tiny_model
    x, y = advarena_tiny_splits.test.x, advarena_tiny_splits.test.y
    with torch.no_grad():
        target = model(x).argmin(1)
    x_adv = StepLL()(model, x, y, eps=0.05)
    with torch.no_grad():
        before = F.cross_entropy(model(x), target)
        after = F.cross_entropy(model(x_adv), target)
    assert after < before
    # The labels play no part: any labels give the same examples.
    assert torch.equal(StepLL()(model, x, (y + 1) % 10, eps=0.05), x_adv)


def test_step_ll_with_a_zero_budget_returns_the_inputs(advarena_tiny_model,
                                                       advarena_tiny_splits):
    x, y = advarena_tiny_splits.test.x, advarena_tiny_splits.test.y
    assert torch.equal(StepLL()(advarena_tiny_model, x, y, eps=0.0), x)


# --- input-gradient-reg ----------------------------------------------------------------------


def step_context(defense, net):
    from advarena.trainer import StepContext, TrainingSession

    splits = tiny_splits()
    session = TrainingSession(net, splits.info, splits.train, splits.test, train_config(),
                              defense, device=torch.device("cpu"), seed=0)
    return StepContext(session, defense, epoch=0, step=0)


def test_penalty_is_the_mean_squared_norm_of_each_examples_input_gradient(advarena_tiny_model,
                                                                           advarena_tiny_splits):
    net = advarena_tiny_model.net
    x, y = advarena_tiny_splits.test.x[:8], advarena_tiny_splits.test.y[:8]
    defense = InputGradientRegularization(lam=2.0)
    ctx = step_context(defense, net)
    norms = []
    for i in range(len(x)):  # one example at a time: no batch effects possible
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xi), y[i:i + 1]), xi)
        norms.append(g.pow(2).sum())
    expected = torch.stack(norms).mean()
    assert torch.allclose(defense.penalty(net, x, y, ctx), expected, rtol=1e-4, atol=1e-7)
    assert torch.allclose(defense.regularizer(net, x, y, None, ctx), 2.0 * expected,
                          rtol=1e-4, atol=1e-7)
    assert InputGradientRegularization(lam=0.0).regularizer(net, x, y, None, ctx) is None


def test_penalty_gradient_reaches_the_weights(advarena_tiny_splits):
    torch.manual_seed(0)
    net = tiny_net()
    x, y = advarena_tiny_splits.test.x[:8], advarena_tiny_splits.test.y[:8]
    defense = InputGradientRegularization()
    penalty = defense.penalty(net, x, y, step_context(defense, net))
    grads = torch.autograd.grad(penalty, list(net.parameters()))
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_training_step_with_it_lowers_the_penalty_more_than_a_plain_step(advarena_tiny_splits):
    """From the same weights, one small SGD step on ``J + lam * penalty`` leaves a smaller
    penalty than one on ``J`` alone (to first order the difference is
    ``-lr * lam * ||grad_w penalty||^2``)."""
    import copy

    torch.manual_seed(0)
    start = tiny_net()
    x, y = advarena_tiny_splits.train.x[:64], advarena_tiny_splits.train.y[:64]
    defense = InputGradientRegularization(lam=1.0)
    after = {}
    for label in ("plain", "igr"):
        net = copy.deepcopy(start)
        ctx = step_context(defense, net)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        loss = F.cross_entropy(net(x), y)
        if label == "igr":
            loss = loss + defense.regularizer(net, x, y, None, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after[label] = float(defense.penalty(net, x, y, ctx).detach())
    assert after["igr"] < after["plain"]
