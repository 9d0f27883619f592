"""Running one cell. A cell's function reads its inputs (datasets, stored weights) and returns
data; only the driver writes the store, so executors (local or Ray) can run cells anywhere.

A plugin that fails fails its own cell with a :class:`CellError` whose message names the
plugin and the reason (``attack 'x' (from dist) raised RuntimeError: ...``). Workers in other
processes (the isolated local executor, Ray tasks) rebuild an :class:`Environment` from
:class:`WorkerSettings`, run a cell with :func:`run_cell_encoded` and hand back plain data
(JSON-ready dicts and safetensors bytes) for the driver to store: nothing is pickled to disk,
and nothing a worker returns needs a plugin's classes to be read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import platform
import sys
import time
import traceback
import types
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .api.data import Splits, TensorData
from .api.records import Measurement
from .device import resolve_device, seed_everything
from .errors import AdvarenaError, DataError, ThreatModelViolation
from .evaluation import EvalContext
from .guards import INCIDENTS, POISONED, CellError, ModelGuard, plugin_state, user_interrupted
from .models import Classifier
from .plan import Cell
from .plugins import KINDS, Registry, make_plugin_manager
from .store import Store, tensors_to_bytes
from .trainer import TrainConfig, TrainingSession

Progress = Callable[[str, int, int], None]


def who(kind: str, plugin: Any) -> str:
    """``attack 'pgd' (from advarena)``: how failures name a plugin."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    name = getattr(plugin, "name", "") or cls.__name__
    dist = getattr(cls, "distribution", "")
    return f"{kind} '{name}'" + (f" (from {dist})" if dist else "")


@contextlib.contextmanager
def blame(label: str):
    """Re-raise any exception from the block as a :class:`CellError` naming ``label``. Data
    errors (the user's input) and failures that already name their plugin pass through.
    ``BaseException`` too (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``, custom
    ones): the run's outcome belongs to the harness. Only a genuine Ctrl-C stops the run."""
    try:
        yield
    except (DataError, CellError, ThreatModelViolation):
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and user_interrupted():
            raise
        raise CellError(f"{label} raised {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def calling(env: "Environment", label: str):
    """A plugin call: named in the activity (for time limits), its failures blamed on it, and
    the process-wide torch state restored after it (a change fails the cell)."""
    with env.activity.doing(label), plugin_state(label), blame(label):
        yield


def is_interrupt(exc: BaseException) -> bool:
    """A Ctrl-C of the user's (which stops the run), not a plugin raising KeyboardInterrupt."""
    return isinstance(exc, KeyboardInterrupt) and user_interrupted()


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(one-line reason, full text with traceback) of a failed cell."""
    if isinstance(exc, CellError | ThreatModelViolation):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split()) or type(exc).__name__
    return reason, reason + "\n" + "".join(traceback.format_exception(exc, limit=8))


def cell_plugins(cell: Cell) -> str:
    """The plugins a cell runs, for failures that cannot tell which one was at fault."""
    spec = cell.spec
    if cell.kind == "train":
        if "external" in spec:
            return f"external model '{spec['external']['label']}'"
        return f"defense '{spec['defense']['name']}'"
    if cell.kind in ("eval", "prepare"):
        text = f"protocol '{spec['protocol']['name']}'"
        if spec.get("attacks"):
            text += " (attacks " + ", ".join(f"'{a}'" for a in spec["attacks"]) + ")"
        return text
    return f"cell '{cell.title}'"


class Activity:
    """What a cell is doing now (``defense 'x'``, ``attack 'y'``), so that a cell stopped by
    its time limit can say which plugin it was in. ``listener`` hears every change."""

    def __init__(self) -> None:
        self.label = ""
        self.listener: Callable[[str], None] | None = None

    @contextlib.contextmanager
    def doing(self, label: str):
        before = self.label
        self._set(label)
        try:
            yield
        finally:
            self._set(before)

    def _set(self, label: str) -> None:
        if label != self.label:
            self.label = label
            if self.listener is not None:
                self.listener(label)


@dataclasses.dataclass
class CellOutput:
    result: dict[str, Any]
    measurements: list[Measurement]
    tensors: dict[str, dict[str, torch.Tensor]]  # artifact name -> tensors
    provenance: dict[str, Any]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("advarena", "torch", "torchvision", "numpy", "scikit-learn", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to rebuild the driver's :class:`Environment`: plain data,
    so it crosses process (and machine) boundaries."""

    store: str
    device: str  # as the user asked: auto, cpu, cuda[:N]
    data_dir: str | None = None
    download: bool = False
    # plugins registered other than through entry points (module name, file): test fixtures
    plugins: tuple[tuple[str, str], ...] = ()
    entry_points: bool = True
    threads: int = 0  # torch intra-op threads (0: torch's default)
    channels_last: bool = False


def plugin_recipe(pm) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """(entry points loaded?, the other registering plugins as (module name, file)) of a
    plugin manager, so a worker can build the same registry. Observers (the progress
    display) stay with the driver."""
    from_dists = {id(p) for p, _ in pm.list_plugin_distinfo()}
    hooks = [hook for hook, _ in KINDS.values()]
    extra = []
    for plugin in pm.get_plugins():
        if id(plugin) in from_dists or not any(hasattr(plugin, h) for h in hooks):
            continue
        file = getattr(plugin, "__file__", None)
        if not isinstance(plugin, types.ModuleType) or not file:
            raise AdvarenaError(f"plugin '{pm.get_name(plugin)}' is not a module loaded from a "
                                f"file, so worker processes cannot load it; install it as a "
                                f"package with an 'advarena' entry point")
        extra.append((plugin.__name__, str(file)))
    return bool(from_dists), tuple(extra)


def _load_module(name: str, file: str) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise AdvarenaError(f"cannot load plugin module {name} from {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class Environment:
    """What cells share within one process: the registry, the store (read), the device and a
    cache of loaded datasets and models."""

    def __init__(self, registry: Registry, store: Store, device: torch.device,
                 data_dir: Path | None = None, download: bool = False, *,
                 channels_last: bool = False, device_request: str | None = None) -> None:
        self.registry = registry
        self.store = store
        self.device = device
        self.data_dir = data_dir
        self.download = download
        self.channels_last = channels_last
        self.device_request = device_request or str(device)
        self.activity = Activity()
        self._datasets: dict[str, Splits] = {}
        self._fingerprints: dict[str, str] = {}
        self._specs: dict[str, dict] = {}

    def worker_settings(self) -> WorkerSettings:
        entry_points, plugins = plugin_recipe(self.registry.pm)
        return WorkerSettings(store=str(Path(self.store.root).resolve()),
                              device=self.device_request,
                              data_dir=str(Path(self.data_dir).resolve()) if self.data_dir
                              else None, download=self.download, plugins=plugins,
                              entry_points=entry_points, threads=torch.get_num_threads(),
                              channels_last=self.channels_last)

    @classmethod
    def from_settings(cls, settings: WorkerSettings,
                      device: torch.device | None = None) -> "Environment":
        """A worker's environment: the same plugins, the driver's store opened read-only."""
        if settings.threads:
            torch.set_num_threads(settings.threads)
        modules = [_load_module(name, file) for name, file in settings.plugins]
        registry = Registry(make_plugin_manager(modules, entry_points=settings.entry_points))
        store = Store.open(settings.store, readonly=True)
        return cls(registry, store, device or resolve_device(settings.device),
                   Path(settings.data_dir) if settings.data_dir else None, settings.download,
                   channels_last=settings.channels_last, device_request=settings.device)

    def splits(self, spec: dict) -> Splits:
        """The dataset's splits, loaded once per process and shared by its cells (protocols
        read them in place: :meth:`check_datasets` verifies that none wrote into them)."""
        key = repr((spec["name"], sorted(spec["params"].items())))
        if key not in self._datasets:
            ds = self.registry.create("datasets", spec["name"], **spec["params"])
            splits = ds.load(self.data_dir, self.download)
            self._datasets[key] = splits
            self._fingerprints[key] = fingerprint(splits)
        return self._datasets[key]

    def check_datasets(self) -> list[str]:
        """Cache keys of the datasets whose tensors changed since they were loaded; those
        are dropped from the cache (the next cell loads them again). About 0.3 s per check of
        MNIST's 70,000 images on a 2-core CPU, a fraction of any cell that reads them."""
        changed = [key for key, splits in self._datasets.items()
                   if fingerprint(splits) != self._fingerprints[key]]
        for key in changed:
            del self._datasets[key], self._fingerprints[key]
        return changed

    def remember(self, cell: Cell) -> None:
        self._specs[cell.key] = cell.spec

    def train_spec(self, train_key: str) -> dict:
        spec = self._specs.get(train_key)
        if spec is None:
            spec = self.store.cell(train_key)["spec"]
            self._specs[train_key] = spec
        return spec

    def train_record(self, train_key: str) -> dict:
        """The spec and stored result (cost, history) of a finished train cell."""
        row = self.store.cell(train_key) or {}
        # a copy: the cached spec builds later cells' models
        return {"spec": json.loads(json.dumps(self.train_spec(train_key))),
                "result": row.get("result"),
                "device": row.get("device"), "run_id": row.get("run_id")}

    def defense_of(self, spec: dict):
        return self.registry.create("defenses", spec["defense"]["name"],
                                    **spec["defense"]["params"])

    def build_classifier(self, spec: dict) -> Classifier:
        """An untrained classifier of a train cell's spec (architecture, activation, transform)."""
        info = self.splits(spec["dataset"]).info
        if "external" in spec:
            from .external import build_untrained

            return build_untrained(spec, info, self.registry)
        defense = self.defense_of(spec)
        arch = self.registry.create("architectures", spec["architecture"]["name"],
                                    **spec["architecture"]["params"])
        net = arch.build(info, defense.activation(info) or nn.ReLU)
        return Classifier(net, info.bounds, defense.input_transform(info))

    def load_classifier(self, train_key: str) -> Classifier:
        """The trained classifier of a train cell, from hash-verified safetensors."""
        model = self.build_classifier(self.train_spec(train_key))
        digest = self.store.artifacts(train_key)["model"]
        model.load_state_dict(self.store.get_tensors(digest), strict=True)
        return model.to(self.device).eval()

    def provenance(self, cell: Cell) -> dict[str, Any]:
        plugins = {}
        for role in ("dataset", "architecture", "defense", "protocol"):
            if role in cell.spec:
                s = cell.spec[role]
                kind = {"dataset": "datasets", "architecture": "architectures",
                        "defense": "defenses", "protocol": "protocols"}[role]
                names = s["code"].keys()
                plugins[role] = [self._dist(kind, n) for n in names]
        if cell.spec.get("attacks"):
            plugins["attacks"] = [self._dist("attacks", n) for n in cell.spec["attacks"]]
        out = {"cell_key": cell.key, "device": str(self.device),
               "device_name": torch.cuda.get_device_name(self.device)
               if self.device.type == "cuda" else platform.processor() or platform.machine(),
               "versions": package_versions(), "plugins": plugins,
               "platform": sys.platform, "host": platform.node()}
        if cell.kind == "train":
            out["channels_last"] = self.channels_last
        return out

    def _dist(self, kind: str, name: str) -> dict[str, str]:
        e = self.registry.entry(kind, name)
        return {"name": name, "distribution": e.distribution, "version": e.version}


def fingerprint(splits: Splits) -> str:
    """A digest of the splits' tensors (bytes, dtype, shape and the objects themselves), read
    in place: what the harness checks its shared dataset against after each cell."""
    h = hashlib.blake2b(digest_size=16)
    for t in (splits.train.x, splits.train.y, splits.test.x, splits.test.y):
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}{t.device}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.hexdigest()


def eval_examples(splits: Splits, n: int) -> TensorData:
    """The first ``n`` test examples of a fixed permutation (seed 0, not the run seed), so every
    defense and every seed is scored on the same examples and records pair up."""
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(splits.test), generator=gen)
    if n and n < len(order):
        order = order[:n]
    return splits.test.subset(order)


def private(data: TensorData) -> TensorData:
    """A copy of cached data for one cell's plugins, so that writing into it changes nothing
    else (a defense's ``augment`` may work in place)."""
    return TensorData(data.x.clone(), data.y.clone())


def split_validation(train: TensorData, fraction: float, seed: int) -> tuple[TensorData,
                                                                            TensorData]:
    """(training, validation) parts of ``train``, both new tensors (never the cached split)."""
    if fraction <= 0:
        return private(train), private(train.subset(slice(0, 0)))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(fraction * len(train))))
    return train.subset(order[n_val:]), train.subset(order[:n_val])


def run_train(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    spec = cell.spec
    if "external" in spec:  # loaded and verified, never trained
        from .external import run_external

        with blame(f"external model '{spec['external']['label']}'"):
            model, result = run_external(spec, env.splits(spec["dataset"]).info,
                                         env.registry, env.device)
        return CellOutput(result, [], {"model": model.state_dict()}, {})
    splits = env.splits(spec["dataset"])
    info = splits.info
    config = TrainConfig(**spec["train"])
    seed = spec["seed"]
    train, val = split_validation(splits.train, config.val_fraction, seed)
    seed_everything(seed)
    defense = env.defense_of(spec)
    label = who("defense", defense)
    with calling(env, f"{label} or architecture '{spec['architecture']['name']}'"):
        classifier = env.build_classifier(spec)
    reference = None
    if "reference" in cell.deps:
        reference = env.load_classifier(cell.deps["reference"])
        # Fine-tuning defenses start from the reference network's weights.
        classifier.net.load_state_dict(reference.net.state_dict())
    guard = ModelGuard({"the reference model": reference})
    with calling(env, label):
        session = TrainingSession(classifier.net, info, train, val, config, defense,
                                  device=env.device, seed=seed, reference=reference,
                                  transform=classifier.transform, progress=progress,
                                  channels_last=env.channels_last)
        defense.fit(session)
        model = Classifier(session.model, info.bounds, session.transform).to(env.device).eval()
        state = model.state_dict()
    guard.check(label)
    _check_weights(state, label)
    _check_finite_weights(model, label)
    result = {"cost": session.cost(), "history": [dataclasses.asdict(h) for h in session.history],
              "num_parameters": sum(p.numel() for p in model.parameters()),
              "train_examples": len(train), "val_examples": len(val), "notes": session.notes}
    try:
        json.dumps(session.notes)
    except (TypeError, ValueError) as exc:
        raise CellError(f"{label} left notes that cannot be stored: {exc}") from None
    return CellOutput(result, [], {"model": state}, {})


def _check_weights(state: Any, label: str) -> None:
    """What is stored as weights must be named dense tensors (a module's ``get_extra_state``
    can put any object into its state)."""
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CellError(f"{label} produced a model whose state '{name}' is "
                            f"{type(t).__name__}, not a tensor: it cannot be stored")
        if t.layout != torch.strided or t.is_quantized or t.is_meta:
            raise CellError(f"{label} produced a model whose state '{name}' is not a dense "
                            f"tensor ({t.layout}): it cannot be stored")


def _check_finite_weights(model: nn.Module, label: str) -> None:
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
    if bad:
        raise CellError(f"{label} produced non-finite weights ({len(bad)} of {len(params)} "
                        f"parameter tensors, e.g. {bad[0]}): training diverged")


def _guarded(attack: Any, env: Environment, models: ModelGuard) -> Any:
    """The attack with its ``run`` wrapped so that an exception names the attack, a time
    limit can tell that the cell was inside it, global state is restored after it and the
    cell's models are verified unchanged (parameters and buffers)."""
    label = who("attack", attack)
    run = attack.run

    def run_guarded(*args: Any, **kwargs: Any) -> Any:
        with calling(env, label):
            out = run(*args, **kwargs)
        models.check(label)
        return out

    object.__setattr__(attack, "run", run_guarded)
    return attack


def _attacks(cell: Cell, env: Environment, models: ModelGuard) -> dict[str, Any]:
    out = {}
    for name, s in cell.spec.get("attacks", {}).items():
        with calling(env, f"attack '{name}'"):
            attack = env.registry.create("attacks", name, **s["params"])
        out[name] = _guarded(attack, env, models)
    return out


def _context(cell: Cell, env: Environment, progress: Progress, with_model: bool) -> EvalContext:
    spec = cell.spec
    splits = env.splits(spec["dataset"])
    data = eval_examples(splits, spec["eval"]["n_examples"]).to(env.device)
    shared = {role.split(":", 1)[1]: env.load_classifier(key)
              for role, key in cell.deps.items() if role.startswith("shared:")}
    prepared = {}
    if "prepared" in cell.deps:
        digest = env.store.artifacts(cell.deps["prepared"])["prepared"]
        prepared = {k: v.to(env.device) for k, v in env.store.get_tensors(digest).items()}
    model = env.load_classifier(cell.deps["model"]) if with_model else None
    reference = (env.load_classifier(cell.deps["reference"]) if "reference" in cell.deps
                 else None)
    # Models are loaded afresh for every cell; within the cell, every attack call and the
    # protocol's own are checked against these copies.
    guard = ModelGuard({"the defended model": model, "the reference model": reference,
                        **{f"shared model '{n}'": m for n, m in shared.items()}})
    ctx = EvalContext(
        info=splits.info, data=data, train=splits.train, device=env.device,
        seed=spec["seed"], attacks=_attacks(cell, env, guard),
        batch_size=spec["eval"]["batch_size"] or len(data),
        model=model, reference=reference,
        shared=shared, prepared=prepared, progress=progress,
        train_records={role: env.train_record(key) for role, key in cell.deps.items()
                       if role in ("model", "reference") or role.startswith("shared:")},
        fresh_model=lambda role: env.build_classifier(env.train_spec(cell.deps[role]))
        .to(env.device),
        defense_of=lambda role: env.defense_of(env.train_spec(cell.deps[role])),
        splits=splits)
    return ctx, guard


def _protocol(cell: Cell, env: Environment) -> Any:
    name = cell.spec["protocol"]["name"]
    with calling(env, f"protocol '{name}'"):
        return env.registry.create("protocols", name, **cell.spec["protocol"]["params"])


def run_prepare(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    proto = _protocol(cell, env)
    label = who("protocol", proto)
    seed_everything(cell.spec["seed"])
    ctx, guard = _context(cell, env, progress, with_model=False)
    with calling(env, label):
        tensors = proto.prepare(ctx)
    guard.check(label)
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CellError(f"{label}: prepare returned {type(tensors).__name__}, not a dict of "
                        f"named tensors")
    return CellOutput({"tensors": sorted(tensors)}, [], {"prepared": tensors}, {})


def run_eval(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    proto = _protocol(cell, env)
    label = who("protocol", proto)
    seed_everything(cell.spec["seed"])
    ctx, guard = _context(cell, env, progress, with_model=True)
    with calling(env, label):
        ms = proto.evaluate(ctx)
    guard.check(label)
    _check_measurements(ms, label)
    return CellOutput({"records": len(ms)}, ms, {}, {})


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_measurements(ms: Any, label: str) -> None:
    """What a protocol returned must be storable: a list of Measurement whose fields have
    their declared types (fields can be reassigned after construction), whose numbers are
    not NaN and whose ``extra`` is a JSON object."""
    if not isinstance(ms, list) or not all(isinstance(m, Measurement) for m in ms):
        raise CellError(f"{label} returned {type(ms).__name__}, not a list of Measurement")
    for i, m in enumerate(ms):
        name = m.metric if isinstance(m.metric, str) else f"#{i}"
        wrong = [f"metric is {type(m.metric).__name__}"] if not (
            isinstance(m.metric, str) and m.metric) else []
        if not _number(m.value):
            wrong.append(f"value is {type(m.value).__name__}")
        if not isinstance(m.n, int) or isinstance(m.n, bool) or m.n < 0:
            wrong.append(f"n is {m.n!r:.40}")
        for field in ("ci_low", "ci_high", "eps"):
            v = getattr(m, field)
            if v is not None and not _number(v):
                wrong.append(f"{field} is {type(v).__name__}")
        if m.attack is not None and not isinstance(m.attack, str):
            wrong.append(f"attack is {type(m.attack).__name__}")
        if not isinstance(m.extra, dict) or not all(isinstance(k, str) for k in m.extra):
            wrong.append("extra is not a dict with string keys")
        if wrong:
            raise CellError(f"{label} returned a malformed measurement {name!r:.60}: "
                            f"{', '.join(wrong)}")
        try:
            json.dumps(m.extra)
        except (TypeError, ValueError) as exc:
            raise CellError(f"{label} returned metric {name!r:.60} that cannot be stored: "
                            f"{exc}") from None
        bad = [n for n in ("value", "ci_low", "ci_high", "eps")
               if getattr(m, n) is not None and math.isnan(getattr(m, n))]
        if bad:
            raise CellError(f"{label} returned NaN for {', '.join(bad)} of metric "
                            f"{name!r:.60}")


def run_flags(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    from .sanity import compute_flags

    own = [k for role, k in cell.deps.items() if not role.startswith("reference-")]
    ref = [k for role, k in cell.deps.items() if role.startswith("reference-")]
    flags = compute_flags(env.store.metrics(own), env.store.metrics(ref),
                          set(cell.spec["single_step"]), cell.spec.get("checks"))
    return CellOutput({"raised": [f.metric for f in flags if f.value]}, flags, {}, {})


def run_headline(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    from .headline import HeadlineError, compute_headline

    try:
        ms = compute_headline(env.store.metrics(list(cell.deps.values())),
                              cell.spec["attacks"], cell.deps)
    except HeadlineError as exc:
        raise CellError(f"headline: {exc}") from None
    return CellOutput({"records": len(ms)}, ms, {}, {})


RUNNERS = {"train": run_train, "prepare": run_prepare, "eval": run_eval,
           "headline": run_headline, "flags": run_flags}


def run_cell(cell: Cell, env: Environment, progress: Progress) -> tuple[CellOutput, float]:
    """Run one cell. Beyond each plugin call's own guard, the whole cell is guarded too (the
    dataset's ``load`` and other calls outside a named one are blamed on the cell's plugins),
    and a violation seen during the cell fails it even if a plugin caught the error."""
    start = time.perf_counter()
    INCIDENTS.clear()
    try:
        with plugin_state(cell_plugins(cell)):
            out = RUNNERS[cell.kind](cell, env, progress)
    finally:
        # Protocols read the cached dataset in place (no copy of the training split per
        # cell): one that wrote into it fails, and the cache is reloaded for the next cell.
        changed = env.check_datasets() if cell.kind in ("eval", "prepare") else []
    if changed:
        raise CellError(f"{cell_plugins(cell)} wrote into the shared dataset "
                        f"'{cell.spec['dataset']['name']}', which protocols and attacks may "
                        f"only read; the cell is not stored and the dataset is loaded again")
    if user_interrupted():  # Ctrl-C during the cell, and a plugin swallowed it: not stored
        raise KeyboardInterrupt
    if INCIDENTS:
        raise CellError(INCIDENTS[0])
    out.provenance = env.provenance(cell)
    return out, time.perf_counter() - start


def cell_trusted(cell: Cell, env: Environment) -> bool:
    """Whether every plugin the cell runs comes from ``advarena`` itself: the dataset,
    architecture, defense (of each model it reads, whose transform and activation run in
    it), protocol and attacks. Other cells are the ones worth isolating in a worker."""
    specs = [cell.spec]
    if cell.kind in ("eval", "prepare"):
        specs += [env.train_spec(k) for r, k in cell.deps.items()
                  if r in ("model", "reference") or r.startswith("shared:")]
    elif cell.kind in ("flags", "headline"):
        return True  # reads the store only
    for spec in specs:
        for role, kind in (("dataset", "datasets"), ("architecture", "architectures"),
                           ("defense", "defenses"), ("protocol", "protocols")):
            if role in spec and any(env.registry.entry(kind, n).distribution != "advarena"
                                    for n in spec[role]["code"]):
                return False
        if any(env.registry.entry("attacks", n).distribution != "advarena"
               for n in spec.get("attacks", {})):
            return False
    return True


# -- the wire format between workers and the driver ------------------------------------------

def encode_output(out: CellOutput) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A cell's output as a JSON-ready header and safetensors bytes per artifact."""
    header = {"result": out.result, "provenance": out.provenance,
              "measurements": [dataclasses.asdict(m) for m in out.measurements]}
    return header, {name: tensors_to_bytes(t) for name, t in out.tensors.items()}


def decode_measurements(rows: list[dict[str, Any]]) -> list[Measurement]:
    fields = {f.name for f in dataclasses.fields(Measurement)}
    return [Measurement(**{k: v for k, v in row.items() if k in fields}) for row in rows]


def cell_to_dict(cell: Cell) -> dict[str, Any]:
    return dataclasses.asdict(cell)


def cell_from_dict(data: dict[str, Any]) -> Cell:
    return Cell(**data)


def run_cell_encoded(cell: Cell, env: Environment, progress: Progress) -> dict[str, Any]:
    """Run ``cell`` in a worker and return plain data for the driver:

    * ``{"status": "done", "header": {...}, "blobs": {name: bytes}, "seconds": s}``
    * ``{"status": "failed", "reason": one line naming the plugin, "detail": traceback}``
    * ``{"status": "data-error", "reason": ...}``: the user's data is missing; the run stops.

    Either answer has ``"restart": true`` when a plugin left the process in a state that
    cannot be restored (a thread still running): the worker is then replaced.
    """
    try:
        out, seconds = run_cell(cell, env, progress)
        header, blobs = encode_output(out)
        json.dumps(header)  # fail here, in the worker, if it could not be stored
    except DataError as exc:
        return {"status": "data-error", "reason": str(exc)}
    except BaseException as exc:  # a plugin's fault fails its own cell only
        if is_interrupt(exc):
            raise
        reason, detail = describe_failure(exc)
        return {"status": "failed", "reason": reason, "detail": detail,
                "restart": POISONED.is_set()}
    return {"status": "done", "header": header, "blobs": blobs, "seconds": seconds,
            "restart": POISONED.is_set()}
