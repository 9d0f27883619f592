"""``advarena new-plugin``: names are validated, nothing is overwritten, and a generated package
installs (pip, editable), is discovered by ``advarena list`` with its distribution name and
passes its own tests (advarena's conformance checks). The installed package is uninstalled
afterwards, so the environment stays as it was."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from advarena.cli.main import main
from advarena.cli.new_plugin_command import (create_plugin_package, plugin_names,
                                             render_package)
from advarena.errors import AdvarenaError

CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
# A fixed name, so a run that died before its clean-up is cleaned up by the next one.
FIXTURE_DIST = "advarena-newplugin-fixture"
FIXTURE_MODULE = "advarena_newplugin_fixture"


def invoke(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def installed(dist: str) -> bool:
    importlib.invalidate_caches()
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,module,slug,prefix", [
    ("my-attacks", "my_attacks", "my-attacks", "MyAttacks"),
    ("My.Defenses", "my_defenses", "my-defenses", "MyDefenses"),
    ("advarena-lab_tools", "advarena_lab_tools", "lab-tools", "LabTools"),
    ("x", "x", "x", "X"),
])
def test_names_are_derived(name, module, slug, prefix):
    pkg = plugin_names(name)
    assert (pkg.dist, pkg.module, pkg.slug, pkg.prefix) == (name, module, slug, prefix)
    assert pkg.attack_name == f"{slug}-fgsm"
    assert pkg.defense_name == f"{slug}-logit-squeezing"


@pytest.mark.parametrize("name,reason", [
    ("", "not a valid package name"),
    ("my plugin", "not a valid package name"),
    ("-leading", "not a valid package name"),
    ("trailing-", "not a valid package name"),
    ("a/b", "not a valid package name"),
    ("déjà", "not a valid package name"),
    ("1st-plugin", "not a valid Python identifier"),
    ("import", "not a valid Python identifier"),
    ("advarena", "taken by advarena"),
    ("Advarena_Attacks", "taken by advarena"),
    ("torch", "already importable"),
    ("json", "already importable"),
])
def test_bad_names_are_refused(name, reason):
    with pytest.raises(AdvarenaError, match=reason):
        plugin_names(name)


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,modules", [
    ("both", {"attacks.py", "defenses.py"}),
    ("attack", {"attacks.py"}),
    ("defense", {"defenses.py"}),
])
def test_writes_a_package_of_the_kind_asked_for(tmp_path, capsys, kind, modules):
    code, out, err = invoke(["new-plugin", "my-lab", "--dir", tmp_path, "--kind", kind], capsys)
    assert code == 0, err
    root = tmp_path / "my-lab"
    assert f"created {root}/" in " ".join(out.split())
    assert "pip install -e" in out
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {"pyproject.toml", "README.md", ".gitignore", "my_lab/__init__.py",
                     "tests/test_my_lab.py"} | {f"my_lab/{m}" for m in modules}
    for path in root.rglob("*.py"):
        ast.parse(path.read_text(), str(path))  # valid Python
        assert all(len(line) <= 100 for line in path.read_text().splitlines()), path
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "my-lab"' in pyproject
    assert '[project.entry-points.advarena]\nmy_lab = "my_lab"' in pyproject
    init = (root / "my_lab" / "__init__.py").read_text()
    assert ("def advarena_register_attacks" in init) == ("attacks.py" in modules)
    assert ("def advarena_register_defenses" in init) == ("defenses.py" in modules)
    tests = (root / "tests" / "test_my_lab.py").read_text()
    assert "from advarena.testing import" in tests
    assert ("check_attack(" in tests) == ("attacks.py" in modules)
    assert ("check_defense(" in tests) == ("defenses.py" in modules)
    # The example plugins say they are examples to replace.
    for m in modules:
        assert "EXAMPLE: replace this class" in (root / "my_lab" / m).read_text()


def test_the_generated_classes_pass_the_conformance_checks(tmp_path, monkeypatch):
    """In this process, before any install: the template's plugins conform as written."""
    from advarena.testing import check_attack, check_defense

    pkg, root, _ = create_plugin_package("kit-template-check", tmp_path)
    monkeypatch.syspath_prepend(str(root))
    try:
        attacks = importlib.import_module(f"{pkg.module}.attacks")
        defenses = importlib.import_module(f"{pkg.module}.defenses")
        check_attack(getattr(attacks, f"{pkg.prefix}FGSM"))
        check_defense(getattr(defenses, f"{pkg.prefix}LogitSqueezing"))
        assert getattr(attacks, f"{pkg.prefix}FGSM").name == "kit-template-check-fgsm"
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == pkg.module]:
            del sys.modules[name]


@pytest.mark.parametrize("args,message", [
    (["new-plugin", "my plugin"], "not a valid package name"),
    (["new-plugin", "1abc"], "not a valid Python identifier"),
    (["new-plugin", "torch"], "already importable"),
])
def test_bad_names_get_one_line_and_status_2(tmp_path, capsys, args, message):
    code, out, err = invoke([*args, "--dir", tmp_path], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_kind_is_a_usage_error(tmp_path, capsys):
    code, _, err = invoke(["new-plugin", "my-lab", "--dir", tmp_path, "--kind", "protocol"],
                          capsys)
    assert code == 2 and "--kind" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_overwritten(tmp_path, capsys):
    root = tmp_path / "my-lab"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    code, out, err = invoke(["new-plugin", "my-lab", "--dir", tmp_path], capsys)
    assert code == 2 and "already exists" in err and "refusing to overwrite" in err
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert (root / "keep.txt").read_text() == "mine"


def test_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    code, _, err = invoke(["new-plugin", "my-lab", "--dir", target], capsys)
    assert code == 2 and "is not a directory" in err


def test_help_has_an_example(capsys):
    code, out, _ = invoke(["new-plugin", "--help"], capsys)
    assert code == 0 and "Example:" in out and "--kind" in out and "--dir" in out


def test_rendering_is_pure():
    """render_package writes nothing and renders every template for every kind."""
    for kind in ("attack", "defense", "both"):
        files = render_package(plugin_names("pure-check", kind))
        assert "pyproject.toml" in files and "README.md" in files
        assert all(text.strip() for text in files.values())
        assert not Path("pure-check").exists()


# --- install, discover, test, uninstall --------------------------------------------------------


@pytest.fixture
def installed_package(tmp_path):
    """A generated package, pip-installed (editable) into this environment; uninstalled at
    the end whatever happens."""
    if installed(FIXTURE_DIST):  # left over by a run that died: start clean
        pip("uninstall", "-y", "-q", FIXTURE_DIST)
    pkg, root, _ = create_plugin_package(FIXTURE_DIST, tmp_path, "both")

    def uninstall():
        pip("uninstall", "-y", "-q", FIXTURE_DIST)
        for name in [m for m in sys.modules if m.split(".")[0] == FIXTURE_MODULE]:
            del sys.modules[name]
        importlib.invalidate_caches()

    try:
        result = pip("install", "-q", "--no-deps", "--no-build-isolation", "-e", str(root))
        assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
        yield pkg, root
    finally:
        uninstall()
        assert not installed(FIXTURE_DIST), "the generated package is still installed"


def test_a_generated_package_installs_is_discovered_and_passes_its_tests(installed_package):
    pkg, root = installed_package
    assert installed(FIXTURE_DIST)
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    listed = subprocess.run([str(CONSOLE_SCRIPT), "list", "--json"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    found = {(kind, e["name"]): e for kind in ("attacks", "defenses") for e in data[kind]}
    for key in (("attacks", pkg.attack_name), ("defenses", pkg.defense_name)):
        assert key in found, f"{key} not listed"
        assert re.sub(r"[-_.]+", "-", found[key]["distribution"]).lower() == FIXTURE_DIST
        assert found[key]["version"] == "0.1.0"
    assert not [w for w in listed.stderr.splitlines() if FIXTURE_MODULE in w]

    # Its own tests, run as its author would (the registration test runs now it is installed).
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-p", "no:benchmark", "-rs"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "5 passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout[-1500:]
