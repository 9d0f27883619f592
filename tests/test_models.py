"""What attacks receive: Classifier (bounds, input transforms, BPDA), ensembles, predict; and
the shared trained fixture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advarena
from advarena.models import (AveragedLogits, Classifier, InputTransform, as_members, as_single,
                             bounds_of, predict)

pytestmark = pytest.mark.usefixtures("single_thread")


class BitDepth(InputTransform):
    """Feature-squeezing style quantiser to ``bits`` bits: piecewise constant, so its true
    gradient is zero almost everywhere."""

    differentiable = False

    def __init__(self, bits: int = 2) -> None:
        super().__init__()
        self.levels = 2 ** bits - 1

    def forward(self, x):
        return torch.round(x * self.levels) / self.levels


class DifferentiableBitDepth(BitDepth):
    """The same quantiser, (wrongly) declared differentiable."""

    differentiable = True


class Affine(InputTransform):
    """A differentiable transform: 0.5 * x + 0.25."""

    def forward(self, x):
        return 0.5 * x + 0.25


def make_net(seed: int = 0, out: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, out))


@pytest.fixture
def x():
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


# --- Classifier ------------------------------------------------------------------------------


def test_classifier_without_transform_is_the_net(x):
    net = make_net()
    model = Classifier(net, bounds=(0, 1))
    assert torch.equal(model(x), net(x))
    assert model.bounds == (0.0, 1.0) and all(type(b) is float for b in model.bounds)


def test_bpda_forward_is_the_transform_value(x):
    net, q = make_net(), BitDepth(bits=2)
    model = Classifier(net, transform=q)
    assert not torch.equal(q(x), x)  # the transform does something on these inputs
    assert torch.equal(model(x), net(q(x)))


def test_bpda_gradient_is_the_net_gradient_at_the_transformed_point(x):
    net, q = make_net(), BitDepth(bits=2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = Classifier(net, transform=q)
    g = input_grad(model, x, y)
    # Straight-through: d loss(net(q(x))) / dx := (d loss(net(t)) / dt) at t = q(x).
    expected = input_grad(net, q(x), y)
    assert g.abs().sum() > 0
    assert torch.allclose(g, expected, atol=1e-6, rtol=1e-5)
    # ... which is not the gradient of the net at x itself.
    assert not torch.allclose(g, input_grad(net, x, y), atol=1e-4)


def test_without_bpda_the_quantiser_masks_gradients(x):
    """Why BPDA exists: the true gradient through rounding is zero."""
    y = torch.zeros(len(x), dtype=torch.long)
    masked = Classifier(make_net(), transform=DifferentiableBitDepth(bits=2))
    assert torch.count_nonzero(input_grad(masked, x, y)) == 0


def test_differentiable_transform_gets_the_chain_rule(x):
    net, t = make_net(), Affine()
    y = torch.tensor([2, 1, 0, 2, 1, 0])
    model = Classifier(net, transform=t)
    assert torch.allclose(model(x), net(0.5 * x + 0.25))
    assert torch.allclose(input_grad(model, x, y), 0.5 * input_grad(net, t(x), y), atol=1e-6)


def test_plain_module_transform_counts_as_differentiable(x):
    net = make_net()
    y = torch.zeros(len(x), dtype=torch.long)
    model = Classifier(net, transform=nn.Hardtanh(0.2, 0.6))
    g = input_grad(model, x, y)
    outside = (x < 0.2) | (x > 0.6)
    assert outside.any() and (~outside).any()
    # Autograd through the hardtanh: zero where it saturates, the net's gradient elsewhere.
    assert torch.count_nonzero(g[outside]) == 0
    assert torch.count_nonzero(g[~outside]) > 0


def test_fgsm_through_bpda_uses_the_straight_through_gradient(x):
    net, q = make_net(), BitDepth(bits=2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = Classifier(net, transform=q)
    eps = 0.05
    x_adv = advarena.attack("fgsm")(model, x, y, eps=eps)
    expected = (x + eps * input_grad(net, q(x), y).sign()).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert not torch.equal(x_adv, x)


# --- ensembles -------------------------------------------------------------------------------


def test_averaged_logits_is_the_mean(x):
    members = [Classifier(make_net(s)) for s in range(3)]
    avg = AveragedLogits(members)
    expected = (members[0](x) + members[1](x) + members[2](x)) / 3
    assert torch.allclose(avg(x), expected, atol=1e-6)
    assert avg.bounds == (0.0, 1.0)


def test_averaged_logits_of_one_is_that_model(x):
    m = Classifier(make_net())
    assert torch.allclose(AveragedLogits([m])(x), m(x))


def test_ensemble_with_different_bounds_raises():
    a = Classifier(make_net(0), bounds=(0, 1))
    b = Classifier(make_net(1), bounds=(-1, 1))
    with pytest.raises(ValueError, match="bounds"):
        AveragedLogits([a, b])
    with pytest.raises(ValueError, match="bounds"):
        bounds_of([a, b])
    with pytest.raises(ValueError, match="bounds"):
        as_single([a, b])


def test_attack_on_ensemble_with_different_bounds_raises(x):
    a = Classifier(make_net(0), bounds=(0, 1))
    b = Classifier(make_net(1), bounds=(0, 2))
    y = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(ValueError, match="bounds"):
        advarena.attack("fgsm")([a, b], x, y, eps=0.1)


def test_members_single_and_bounds():
    a, b = Classifier(make_net(0), (0, 2)), Classifier(make_net(1), (0, 2))
    assert as_members(a) == [a]
    assert as_members([a, b]) == [a, b]
    assert as_members(nn.ModuleList([a, b])) == [a, b]
    assert as_single([a]) is a
    assert isinstance(as_single([a, b]), AveragedLogits)
    assert bounds_of([a, b]) == (0.0, 2.0)
    assert bounds_of(nn.Linear(2, 2)) == (0.0, 1.0)  # a bare module: the default box
    with pytest.raises(ValueError, match="at least one"):
        as_members([])


# --- predict ---------------------------------------------------------------------------------


def test_predict_batches_match_one_pass(x):
    model = Classifier(make_net())
    big = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    full = model(big).argmax(1)
    assert torch.equal(predict(model, big, batch_size=3), full)
    assert predict(model, big[:0]).shape == (0,)
    assert predict(model, big[:0]).dtype == torch.long


def test_predict_builds_no_graph(x):
    model = Classifier(make_net())
    assert not predict(model, x).requires_grad


# --- the shared trained fixture --------------------------------------------------------------


def test_digits_model_fixture(digits_model, digits_model_training_seconds):
    model, splits = digits_model
    assert isinstance(model, Classifier) and not model.training
    assert model.bounds == splits.info.bounds
    assert digits_model_training_seconds < 5.0
    clean = float((predict(model, splits.test.x) == splits.test.y).float().mean())
    # Ten classes: chance is 0.1. The fixture is only useful if it learned the task.
    assert clean > 0.8
