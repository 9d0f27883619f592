"""Cell keys cover every line of code that shapes a number: advarena's own modules (all but the
display, scheduling and test-kit layers: ``advarena.plan.HARNESS_EXCLUDED``), each plugin's
package modules, and the attacks a defense builds inside training. Editing code changes the
keys of exactly the cells that run it.

Edits are planted either through ``advarena.plan.read_source`` (the one reader of hashed
source) or, once, in a temporary copy of the repository run in a subprocess.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import advarena.plan as plan_module
from advarena.errors import PluginError
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "suites" / "tiny.toml"
DEFENSES = ["none", "deepfool-at"]


def plan_keys() -> dict[str, str]:
    """Cell title -> key of the tiny suite with ``none`` and ``deepfool-at``."""
    plan = make_plan(load_suite(str(TINY)), default_registry(), DEFENSES)
    out = {}
    for c in plan.cells:
        out[f"{c.title} [{c.labels.get('role', '')}]"] = c.key
    assert len(out) == len(plan.cells)
    return out


def _clear_caches() -> None:
    plan_module.harness_version.cache_clear()
    plan_module.code_version.cache_clear()


@pytest.fixture
def edit(monkeypatch):
    """``edit(path)``: from now on the hashed source of ``path`` has one more line."""
    edited: set[Path] = set()
    real = plan_module.read_source

    def reading(path: Path) -> bytes:
        data = real(path)
        return data + b"\n# edited\n" if Path(path).resolve() in edited else data

    monkeypatch.setattr(plan_module, "read_source", reading)

    def plant(path: Path) -> None:
        edited.add(Path(path).resolve())
        _clear_caches()

    yield plant
    _clear_caches()


def _deepfool_file() -> Path:
    return Path(inspect.getfile(default_registry().get("attacks", "deepfool")))


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {t for t in before if before[t] != after[t]}


def runs_deepfool(title: str) -> bool:
    # deepfool-at's training, and every cell that reads its model (evaluations, flags)
    return "deepfool-at" in title


def test_editing_a_core_module_changes_every_key(edit):
    before = plan_keys()
    edit(plan_module.HARNESS_ROOT / "models.py")  # BPDA, Classifier: every cell runs it
    assert changed(before, plan_keys()) == set(before)


@pytest.mark.parametrize("module", ["evaluation.py", "stats.py", "threat.py", "trainer.py",
                                    "runner.py", "params.py", "store.py", "api/attack.py"])
def test_every_module_that_shapes_a_number_is_hashed(module, edit):
    before = plan_module.harness_version()
    edit(plan_module.HARNESS_ROOT / module)
    assert plan_module.harness_version() != before


@pytest.mark.parametrize("module", ["report/leaderboard.py", "cli/main.py",
                                    "executors/local.py", "testing.py", "text.py"])
def test_display_and_scheduling_modules_are_not(module, edit):
    before = plan_keys()
    edit(plan_module.HARNESS_ROOT / module)
    assert changed(before, plan_keys()) == set()


def test_editing_a_protocol_changes_only_its_cells(edit):
    before = plan_keys()
    edit(plan_module.HARNESS_ROOT / "protocols" / "white_box.py")
    moved = changed(before, plan_keys())
    # The headline and sanity cells read the white-box records, so their keys follow them.
    assert moved and all("white-box" in t or "sanity" in t or t.startswith("headline")
                         for t in moved), moved
    assert not any(t.startswith("train") for t in moved)


def test_editing_the_attack_deepfool_at_trains_with_changes_exactly_its_cells(edit):
    before = plan_keys()
    edit(_deepfool_file())
    moved = changed(before, plan_keys())
    assert moved == {t for t in before if runs_deepfool(t)}, moved
    assert any(t.startswith("train") for t in moved)


def test_editing_a_private_helper_of_a_defense_package_changes_its_users(edit):
    before = plan_keys()
    edit(Path(inspect.getfile(default_registry().get("defenses", "deepfool-at"))).with_name(
        "_stages.py"))
    assert changed(before, plan_keys()) == {t for t in before if runs_deepfool(t)}


def test_keys_are_the_same_in_a_copy_and_change_there_exactly_for_edited_code(tmp_path):
    """A temporary copy of the repository (advarena and the first-party plugins) with the
    attack deepfool-at uses inside training edited: the keys computed there equal these for
    every cell that does not run deepfool, and differ for every cell that does."""
    here = plan_keys()
    copy = tmp_path / "repo"
    for part in ("advarena", "plugins", "tests/suites"):
        shutil.copytree(REPO / part, copy / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    rel = _deepfool_file().relative_to(REPO)
    with open(copy / rel, "a") as fh:
        fh.write("\n# an edit that changes nothing numerically, as far as any hash can tell\n")
    script = (
        "import json, advarena, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_keys import plan_keys\n"
        "assert advarena.__file__.startswith(%r), advarena.__file__\n"
        "print(json.dumps(plan_keys()))\n" % str(copy))
    shutil.copy(REPO / "tests" / "test_keys.py", copy / "tests" / "test_keys.py")
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{copy / 'plugins'}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert changed(here, there) == {t for t in here if runs_deepfool(t)}


# -- attacks inside training -------------------------------------------------------------------

_BUILT = re.compile(r"""(?:ctx\.attack|make_attack)\(\s*(?:"([\w.-]+)"|self\.(\w+))""")


@pytest.mark.parametrize("name", default_registry().names("defenses"))
def test_every_defense_declares_the_attacks_its_code_builds(name):
    """All 20 first-party defenses: the attacks their modules build (``ctx.attack("x")``,
    ``make_attack(self.attack, ...)``) are exactly those ``training_attacks()`` names, for
    every value of an ``attack`` parameter."""
    reg = default_registry()
    cls = reg.get("defenses", name)
    source = "".join(inspect.getsource(m) for m in plan_module._plugin_modules(cls)
                     if not m.__name__.split(".")[-1].startswith("_"))
    fixed = {m.group(1) for m in _BUILT.finditer(source) if m.group(1)}
    from_params = {m.group(2) for m in _BUILT.finditer(source) if m.group(2)}
    hints = typing.get_type_hints(cls)
    for param in from_params:
        options = typing.get_args(hints[param]) or (getattr(cls, param),)
        for option in options:
            obj = reg.create("defenses", name, **{param: option})
            assert set(obj.training_attacks()) == fixed | {option}, (name, option)
    if not from_params:
        assert set(reg.create("defenses", name).training_attacks()) == fixed, name


def test_the_training_attack_enters_the_defense_key():
    reg = default_registry()
    from advarena.plan import Planner

    planner = Planner(load_suite(str(TINY)), reg)
    spec = planner._plugin_spec("defenses", "rad", {"attack": "fgsm"})
    assert set(spec["training_attacks"]) == {"fgsm"}
    other = planner._plugin_spec("defenses", "rad", {"attack": "adam-evasion"})
    assert set(other["training_attacks"]) == {"adam-evasion"}
    assert "training_attacks" not in planner._plugin_spec("defenses", "gda", {})
    composed = planner._plugin_spec("defenses", "fgsm-at+brelu", {})
    assert set(composed["training_attacks"]) == {"fgsm"}


def test_building_an_undeclared_attack_in_training_fails_naming_the_defense():
    import torch

    import advarena
    from advarena.api import Defense
    from advarena.trainer import StepContext, TrainConfig, TrainingSession

    class Sneaky(Defense):
        name = "test-sneaky"

    class Declared(Defense):
        name = "test-declared"

        def training_attacks(self):
            return ("bim",)  # an alias of ifgsm

    data = advarena.dataset("digits").load()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    for defense, ok in ((Sneaky(), False), (Declared(), True)):
        session = TrainingSession(net, data.info, data.train, data.train.subset(slice(0, 0)),
                                  TrainConfig(epochs=1), defense, device=torch.device("cpu"),
                                  seed=0)
        ctx = StepContext(session, defense, 0, 0)
        if ok:
            assert ctx.attack("ifgsm").name == "ifgsm"
        else:
            with pytest.raises(PluginError, match="test-sneaky.*'fgsm'.*training_attacks"):
                ctx.attack("fgsm")
