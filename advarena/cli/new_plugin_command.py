"""``advarena new-plugin NAME``: write a new plugin package from the template in
``advarena/templates/new_plugin/`` (jinja2), ready to ``pip install -e``.

The package has a ``pyproject.toml`` declaring the ``advarena`` entry point, a module with a
working example attack and/or defense (each a real, simple method whose docstring says to
replace it) that passes :func:`advarena.testing.check_attack` / ``check_defense`` as written, a
``tests/`` folder using :mod:`advarena.testing`, and a README.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import keyword
import re
from pathlib import Path

import click

from ..errors import AdvarenaError

# PEP 508 / core metadata: letters, digits, '.', '_', '-', starting and ending alphanumeric.
_DIST_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
KINDS = ("attack", "defense", "both")
TEMPLATE_PACKAGE = "advarena"
TEMPLATE_DIR = "templates/new_plugin"


@dataclasses.dataclass(frozen=True)
class PluginPackage:
    """The names a new plugin package is made of."""

    dist: str        # distribution name, as given: "my-defenses"
    module: str      # import name: "my_defenses"
    slug: str        # prefix of the plugin names users type: "my-defenses"
    prefix: str      # prefix of the class names: "MyDefenses"
    kind: str        # attack | defense | both

    @property
    def attack_name(self) -> str:
        return f"{self.slug}-fgsm"

    @property
    def defense_name(self) -> str:
        return f"{self.slug}-logit-squeezing"

    @property
    def has_attack(self) -> bool:
        return self.kind in ("attack", "both")

    @property
    def has_defense(self) -> bool:
        return self.kind in ("defense", "both")


def plugin_names(name: str, kind: str = "both") -> PluginPackage:
    """Validate ``name`` as a distribution name whose import name is a new Python module, and
    derive the package's names; raise :class:`AdvarenaError` (one line) otherwise."""
    if kind not in KINDS:
        raise AdvarenaError(f"unknown --kind '{kind}'; use attack, defense or both")
    if not _DIST_RE.match(name):
        raise AdvarenaError(
            f"'{name}' is not a valid package name: use letters, digits, '-', '_' or '.', "
            f"starting and ending with a letter or digit (e.g. my-attacks)")
    module = re.sub(r"[-.]+", "_", name).lower()
    if not module.isidentifier() or keyword.iskeyword(module):
        raise AdvarenaError(
            f"'{name}' gives the module name '{module}', which is not a valid Python "
            f"identifier; start with a letter (e.g. my-attacks)")
    normal = re.sub(r"[-_.]+", "-", name).lower()
    if normal == "advarena" or module in ("advarena_attacks", "advarena_defenses",
                                          "advarena_zoo", "tests", "test"):
        raise AdvarenaError(f"'{name}' is taken by advarena itself; choose another name")
    try:
        taken = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        taken = True
    if taken:
        raise AdvarenaError(
            f"a module named '{module}' is already importable here; choose another name")
    slug = normal[len("advarena-"):] if normal.startswith("advarena-") else normal
    prefix = "".join(part.capitalize() for part in re.split(r"[-_.]+", slug) if part)
    return PluginPackage(dist=name, module=module, slug=slug, prefix=prefix, kind=kind)


def _files(pkg: PluginPackage) -> list[tuple[str, str]]:
    """(template, destination) pairs for ``pkg``."""
    files = [("pyproject.toml.j2", "pyproject.toml"),
             ("README.md.j2", "README.md"),
             ("gitignore.j2", ".gitignore"),
             ("package/__init__.py.j2", f"{pkg.module}/__init__.py"),
             ("tests/test_package.py.j2", f"tests/test_{pkg.module}.py")]
    if pkg.has_attack:
        files.append(("package/attacks.py.j2", f"{pkg.module}/attacks.py"))
    if pkg.has_defense:
        files.append(("package/defenses.py.j2", f"{pkg.module}/defenses.py"))
    return files


def render_package(pkg: PluginPackage) -> dict[str, str]:
    """The files of the new package, path -> text (nothing written)."""
    import jinja2

    import advarena

    env = jinja2.Environment(loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_DIR),
                             autoescape=False, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    from ..api import API_VERSION

    context = {"pkg": pkg, "advarena_version": advarena.__version__,
               "api_version": API_VERSION}
    return {dest: env.get_template(src).render(**context) for src, dest in _files(pkg)}


def create_plugin_package(name: str, directory: Path | str = ".",
                          kind: str = "both") -> tuple[PluginPackage, Path, list[Path]]:
    """Write the package ``directory/name``; return its names, its root and the files written.
    Refuses to touch an existing path."""
    pkg = plugin_names(name, kind)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AdvarenaError(f"--dir {directory} is not a directory")
    root = directory / name
    if root.exists():
        raise AdvarenaError(f"{root} already exists; refusing to overwrite it (choose another "
                            f"NAME or --dir)")
    files = render_package(pkg)
    try:
        root.mkdir(parents=True)
        written = []
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise AdvarenaError(f"cannot write {root} ({exc.strerror})") from None
    return pkg, root, written


@click.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="Directory in which to create the package folder NAME.")
@click.option("--kind", type=click.Choice(list(KINDS)), default="both", show_default=True,
              help="What the package starts with: an example attack, defense or both.")
def new_plugin_cmd(name: str, directory: Path, kind: str) -> None:
    """Write a new plugin package NAME from advarena's template, ready to `pip install -e`.

    The package declares the `advarena` entry point, holds a working example attack and/or
    defense (replace them with yours) and tests that run advarena's conformance checks.

    \b
    Example:
      advarena new-plugin my-defenses --kind defense
      pip install -e my-defenses && pytest my-defenses/tests
    """
    from .main import console

    pkg, root, written = create_plugin_package(name, directory, kind)
    plugins = []
    if pkg.has_attack:
        plugins.append(f"attack {pkg.attack_name}")
    if pkg.has_defense:
        plugins.append(f"defense {pkg.defense_name}")
    console.print(f"created {root}/ ({', '.join(plugins)}), {len(written)} files", markup=False,
                  soft_wrap=True)
    console.print("next:", markup=False)
    for line in (f"pip install -e {root}", f"pytest {root / 'tests'}", "advarena list"):
        console.print(f"  {line}", markup=False, soft_wrap=True)
