"""Wall time of the quick suite through the real command line.

* ``test_one_defense_empty_store``: ``advarena run --defense gda-brelu`` from an empty store
  (the reference, the shared models: black-box substitutes and ensemble members, the prepared
  transfer sets, and both models' evaluations);
* ``test_one_defense_shared_models_stored``: the same command on a store that already holds the
  work that does not depend on the defense (made by ``--defense none``): only the defense's
  train cell and its evaluations run;
* ``test_growth_with_defenses``: 1, 2 and 3 defenses (brelu, + gda, + gda-brelu) on copies of
  that store; ``extra_info`` holds each time, the increment of each added defense and the
  least-squares ``marginal_seconds_per_defense``.

Each run is a fresh process (imports included, as a user sees it); ``extra_info`` splits its
cells' seconds by protocol (``cell_seconds_by_protocol``). The suite is the quick
suite scaled to keep each benchmark under about two minutes on a 2-core machine (``[train]
epochs`` 20 -> 5, ``[eval] n_examples`` 300 -> 100): the same cells, protocols and attacks, less
work in each. ``ADVARENA_BENCH_SUITE=quick`` times the real quick suite (several minutes).
``ADVARENA_BENCH_THREADS=N`` pins torch's CPU threads in the runs.

Run: ``pytest benchmarks/bench_suite.py --benchmark-only``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
DEFENSE = "gda-brelu"
GROWTH = ("brelu", "gda", "gda-brelu")
SCALE = {"epochs": (20, 5), "n_examples": (300, 100), "batch_size": (300, 100)}


def _suite(directory: Path) -> tuple[str, str]:
    """(suite argument, its name in the results)."""
    if os.environ.get("ADVARENA_BENCH_SUITE", "scaled") == "quick":
        return "quick", "quick"
    text = (resources.files("advarena.suites") / "quick.toml").read_text()
    for key, (old, new) in SCALE.items():
        text, n = re.subn(rf"(?m)^{key} = {old}$", f"{key} = {new}", text)
        if n != 1:  # the quick suite changed shape: time it as it is
            return "quick", "quick"
    text = text.replace('name = "quick"', 'name = "quick-scaled"')
    path = directory / "quick-scaled.toml"
    path.write_text(text)
    return str(path), "quick-scaled"


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    if os.environ.get("ADVARENA_BENCH_THREADS"):
        env["OMP_NUM_THREADS"] = os.environ["ADVARENA_BENCH_THREADS"]
    return env


def run(suite: str, store: Path, defenses: tuple[str, ...]) -> dict:
    """One ``advarena run`` in a fresh process: its wall time and summary counts."""
    args = [str(CONSOLE_SCRIPT), "run", "--suite", suite, "--store", str(store), "--quiet"]
    for d in defenses:
        args += ["--defense", d]
    start = time.perf_counter()
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    m = re.search(r"(\d+) cells run, (\d+) reused", text)
    assert m, text
    return {"seconds": seconds, "cells_run": int(m.group(1)), "cells_reused": int(m.group(2)),
            "cell_seconds_by_protocol": by_protocol(store, re.search(r"run (\w+):", text)[1])}


def by_protocol(store: Path, run_id: str) -> dict[str, float]:
    """The seconds of the run's cells, summed by protocol (train cells by their role: the
    defense's own, the reference, the shared models); the rest of the wall time is the
    process (imports, loading, scheduling, the answer table)."""
    from advarena.store import Store

    s = Store.open(store, readonly=True)
    try:
        out: dict[str, float] = {}
        for c in s.cells():
            if c["run_id"] != run_id or c["status"] != "done":
                continue
            lab = c["labels"]
            if c["kind"] == "train":
                name = f"train {lab.get('role') or lab.get('defense')}"
            else:
                name = f"{c['kind']} {lab.get('protocol') or ''}".strip()
            out[name] = round(out.get(name, 0.0) + c["seconds"], 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
    finally:
        s.close()


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[str, str]:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    return _suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def shared_store(suite, tmp_path_factory) -> tuple[Path, dict]:
    """A store holding everything that does not depend on the defense."""
    store = tmp_path_factory.mktemp("shared") / "S"
    return store, run(suite[0], store, ("none",))


def _fresh_copy(shared: Path, into: Path) -> Path:
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(shared, into)
    return into


def test_one_defense_empty_store(benchmark, suite, tmp_path):
    result = {}

    def setup():
        shutil.rmtree(tmp_path / "S", ignore_errors=True)

    def go():
        result.update(run(suite[0], tmp_path / "S", (DEFENSE,)))

    benchmark.pedantic(go, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(suite=suite[1], defense=DEFENSE, **result)


def test_one_defense_shared_models_stored(benchmark, suite, shared_store, tmp_path):
    shared, made = shared_store
    result = {}

    def setup():
        _fresh_copy(shared, tmp_path / "S")

    def go():
        result.update(run(suite[0], tmp_path / "S", (DEFENSE,)))

    benchmark.pedantic(go, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(suite=suite[1], defense=DEFENSE,
                                shared_store_seconds=made["seconds"], **result)


def test_growth_with_defenses(benchmark, suite, shared_store, tmp_path):
    shared, _ = shared_store
    times: list[float] = []
    cells: list[int] = []

    def go():
        for k in range(1, len(GROWTH) + 1):
            r = run(suite[0], _fresh_copy(shared, tmp_path / f"S{k}"), GROWTH[:k])
            times.append(r["seconds"])
            cells.append(r["cells_run"])

    benchmark.pedantic(go, rounds=1, iterations=1)
    ks = list(range(1, len(times) + 1))
    mean_k, mean_t = sum(ks) / len(ks), sum(times) / len(times)
    slope = sum((k - mean_k) * (t - mean_t) for k, t in zip(ks, times)) / \
        sum((k - mean_k) ** 2 for k in ks)
    benchmark.extra_info.update(
        suite=suite[1], defenses=list(GROWTH), seconds=times, cells_run=cells,
        increments=[b - a for a, b in zip(times, times[1:])],
        marginal_seconds_per_defense=slope, intercept_seconds=mean_t - slope * mean_k)
