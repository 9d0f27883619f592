"""Isolation: a hostile plugin fails its own cells, naming itself and the reason, and nothing else.

The fixture plugins (``tests/plugins/hostile.py``) raise, return NaN, the wrong shape or points
outside their threat model, hang, or end their process. Each run must record exactly the cells
of the hostile plugin as failed (with its name and the reason in the store and on stdout),
skip the cells that read their output, complete every other cell, and exit with status 1.

In-process runs go through the real ``main()`` with the registry swapped for one that also
holds the fixture plugin; the hanging and crashing plugins run through the installed console
script with the fixture installed as a distribution (a temporary dist-info on PYTHONPATH), with
``--cell-timeout``, so cells run in a worker process that is killed at the limit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advarena.executors import LocalExecutor
from advarena.plan import make_plan
from advarena.plugins import Registry, make_plugin_manager
from advarena.runner import Environment
from advarena.store import Store
from advarena.suite import load_suite

TINY = Path(__file__).parent / "suites" / "tiny.toml"
PLUGIN_DIR = Path(__file__).parent / "plugins"
CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
TIMING = ("seconds", "time_to", "overhead")
TRAINING_COST = """
[protocols.training-cost]
thresholds = [0.5]
timing_examples = 64
timing_repeats = 1
"""


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def suite_file(directory: Path, *, defenses: list[str], attacks: list[str],
               extra_protocols: str = "", cell_timeout: float | None = None,
               first_protocols: str = "", epochs: int = 2, val_fraction: float = 0.1,
               n_examples: int = 100, training_cost: bool = True) -> Path:
    """The tiny suite's settings with these defenses and white-box attacks (protocol tables
    ``first_protocols`` before white-box, ``extra_protocols`` after the others)."""
    text = f"""
name = "hostile"
datasets = ["digits"]
architectures = ["cnn-001"]
seeds = [0]
defenses = {json.dumps(defenses)}
reference = "none"

[train]
epochs = {epochs}
batch_size = 128
lr = 0.002
val_fraction = {val_fraction}

[dataset_params.digits]
test_fraction = 0.5

[eval]
n_examples = {n_examples}
batch_size = {n_examples}
{f"cell_timeout = {cell_timeout}" if cell_timeout else ""}
{first_protocols}
[protocols.white-box]
attacks = {json.dumps(attacks)}
eps = [0.1]
headline_eps = 0.1
{TRAINING_COST if training_cost else ""}
{extra_protocols}
"""
    path = directory / f"hostile-{abs(hash(text)) % 10**8}.toml"
    path.write_text(text)
    return path


def invoke(args, capsys) -> tuple[int, str, str]:
    from advarena.cli.main import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


def cell_states(store: Path) -> list[dict]:
    s = Store.open(store, create=False)
    try:
        return s.cells()
    finally:
        s.close()


def by_title(store: Path, plan) -> dict[str, dict | None]:
    """Each planned cell's stored row (None when it was never run: skipped), by title."""
    rows = {c["key"]: c for c in cell_states(store)}
    return {c.title: rows.get(c.key) for c in plan.cells}


@pytest.fixture
def hostile_registry(fixture_plugin, monkeypatch):
    """``main()`` sees the installed plugins plus the hostile fixture."""
    import advarena.cli.run_command as run_command

    registry = Registry(make_plugin_manager([fixture_plugin("hostile")]))
    monkeypatch.setattr(run_command, "default_registry", lambda: registry)
    return registry


# -- in-process: failures that raise ----------------------------------------------------------

def test_hostile_defenses_and_metric_fail_only_their_own_cells(tmp_path, capsys,
                                                               hostile_registry):
    suite = suite_file(tmp_path, defenses=["none", "hostile-raise-defense",
                                           "hostile-nan-defense"], attacks=["fgsm"],
                       extra_protocols="[protocols.hostile-nan-metric]\n")
    store = tmp_path / "S"
    code, out, err = invoke(["run", "--suite", suite, "--store", store, "--quiet"], capsys)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    plan = make_plan(load_suite(str(suite)), hostile_registry)
    rows = by_title(store, plan)

    expected_failures = {
        "train digits cnn-001 hostile-raise-defense":
            ("defense 'hostile-raise-defense'", "hostile defense failure"),
        "train digits cnn-001 hostile-nan-defense":
            ("defense 'hostile-nan-defense'", "non-finite weights"),
        "eval digits cnn-001 hostile-nan-metric none":
            ("protocol 'hostile-nan-metric'", "NaN"),
    }
    for title, (plugin, reason) in expected_failures.items():
        row = rows[title]
        assert row is not None and row["status"] == "failed", title
        assert plugin in row["error"] and reason in row["error"], row["error"]
        assert plugin in out and reason in out  # said on stdout too
    done = {t for t, r in rows.items() if r is not None and r["status"] == "done"}
    assert done == {"train digits cnn-001 none", "eval digits cnn-001 white-box none",
                    "eval digits cnn-001 training-cost none",
                    # the reference's headline and flags read its white-box cell only
                    "headline digits cnn-001 headline none", "flags digits cnn-001 sanity none"}
    skipped = {t for t, r in rows.items() if r is None}
    # Everything reading a failed cell: the hostile defenses' evaluations, headlines and flags.
    assert skipped == set(rows) - done - set(expected_failures)
    assert "flags digits cnn-001 sanity hostile-nan-defense" in skipped
    assert re.search(r"5 cells run, 0 reused .* 3 failed, \d+ skipped", out)

    s = Store.open(store, create=False)
    try:
        failures = s.failures()
        (run,) = s.runs()
    finally:
        s.close()
    assert {(f["kind"], f["labels"].get("defense"), f["labels"].get("protocol"))
            for f in failures} == {("train", "hostile-raise-defense", None),
                                   ("train", "hostile-nan-defense", None),
                                   ("eval", "none", "hostile-nan-metric")}
    assert all("\n" not in f["error"] and f["detail"].startswith(f["error"])
               for f in failures)
    assert run["status"] == "incomplete"


def run_local(registry: Registry, plan, store_path: Path, **executor) -> dict:
    """Run ``plan`` through a LocalExecutor on the CPU into the store at ``store_path``."""
    store = Store.open(store_path)
    try:
        env = Environment(registry, store, torch.device("cpu"))
        return LocalExecutor(env, registry.pm.hook, **executor).run(plan)
    finally:
        store.close()


def _records(store: Path, protocol: str) -> list[tuple]:
    s = Store.open(store, create=False)
    try:
        rows = [m for m in s.metrics() if m["protocol"] == protocol]
    finally:
        s.close()
    return sorted((m["defense"], m["metric"], str(m["attack"]), m["eps"], m["value"])
                  for m in rows if not m["metric"].startswith(TIMING))


def test_protocol_writing_into_the_shared_dataset_fails_and_changes_no_other_number(
        tmp_path, hostile_registry):
    """Protocols read the process's cached dataset in place (no per-cell copy of the training
    split). With every cell in one process (a worker would hide the write from the driver),
    one that writes into it fails its own cell, and the cells after it, which read the
    training split (minimal-perturbation's training-set distance) and the test split, store
    exactly what a run without it stores."""
    minimal = ('[protocols.minimal-perturbation]\nattacks = ["fgsm-minimal"]\n'
               'eps_ref_model = "reference"\n')
    results = {}
    for name, first in (("A", ""), ("B", "[protocols.hostile-writes-data]\n")):
        suite = suite_file(tmp_path, defenses=["none"], attacks=["fgsm"], training_cost=False,
                           first_protocols=first, extra_protocols=minimal)
        plan = make_plan(load_suite(str(suite)), hostile_registry)
        if first:  # it must run before the cells it could corrupt
            order = [c.title for c in plan.cells if c.kind == "eval"]
            assert order[0] == "eval digits cnn-001 hostile-writes-data none", order
        summary = run_local(hostile_registry, plan, tmp_path / name, isolate=False)
        assert summary["failed"] == (1 if first else 0), summary
        results[name] = {p: _records(tmp_path / name, p)
                         for p in ("white-box", "minimal-perturbation")}
        rows = by_title(tmp_path / name, plan)
    bad = rows["eval digits cnn-001 hostile-writes-data none"]
    assert bad["status"] == "failed" and "wrote into the shared dataset 'digits'" in bad["error"]
    assert "protocol 'hostile-writes-data'" in bad["error"]
    assert all(results["A"].values()) and results["B"] == results["A"]


@pytest.fixture(scope="module")
def attack_store(tmp_path_factory):
    """One store for the attack cases: the reference model is trained once and reused."""
    return tmp_path_factory.mktemp("attacks") / "S"


@pytest.mark.parametrize("attack, reason", [
    ("hostile-raise", "raised RuntimeError: hostile attack failure"),
    ("hostile-nan", "non-finite values"),
    ("hostile-shape", "returned shape (99, 1, 8, 8) for inputs of shape (100, 1, 8, 8)"),
    ("hostile-out-of-ball", "left the linf ball of eps=0.1"),
])
def test_hostile_attack_fails_its_evaluation_only(attack, reason, tmp_path, attack_store,
                                                  capsys, hostile_registry):
    suite = suite_file(tmp_path, defenses=["none"], attacks=["fgsm", attack])
    code, out, err = invoke(["run", "--suite", suite, "--store", attack_store, "--quiet"],
                            capsys)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    rows = by_title(attack_store, make_plan(load_suite(str(suite)), hostile_registry))
    wb = rows["eval digits cnn-001 white-box none"]
    assert wb["status"] == "failed"
    assert f"attack '{attack}'" in wb["error"] and reason in wb["error"], wb["error"]
    assert f"attack '{attack}'" in out and reason in out
    assert rows["train digits cnn-001 none"]["status"] == "done"
    assert rows["eval digits cnn-001 training-cost none"]["status"] == "done"
    assert rows["flags digits cnn-001 sanity none"] is None  # skipped: reads the failed cell
    # no metric of a failed cell is stored
    conn = sqlite3.connect(attack_store / "results.sqlite")
    try:
        n = conn.execute("SELECT COUNT(*) FROM metrics m JOIN cells c ON c.key = m.cell_key "
                         "WHERE c.status != 'done'").fetchone()[0]
    finally:
        conn.close()
    assert n == 0


# -- a worker process: results, hangs and crashes ---------------------------------------------

def _comparable(store: Path) -> dict:
    conn = sqlite3.connect(store / "results.sqlite")
    try:
        rows = conn.execute("SELECT cell_key, metric, attack, eps, value, n, ci_low, ci_high, "
                            "extra FROM metrics").fetchall()
        artifacts = sorted(conn.execute("SELECT cell_key, name, sha256 FROM artifacts"))
    finally:
        conn.close()
    out = {}
    for key, metric, attack, eps, value, n, lo, hi, extra in rows:
        if any(t in metric for t in TIMING):
            continue
        extra = {k: v for k, v in json.loads(extra).items() if k != "curve"}
        out[(key, metric, attack, eps)] = (value, n, lo, hi, extra)
    return {"metrics": out, "artifacts": artifacts}


def test_worker_process_gives_the_same_results_as_in_process(tmp_path):
    registry = Registry(make_plugin_manager())
    plan = make_plan(load_suite(str(TINY)), registry, ["none"])
    results = {}
    for mode, timeout in (("in-process", None), ("worker", 600.0)):
        summary = run_local(registry, plan, tmp_path / mode, cell_timeout=timeout)
        assert summary["done"] == len(plan.cells) and not summary["failed"], summary
        results[mode] = _comparable(tmp_path / mode)
    assert results["worker"]["metrics"] and results["worker"]["artifacts"]
    assert results["worker"] == results["in-process"]


def install_fixture(directory: Path, module: str, dist: str) -> dict[str, str]:
    """Install ``tests/plugins/<module>.py`` as distribution ``dist`` (a module and a dist-info
    with an ``advarena`` entry point in ``directory``); return the environment to run with."""
    name = f"advarena_fixture_{module}"
    shutil.copy(PLUGIN_DIR / f"{module}.py", directory / f"{name}.py")
    info = directory / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[advarena]\n{module} = {name}\n")
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def test_hang_and_crash_are_stopped_in_a_worker_process(tmp_path):
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    site = tmp_path / "site"
    site.mkdir()
    env = install_fixture(site, "hostile", "advarena-hostile-fixture")
    limit = 8.0
    suite = suite_file(tmp_path, defenses=["none", "hostile-crash-defense"],
                       attacks=["fgsm", "hostile-hang"], cell_timeout=limit)
    store = tmp_path / "S"
    start = time.monotonic()
    proc = subprocess.run([str(CONSOLE_SCRIPT), "run", "--suite", str(suite), "--store",
                           str(store), "--quiet"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    elapsed = time.monotonic() - start
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = {(c["kind"], c["labels"].get("defense"), c["labels"].get("protocol")): c
            for c in cell_states(store)}
    hang = rows[("eval", "none", "white-box")]
    assert hang["status"] == "failed"
    assert "attack 'hostile-hang' (from advarena-hostile-fixture)" in hang["error"]
    assert f"cell time limit of {limit:g}s" in hang["error"]
    crash = rows[("train", "hostile-crash-defense", None)]
    assert crash["status"] == "failed"
    assert "defense 'hostile-crash-defense'" in crash["error"]
    assert "exited with status 7" in crash["error"]
    for r in (hang, crash):
        assert r["error"].split("\n")[0] in out  # the one-line reasons are printed
    assert rows[("train", "none", None)]["status"] == "done"
    assert rows[("eval", "none", "training-cost")]["status"] == "done"
    assert ("flags", "none", "sanity") not in rows  # skipped: reads the hung evaluation
    assert re.search(r"2 cells run, 0 reused .* 2 failed, \d+ skipped", out), out
    assert elapsed < limit + 120  # one limit waited out, not the hang


def test_leaderboard_lists_failed_cells_escaped(tmp_path):
    """Issue 7: the leaderboard marks failures. A failed cell whose reason carries markup is
    listed in both formats, escaped."""
    from advarena.report.leaderboard import render_html, render_markdown

    failure = {"kind": "eval", "labels": {"dataset": "digits", "architecture": "cnn-001",
                                          "defense": "none", "protocol": "white-box"},
               "error": "attack '<script>x</script>' raised RuntimeError", "detail": "trace",
               "run_id": "r1", "key": "k"}
    html = render_html([], [failure])
    assert "Failed cells" in html and "<script>x</script>" not in html
    assert "&lt;script&gt;" in html
    md = render_markdown([], [failure])
    assert "Failed cells" in md and "<script>" not in md
