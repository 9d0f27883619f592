"""Plugin manager factory and the registry of everything a suite can name.

Nothing happens at import time: :func:`make_plugin_manager` builds a manager, loads the
``advarena`` entry points (first-party plugins arrive this way too) and checks that every
implementation matches a spec. :class:`Registry` then collects the registered classes, refusing a
name claimed twice (naming both plugins) or one outside :data:`advarena.text.NAME_RULE` (so no
impostor can imitate a name with a homoglyph or an invisible character), and answering unknown
names with close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import warnings
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .api import (API_VERSION, Architecture, Attack, Composite, Dataset, Defense, Model,
                  Protocol)
from .errors import PluginError, UnknownPluginError
from .text import name_problem, printable

PROJECT = "advarena"
ENTRY_POINT_GROUP = "advarena"

# kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type]] = {
    "attacks": ("advarena_register_attacks", Attack),
    "defenses": ("advarena_register_defenses", Defense),
    "datasets": ("advarena_register_datasets", Dataset),
    "architectures": ("advarena_register_architectures", Architecture),
    "protocols": ("advarena_register_protocols", Protocol),
    "models": ("advarena_register_models", Model),
}


def make_plugin_manager(extra_plugins: Iterable[Any] = (), *,
                        entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager: specs, the ``advarena`` entry points, then ``extra_plugins``
    (modules or objects with hook implementations, e.g. test fixtures)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.advarena_warnings = []  # plugins skipped at load, for Registry.warnings
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load the ``advarena`` entry points: a plugin whose module fails to import is skipped
    with one warning naming it (the others load); one whose hooks pluggy rejects is a
    :class:`PluginError` (exit 2, naming it)."""
    from importlib import metadata

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # imported once; pluggy's load below finds it in sys.modules
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin must not stop the rest
            pm.set_blocked(ep.name)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
            pm.advarena_warnings.append(f"skipped plugin '{ep.name}' ({ep.value}): it failed "
                                        f"to load: {reason}")
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{exc.plugin}' cannot be registered: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered plugin class and where it came from."""

    kind: str
    name: str
    cls: type
    source: str  # the pluggy plugin (module) that registered it
    distribution: str
    version: str

    def describe(self) -> dict[str, Any]:
        doc = (self.cls.__doc__ or "").strip().splitlines()
        info = {
            "name": self.name,
            "kind": self.kind,
            "aliases": list(getattr(self.cls, "aliases", ())),
            "paper": getattr(self.cls, "paper", ""),
            "summary": doc[0] if doc else "",
            "parameters": [p.to_dict() for p in self.cls.describe_params()],
            "distribution": self.distribution,
            "version": self.version,
        }
        tm = getattr(self.cls, "threat_model", None)
        if tm is not None:
            info["threat_model"] = tm.to_dict()
        return info


class Registry:
    """Every plugin class the manager's registration hooks returned, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.warnings: list[str] = list(getattr(pm, "advarena_warnings", []))
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._canonical: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        dists = {id(p): (d.project_name, d.version) for p, d in pm.list_plugin_distinfo()}
        for kind, (hook_name, base) in KINDS.items():
            hook = getattr(pm.hook, hook_name)
            # Call each implementation on its own so every class is attributed to its plugin.
            for impl in reversed(hook.get_hookimpls()):
                source = impl.plugin_name
                dist, version = dists.get(id(impl.plugin), (source, ""))
                try:
                    classes = list(impl.function() or [])
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # one line naming the plugin, exit 2
                    raise PluginError(f"plugin '{source}' failed to register {kind}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                for cls in classes:
                    self._add(kind, base, cls, source, dist, version)

    def _add(self, kind: str, base: type, cls: type, source: str, dist: str,
             version: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin '{source}' registered {cls!r} as one of its {kind}, "
                              f"but it is not a subclass of advarena.api.{base.__name__}")
        name = getattr(cls, "name", "")
        if not name:
            raise PluginError(f"plugin '{source}' registered {cls.__name__} without a name")
        # Names are ASCII (advarena.text.NAME_RULE), so no plugin can pass for another with a
        # homoglyph or an invisible character.
        for key in (name, *getattr(cls, "aliases", ())):
            problem = name_problem(key)
            if problem:
                raise PluginError(
                    f"plugin '{printable(source)}' ({printable(dist)}) registered "
                    f"{printable(cls.__name__)} as one of its {kind} with a refused name: "
                    f"{problem}; uninstall it or ask its author to rename it")
        needed = str(getattr(cls, "api_version", API_VERSION)).split(".")[0]
        if needed != API_VERSION.split(".")[0]:
            self.warnings.append(
                f"skipped {kind[:-1]} '{name}' from {dist}: it needs advarena plugin API "
                f"{needed}, this is {API_VERSION}")
            warnings.warn(self.warnings[-1], stacklevel=2)
            return
        cls.distribution = dist
        cls.distribution_version = version
        entry = Entry(kind, name, cls, source, dist, version)
        for key in (name, *getattr(cls, "aliases", ())):
            if key in self._canonical[kind]:
                other = self._entries[kind][self._canonical[kind][key]]
                raise PluginError(
                    f"two plugins register the {kind[:-1]} name '{key}': {other.cls.__name__} "
                    f"from '{other.source}' ({other.distribution}) and {cls.__name__} from "
                    f"'{source}' ({dist}); uninstall or rename one")
            self._canonical[kind][key] = name
        self._entries[kind][name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def entry(self, kind: str, name: str) -> Entry:
        canonical = self._canonical[kind].get(name)
        if canonical is None:
            close = difflib.get_close_matches(name, list(self._canonical[kind]), n=3, cutoff=0.5)
            hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                    else f"run 'advarena list {kind}' to see them")
            raise UnknownPluginError(f"unknown {kind[:-1]} '{name}'; {hint}")
        return self._entries[kind][canonical]

    def get(self, kind: str, name: str) -> type:
        return self.entry(kind, name).cls

    def create(self, kind: str, name: str, **params: Any) -> Any:
        """Instantiate plugin ``name`` with validated parameters. For defenses, ``a+b`` builds a
        composition (parameters then go as ``{"a": {...}, "b": {...}}``)."""
        if kind == "defenses" and "+" in name:
            parts = [p.strip() for p in name.split("+")]
            canonical = [self.entry(kind, p).name for p in parts]
            twice = sorted({p for p in canonical if canonical.count(p) > 1})
            if twice:
                raise UnknownPluginError(
                    f"defense '{name}' names {', '.join(repr(t) for t in twice)} twice; a "
                    f"composition takes each defense once")
            unknown = set(params) - set(parts)
            if unknown:
                raise UnknownPluginError(
                    f"defense '{name}': parameters must be grouped by part "
                    f"({', '.join(parts)}), got {', '.join(sorted(unknown))}")
            return Composite([self.create(kind, p, **params.get(p, {})) for p in parts],
                             name=name)
        return self.get(kind, name).create(**params)


# Modules registered beside the installed plugins (``--plugin FILE``, see
# :func:`advarena.plugin_files.use_plugin_files`).
PLUGIN_FILES: list[Any] = []


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins (and of any ``--plugin`` files), built on first
    use and kept for the process."""
    return Registry(make_plugin_manager(PLUGIN_FILES))


def collect(package: str, base: type) -> list[type]:
    """The public subclasses of ``base`` defined in the modules of ``package`` (modules whose
    names start with ``_`` are helpers). First-party plugin packages register with this, so a
    new method is one new module and nothing else."""
    import importlib
    import inspect
    import pkgutil

    pkg = importlib.import_module(package)
    found: list[type] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, base) and obj is not base and obj.__module__ == module.__name__
                    and getattr(obj, "name", "") and not inspect.isabstract(obj)):
                found.append(obj)
    return found
