"""Conformance checks for advarena plugins, and a pytest plugin with their fixtures.

A plugin author checks a plugin class in one line::

    from advarena.testing import check_attack, check_defense

    def test_my_attack_conforms():
        check_attack(MyAttack)

    def test_my_defense_conforms():
        check_defense(MyDefense, params={"lam": 0.1})

Each check runs a list of named properties (below) on a tiny model and synthetic data (no files,
no network; a second or two a plugin on a CPU) and raises :class:`ConformanceError`, an
``AssertionError``, naming the plugin and the first property it fails. ``skip=("device",)``
leaves properties out; ``params`` configures the plugin (small step counts keep it fast).

Properties, for every kind of plugin:

``declared``
    a subclass of the right ``advarena.api`` base; ``name`` set (no spaces, no ``+``, which
    composes defenses); ``paper`` cites the method's source; its own docstring; ``api_version``
    of the same major as :data:`advarena.api.API_VERSION`.
``parameters``
    every parameter annotated with a concrete type, with a default and a help line (declared
    with :func:`advarena.params.param`); the defaults validate; ``params()`` is JSON-ready and
    rebuilds an equal plugin (cell keys and the Ray executor depend on it).
``validated``
    an unknown parameter name, a value of the wrong type, a value beyond a declared bound and a
    value outside declared choices are each refused with a ``ParameterError`` naming it.
``picklable``
    ``pickle.loads(pickle.dumps(plugin)) == plugin`` (the Ray executor ships plugins).

Attacks (:func:`check_attack`), run through :func:`advarena.threat.run_checked` as the harness
runs them:

``threat-model``
    outputs pass the harness's check (shape, dtype, finite, in the box, in the eps-ball) for a
    batch, for a single example with the default eps, for eps = 0, and for an ensemble when
    ``accepts_ensemble``; outputs stay on the inputs' device.
``side-effects``
    inputs, labels, the model's weights and their ``.grad`` are left alone; nothing printed.
``deterministic``
    two runs with the same seed are identical, whatever the global random state (randomness
    comes from the ``generator`` argument).
``device``
    runs on every device of ``devices`` (default: the CPU, and CUDA when available).

Defenses (:func:`check_defense`), trained as ``advarena.runner.run_train`` trains them:

``hooks``
    each overridden hook returns what the trainer expects (soft targets that are
    distributions, augmented data of the same feature shape, modules for transforms).
``training``
    ``fit`` trains through ``session.train`` (so the cost is measured like every defense's);
    the result maps inputs to finite logits; its weights serialise with safetensors and load
    into a freshly built classifier (``activation`` and ``input_transform`` again) that gives
    the same logits, as the store does; notes and the cost record are JSON-ready.
``side-effects``
    training leaves the defense's parameters unchanged; nothing printed.
``deterministic``
    two trainings with the same seed give identical weights (on the CPU).
``device``
    trains on every device of ``devices``, weights ending there.

Datasets (:func:`check_dataset`): ``loads`` (tensors of the declared shape, dtypes, bounds and
classes; a dataset read from disk refuses to run without a data directory with a
``DataError`` instead of downloading) and ``deterministic`` (two loads are equal).
Architectures (:func:`check_architecture`): ``builds`` (logits of the right shape; every
swappable nonlinearity comes from the ``activation`` factory), ``deterministic`` (same seed,
same weights) and ``device``.

The pytest plugin (entry point ``pytest11``: ``advarena``) adds the fixtures
``advarena_tiny_splits``, ``advarena_tiny_model`` and ``advarena_devices``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import io
import json
import math
import pickle
import random
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .api import (API_VERSION, Architecture, Attack, Dataset, DatasetInfo, Defense, Splits,
                  TensorData, ThreatModel)
from .errors import DataError, ParameterError, ThreatModelViolation
from .models import Classifier
from .params import Plugin

__all__ = ["ATTACK_PROPERTIES", "ARCHITECTURE_PROPERTIES", "ConformanceError",
           "DATASET_PROPERTIES", "DEFENSE_PROPERTIES", "TINY_INFO", "check_architecture",
           "check_attack", "check_dataset", "check_defense", "tiny_model", "tiny_net",
           "tiny_splits", "train_config"]

COMMON_PROPERTIES = ("declared", "parameters", "validated", "picklable")
ATTACK_PROPERTIES = COMMON_PROPERTIES + ("threat-model", "side-effects", "deterministic",
                                         "device")
DEFENSE_PROPERTIES = COMMON_PROPERTIES + ("hooks", "training", "side-effects", "deterministic",
                                          "device")
DATASET_PROPERTIES = COMMON_PROPERTIES + ("loads", "deterministic")
ARCHITECTURE_PROPERTIES = COMMON_PROPERTIES + ("builds", "deterministic", "device")

# Names users type on the command line and in suites: no spaces, commas or '+' (composition).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: The synthetic dataset of the checks: ten classes of noisy 8x8 binary patterns in [0, 1].
TINY_INFO = DatasetInfo(name="advarena-tiny", input_shape=(1, 8, 8), num_classes=10,
                        bounds=(0.0, 1.0), family="mnist")


class ConformanceError(AssertionError):
    """A plugin fails a conformance property; the message names both."""

    def __init__(self, plugin: str, prop: str, detail: str) -> None:
        self.plugin = plugin
        self.property = prop
        self.detail = detail
        super().__init__(f"{plugin} fails '{prop}': {detail}")

    def __reduce__(self):  # picklable (pytest-xdist, Ray) despite the three-part constructor
        return (type(self), (self.plugin, self.property, self.detail))


# --- synthetic data and tiny models ----------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _tiny_splits_cached(n_train: int, n_test: int, seed: int) -> Splits:
    g = torch.Generator().manual_seed(seed)
    k, shape = TINY_INFO.num_classes, TINY_INFO.input_shape
    # One fixed binary pattern per class, drawn at 0.2 / 0.8; examples add Gaussian noise.
    prototypes = (torch.rand((k, *shape), generator=g) > 0.5).float() * 0.6 + 0.2

    def sample(n: int) -> TensorData:
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = (prototypes[y] + 0.2 * torch.randn((n, *shape), generator=g)).clamp(0.0, 1.0)
        return TensorData(x.contiguous(), y.to(torch.int64))

    return Splits(info=TINY_INFO, train=sample(n_train), test=sample(n_test))


def tiny_splits(n_train: int = 256, n_test: int = 64, seed: int = 0) -> Splits:
    """A small synthetic dataset (:data:`TINY_INFO`): fixed for a seed, built in milliseconds."""
    s = _tiny_splits_cached(n_train, n_test, seed)
    return Splits(s.info, TensorData(s.train.x.clone(), s.train.y.clone()),
                  TensorData(s.test.x.clone(), s.test.y.clone()))


def tiny_net(info: DatasetInfo = TINY_INFO,
             activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Module:
    """A tiny network for ``info``: one 3x3 convolution and a linear layer for images, one
    hidden layer for vectors; its one nonlinearity comes from ``activation``."""
    shape = tuple(info.input_shape)
    if len(shape) == 3:
        c, h, w = shape
        return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), activation(), nn.Flatten(),
                             nn.Linear(8 * h * w, info.num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 32), activation(),
                         nn.Linear(32, info.num_classes))


def train_config(epochs: int = 2):
    """The training settings of :func:`check_defense` (two epochs of batches of 64)."""
    from .trainer import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=64, lr=5e-3, optimizer="adam",
                       val_fraction=0.0)


@functools.lru_cache(maxsize=4)
def _tiny_model_cached(seed: int) -> Classifier:
    splits = _tiny_splits_cached(256, 64, 0)
    with _preserved_rng([]):
        torch.manual_seed(seed)
        net = tiny_net(splits.info)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        x, y = splits.train.x, splits.train.y
        for _ in range(8):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 64):
                idx = order[i:i + 64]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        opt.zero_grad(set_to_none=True)
    return Classifier(net, splits.info.bounds).eval()


def tiny_model(seed: int = 0, device: torch.device | str = "cpu") -> Classifier:
    """A :class:`~advarena.models.Classifier` trained on :func:`tiny_splits` (a fresh copy on
    ``device`` each call, in eval mode; its weights require gradients, so an attack that
    leaks gradients into them is caught)."""
    return copy.deepcopy(_tiny_model_cached(seed)).to(device).eval()


def _default_devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


@contextlib.contextmanager
def _preserved_rng(cuda_devices: Sequence[int]) -> Iterator[None]:
    """Seeding inside a check must not change the caller's random state."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _cuda_indices(devices: Iterable[torch.device]) -> list[int]:
    return sorted({(d.index or 0) for d in devices if d.type == "cuda"})


@contextlib.contextmanager
def _silence() -> Iterator[io.StringIO]:
    """Capture what is printed to stdout (plugins print nothing; warnings are fine)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def _devices(devices: Iterable[torch.device | str] | None) -> list[torch.device]:
    devs = [torch.device(d) for d in (devices if devices is not None else _default_devices())]
    if any(d.type == "cuda" for d in devs) and not torch.cuda.is_available():
        raise ValueError("devices names CUDA but no CUDA device is available")
    return devs


def _keeps_random_state(fn: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """The checks seed and draw as they please; the caller's random state is restored."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> list[str]:
        devices = kwargs.get("devices")
        cuda = _cuda_indices(_devices(devices)) if devices is not None else (
            [torch.cuda.current_device()] if torch.cuda.is_available() else [])
        with _preserved_rng(cuda):
            return fn(*args, **kwargs)

    return wrapper


# --- the checker -----------------------------------------------------------------------------


class _Checker:
    """Runs named properties of one plugin class, turning failures into ConformanceError."""

    def __init__(self, kind: str, base: type, cls: Any, params: dict | None,
                 skip: Iterable[str], properties: tuple[str, ...]) -> None:
        self.kind = kind
        self.base = base
        self.cls = cls
        self.params = dict(params or {})
        self.skip = set(skip)
        unknown = self.skip - set(properties)
        if unknown:
            raise ValueError(f"unknown {kind} properties to skip: {', '.join(sorted(unknown))}; "
                             f"the properties are {', '.join(properties)}")
        self.checked: list[str] = []
        name = getattr(cls, "name", "") if isinstance(cls, type) else ""
        where = (f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type)
                 else repr(cls))
        self.who = f"{kind} '{name or '?'}' ({where})"

    def fail(self, prop: str, detail: str) -> NoReturn:
        raise ConformanceError(self.who, prop, detail)

    def run(self, prop: str, fn: Callable[[], None]) -> None:
        if prop in self.skip:
            return
        try:
            fn()
        except ConformanceError:
            raise
        except Exception as exc:  # anything unexpected fails the property it happened in
            self.fail(prop, f"raised {type(exc).__name__}: {exc}")
        self.checked.append(prop)

    def instance(self) -> Plugin:
        try:
            return self.cls.create(**self.params)
        except ParameterError as exc:
            self.fail("parameters", f"the parameters given to the check do not validate: {exc}")

    # -- common properties ----------------------------------------------------------------

    def declared(self) -> None:
        cls = self.cls
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            self.fail("declared", f"not a subclass of advarena.api.{self.base.__name__}")
        if inspect.isabstract(cls):
            self.fail("declared", "is abstract")
        for attr in ("name", "paper"):
            if not isinstance(getattr(cls, attr, None), str):
                self.fail("declared", f"'{attr}' must be a string")
        if not cls.name:
            self.fail("declared", "no 'name': set the class attribute users type, e.g. "
                      "name = \"my-method\"")
        for n in (cls.name, *getattr(cls, "aliases", ())):
            if not isinstance(n, str) or not _NAME_RE.match(n):
                self.fail("declared", f"name {n!r} must be letters, digits, '-', '_' or '.' "
                          f"(no spaces; '+' composes defenses)")
        if not cls.paper.strip():
            self.fail("declared", "no 'paper': cite the method's source, e.g. "
                      "paper = \"Kurakin et al. 2017, sec. 2\"")
        if not _own_docstring(cls):
            self.fail("declared", "no docstring: say what the method does, its paper and its "
                      "parameters")
        needed = str(getattr(cls, "api_version", ""))
        if not needed or needed.split(".")[0] != API_VERSION.split(".")[0]:
            self.fail("declared", f"api_version {needed!r} is not compatible with this "
                      f"advarena's plugin API {API_VERSION} (the major numbers must match; "
                      f"advarena would skip it)")

    def parameters(self) -> None:
        cls = self.cls
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            self.fail("parameters", f"annotations cannot be resolved: {exc}")
        for f in dataclasses.fields(cls):
            tp = hints.get(f.name)
            if tp is None or tp is Any:
                self.fail("parameters", f"parameter '{f.name}' needs a concrete type "
                          f"annotation (advarena validates values against it)")
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail("parameters", f"parameter '{f.name}' has no default (declare the "
                          f"paper's value: {f.name}: ... = param(default, help=...))")
            help_line = f.metadata.get("help") if f.metadata else None
            if not isinstance(help_line, str) or not help_line.strip():
                self.fail("parameters", f"parameter '{f.name}' has no help line (declare it "
                          f"with advarena.params.param(default, help=\"...\"))")
        try:
            default = cls()
        except ParameterError as exc:
            self.fail("parameters", f"the defaults do not validate: {exc}")
        inst = self.instance()
        for obj in (default, inst):
            try:
                text = json.dumps(obj.params())
            except (TypeError, ValueError) as exc:
                self.fail("parameters", f"params() is not JSON-ready: {exc}")
            try:
                again = cls.create(**json.loads(text))
            except ParameterError as exc:
                self.fail("parameters", f"params() does not rebuild the plugin: {exc}")
            if again != obj:
                self.fail("parameters", f"params() rebuilds {again!r}, not {obj!r}")
        cls.describe_params()

    def validated(self) -> None:
        cls = self.cls
        hints = typing.get_type_hints(cls)
        self._refused("__not_a_parameter__", 1, "an unknown parameter name")
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            self._refused(f.name, object(), "a value of the wrong type (an object())")
            meta = dict(f.metadata or {})
            number = _number_type(tp)
            tuple_of = typing.get_origin(tp) is tuple or (
                typing.get_origin(tp) in (typing.Union, types.UnionType)
                and any(typing.get_origin(a) is tuple for a in typing.get_args(tp)))
            if number is not None:
                bad = []
                if meta.get("ge") is not None:
                    bad.append((number(meta["ge"] - 1), f">= {meta['ge']}"))
                if meta.get("gt") is not None:
                    bad.append((meta["gt"] if number is float else math.floor(meta["gt"]),
                                f"> {meta['gt']}"))
                if meta.get("le") is not None:
                    bad.append((number(meta["le"] + 1), f"<= {meta['le']}"))
                if meta.get("lt") is not None:
                    bad.append((meta["lt"] if number is float else math.ceil(meta["lt"]),
                                f"< {meta['lt']}"))
                for value, bound in bad:
                    value = (value,) if tuple_of else value
                    self._refused(f.name, value, f"{value!r}, outside its bound {bound}")
            choices = meta.get("choices")
            if choices:
                self._refused(f.name, "__not_a_choice__",
                              f"a value outside its choices {tuple(choices)!r}")

    def _refused(self, pname: str, value: Any, what: str) -> None:
        try:
            with _silence():
                self.cls.create(**{**self.params, pname: value})
        except ParameterError as exc:
            if pname != "__not_a_parameter__" and pname not in str(exc):
                self.fail("validated", f"the error for a bad '{pname}' does not name it: {exc}")
            return
        except Exception as exc:
            self.fail("validated", f"parameter '{pname}' given {what} raised "
                      f"{type(exc).__name__} instead of advarena.errors.ParameterError: {exc}")
        self.fail("validated", f"parameter '{pname}' accepts {what}")

    def picklable(self) -> None:
        inst = self.instance()
        try:
            back = pickle.loads(pickle.dumps(inst))
        except Exception as exc:
            self.fail("picklable", f"pickle round trip failed ({type(exc).__name__}: {exc}); "
                      f"define the class at module level and keep its state in parameters")
        if type(back) is not type(inst) or back != inst or back.params() != inst.params():
            self.fail("picklable", f"unpickled as {back!r}, not {inst!r}")

    def common(self, extra: Callable[[], None] | None = None) -> None:
        def declared() -> None:
            self.declared()
            if extra is not None:
                extra()

        self.run("declared", declared)
        # The remaining properties build instances: a class that is not a plugin stops here.
        self.run("parameters", self.parameters)
        self.run("validated", self.validated)
        self.run("picklable", self.picklable)


def _own_docstring(cls: type) -> bool:
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        return False
    # dataclasses writes "Name(*, a: int = 1)" into classes without a docstring.
    try:
        auto = cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        auto = None
    return doc != auto


def _number_type(tp: Any) -> type | None:
    """int or float if ``tp`` is (an optional or a tuple of) a number type."""
    origin = typing.get_origin(tp)
    if tp in (int, float):
        return tp
    if origin in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(tp):
            found = _number_type(arg)
            if found is not None:
                return found
    if origin is Literal:
        return None
    return None


# --- attacks ---------------------------------------------------------------------------------


@_keeps_random_state
def check_attack(cls: type[Attack], params: dict | None = None, *, eps: float = 0.1,
                 devices: Iterable[torch.device | str] | None = None,
                 skip: Iterable[str] = (), n: int = 16) -> list[str]:
    """Check an attack class; return the properties checked, raise :class:`ConformanceError`
    naming the first one it fails.

    ``params`` configure the attack (e.g. ``{"steps": 3}``); ``eps`` is the budget of bounded
    attacks; ``devices`` default to the CPU and CUDA when available; ``skip`` leaves properties
    of :data:`ATTACK_PROPERTIES` out; ``n`` is the batch size.
    """
    c = _Checker("attack", Attack, cls, params, skip, ATTACK_PROPERTIES)
    devs = _devices(devices)
    tm_ok = isinstance(getattr(cls, "threat_model", None), ThreatModel)

    def declared_attack() -> None:
        tm = getattr(cls, "threat_model", None)
        if not isinstance(tm, ThreatModel):
            c.fail("declared", "no 'threat_model': declare e.g. "
                   "threat_model = ThreatModel(norm=\"linf\")")
        if tm.norm not in ("linf", "l2", "l0") or tm.budget not in ("bounded", "minimal") \
                or tm.access not in ("gradient", "score", "transfer"):
            c.fail("declared", f"threat model {tm!r} has an unknown norm, budget or access")
        if cls.run is Attack.run:
            c.fail("declared", "does not implement run(model, inputs, labels, eps, generator)")
        if tm.budget == "bounded" and "eps" not in {f.name for f in dataclasses.fields(cls)}:
            c.fail("declared", "a bounded attack declares its default budget as a parameter "
                   "'eps'")

    c.common(declared_attack)
    if not tm_ok:
        return c.checked

    splits = tiny_splits()
    x_all, y_all = splits.test.x[:n], splits.test.y[:n]
    attack = c.instance()
    bounded = cls.threat_model.budget == "bounded"
    run_eps = eps if bounded else None
    cuda = _cuda_indices(devs)

    def call(model: Any, x: torch.Tensor, y: torch.Tensor, e: float | None, case: str,
             global_seed: int = 0, copy: bool = True) -> torch.Tensor:
        from .threat import run_checked

        with _preserved_rng(cuda):
            random.seed(global_seed)
            np.random.seed(global_seed)
            torch.manual_seed(global_seed)
            with _silence() as out:
                try:
                    x_adv = run_checked(attack, model, x, y, eps=e, seed=0, copy=copy)
                except ThreatModelViolation as exc:
                    c.fail("threat-model", f"{case}: {exc}")
        if x_adv.device != x.device:
            c.fail("device", f"{case}: returned a tensor on {x_adv.device} for inputs on "
                   f"{x.device}")
        printed = out.getvalue()
        if printed and "side-effects" not in c.skip:
            c.fail("side-effects", f"{case}: printed {printed[:200]!r} (attacks print nothing; "
                   f"the CLI alone prints)")
        return x_adv

    first: dict[str, torch.Tensor] = {}

    def threat_model() -> None:
        model = tiny_model(0)
        batch = f"on {len(x_all)} examples" + (f" with eps={run_eps:g}" if bounded else "")
        first["x_adv"] = call(model, x_all, y_all, run_eps, batch, global_seed=1)
        # One example with the attack's default budget (eps=None), and a zero budget.
        call(model, x_all[:1], y_all[:1], None, "on one example with the default eps")
        if bounded:
            call(model, x_all[:4], y_all[:4], 0.0, "with eps=0")
        if cls.accepts_ensemble:
            call([tiny_model(0), tiny_model(1)], x_all[:4], y_all[:4], run_eps,
                 "on an ensemble of two models")

    def side_effects() -> None:
        model = tiny_model(0)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        x, y = x_all.clone(), y_all.clone()
        call(model, x, y, run_eps, "side effects", copy=False)
        if not torch.equal(x, x_all):
            c.fail("side-effects", "changed its inputs in place (work on a copy)")
        if not torch.equal(y, y_all):
            c.fail("side-effects", "changed its labels in place")
        for k, v in model.state_dict().items():
            if not torch.equal(v, state[k]):
                c.fail("side-effects", f"changed the model's '{k}' (attacks hold no model)")
        leaked = [k for k, p in model.named_parameters() if p.grad is not None]
        if leaked:
            c.fail("side-effects", f"left gradients in the model's weights ({leaked[0]}, ...): "
                   f"use torch.autograd.grad(loss, inputs) rather than loss.backward()")

    def deterministic() -> None:
        a = first.get("x_adv")
        if a is None:
            a = call(tiny_model(0), x_all, y_all, run_eps, "first run", global_seed=1)
        b = call(tiny_model(0), x_all, y_all, run_eps, "second run", global_seed=2)
        if not torch.equal(a, b):
            diff = (a - b).reshape(len(a), -1).abs().amax(1)
            c.fail("deterministic", f"two runs with seed 0 differ on {int((diff > 0).sum())} "
                   f"of {len(a)} examples (largest difference {float(diff.max()):.3g}); draw "
                   f"random numbers from the 'generator' argument, not the global RNG")

    def device() -> None:
        for d in devs:
            if d.type == "cpu" and "x_adv" in first:
                continue  # the runs above were on the CPU
            call(tiny_model(0, d), x_all.to(d), y_all.to(d), run_eps, f"on {d}")

    c.run("threat-model", threat_model)
    c.run("side-effects", side_effects)
    c.run("deterministic", deterministic)
    c.run("device", device)
    return c.checked


# --- defenses --------------------------------------------------------------------------------


def _overrides(cls: type, hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Defense, hook)


@functools.lru_cache(maxsize=4)
def _reference_state(device: str, epochs: int) -> dict[str, torch.Tensor]:
    """Weights of the undefended tiny network, trained by the shared trainer as ``none``."""
    ref, _ = _fit(Defense(), torch.device(device), seed=0, epochs=epochs, reference=None)
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


def _fit(defense: Defense, device: torch.device, *, seed: int, epochs: int,
         reference: Classifier | None) -> tuple[Classifier, Any]:
    """Train ``defense`` on the tiny data as ``advarena.runner.run_train`` does."""
    from .device import seed_everything
    from .trainer import TrainingSession

    splits = tiny_splits()
    info = splits.info
    val = splits.test
    with _preserved_rng(_cuda_indices([device])):
        seed_everything(seed)
        net = tiny_net(info, defense.activation(info) or nn.ReLU)
        transform = defense.input_transform(info)
        if reference is not None:
            net.load_state_dict(reference.net.state_dict())
        session = TrainingSession(net, info, splits.train, val, train_config(epochs), defense,
                                  device=device, seed=seed, reference=reference,
                                  transform=transform)
        defense.fit(session)
    model = Classifier(session.model, info.bounds, session.transform).to(device).eval()
    return model, session


def _reference_for(defense: Defense, device: torch.device, epochs: int) -> Classifier | None:
    if not defense.needs_reference:
        return None
    ref = Classifier(tiny_net(TINY_INFO), TINY_INFO.bounds)
    ref.load_state_dict(_reference_state(str(device), epochs))
    return ref.to(device).eval()


@_keeps_random_state
def check_defense(cls: type[Defense], params: dict | None = None, *, epochs: int = 2,
                  devices: Iterable[torch.device | str] | None = None,
                  skip: Iterable[str] = ()) -> list[str]:
    """Check a defense class by training the tiny network with it (``epochs`` epochs of 256
    synthetic examples); return the properties checked, raise :class:`ConformanceError`
    naming the first one it fails. ``params`` configure the defense; ``skip`` leaves
    properties of :data:`DEFENSE_PROPERTIES` out."""
    c = _Checker("defense", Defense, cls, params, skip, DEFENSE_PROPERTIES)
    c.common()
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        return c.checked
    devs = _devices(devices)
    splits = tiny_splits()
    info = splits.info
    defense = c.instance()

    def hooks() -> None:
        with _silence():
            act = defense.activation(info)
            if act is not None and not isinstance(act(), nn.Module):
                c.fail("hooks", "activation(info) must return a factory of nn.Module")
            transform = defense.input_transform(info)
            if transform is not None:
                if not isinstance(transform, nn.Module):
                    c.fail("hooks", "input_transform(info) must return an nn.Module "
                           "(an advarena.models.InputTransform) or None")
                with torch.no_grad():
                    out = transform(splits.test.x[:4])
                if out.shape != splits.test.x[:4].shape or not torch.isfinite(out).all():
                    c.fail("hooks", f"input_transform maps inputs of shape "
                           f"{tuple(splits.test.x[:4].shape)} to {tuple(out.shape)} or to "
                           f"non-finite values")
            if _overrides(cls, "targets"):
                y = splits.train.y[:8]
                t = defense.targets(y, info.num_classes)
                if t is not None:
                    if t.shape != (len(y), info.num_classes):
                        c.fail("hooks", f"targets() returned shape {tuple(t.shape)}, expected "
                               f"{(len(y), info.num_classes)}")
                    if (t < 0).any() or not torch.allclose(t.sum(1), torch.ones(len(y)),
                                                           atol=1e-5):
                        c.fail("hooks", "targets() rows must be probability distributions")
            if _overrides(cls, "augment"):
                g = torch.Generator().manual_seed(0)
                data = defense.augment(splits.train, info, g)
                if not isinstance(data, TensorData):
                    c.fail("hooks", "augment() must return an advarena.api.TensorData")
                if data.x.shape[1:] != splits.train.x.shape[1:] or len(data) == 0:
                    c.fail("hooks", f"augment() returned inputs of shape {tuple(data.x.shape)}")
                if data.x.dtype != splits.train.x.dtype or data.y.dtype != torch.int64:
                    c.fail("hooks", f"augment() returned dtypes {data.x.dtype}, {data.y.dtype}")
                if not torch.isfinite(data.x).all() or data.y.min() < 0 or \
                        data.y.max() >= info.num_classes:
                    c.fail("hooks", "augment() returned non-finite inputs or bad labels")

    fitted: dict[str, Any] = {}

    def fit(device: torch.device, seed: int = 0) -> tuple[Classifier, Any]:
        d = copy.deepcopy(defense)
        with _silence() as out:
            model, session = _fit(d, device, seed=seed, epochs=epochs,
                                  reference=_reference_for(d, device, epochs))
        printed = out.getvalue()
        if printed and "side-effects" not in c.skip:
            c.fail("side-effects", f"printed {printed[:200]!r} while training (plugins print "
                   f"nothing; report progress through the session)")
        if d != defense or d.params() != defense.params():
            c.fail("side-effects", f"training changed the defense's parameters to {d!r}")
        return model, session

    def training() -> None:
        from .store import tensors_to_bytes
        from safetensors.torch import load as st_load

        model, session = fit(torch.device("cpu"))
        fitted["cpu"] = model
        if not session.history:
            c.fail("training", "fit() never called session.train(): every defense trains "
                   "through the shared trainer, so its cost is measured like the others'")
        x = splits.test.x
        with torch.no_grad():
            logits = model(x)
        if logits.shape != (len(x), info.num_classes) or not torch.isfinite(logits).all():
            c.fail("training", f"the trained classifier returned {tuple(logits.shape)} logits "
                   f"(finite: {bool(torch.isfinite(logits).all())}) for {len(x)} inputs")
        try:
            stored = st_load(tensors_to_bytes(model.state_dict()))
        except Exception as exc:
            c.fail("training", f"the trained weights do not serialise with safetensors: {exc}")
        fresh = Classifier(tiny_net(info, defense.activation(info) or nn.ReLU), info.bounds,
                           defense.input_transform(info))
        try:
            fresh.load_state_dict(stored, strict=True)
        except Exception as exc:
            c.fail("training", "the trained weights do not load into a classifier rebuilt from "
                   "activation() and input_transform() (the store rebuilds models this way): "
                   f"{exc}")
        with torch.no_grad():
            again = fresh.eval()(x)
        if not torch.allclose(again, logits, atol=1e-5, rtol=1e-4):
            c.fail("training", "the classifier rebuilt from the stored weights gives other "
                   "logits than the trained one")
        for what, value in (("session.notes", session.notes), ("session.cost()",
                                                                session.cost())):
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                c.fail("training", f"{what} is not JSON-ready: {exc}")

    def deterministic() -> None:
        a = fitted.get("cpu")
        if a is None:
            a, _ = fit(torch.device("cpu"))
        b, _ = fit(torch.device("cpu"))
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            if not torch.equal(sa[k], sb[k]):
                c.fail("deterministic", f"two trainings with seed 0 give different '{k}'; draw "
                       f"random numbers from ctx.generator / the session's generators")

    def device() -> None:
        for d in devs:
            if d.type == "cpu" and "cpu" in fitted:
                continue
            model, _ = fit(d)
            wrong = [k for k, v in model.state_dict().items() if v.device.type != d.type]
            if wrong:
                c.fail("device", f"trained on {d} but '{wrong[0]}' is on another device")
            with torch.no_grad():
                logits = model(splits.test.x.to(d))
            if logits.device.type != d.type or not torch.isfinite(logits).all():
                c.fail("device", f"the classifier trained on {d} gives non-finite logits or "
                       f"logits on {logits.device}")

    c.run("hooks", hooks)
    c.run("training", training)
    if "side-effects" not in c.skip and "training" not in c.skip:
        c.checked.append("side-effects")  # checked around every fit
    c.run("deterministic", deterministic)
    c.run("device", device)
    return c.checked


# --- datasets and architectures ----------------------------------------------------------------


@_keeps_random_state
def check_dataset(cls: type[Dataset], params: dict | None = None, *,
                  data_dir: Any = None, skip: Iterable[str] = ()) -> list[str]:
    """Check a dataset class. Embedded datasets are loaded; a dataset read from disk is loaded
    from ``data_dir`` if given, else it must refuse to load (``DataError``) rather than
    download."""
    c = _Checker("dataset", Dataset, cls, params, skip, DATASET_PROPERTIES)
    c.common()
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        return c.checked
    if cls.load is Dataset.load:
        c.fail("declared", "does not implement load(data_dir, download)")
    ds = c.instance()
    loaded: dict[str, Splits] = {}

    def loads() -> None:
        if cls.needs_data_dir and data_dir is None:
            try:
                with _silence():
                    ds.load(None, False)
            except DataError:
                return
            c.fail("loads", "a dataset read from disk must raise advarena.errors.DataError "
                   "without a data directory (and never download unless asked)")
        with _silence():
            splits = ds.load(data_dir, False)
        if not isinstance(splits, Splits) or not isinstance(splits.info, DatasetInfo):
            c.fail("loads", "load() must return advarena.api.Splits with a DatasetInfo")
        info = splits.info
        if info.family != cls.family:
            c.fail("loads", f"info.family {info.family!r} is not the class's {cls.family!r}")
        lo, hi = info.bounds
        for part in ("train", "test"):
            data = getattr(splits, part)
            if len(data) == 0:
                c.fail("loads", f"the {part} split is empty")
            if data.x.dtype != torch.float32 or data.y.dtype != torch.int64:
                c.fail("loads", f"{part} dtypes are {data.x.dtype}, {data.y.dtype}; expected "
                       f"float32 inputs and int64 labels")
            if tuple(data.x.shape[1:]) != tuple(info.input_shape):
                c.fail("loads", f"{part} inputs have shape {tuple(data.x.shape[1:])}, "
                       f"info says {tuple(info.input_shape)}")
            if not torch.isfinite(data.x).all() or data.x.min() < lo or data.x.max() > hi:
                c.fail("loads", f"{part} inputs leave the declared bounds {info.bounds}")
            if data.y.min() < 0 or data.y.max() >= info.num_classes:
                c.fail("loads", f"{part} labels leave 0..{info.num_classes - 1}")
        loaded["first"] = splits

    def deterministic() -> None:
        a = loaded.get("first")
        if a is None:
            return
        with _silence():
            b = ds.load(data_dir, False)
        for part in ("train", "test"):
            if not (torch.equal(getattr(a, part).x, getattr(b, part).x)
                    and torch.equal(getattr(a, part).y, getattr(b, part).y)):
                c.fail("deterministic", f"two loads give different {part} splits")

    c.run("loads", loads)
    c.run("deterministic", deterministic)
    return c.checked


@_keeps_random_state
def check_architecture(cls: type[Architecture], params: dict | None = None, *,
                       info: DatasetInfo = TINY_INFO,
                       devices: Iterable[torch.device | str] | None = None,
                       skip: Iterable[str] = ()) -> list[str]:
    """Check an architecture class by building it for ``info`` (default: 1x8x8 inputs, ten
    classes)."""
    c = _Checker("architecture", Architecture, cls, params, skip, ARCHITECTURE_PROPERTIES)
    c.common()
    if not (isinstance(cls, type) and issubclass(cls, Architecture)):
        return c.checked
    if cls.build is Architecture.build:
        c.fail("declared", "does not implement build(info, activation)")
    arch = c.instance()
    devs = _devices(devices)
    x = torch.rand((2, *info.input_shape), generator=torch.Generator().manual_seed(0))

    def build(seed: int = 0, activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Module:
        with _preserved_rng([]), _silence():
            torch.manual_seed(seed)
            return arch.build(info, activation)

    def builds() -> None:
        calls = []

        def counting() -> nn.Module:
            calls.append(1)
            return nn.ReLU()

        net = build(activation=counting)
        if not isinstance(net, nn.Module):
            c.fail("builds", "build() must return an nn.Module")
        if not calls:
            c.fail("builds", "build() never calls activation(): defenses such as brelu swap "
                   "the nonlinearities through it")
        with torch.no_grad():
            out = net.eval()(x)
        if out.shape != (2, info.num_classes) or not torch.isfinite(out).all():
            c.fail("builds", f"maps inputs of shape {tuple(x.shape)} to {tuple(out.shape)}; "
                   f"expected finite logits of shape {(2, info.num_classes)}")

    def deterministic() -> None:
        a, b = build(0).state_dict(), build(0).state_dict()
        for k in a:
            if not torch.equal(a[k], b[k]):
                c.fail("deterministic", f"two builds under the same seed differ in '{k}'")

    def device() -> None:
        for d in devs:
            if d.type == "cpu":
                continue
            net = build(0).to(d).eval()
            with torch.no_grad():
                out = net(x.to(d))
            if out.device.type != d.type:
                c.fail("device", f"returned logits on {out.device} for inputs on {d}")

    c.run("builds", builds)
    c.run("deterministic", deterministic)
    c.run("device", device)
    return c.checked


# --- the pytest plugin -------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the checks work without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def advarena_tiny_splits() -> Splits:
        """:func:`tiny_splits`: synthetic 1x8x8 inputs in [0, 1], ten classes, 256 + 64."""
        return tiny_splits()

    @pytest.fixture
    def advarena_tiny_model() -> Classifier:
        """:func:`tiny_model`: a small CNN trained on ``advarena_tiny_splits`` (a fresh copy
        for each test, in eval mode, on the CPU)."""
        return tiny_model()

    @pytest.fixture
    def advarena_devices() -> list[torch.device]:
        """The devices the checks use: the CPU, and CUDA when available."""
        return _default_devices()
