"""Expand a suite into cells with content keys.

A cell's key is the SHA-256 of everything that determines its output: its kind, the specs of
the plugins it uses (names and validated parameters), the hash of each plugin's source modules
(and, for a defense, of the attacks it builds inside training), the hash of advarena's own
modules that shape numbers (:func:`harness_version`), its seed and settings, and the keys of
the cells it reads. Equal key, same result: a cell whose key is in the store is never run
again, and a model that does not depend on the defense (the reference, ensemble members,
substitutes) has the same key for every defense, so it is shared. docs/threat-model.md says
what the keys cover and what they do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import AdvarenaError, PluginError, SuiteError, UnknownPluginError
from .plugins import Registry
from .suite import Suite
from .trainer import TrainConfig


@dataclasses.dataclass
class Cell:
    """One unit of work. ``deps`` maps a role (``model``, ``reference``, ``shared:<role>``,
    ``prepared``) to the key of the cell whose output this one reads."""

    key: str
    kind: str  # train | prepare | eval | headline | flags
    spec: dict[str, Any]
    labels: dict[str, Any]
    deps: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def title(self) -> str:
        lab = self.labels
        parts = [self.kind, lab.get("dataset"), lab.get("architecture")]
        if self.kind == "train":
            parts.append(lab.get("role") if lab.get("role", "defense") not in (
                "defense", "reference", "external") else lab.get("defense"))
        else:
            parts += [lab.get("protocol"), lab.get("defense")]
        return " ".join(str(p) for p in parts if p)


def content_key(spec: dict[str, Any]) -> str:
    """SHA-256 of ``spec`` and of the harness code (:func:`harness_version`), so editing any
    module of advarena that shapes a number changes every key."""
    return hashlib.sha256(json.dumps({"spec": spec, "harness": harness_version()},
                                     sort_keys=True).encode()).hexdigest()


# The parts of the advarena package that do not enter the harness version, by first path
# component below advarena/: the display layer (cli, report, text.py), scheduling and transport
# (executors: they hand a cell's output on unchanged; its wire format is in runner.py), the
# plugin authors' test kit (testing.py, run by no cell), templates and suite files (data: a
# suite's values enter the keys themselves), the published tables and the dry-run estimate
# (papers/, estimate.py: read by reports and `run --dry-run`, never by a cell), and the
# protocols, which are plugins and enter the keys of their own cells only (see
# _plugin_modules). Every other module (models,
# evaluation, stats, threat, trainer, runner, params, store, plan, device, sanity, api/, and
# any module added later) is hashed: a rule by exclusion, so a new module is covered unless
# it is deliberately listed here.
HARNESS_EXCLUDED = ("cli", "report", "executors", "testing.py", "text.py", "templates",
                    "suites", "protocols", "papers", "estimate.py")
HARNESS_ROOT = Path(__file__).resolve().parent


def read_source(path: Path) -> bytes:
    """The bytes of a source file that a key hashes (one reader, so tests can plant an edit)."""
    return path.read_bytes()


def harness_files(root: Path = HARNESS_ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if p.relative_to(root).parts[0] not in HARNESS_EXCLUDED)


@lru_cache(maxsize=None)
def harness_version(root: Path = HARNESS_ROOT) -> str:
    """A hash of the source of every harness module that shapes a number (everything in
    advarena but :data:`HARNESS_EXCLUDED`), by path relative to the package, so the same code
    gives the same keys wherever it is installed."""
    digest = hashlib.sha256()
    for path in harness_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(read_source(path) + b"\0")
    return digest.hexdigest()[:16]


def _package_of(module_name: str) -> str | None:
    """The package whose modules version a plugin: its top-level package; for advarena's own
    protocols, advarena.protocols (the rest of advarena is the harness, versioned apart)."""
    top = module_name.split(".")[0]
    if top == "builtins":
        return None
    if top == "advarena":
        return "advarena.protocols" if module_name.startswith("advarena.protocols.") else None
    return top


def _plugin_modules(cls: type) -> list[Any]:
    """The module defining ``cls``, the modules of its base classes, and every module of the
    same package that those import, directly or through each other (private helpers such as
    ``_grad.py`` or ``_stages.py``), so that editing any code a plugin runs changes its cells'
    keys. ``advarena`` itself is versioned apart (:func:`harness_version`)."""
    seen: dict[str, Any] = {}
    todo = [m for m in (inspect.getmodule(c) for c in cls.__mro__)
            if m is not None and _package_of(m.__name__)]
    while todo:
        mod = todo.pop()
        if mod.__name__ in seen:
            continue
        seen[mod.__name__] = mod
        package = _package_of(mod.__name__)
        for value in list(vars(mod).values()):
            dep = value if inspect.ismodule(value) else inspect.getmodule(value)
            if dep is not None and dep.__name__ not in seen and (
                    dep.__name__ == package or dep.__name__.startswith(package + ".")):
                todo.append(dep)
    return [seen[k] for k in sorted(seen)]


def _module_source(module: Any) -> bytes:
    file = getattr(module, "__file__", None)
    if file:
        try:
            return read_source(Path(file))
        except OSError:
            pass
    try:
        return inspect.getsource(module).encode()
    except (OSError, TypeError):
        return getattr(module, "__name__", "").encode()


@lru_cache(maxsize=None)
def code_version(cls: type) -> str:
    """Distribution version plus a hash of the plugin's source (see :func:`_plugin_modules`),
    so editing a plugin invalidates the cells it produced."""
    digest = hashlib.sha256()
    for mod in _plugin_modules(cls) or [inspect.getmodule(cls)]:
        digest.update(getattr(mod, "__name__", cls.__qualname__).encode() + b"\0")
        digest.update(_module_source(mod) + b"\0")
    return f"{getattr(cls, 'distribution_version', '')}:{digest.hexdigest()[:16]}"


def code_version_module(module: Any) -> str:
    return hashlib.sha256(_module_source(module)).hexdigest()[:16]


@dataclasses.dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    defenses: list[str]

    def by_key(self) -> dict[str, Cell]:
        return {c.key: c for c in self.cells}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            out[c.kind] = out.get(c.kind, 0) + 1
        return out


class Planner:
    def __init__(self, suite: Suite, registry: Registry) -> None:
        self.suite = suite
        self.reg = registry
        self.cells: dict[str, Cell] = {}

    def _plugin_spec(self, kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        obj = self.reg.create(kind, name, **params)
        parts = obj.parts() if kind == "defenses" else [obj]
        spec = {"name": obj.name, "params": obj.params(),
                "code": {p.name: code_version(type(p)) for p in parts}}
        if kind == "defenses":
            attacks = self._training_attacks(obj)
            if attacks:
                spec["training_attacks"] = attacks
        return spec

    def _training_attacks(self, defense: Any) -> dict[str, str]:
        """Code versions of the attacks ``defense`` builds inside training (its declared
        ``training_attacks()``): editing one retrains the defense."""
        out = {}
        for a in defense.training_attacks():
            try:
                entry = self.reg.entry("attacks", a)
            except UnknownPluginError as exc:
                raise PluginError(f"defense '{defense.name}' uses attack '{a}' inside training, "
                                  f"which is not installed: {exc}") from None
            out[entry.name] = code_version(entry.cls)
        return dict(sorted(out.items()))

    def _add(self, cell: Cell) -> str:
        self.cells.setdefault(cell.key, cell)
        return cell.key

    def train_cell(self, dataset: str, architecture: str, defense: str,
                   defense_params: dict[str, Any], seed: int, role: str) -> str:
        s = self.suite
        try:
            config = TrainConfig(**s.train_config(dataset, architecture))
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"suite {s.source}: bad [train] settings: {exc}") from None
        dspec = self._plugin_spec("defenses", defense, defense_params)
        deps: dict[str, str] = {}
        defense_obj = self.reg.create("defenses", defense, **defense_params)
        if defense_obj.needs_reference:
            deps["reference"] = self.train_cell(dataset, architecture, s.reference,
                                                s.defense_params.get(s.reference, {}), seed,
                                                "reference")
        spec = {"kind": "train",
                "dataset": self._plugin_spec("datasets", dataset,
                                             s.dataset_params.get(dataset, {})),
                "architecture": self._plugin_spec("architectures", architecture,
                                                  s.architecture_params.get(architecture, {})),
                "defense": dspec, "seed": seed, "train": config.to_dict(), "deps": deps}
        labels = {"dataset": dataset, "architecture": architecture, "defense": dspec["name"],
                  "params": dspec["params"], "seed": seed, "role": role}
        return self._add(Cell(content_key(spec), "train", spec, labels, deps))

    def external_cell(self, dataset: str, external: Any, seed: int) -> str:
        """A train cell that loads (never trains) an external model
        (:class:`advarena.external.ExternalModel`); its spec holds the weights' and the
        factory's SHA-256, so they enter the key of every cell that reads it."""
        spec = {"kind": "train", "external": external.spec(),
                "dataset": self._plugin_spec("datasets", dataset,
                                             self.suite.dataset_params.get(dataset, {})),
                "seed": seed}
        labels = {"dataset": dataset, "architecture": external.architecture,
                  "defense": external.label, "params": external.label_params(), "seed": seed,
                  "role": "external"}
        return self._add(Cell(content_key(spec), "train", spec, labels, {}))

    def expand(self, defenses: list[str], protocols: list[str] | None = None,
               externals: list[Any] = ()) -> Plan:
        s = self.suite
        names = list(dict.fromkeys([s.reference, *defenses]))
        chosen = protocols or list(s.protocols)
        for p in chosen:
            if p not in s.protocols:
                raise SuiteError(f"protocol '{p}' is not configured in suite {s.name}; it has "
                                 f"{', '.join(s.protocols)}")
        for p in s.protocols:  # validate every protocol's parameters even when not chosen
            self.reg.create("protocols", p, **s.protocols[p])
        for name, params in s.attacks.items():
            self.reg.create("attacks", name, **params)
        eval_settings = {"n_examples": int(s.eval.get("n_examples", 0)),
                         "batch_size": int(s.eval.get("batch_size", 500))}
        for dataset in s.datasets:
            for arch in s.architectures:
                for seed in s.seeds:
                    models = {d: self.train_cell(dataset, arch, d, s.defense_params.get(d, {}),
                                                 seed, "reference" if d == s.reference
                                                 else "defense") for d in names}
                    if arch == s.architectures[0]:  # against the first architecture's models
                        for ext in externals:
                            if ext.dataset in (None, dataset):
                                models[ext.label] = self.external_cell(dataset, ext, seed)
                    evals: dict[str, dict[str, str]] = {d: {} for d in models}
                    for pname in chosen:
                        keys = self._protocol_cells(pname, dataset, arch, seed, models,
                                                    eval_settings)
                        for d, k in keys.items():
                            evals[d][f"eval:{pname}"] = k
                    for d in models:
                        head = self._headline_cell(d, models, evals, dataset, arch, seed)
                        self._flags_cell(d, models, evals, dataset, arch, seed, head)
        order = {"train": 0, "prepare": 1, "eval": 2, "headline": 3, "flags": 4}
        cells = sorted(self.cells.values(), key=lambda c: order[c.kind])
        return Plan(s, _topological(cells), names)

    def _protocol_cells(self, pname: str, dataset: str, arch: str, seed: int,
                        models: dict[str, str], eval_settings: dict[str, int]) -> None:
        s = self.suite
        proto = self.reg.create("protocols", pname, **s.protocols[pname])
        pspec = {"name": pname, "params": proto.params(),
                 "code": {pname: code_version(type(proto))}}
        setting = {"dataset": dataset, "architecture": arch, "seed": seed,
                   "reference": s.reference}
        shared = {}
        for role, tspec in proto.shared_models(setting).items():
            # A shared model's defense takes the suite's parameters for that defense unless
            # the protocol names its own.
            d = tspec.get("defense", "none")
            params = tspec.get("defense_params", s.defense_params.get(d, {}))
            shared[f"shared:{role}"] = self.train_cell(
                dataset, tspec.get("architecture", arch), d, params, tspec.get("seed", seed),
                role)
        attacks = {a: self._plugin_spec("attacks", a, s.attacks.get(a, {}))
                   for a in proto.attack_names()}
        dataset_spec = self._plugin_spec("datasets", dataset, s.dataset_params.get(dataset, {}))
        base = {"protocol": pspec, "dataset": dataset_spec, "seed": seed, "attacks": attacks,
                "eval": eval_settings}
        deps_shared = dict(shared)
        if type(proto).prepare is not _base_prepare():
            pkey_spec = {"kind": "prepare", **base, "deps": shared}
            labels = {"dataset": dataset, "architecture": arch, "seed": seed,
                      "protocol": pname, "role": "prepare"}
            deps_shared["prepared"] = self._add(Cell(content_key(pkey_spec), "prepare",
                                                     pkey_spec, labels, dict(shared)))
        keys = {}
        for name, model_key in models.items():
            if proto.needs_training and self.cells[model_key].labels.get("role") == "external":
                continue  # nothing of an external model's training is known
            deps = {"model": model_key, "reference": models[s.reference], **deps_shared}
            spec = {"kind": "eval", **base, "deps": deps}
            tlabels = self.cells[model_key].labels
            # the model's own architecture label (an external model's is not the suite's)
            labels = {"dataset": dataset, "architecture": tlabels["architecture"],
                      "defense": tlabels["defense"], "params": tlabels["params"], "seed": seed,
                      "protocol": pname}
            keys[name] = self._add(Cell(content_key(spec), "eval", spec, labels, deps))
        return keys

    def _headline_cell(self, name: str, models: dict[str, str],
                       evals: dict[str, dict[str, str]], dataset: str, arch: str,
                       seed: int) -> str | None:
        """The headline of one model (:mod:`advarena.headline`): the per-example worst case
        over its white-box (gradient and score-based) and black-box transfer records at the
        headline eps. None when the white-box protocol does not run."""
        from . import headline

        deps = {k: v for k, v in evals[name].items()
                if k in ("eval:white-box", "eval:black-box")}
        if "eval:white-box" not in deps:
            return None
        names = sorted({a for k in deps.values() for a in self.cells[k].spec["attacks"]})
        threat = {}
        for a in names:
            tm = self.reg.get("attacks", a).threat_model
            threat[a] = {"norm": tm.norm, "access": getattr(tm, "access", "gradient")}
        spec = {"kind": "headline", "deps": deps, "attacks": threat,
                "code": code_version_module(headline)}
        tlabels = self.cells[models[name]].labels
        labels = {"dataset": dataset, "architecture": tlabels["architecture"],
                  "defense": tlabels["defense"], "params": tlabels["params"], "seed": seed,
                  "protocol": "headline"}
        return self._add(Cell(content_key(spec), "headline", spec, labels, deps))

    def _flags_cell(self, name: str, models: dict[str, str], evals: dict[str, dict[str, str]],
                    dataset: str, arch: str, seed: int, head: str | None = None) -> None:
        """Sanity flags of one model (:mod:`advarena.sanity`), computed from its stored records.

        Two cells, so that a protocol that fails on a broken model (a minimal attack returning
        NaN on NaN gradients) cannot take the masking checks with it: ``sanity`` reads the
        white-box and black-box records and the headline, ``sanity-minimal`` the minimal
        attacks' success rates (and the white-box clean accuracy)."""
        from . import sanity

        own = evals[name]
        single = sorted(e.name for e in self.reg.entries("attacks") if e.cls.single_step)
        groups = {"main": ("sanity", {k: v for k, v in own.items()
                                      if k in ("eval:white-box", "eval:black-box")}),
                  "minimal": ("sanity-minimal", {k: v for k, v in own.items()
                                                 if k in ("eval:minimal-perturbation",
                                                          "eval:white-box")})}
        if head is not None:
            groups["main"][1]["headline"] = head
        tlabels = self.cells[models[name]].labels
        for checks, (protocol, deps) in groups.items():
            if not deps or (checks == "minimal" and "eval:minimal-perturbation" not in deps):
                continue
            spec = {"kind": "flags", "checks": checks, "deps": deps, "single_step": single,
                    "code": code_version_module(sanity)}
            labels = {"dataset": dataset, "architecture": tlabels["architecture"],
                      "defense": tlabels["defense"], "params": tlabels["params"], "seed": seed,
                      "protocol": protocol}
            self._add(Cell(content_key(spec), "flags", spec, labels, deps))


def _base_prepare():
    from .api.protocol import Protocol

    return Protocol.prepare


def _topological(cells: list[Cell]) -> list[Cell]:
    """Order cells so each comes after the cells it reads (stable otherwise)."""
    by_key = {c.key: c for c in cells}
    done: set[str] = set()
    out: list[Cell] = []

    def visit(c: Cell, stack: tuple[str, ...] = ()) -> None:
        if c.key in done:
            return
        if c.key in stack:
            raise AdvarenaError("the plan has a dependency cycle")
        for dep in c.deps.values():
            visit(by_key[dep], stack + (c.key,))
        done.add(c.key)
        out.append(c)

    for c in cells:
        visit(c)
    return out


def make_plan(suite: Suite, registry: Registry, defenses: list[str] | None = None,
              protocols: list[str] | None = None, externals: list[Any] = ()) -> Plan:
    """Validate ``suite`` against the registry and expand it into ordered cells;
    ``externals`` are external models evaluated beside the defenses."""
    chosen = defenses or suite.defenses
    for d in chosen:
        registry.create("defenses", d, **suite.defense_params.get(d, {}))
    plan = Planner(suite, registry).expand(chosen, protocols, externals)
    plan.defenses += [e.label for e in externals]
    return plan
