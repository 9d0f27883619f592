"""The minimal-perturbation and loss-landscape metrics as their papers define them (issues 11.5,
13.7, 13.8, 13.10), each on a case whose answer is known:

* denominators: rho_2 (002 eq. 7) and empirical robustness (001 eq. 2) average over the test set,
  a clean-misclassified example with the perturbation that changes its prediction, failures
  excluded and counted; 003's distortion over the correctly classified examples; the success
  rate over the correctly classified examples;
* eps_ref (002 sec. 4.1) on the named model (the shared Deep Defense model by default), and
  Acc@eps_ref as plain accuracy on the evaluated model's FGSM images;
* the training-set distance (001 sec. 4.1) against the training split without the validation
  hold-out;
* the loss landscape (000 Fig. 5) over both signs of each direction;
* C&W and DeepFool with the quick suite's settings fool >= 99 % of the correctly classified
  examples of an undefended digits model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import advarena
from advarena.api import Attack, ThreatModel
from advarena.evaluation import EvalContext, unpack_outcomes
from advarena.models import Classifier, loss_gradient
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.protocols.minimal_perturbation import (eps_ref, fgsm_accuracy_curve,
                                                     nearest_train_distance)
from advarena.runner import split_validation
from advarena.suite import load_suite


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def context(data, attacks, model, *, info=None, **kw) -> EvalContext:
    return EvalContext(info=info, data=data, train=kw.pop("train", data),
                       device=torch.device("cpu"), seed=0, attacks=attacks,
                       batch_size=len(data), model=model, **kw)


# ---------------------------------------------------------------------------------------------
# A two-class linear model on [0, 1]^2 whose minimal perturbations are known in closed form:
# z = (x0 - x1, x1 - x0), so the prediction is 0 iff x0 > x1 and the smallest L2 step that
# changes it has length |x0 - x1| / sqrt(2).
# ---------------------------------------------------------------------------------------------


class Diagonal(nn.Module):
    def forward(self, x):
        d = x[:, :1] - x[:, 1:]
        return torch.cat([d, -d], 1)


class Projection(Attack):
    """Exact minimal attack on :class:`Diagonal`: the projection onto the boundary x0 = x1,
    pushed 1 % past it, of every example the model gives ``labels``; it gives up (returns the
    input) where that projection would be longer than ``cap``, and returns an example the model
    already does not give ``labels`` unchanged (the minimal attacks' convention)."""

    name = "projection"
    threat_model = ThreatModel(norm="l2", budget="minimal")
    cap = 0.5

    def run(self, model, inputs, labels, eps=None, generator=None):
        d = inputs[:, 0] - inputs[:, 1]
        step = (1.01 * d / 2)[:, None] * torch.tensor([[-1.0, 1.0]])
        with torch.no_grad():
            attack = model(inputs).argmax(1) == labels
        attack &= step.norm(dim=1) <= self.cap
        return torch.where(attack[:, None], inputs + step, inputs)


# x0 - x1 = 0.2, -0.2, 0.1, 0.9 (correctly classified), 0.2, -0.1 (misclassified).
LINEAR_X = torch.tensor([[0.6, 0.4], [0.3, 0.5], [0.55, 0.45], [0.95, 0.05],
                         [0.7, 0.5], [0.2, 0.3]])
LINEAR_Y = torch.tensor([0, 1, 0, 0, 1, 0])


def test_denominators_follow_the_papers_on_a_known_case():
    model = Classifier(Diagonal()).eval()
    data = advarena.api.TensorData(LINEAR_X, LINEAR_Y)
    proj = Projection()
    proto = advarena.protocol("minimal-perturbation", attacks=("deepfool", "coordinate-greedy"),
                              eps_ref_model="model")
    ctx = context(data, {"deepfool": proj, "coordinate-greedy": proj,
                         "fgsm": advarena.attack("fgsm")}, model)
    recs = {(r.metric, r.attack): r for r in proto.evaluate(ctx)}
    dist = (LINEAR_X[:, 0] - LINEAR_X[:, 1]).abs() / math.sqrt(2) * 1.01
    ratio = dist / LINEAR_X.norm(dim=1)
    moved = torch.tensor([True, True, True, False, True, True])   # example 3 is past the cap
    correct = torch.tensor([True, True, True, True, False, False])

    # 002 eq. 7 over the test set: the misclassified examples 4 and 5 count with the step that
    # changes their (wrong) prediction; the failure (3) is left out and counted.
    rho = recs[("rho_2", "deepfool")]
    assert rho.value == pytest.approx(float(ratio[moved].mean()), rel=1e-5)
    assert rho.n == 5
    assert rho.extra["denominator"] == "test set" and rho.extra["examples_in_set"] == 6
    assert rho.extra["failures"] == 1 and rho.extra["success_rate"] == pytest.approx(0.75)
    # 003: misclassifying an otherwise correct instance; the distortion divides by n = 2.
    dis = recs[("distortion", "coordinate-greedy")]
    assert dis.value == pytest.approx(float((dist / 2)[moved & correct].mean()), rel=1e-5)
    assert dis.n == 3 and dis.extra["examples_in_set"] == 4 and dis.extra["failures"] == 1
    assert dis.extra["denominator"] == "correctly classified"
    # The success rate is over the correctly classified examples, with its own n, beside the
    # clean accuracy it is a share of.
    success = recs[("success_rate", "deepfool")]
    assert success.value == pytest.approx(0.75) and success.n == 4
    assert success.extra["denominator"] == "correctly classified"
    assert unpack_outcomes(success.extra["outcomes"]) == [True, True, True, False]
    accuracy = recs[("accuracy", None)]
    assert accuracy.value == pytest.approx(4 / 6) and accuracy.n == 6


def test_clean_misclassified_examples_get_deepfools_own_perturbation():
    """With the real DeepFool (no overshoot) on the linear model every example of the test set
    gets the closed-form distance plus the reference code's 1e-4 push."""
    model = Classifier(Diagonal()).eval()
    data = advarena.api.TensorData(LINEAR_X, LINEAR_Y)
    proto = advarena.protocol("minimal-perturbation", attacks=("deepfool",),
                              eps_ref_model="model")
    ctx = context(data, {"deepfool": advarena.attack("deepfool", overshoot=0.0),
                         "fgsm": advarena.attack("fgsm")}, model)
    rho = next(r for r in proto.evaluate(ctx) if r.metric == "rho_2")
    dist = (LINEAR_X[:, 0] - LINEAR_X[:, 1]).abs() / math.sqrt(2) + 1e-4
    assert rho.n == len(LINEAR_X) and rho.extra["failures"] == 0
    assert rho.value == pytest.approx(float((dist / LINEAR_X.norm(dim=1)).mean()), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# eps_ref (002 sec. 4.1)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_eval(digits_model):
    model, splits = digits_model
    return model, splits, splits.test.subset(slice(0, 120))


def _eps_ref_records(proto, ctx):
    recs = proto._eps_ref(ctx)
    at = {r.extra["fraction"]: r for r in recs if r.metric == "accuracy_at_eps_ref"}
    return next(r for r in recs if r.metric == "eps_ref"), at


def test_eps_ref_on_the_model_itself_halves_its_own_fgsm_accuracy(digits_eval):
    model, splits, data = digits_eval
    proto = advarena.protocol("minimal-perturbation", eps_ref_model="model")
    ctx = context(data, {"fgsm": advarena.attack("fgsm")}, model, info=splits.info)
    e, at = _eps_ref_records(proto, ctx)
    # The smallest eps on the grid where half of this model's FGSM images are misclassified ...
    below = fgsm_accuracy_curve(model, data.x, data.y, torch.tensor([e.value - 1e-3]), len(data))
    assert float(below[0]) > 0.5 >= at[1.0].value and e.extra["reached"]
    # ... which is where its Acc@1.0 eps_ref is about 50 % (within one grid step's change).
    assert at[1.0].value > 0.5 - 0.05
    assert at[1.0].n == len(data) and at[1.0].eps == pytest.approx(e.value)


def test_eps_ref_comes_from_the_named_model_and_scores_the_evaluated_one(digits_eval):
    """The default names a shared defense (002: Deep Defense); 'reference' is the undefended
    reference (the earlier variant). Either way the evaluated model is attacked at that eps."""
    model, splits, data = digits_eval
    weak = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))).eval()
    with torch.no_grad():
        weak.net[1].weight.copy_(torch.randn(10, 64, generator=torch.Generator().manual_seed(0)))
    fgsm = {"fgsm": advarena.attack("fgsm")}
    own = eps_ref(model, data.x, data.y, len(data))
    other = eps_ref(weak, data.x, data.y, len(data))
    assert own != other
    shared = advarena.protocol("minimal-perturbation")
    assert shared.eps_ref_model == "deep-defense"
    e, at = _eps_ref_records(shared, context(data, fgsm, model, shared={"eps-ref": weak}))
    assert e.value == other and e.extra["eps_ref_model"] == "deep-defense"
    x_adv = advarena.attack("fgsm")(model, data.x, data.y, eps=other)
    assert at[1.0].value == pytest.approx(float((model(x_adv).argmax(1) == data.y)
                                                .float().mean()))
    ref = advarena.protocol("minimal-perturbation", eps_ref_model="reference")
    e, _ = _eps_ref_records(ref, context(data, fgsm, model, reference=weak))
    assert e.value == other


class Sine(nn.Module):
    """One input feature, prediction 0 iff sin(4 pi x) > 0: an FGSM step of half a period
    (0.25) flips every prediction, so it turns each misclassified example correct."""

    def forward(self, x):
        s = 3 * torch.sin(4 * math.pi * x.flatten(1)[:, :1])
        return torch.cat([s, -s], 1)


class Always0(nn.Module):
    def forward(self, x):
        return torch.tensor([1.0, 0.0]).expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_accuracy_at_eps_ref_is_plain_accuracy_on_perturbed_images():
    """002 Table 1 scores "prediction accuracies on the FGS adversarial examples" of the whole
    test set, not clean-and-robust: an example FGSM happens to fix counts as correct."""
    x = torch.tensor([0.31, 0.35, 0.39, 0.43, 0.46, 0.48,
                      0.52, 0.55, 0.58, 0.62, 0.65, 0.69])[:, None]
    model = Classifier(Sine()).eval()
    y = model(x).argmax(1)
    y[[0, 2]] = 0                                          # two misclassified examples
    data = advarena.api.TensorData(x, y)
    # A reference that ignores its input keeps 8/12 accuracy at any eps: eps_ref = eps_ref_max.
    proto = advarena.protocol("minimal-perturbation", eps_ref_model="reference",
                              eps_ref_max=0.25, eps_ref_fractions=(1.0,))
    ctx = context(data, {"fgsm": advarena.attack("fgsm")}, model,
                  reference=Classifier(Always0()).eval())
    e, at = _eps_ref_records(proto, ctx)
    assert e.value == 0.25 and not e.extra["reached"]
    clean = model(x).argmax(1) == y
    outcomes = torch.tensor(unpack_outcomes(at[1.0].extra["outcomes"]))
    assert torch.equal(outcomes, ~clean)                  # every prediction flipped
    assert at[1.0].value == pytest.approx(2 / 12) and at[1.0].n == 12


def test_the_default_eps_ref_model_is_the_deep_defense_train_cell_of_the_setting():
    suite = load_suite("mnist")   # a paper suite: 002's eps_ref, from its Deep Defense model
    assert "eps_ref_model" not in suite.protocols["minimal-perturbation"]
    plan = make_plan(suite, default_registry(), ["deep-defense", "none"],
                     ["minimal-perturbation"])
    evals = {(c.labels["defense"], c.labels["architecture"], c.labels["seed"]): c
             for c in plan.cells if c.kind == "eval"}
    # Deep Defense is scored at its own eps_ref, the other models at that same one.
    for (defense, arch, seed), cell in evals.items():
        own = evals[("deep-defense", arch, seed)].deps["model"]
        assert cell.deps["shared:eps-ref"] == own, (defense, arch, seed)


def test_the_quick_suite_anchors_eps_ref_on_the_reference_and_trains_no_deep_defense():
    plan = make_plan(load_suite("quick"), default_registry(), ["gda-brelu"])
    assert not any(c.kind == "train" and c.labels.get("defense") == "deep-defense"
                   for c in plan.cells)
    (cell,) = [c for c in plan.cells if c.kind == "eval" and c.labels["defense"] == "gda-brelu"
               and c.labels["protocol"] == "minimal-perturbation"]
    assert "shared:eps-ref" not in cell.deps and "reference" in cell.deps


# ---------------------------------------------------------------------------------------------
# Training-set distance (001 sec. 4.1) and the loss landscape (000 Fig. 5)
# ---------------------------------------------------------------------------------------------


def test_training_set_distance_excludes_the_validation_hold_out(digits_eval):
    model, splits, data = digits_eval
    spec = {"train": {"val_fraction": 0.5}, "seed": 3}
    proto = advarena.protocol("minimal-perturbation", attacks=("fgsm-minimal",),
                              eps_ref_model="model")
    attacks = {"fgsm-minimal": advarena.attack("fgsm-minimal"), "fgsm": advarena.attack("fgsm")}
    ctx = context(data, attacks, model, info=splits.info, train=splits.train, splits=splits,
                  train_records={"model": {"spec": spec, "result": None}})
    rec = next(r for r in proto.evaluate(ctx) if r.metric == "training_set_distance")
    x_adv = attacks["fgsm-minimal"](model, data.x, model(data.x).argmax(1))
    changed = model(x_adv).argmax(1) != model(data.x).argmax(1)
    train, val = split_validation(splits.train, 0.5, 3)
    expected = nearest_train_distance(x_adv[changed], train.x)
    assert rec.n == int(changed.sum())
    assert rec.value == pytest.approx(float(expected.mean()), rel=1e-5)
    # Train plus hold-out would be strictly closer on average: the hold-out is half the data.
    both = nearest_train_distance(x_adv[changed], splits.train.x)
    assert float(both.mean()) < rec.value


def test_loss_landscape_spans_both_signs_of_each_direction(digits_eval):
    model, splits, data = digits_eval
    reference = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))).eval()
    proto = advarena.protocol("loss-sensitivity", fgsm_eps=(0.0,), landscape_radius=0.2,
                              landscape_points=5, landscape_examples=16)
    ctx = context(data, {}, model, info=splits.info, reference=reference)
    rec = next(r for r in proto.evaluate(ctx) if r.metric == "loss_landscape")
    steps = rec.extra["steps"]
    assert steps == pytest.approx([-0.2, -0.1, 0.0, 0.1, 0.2])
    x, y = data.x[:16], data.y[:16]
    d_own = loss_gradient(model, x, y).sign()
    d_ref = loss_gradient(reference, x, y).sign()
    for i, j in ((0, 2), (2, 0), (0, 4), (2, 2)):
        pts = (x + steps[i] * d_own + steps[j] * d_ref).clamp(*model.bounds)
        loss = nn.functional.cross_entropy(model(pts), y)
        assert rec.extra["loss"][i][j] == pytest.approx(float(loss), rel=1e-4)
    # Stepping against the model's own gradient lowers its loss; along it raises it.
    assert rec.extra["loss"][0][2] < rec.extra["loss"][2][2] < rec.extra["loss"][4][2]


def test_leaderboard_plot_draws_a_both_sign_landscape(tmp_path):
    pytest.importorskip("matplotlib")
    from advarena.report import plots

    steps = [-0.2, 0.0, 0.2]
    rec = {"protocol": "loss-sensitivity", "metric": "loss_landscape",
           "extra": {"steps": steps, "loss": [[1.0, 0.5, 2.0], [0.4, 0.2, 1.0], [3.0, 1.5, 4.0]]}}
    assert plots.loss_landscape([rec], [rec], tmp_path / "l.png").is_file()


# ---------------------------------------------------------------------------------------------
# Minimal attacks strong enough to mean something (issue 11.5)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cw-l2", "deepfool"])
def test_quick_suite_minimal_attacks_fool_almost_every_correct_example(digits_model, name):
    """With the quick suite's own settings, on 300 test examples of an undefended model."""
    model, splits = digits_model
    x, y = splits.test.x[:300], splits.test.y[:300]
    params = load_suite("quick").attacks.get(name, {})
    x_adv = advarena.attack(name, **params)(model, x, y)
    right = model(x).argmax(1) == y
    fooled = right & (model(x_adv).argmax(1) != y)
    assert float(fooled.sum()) >= 0.99 * float(right.sum())


def test_cw_result_of_an_example_does_not_depend_on_its_batch(digits_model):
    """Early abort per example (the reference code at its batch size of 1): an example's
    rounds end on its own loss, not on the sum over whichever batch it came in."""
    model, splits = digits_model
    x, y = splits.test.x[:40], splits.test.y[:40]
    attack = advarena.attack("cw-l2", steps=100, binary_search_steps=5, lr=0.1,
                             initial_const=0.01)
    alone = attack(model, x[:10], y[:10])
    batched = attack(model, x, y)
    torch.testing.assert_close(batched[:10], alone, rtol=0, atol=1e-4)
