"""The example third-party package (``examples/advarena-example-plugin``) installed beside
advarena: ``advarena list`` shows its plugins with its distribution name, ``advarena run
--defense`` runs its defense through the tiny suite, and its own tests pass.

The package is pip-installed (editable, no dependencies, no build isolation) into this
environment for the module's tests unless it is installed already, and uninstalled afterwards
if this module installed it, so the rest of the test suite sees only the first-party plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "advarena-example-plugin"
DIST = "advarena-example-plugin"
TINY = ROOT / "tests" / "suites" / "tiny.toml"
CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
ATTACK, DEFENSE = "step-ll", "input-gradient-reg"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(dist: str) -> bool:
    importlib.invalidate_caches()
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def advarena(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script in a fresh process (it discovers plugins from scratch)."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(CONSOLE_SCRIPT), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def example_plugin():
    """The example package, installed into this environment for the module's tests."""
    already = installed(DIST)
    if not already:
        result = pip("install", "-q", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE))
        assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
        assert installed(DIST)
    try:
        yield EXAMPLE
    finally:
        if not already:
            result = pip("uninstall", "-y", "-q", DIST)
            for module in [m for m in sys.modules if m.startswith("advarena_example_plugin")]:
                del sys.modules[module]
            importlib.invalidate_caches()
            assert result.returncode == 0, f"pip uninstall failed: {result.stderr}"


def test_the_package_declares_an_advarena_entry_point(example_plugin):
    eps = importlib.metadata.distribution(DIST).entry_points
    assert [(ep.group, ep.value) for ep in eps if ep.group == "advarena"] == [
        ("advarena", "advarena_example_plugin")]


def test_list_shows_its_plugins_with_their_distribution(example_plugin, tmp_path):
    result = advarena("list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    attacks = {e["name"]: e for e in data["attacks"]}
    defenses = {e["name"]: e for e in data["defenses"]}
    for entry in (attacks[ATTACK], defenses[DEFENSE]):
        assert normalise(entry["distribution"]) == DIST
        assert entry["version"] == importlib.metadata.version(DIST)
        assert entry["paper"] and entry["summary"]
        assert all(p["help"] for p in entry["parameters"])
    assert attacks[ATTACK]["threat_model"]["norm"] == "linf"
    assert {p["name"] for p in defenses[DEFENSE]["parameters"]} == {"lam"}
    # First-party plugins keep their own attribution beside it.
    assert normalise(attacks["fgsm"]["distribution"]) == "advarena"


def test_run_with_its_defense(example_plugin, tmp_path):
    store, output = tmp_path / "store", tmp_path / "results.json"
    result = advarena("run", "--suite", TINY, "--defense", DEFENSE, "--store", store, "--quiet",
                      "--output", output, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    records = json.loads(output.read_text())
    ours = [r for r in records if r["defense"] == DEFENSE]
    assert ours, "no records for the example's defense"
    assert {r["protocol"] for r in ours} >= {"white-box"}
    assert {r["defense"] for r in records} >= {"none", DEFENSE}
    accuracy = [r for r in ours if r["protocol"] == "white-box" and r["metric"] == "accuracy"]
    assert accuracy and all(0.0 <= r["value"] <= 1.0 for r in accuracy)
    assert all(r["params"] == {"lam": 1.0} for r in ours)
    # The defended model's train cell records where its defense came from.
    conn = sqlite3.connect(store / "results.sqlite")
    try:
        rows = conn.execute("SELECT provenance FROM cells WHERE kind = 'train'").fetchall()
    finally:
        conn.close()
    dists = {normalise(p["distribution"]) for (prov,) in rows
             for p in json.loads(prov or "{}").get("plugins", {}).get("defense", [])
             if p["name"] == DEFENSE}
    assert dists == {DIST}


def test_its_own_tests_pass(example_plugin):
    """The package's tests (advarena.testing's checks and the methods' properties), run by
    pytest as its author would, with advarena's pytest plugin providing the fixtures."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark",
         str(EXAMPLE / "tests")],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
