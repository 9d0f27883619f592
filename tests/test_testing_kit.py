"""advarena.testing: each conformance property catches the plugin bug it is about, names the
plugin and the property, and a correct plugin passes. The broken plugins are defined at module
level (so that only the property under test fails, pickling included), each a one-line change
of a correct one."""

from __future__ import annotations

import importlib.metadata
import itertools
import pickle
import random
import threading
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advarena.api import Attack, Dataset, Defense, ThreatModel
from advarena.api.architecture import Architecture
from advarena.errors import DataError
from advarena.params import param
from advarena.testing import (ATTACK_PROPERTIES, DEFENSE_PROPERTIES, TINY_INFO,
                              ConformanceError, check_architecture, check_attack,
                              check_dataset, check_defense, tiny_model, tiny_splits)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fails(prop: str, fn, *args, match: str | None = None, **kwargs) -> ConformanceError:
    with pytest.raises(ConformanceError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.property == prop, f"expected '{prop}', got: {err}"
    assert f"fails '{prop}'" in str(err)
    if match is not None:
        assert match in str(err), str(err)
    return err


# --- attacks -------------------------------------------------------------------------------------


class KitStep(Attack):
    """One signed-gradient step (FGSM, Goodfellow et al. 2015): the kit's correct attack."""

    name = "kit-step"
    paper = "Goodfellow et al. 2015"
    api_version = "1"
    threat_model = ThreatModel(norm="linf")

    eps: float = param(0.1, ge=0, help="Linf budget")

    def gradient(self, model, inputs, labels):
        x = inputs.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), labels, reduction="sum"), x)
        return g

    def run(self, model, inputs, labels, eps, generator=None):
        return (inputs + eps * self.gradient(model, inputs, labels).sign()).clamp(*model.bounds)


class KitRandomStep(KitStep):
    """A random sign step (the randomised part of R+FGSM, Tramer et al. 2018), drawn from the
    generator the harness passes."""

    name = "kit-random-step"

    def run(self, model, inputs, labels, eps, generator=None):
        noise = torch.randn(inputs.shape, generator=generator, device=inputs.device)
        return (inputs + eps * noise.sign()).clamp(*model.bounds)


class KitEnsembleStep(KitStep):
    """FGSM on the summed gradients of an ensemble (Tramer et al. 2018)."""

    name = "kit-ensemble-step"
    accepts_ensemble = True

    def run(self, model, inputs, labels, eps, generator=None):
        g = sum(self.gradient(m, inputs, labels) for m in model)
        lo, hi = model[0].bounds
        return (inputs + eps * g.sign()).clamp(lo, hi)


class NoPaper(KitStep):
    """No citation."""

    name = "no-paper"
    paper = ""


class NoDocstring(KitStep):
    name = "no-docstring"


class OldApi(KitStep):
    """Written for plugin API 0."""

    name = "old-api"
    api_version = "0"


class NewerMinorApi(KitStep):
    """Written for plugin API 1.7: compatible."""

    name = "newer-minor-api"
    api_version = "1.7"


class SpacedName(KitStep):
    """A name users cannot type."""

    name = "spaced name"


class PlusName(KitStep):
    """A name that reads as a composition."""

    name = "a+b"


class NoThreatModel(Attack):
    """Forgets to declare its threat model."""

    name = "no-threat-model"
    paper = "none"

    eps: float = param(0.1, ge=0, help="Linf budget")

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


class BoundedWithoutEps(Attack):
    """A bounded attack without an eps parameter."""

    name = "bounded-without-eps"
    paper = "none"
    threat_model = ThreatModel(norm="linf")

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


class NoHelp(KitStep):
    """A parameter without a help line."""

    name = "no-help"
    steps: int = param(3, ge=1)


class PlainDefault(KitStep):
    """A parameter declared without param()."""

    name = "plain-default"
    steps: int = 3


class NoDefault(KitStep):
    """A parameter without a default."""

    name = "no-default"
    steps: int = param(help="number of steps")


class AnyTyped(KitStep):
    """A parameter of type Any (nothing to validate against)."""

    name = "any-typed"
    extra: typing.Any = param(None, help="anything")


class BadDefault(KitStep):
    """A default outside its own bound."""

    name = "bad-default"
    steps: int = param(0, ge=1, help="number of steps")


class NotValidated(KitStep):
    """Skips the base class's validation."""

    name = "not-validated"

    def __post_init__(self):
        pass


class Unpicklable(KitStep):
    """Holds a lock (not picklable, so the Ray executor could not ship it)."""

    name = "unpicklable"

    def __post_init__(self):
        super().__post_init__()
        self._lock = threading.Lock()


class LeavesBall(KitStep):
    """Steps twice the budget."""

    name = "leaves-ball"

    def run(self, model, inputs, labels, eps, generator=None):
        return super().run(model, inputs, labels, 2 * eps)


class LeavesBox(KitStep):
    """Forgets to clip to the input box."""

    name = "leaves-box"

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs + eps * self.gradient(model, inputs, labels).sign()


class DropsAnExample(KitStep):
    """Returns one example fewer."""

    name = "drops-an-example"

    def run(self, model, inputs, labels, eps, generator=None):
        return super().run(model, inputs, labels, eps)[1:]


class BreaksOnOneExample(KitStep):
    """Squeezes the batch dimension away for a batch of one."""

    name = "breaks-on-one-example"

    def run(self, model, inputs, labels, eps, generator=None):
        return super().run(model, inputs, labels, eps).squeeze(0)


class NanOnZeroBudget(KitStep):
    """Divides by eps."""

    name = "nan-on-zero-budget"

    def run(self, model, inputs, labels, eps, generator=None):
        g = self.gradient(model, inputs, labels)
        return (inputs + eps * (eps * g.sign()) / eps).clamp(*model.bounds)


class InPlace(KitStep):
    """Writes its perturbation into the caller's inputs."""

    name = "in-place"

    def run(self, model, inputs, labels, eps, generator=None):
        g = self.gradient(model, inputs, labels)
        return inputs.add_(eps * g.sign()).clamp_(*model.bounds)


class LeaksGradients(KitStep):
    """Uses loss.backward(), leaving gradients in the model's weights."""

    name = "leaks-gradients"

    def run(self, model, inputs, labels, eps, generator=None):
        x = inputs.detach().requires_grad_(True)
        F.cross_entropy(model(x), labels).backward()
        return (inputs + eps * x.grad.sign()).clamp(*model.bounds)


class ChangesTheModel(KitStep):
    """Fiddles with the model's weights."""

    name = "changes-the-model"

    def run(self, model, inputs, labels, eps, generator=None):
        with torch.no_grad():
            next(model.parameters()).mul_(1.0001)
        return super().run(model, inputs, labels, eps)


class Chatty(KitStep):
    """Prints."""

    name = "chatty"

    def run(self, model, inputs, labels, eps, generator=None):
        print("crafting ...")
        return super().run(model, inputs, labels, eps)


class GlobalRandom(KitRandomStep):
    """Draws from the global RNG instead of the generator."""

    name = "global-random"

    def run(self, model, inputs, labels, eps, generator=None):
        noise = torch.randn(inputs.shape, device=inputs.device)
        return (inputs + eps * noise.sign()).clamp(*model.bounds)


class NumpyRandom(KitRandomStep):
    """Draws from NumPy's global RNG."""

    name = "numpy-random"

    def run(self, model, inputs, labels, eps, generator=None):
        noise = torch.from_numpy(np.random.standard_normal(tuple(inputs.shape))).to(inputs)
        return (inputs + eps * noise.sign()).clamp(*model.bounds)


class CpuOutput(KitStep):
    """Returns its output on the CPU whatever the inputs' device."""

    name = "cpu-output"

    def run(self, model, inputs, labels, eps, generator=None):
        return super().run(model, inputs, labels, eps).cpu()


class BrokenEnsemble(KitEnsembleStep):
    """Claims to take ensembles but leaves the ball on them."""

    name = "broken-ensemble"

    def run(self, model, inputs, labels, eps, generator=None):
        return super().run(model, inputs, labels, 3 * eps if len(model) > 1 else eps)


class MinimalIdentity(Attack):
    """A minimal attack that finds nothing (returns its inputs): legal."""

    name = "minimal-identity"
    paper = "none: a test fixture"
    api_version = "1"
    threat_model = ThreatModel(norm="l2", budget="minimal")

    steps: int = param(3, ge=1, help="iterations (unused)")

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


@pytest.mark.parametrize("cls", [KitStep, KitRandomStep, KitEnsembleStep, NewerMinorApi,
                                 MinimalIdentity])
def test_correct_attacks_pass_every_property(cls):
    assert check_attack(cls) == list(ATTACK_PROPERTIES)


@pytest.mark.parametrize("cls,prop,match", [
    (NoPaper, "declared", "no 'paper'"),
    (NoDocstring, "declared", "no docstring"),
    (OldApi, "declared", "api_version '0'"),
    (SpacedName, "declared", "'spaced name'"),
    (PlusName, "declared", "'a+b'"),
    (NoThreatModel, "declared", "threat_model"),
    (BoundedWithoutEps, "declared", "'eps'"),
    (NoHelp, "parameters", "'steps' has no help line"),
    (PlainDefault, "parameters", "'steps' has no help line"),
    (NoDefault, "parameters", "'steps' has no default"),
    (AnyTyped, "parameters", "'extra' needs a concrete type"),
    (BadDefault, "parameters", "defaults do not validate"),
    (NotValidated, "validated", "accepts"),
    (Unpicklable, "picklable", "pickle round trip failed"),
    (LeavesBall, "threat-model", "left the linf ball"),
    (LeavesBox, "threat-model", "left the input box"),
    (DropsAnExample, "threat-model", "returned shape"),
    (BreaksOnOneExample, "threat-model", "on one example with the default eps"),
    (NanOnZeroBudget, "threat-model", "with eps=0"),
    (BrokenEnsemble, "threat-model", "on an ensemble of two models"),
    (InPlace, "side-effects", "changed its inputs in place"),
    (LeaksGradients, "side-effects", "left gradients in the model's weights"),
    (ChangesTheModel, "side-effects", "changed the model's"),
    (Chatty, "side-effects", "printed 'crafting"),
    (GlobalRandom, "deterministic", "two runs with seed 0 differ"),
    (NumpyRandom, "deterministic", "two runs with seed 0 differ"),
])
def test_each_attack_bug_fails_its_property(cls, prop, match):
    err = fails(prop, check_attack, cls, match=match)
    # The message names the plugin by registry name and by class.
    assert f"attack '{cls.name}'" in str(err) or cls.name == ""
    assert f"{__name__}.{cls.__qualname__}" in str(err)


def test_a_non_attack_is_refused():
    fails("declared", check_attack, _KitDefense, match="not a subclass of advarena.api.Attack")


def test_the_checks_names_the_parameters_of_a_bad_configuration():
    fails("parameters", check_attack, KitStep, params={"eps": -1},
          match="parameters given to the check do not validate")
    fails("parameters", check_attack, KitStep, params={"epz": 0.1}, match="'epz'")


def test_skip_leaves_properties_out():
    checked = check_attack(GlobalRandom, skip=("deterministic",))
    assert "deterministic" not in checked and "threat-model" in checked
    with pytest.raises(ValueError, match="unknown attack properties"):
        check_attack(KitStep, skip=("determinism",))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_catches_outputs_on_the_wrong_device():
    fails("device", check_attack, CpuOutput, match="returned a tensor on cpu")


def test_cpu_only_devices_and_cuda_refused_without_it():
    assert "device" in check_attack(CpuOutput, devices=["cpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            check_attack(KitStep, devices=["cuda"])


def test_the_checks_leave_the_callers_random_state_alone():
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    check_attack(KitRandomStep)
    check_defense(_KitDefense)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


# --- defenses ------------------------------------------------------------------------------------


class _KitDefense(Defense):
    """Weight-decay-like L2 penalty on the logits (logit squeezing, Kannan et al. 2018):
    the kit's correct regulariser defense."""

    name = "kit-logit-penalty"
    paper = "Kannan, Kurakin, Goodfellow 2018"
    api_version = "1"

    lam: float = param(0.01, ge=0, help="weight of the squared logit norm")

    def regularizer(self, model, x, y, logits, ctx):
        return self.lam * logits.pow(2).sum(1).mean()


class KitSmoothing(Defense):
    """Label smoothing (Szegedy et al. 2016) through the targets hook."""

    name = "kit-smoothing"
    paper = "Szegedy et al. 2016"
    api_version = "1"

    weight: float = param(0.9, gt=0, le=1, help="probability of the true class")

    def targets(self, labels, num_classes):
        t = torch.full((len(labels), num_classes), (1 - self.weight) / (num_classes - 1),
                       device=labels.device)
        return t.scatter(1, labels[:, None], self.weight)


class KitNoise(Defense):
    """Gaussian data augmentation (Zantedeschi et al. 2017) from the session's generator."""

    name = "kit-noise"
    paper = "Zantedeschi et al. 2017"
    api_version = "1"

    sigma: float = param(0.1, ge=0, help="noise standard deviation")

    def augment(self, data, info, generator):
        noise = torch.randn(data.x.shape, generator=generator, device=data.x.device)
        x = torch.cat([data.x, (data.x + self.sigma * noise).clamp(*info.bounds)])
        return type(data)(x, torch.cat([data.y, data.y]))


class KitBReLU(Defense):
    """Bounded ReLU (Zantedeschi et al. 2017) through the activation hook."""

    name = "kit-brelu"
    paper = "Zantedeschi et al. 2017"
    api_version = "1"

    def activation(self, info):
        return nn.ReLU6


class KitReference(_KitDefense):
    """Fine-tunes the reference model (needs_reference)."""

    name = "kit-reference"
    needs_reference = True


class OwnLoop(_KitDefense):
    """Trains with its own loop, bypassing the shared trainer (cost not measured)."""

    name = "own-loop"

    def fit(self, session):
        opt = torch.optim.SGD(session.model.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(session.model(session.data.x), session.data.y).backward()
            opt.step()


class SwapsTheNetwork(_KitDefense):
    """Replaces the network by another architecture the store could not rebuild."""

    name = "swaps-the-network"

    def fit(self, session):
        session.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(session.device)
        session.train()


class MutatesItself(_KitDefense):
    """Changes its own parameter while training."""

    name = "mutates-itself"

    def fit(self, session):
        session.train()
        self.lam = 2 * self.lam


_COUNTER = itertools.count()


class DriftsBetweenRuns(_KitDefense):
    """A regulariser whose weight depends on how often it was trained before."""

    name = "drifts-between-runs"

    def fit(self, session):
        self._scale = float(next(_COUNTER) + 1)
        session.train()

    def regularizer(self, model, x, y, logits, ctx):
        return self._scale * 0.01 * logits.pow(2).sum(1).mean()


class BadTargets(KitSmoothing):
    """Soft targets that do not sum to one."""

    name = "bad-targets"

    def targets(self, labels, num_classes):
        return 2 * super().targets(labels, num_classes)


class BadAugment(KitNoise):
    """Augmented data with the wrong feature shape."""

    name = "bad-augment"

    def augment(self, data, info, generator):
        return type(data)(data.x.flatten(1), data.y)


class ChattyDefense(_KitDefense):
    """Prints during training."""

    name = "chatty-defense"

    def after_step(self, model, ctx):
        print("step", ctx.step)


class NaNLoss(_KitDefense):
    """A regulariser that blows the weights up."""

    name = "nan-loss"

    def regularizer(self, model, x, y, logits, ctx):
        return logits.sum() * float("nan")


@pytest.mark.parametrize("cls", [_KitDefense, KitSmoothing, KitNoise, KitBReLU, KitReference])
def test_correct_defenses_pass_every_property(cls):
    assert check_defense(cls) == list(DEFENSE_PROPERTIES)


@pytest.mark.parametrize("cls,prop,match", [
    (OwnLoop, "training", "never called session.train()"),
    (SwapsTheNetwork, "training", "do not load into a classifier rebuilt"),
    (NaNLoss, "training", "finite"),
    (MutatesItself, "side-effects", "changed the defense's parameters"),
    (ChattyDefense, "side-effects", "printed 'step"),
    (DriftsBetweenRuns, "deterministic", "two trainings with seed 0 give different"),
    (BadTargets, "hooks", "probability distributions"),
    (BadAugment, "hooks", "augment() returned inputs of shape"),
])
def test_each_defense_bug_fails_its_property(cls, prop, match):
    err = fails(prop, check_defense, cls, match=match)
    assert f"defense '{cls.name}'" in str(err)


# --- datasets and architectures ------------------------------------------------------------------


class KitData(Dataset):
    """The kit's synthetic data as a dataset plugin."""

    name = "kit-data"
    paper = "none: synthetic"
    api_version = "1"

    n_test: int = param(64, ge=1, help="test examples")

    def load(self, data_dir=None, download=False):
        return tiny_splits(n_test=self.n_test)


class KitDiskData(KitData):
    """A dataset read from disk that refuses to run without a directory."""

    name = "kit-disk-data"
    needs_data_dir = True

    def load(self, data_dir=None, download=False):
        if data_dir is None:
            raise DataError("pass --data-dir")
        return super().load()


class DownloadsSilently(KitDiskData):
    """Reads from disk but quietly makes up data without a directory."""

    name = "downloads-silently"

    def load(self, data_dir=None, download=False):
        return tiny_splits()


class OutOfBounds(KitData):
    """Inputs outside its declared box."""

    name = "out-of-bounds"

    def load(self, data_dir=None, download=False):
        s = tiny_splits()
        s.train.x = s.train.x * 2
        return s


class KitNet(Architecture):
    """The kit's tiny network as an architecture plugin."""

    name = "kit-net"
    paper = "none: a test fixture"
    api_version = "1"

    width: int = param(8, ge=1, help="hidden units")

    def build(self, info, activation=nn.ReLU):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, self.width), activation(),
                             nn.Linear(self.width, info.num_classes))


class HardwiredReLU(KitNet):
    """Ignores the activation factory."""

    name = "hardwired-relu"

    def build(self, info, activation=nn.ReLU):
        return super().build(info, nn.ReLU)


def test_datasets():
    assert "loads" in check_dataset(KitData)
    assert "loads" in check_dataset(KitDiskData)
    fails("loads", check_dataset, DownloadsSilently, match="DataError")
    fails("loads", check_dataset, OutOfBounds, match="bounds")


def test_architectures():
    assert "builds" in check_architecture(KitNet)
    fails("builds", check_architecture, HardwiredReLU, match="never calls activation()")
    assert "builds" in check_architecture(KitNet, params={"width": 2})


# --- the tiny data, the tiny model and the pytest plugin -----------------------------------------


def test_tiny_data_and_model(advarena_tiny_splits, advarena_tiny_model, advarena_devices):
    s = advarena_tiny_splits
    assert s.info == TINY_INFO
    assert s.train.x.shape == (256, 1, 8, 8) and s.test.x.shape == (64, 1, 8, 8)
    assert 0 <= float(s.train.x.min()) and float(s.train.x.max()) <= 1
    assert set(s.train.y.tolist()) == set(range(10))
    with torch.no_grad():
        acc = float((advarena_tiny_model(s.test.x).argmax(1) == s.test.y).float().mean())
    assert acc >= 0.9, f"the tiny model should learn the tiny data, got {acc:.2f}"
    assert not advarena_tiny_model.training
    assert torch.device("cpu") in advarena_devices
    # Fresh copies: a test that changes its model does not change the next test's.
    with torch.no_grad():
        next(advarena_tiny_model.parameters()).zero_()
    assert float(next(tiny_model().parameters()).detach().abs().sum()) > 0
    assert torch.equal(tiny_splits().train.x, s.train.x)


def test_pytest_plugin_is_registered(pytestconfig):
    """pytest loaded advarena.testing through advarena's ``pytest11`` entry point."""
    import advarena.testing

    assert pytestconfig.pluginmanager.get_plugin("advarena") is advarena.testing
    assert any(ep.value == "advarena.testing"
               for dist in importlib.metadata.distributions()
               for ep in dist.entry_points if ep.group == "pytest11")


def test_conformance_error_is_an_assertion_error_and_pickles():
    err = ConformanceError("attack 'x' (m.X)", "deterministic", "differs")
    assert isinstance(err, AssertionError)
    assert str(err) == "attack 'x' (m.X) fails 'deterministic': differs"
    assert isinstance(pickle.loads(pickle.dumps(err)), AssertionError)
