"""Resume: a run killed with SIGKILL at random points, then run again, finishes with every cell
stored exactly once and the same results as an uninterrupted run.

The real console script runs the tiny suite; it is killed (``kill -9``) three times, each
time once a seeded random number of cells is stored plus a seeded random delay into the next
cell (the points spread over the run: resumed runs reuse what is stored), then run to
completion. Its store is compared with an uninterrupted run's in another store: the same cell
keys, each once and done, the same metric values (timings aside) and the same weight files.
A kill between writing a weight file and committing its cell is tested on its own.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advarena.store import sha256_bytes

TINY = Path(__file__).parent / "suites" / "tiny.toml"
CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
DEFENSES = ("gda-brelu",)
TIMING = ("seconds", "time_to", "overhead")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def run_args(store: Path) -> list[str]:
    args = [str(CONSOLE_SCRIPT), "run", "--suite", str(TINY), "--store", str(store), "--quiet"]
    for d in DEFENSES:
        args += ["--defense", d]
    return args


def query(store: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{store / 'results.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def n_runs(store: Path) -> int:
    if not (store / "results.sqlite").exists():
        return 0
    try:
        return query(store, "SELECT COUNT(*) FROM runs")[0][0]
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def results(store: Path) -> dict:
    """Metric values (timings aside) by cell key, and weight hashes by cell key."""
    metrics: dict[str, list] = {}
    for key, metric, attack, eps, value, n, lo, hi, extra in query(
            store, "SELECT cell_key, metric, attack, eps, value, n, ci_low, ci_high, extra "
                   "FROM metrics ORDER BY id"):
        if any(t in metric for t in TIMING):
            continue
        extra = {k: v for k, v in json.loads(extra).items() if k != "curve"}
        metrics.setdefault(key, []).append((metric, attack, eps, value, n, lo, hi, extra))
    artifacts = {(k, name): digest for k, name, digest in
                 query(store, "SELECT cell_key, name, sha256 FROM artifacts")}
    return {"metrics": metrics, "artifacts": artifacts}


def check_complete(store: Path, reference: Path) -> None:
    rows = query(store, "SELECT key, status FROM cells")
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys))  # each cell exactly once
    assert {s for _, s in rows} == {"done"}
    assert set(keys) == {k for (k,) in query(reference, "SELECT key FROM cells")}
    assert results(store) == results(reference)
    # every referenced weight file is there and intact
    for (digest,) in query(store, "SELECT sha256 FROM artifacts"):
        path = store / "weights" / f"{digest}.safetensors"
        assert sha256_bytes(path.read_bytes()) == digest


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the same command."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    store = tmp_path_factory.mktemp("reference") / "S"
    proc = subprocess.run(run_args(store), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results(store)["metrics"] and results(store)["artifacts"]
    return store


def test_sigkill_at_random_points_then_resume(tmp_path, reference):
    store = tmp_path / "S"
    rng = random.Random(20240607)
    n_cells = len(query(reference, "SELECT key FROM cells"))
    # Kill points spread over the run: once a random number of cells is stored (resumed runs
    # reuse them, so later attempts start further on), plus a random delay into the next cell.
    targets = [rng.randrange(0, 2), rng.randrange(2, 5), rng.randrange(5, n_cells - 1)]
    killed = []
    for attempt, target in enumerate(targets):
        runs_before = n_runs(store)
        proc = subprocess.Popen(run_args(store), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and (n_runs(store) == runs_before or query(
                store, "SELECT COUNT(*) FROM cells")[0][0] < target):
            assert time.monotonic() < deadline, "the run never got there"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            killed.append((target, query(store, "SELECT COUNT(*) FROM cells")[0][0]))
        stderr = proc.stderr.read()
        proc.stderr.close()
        assert "Traceback" not in stderr, stderr
        if proc.returncode == -signal.SIGKILL:
            # whatever was committed before the kill is complete: no failed or partial cells
            assert {s for (s,) in query(store, "SELECT DISTINCT status FROM cells")} <= {"done"}
    # at least one kill came before the last cell was stored
    assert any(stored < n_cells for _, stored in killed), killed

    final = subprocess.run(run_args(store), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    check_complete(store, reference)
    statuses = [s for (s,) in query(store, "SELECT status FROM runs ORDER BY started")]
    assert statuses[-1] == "complete"
    # a run killed before its end keeps its row 'running', which harms nothing
    assert set(statuses) <= {"running", "complete"}
    assert statuses.count("running") >= sum(1 for _, stored in killed if stored < n_cells)


KILL_BEFORE_COMMIT = """
import os, signal, sys
import advarena.store as store

real = store.Store.record_cell

def record_cell(self, **kw):
    if kw["artifacts"]:  # a weight file was just written: die before its cell commits
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, **kw)

store.Store.record_cell = record_cell
from advarena.cli.main import main
main(sys.argv[1:])
"""


def test_kill_between_weight_file_and_cell_commit(tmp_path, reference):
    store = tmp_path / "S"
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_COMMIT, *run_args(store)[1:]],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    # the weight file was written, the cell was not: an unreferenced file, a 'running' run
    files = sorted(p.name for p in (store / "weights").iterdir()
                   if p.suffix == ".safetensors")
    assert len(files) == 1
    assert query(store, "SELECT COUNT(*) FROM cells WHERE kind='train'")[0][0] == 0
    assert [s for (s,) in query(store, "SELECT status FROM runs")] == ["running"]

    again = subprocess.run(run_args(store), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    check_complete(store, reference)
    # the cell was rebuilt, wrote the same content and so the same file, which it references
    referenced = {f"{d}.safetensors" for (d,) in query(store, "SELECT sha256 FROM artifacts")}
    assert set(files) <= referenced
