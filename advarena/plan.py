"""Expand a suite into cells with content keys.

A cell's key is the SHA-256 of everything that determines its output: its kind, the specs of
the plugins it uses (names and validated parameters), the hash of each plugin's source module,
its seed and settings, and the keys of the cells it reads. Equal key, same result: a cell whose
key is in the store is never run again, and a model that does not depend on the defense (the
reference, ensemble members, substitutes) has the same key for every defense, so it is shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from functools import lru_cache
from typing import Any

from .errors import AdvarenaError, SuiteError
from .plugins import Registry
from .suite import Suite
from .trainer import TrainConfig


@dataclasses.dataclass
class Cell:
    """One unit of work. ``deps`` maps a role (``model``, ``reference``, ``shared:<role>``,
    ``prepared``) to the key of the cell whose output this one reads."""

    key: str
    kind: str  # train | prepare | eval | flags
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
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _plugin_modules(cls: type) -> list[Any]:
    """The module defining ``cls``, the modules of its base classes, and the modules of its
    own package that those import (private helpers such as ``_grad.py``), so that editing any
    code a plugin runs changes its cells' keys. ``advarena`` itself is versioned apart."""
    seen: dict[str, Any] = {}
    roots = [inspect.getmodule(c) for c in cls.__mro__]
    for mod in roots:
        if mod is None or mod.__name__.split(".")[0] in ("advarena", "builtins"):
            continue
        seen.setdefault(mod.__name__, mod)
        package = mod.__name__.split(".")[0]
        for value in list(vars(mod).values()):
            dep = value if inspect.ismodule(value) else inspect.getmodule(value)
            if dep is not None and dep.__name__.split(".")[0] == package:
                seen.setdefault(dep.__name__, dep)
    return [seen[k] for k in sorted(seen)]


@lru_cache(maxsize=None)
def code_version(cls: type) -> str:
    """Distribution version plus a hash of the plugin's source (see :func:`_plugin_modules`),
    so editing a plugin invalidates the cells it produced."""
    digest = hashlib.sha256()
    for mod in _plugin_modules(cls) or [inspect.getmodule(cls)]:
        try:
            digest.update(inspect.getsource(mod).encode())
        except (OSError, TypeError):
            digest.update(getattr(mod, "__name__", cls.__qualname__).encode())
    return f"{getattr(cls, 'distribution_version', '')}:{digest.hexdigest()[:16]}"


def code_version_module(module: Any) -> str:
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        source = module.__name__
    return hashlib.sha256(source.encode()).hexdigest()[:16]


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
        return {"name": obj.name, "params": obj.params(),
                "code": {p.name: code_version(type(p)) for p in parts}}

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
                        self._flags_cell(d, models, evals, dataset, arch, seed)
        order = {"train": 0, "prepare": 1, "eval": 2, "flags": 3}
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

    def _flags_cell(self, name: str, models: dict[str, str], evals: dict[str, dict[str, str]],
                    dataset: str, arch: str, seed: int) -> None:
        """Sanity flags of one model, computed from its stored records (and the
        reference's, for comparisons)."""
        from . import sanity

        deps = dict(evals[name])
        deps.update({f"reference-{k}": v for k, v in evals[self.suite.reference].items()})
        single = sorted(e.name for e in self.reg.entries("attacks") if e.cls.single_step)
        spec = {"kind": "flags", "deps": deps, "single_step": single,
                "code": code_version_module(sanity)}
        tlabels = self.cells[models[name]].labels
        labels = {"dataset": dataset, "architecture": tlabels["architecture"],
                  "defense": tlabels["defense"], "params": tlabels["params"], "seed": seed,
                  "protocol": "sanity"}
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
