"""One-file plugins: ``--plugin path/to/file.py`` registers that module's hooks for one command.

The file is imported by path under a prefixed module name (``advarena_plugin_file_<stem>_<hash
of its path>``), so nothing is added to ``sys.path`` and it cannot shadow an installed module.
Its hooks then go through the same checks as an installed package's: every implementation must
match a spec (a misspelt hook name is refused), classes must subclass the right base and carry a
name and a matching plugin API version, and a name claimed twice stops the command naming both.
Worker processes (the isolated executor, Ray tasks) load the same file by the same name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import pluggy

from . import plugins
from .errors import PluginError


def module_name(path: Path) -> str:
    resolved = path.resolve()
    stem = "".join(c if c.isalnum() else "_" for c in resolved.stem)
    return f"advarena_plugin_file_{stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:10]}"


def load_plugin_file(path: str | Path):
    """Import one plugin file; a file that is missing or fails to import is one line."""
    from .runner import _load_module

    p = Path(path)
    if p.suffix != ".py" or not p.is_file():
        raise PluginError(f"--plugin {path}: not a Python file; pass the path of a .py file "
                          f"with advarena hook implementations")
    try:
        return _load_module(module_name(p), str(p.resolve()))
    except Exception as exc:
        msg = " ".join(str(exc).split())
        raise PluginError(f"--plugin {path} failed to import: {type(exc).__name__}: "
                          f"{msg}") from None


def use_plugin_files(paths: Iterable[str | Path]) -> list:
    """Register the files' modules for this process's default registry (replacing any set
    before) and build it, so that any problem is reported now, naming the file."""
    modules = list({id(m): m for m in (load_plugin_file(p) for p in paths)}.values())
    if not modules and not plugins.PLUGIN_FILES:
        return []
    previous = list(plugins.PLUGIN_FILES)
    plugins.PLUGIN_FILES[:] = modules
    plugins.default_registry.cache_clear()
    try:
        plugins.default_registry()
    except (pluggy.PluginValidationError, ValueError) as exc:
        plugins.PLUGIN_FILES[:] = previous
        plugins.default_registry.cache_clear()
        raise PluginError(f"--plugin: {' '.join(str(exc).split())}") from None
    except PluginError:
        plugins.PLUGIN_FILES[:] = previous
        plugins.default_registry.cache_clear()
        raise
    return modules
