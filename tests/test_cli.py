"""The command line: an end-to-end run through the real console script, reuse of stored cells,
resuming after a failed cell, and a table of bad inputs that must each end in one line on stderr,
exit status 2, no traceback and an untouched store."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from advarena.cli.main import cli, main
from advarena.store import SCHEMA_VERSION

TINY = Path(__file__).parent / "suites" / "tiny.toml"
CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
EXPORT_KEYS = ("dataset", "architecture", "defense", "params", "seed", "protocol", "attack",
               "eps", "metric", "value", "n", "ci_low", "ci_high")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models train fastest on one thread, and on a CPU shared with other processes
    multi-threaded torch spins in its thread barriers (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers ------------------------------------------------------------------------------------

def invoke(args, capsys) -> tuple[int, str, str]:
    """Run ``main(args)`` in this process; return (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def script(args, cwd, **env) -> subprocess.CompletedProcess:
    """Run the installed console script in a fresh process."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    full_env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([str(CONSOLE_SCRIPT), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def summary(stdout: str) -> tuple[int, int, int, int]:
    """(run, reused, failed, skipped) from the run's summary line."""
    text = " ".join(stdout.split())
    m = re.search(r"(\d+) cells run, (\d+) reused from the store .*?, (\d+) failed, (\d+) "
                  r"skipped", text)
    assert m, f"no summary line in: {text[-500:]}"
    return tuple(int(g) for g in m.groups())


def db(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(store / "results.sqlite")


def cells(store: Path) -> dict[str, dict]:
    conn = db(store)
    try:
        rows = conn.execute("SELECT key, kind, labels, status, run_id, error FROM cells")
        return {k: {"kind": kind, "labels": json.loads(lab), "status": st, "run_id": rid,
                    "error": err} for k, kind, lab, st, rid, err in rows}
    finally:
        conn.close()


def runs(store: Path) -> list[tuple[str, str]]:
    conn = db(store)
    try:
        return conn.execute("SELECT id, status FROM runs ORDER BY started").fetchall()
    finally:
        conn.close()


def snapshot(store: Path):
    """What a failed command must leave alone: metric rows, cells, runs and weight files."""
    if not (store / "results.sqlite").exists():
        return None
    conn = db(store)
    try:
        n_metrics = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        cell_rows = sorted(conn.execute("SELECT key, status, run_id FROM cells").fetchall())
        run_rows = sorted(conn.execute("SELECT id, status FROM runs").fetchall())
        meta = sorted(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    weights = sorted(p.name for p in (store / "weights").iterdir())
    return n_metrics, cell_rows, run_rows, meta, weights


def tiny_run_args(store: Path, *defenses: str, output: Path | None = None) -> list:
    args = ["run", "--suite", TINY, "--store", store, "--quiet"]
    for d in defenses:
        args += ["--defense", d]
    if output is not None:
        args += ["--output", output]
    return args


def planned(*defenses: str) -> dict[str, object]:
    """The tiny suite's cells for ``defenses`` by key, from the planner (not from a run)."""
    from advarena.plan import make_plan
    from advarena.plugins import default_registry
    from advarena.suite import load_suite

    plan = make_plan(load_suite(str(TINY)), default_registry(), list(defenses))
    return {c.key: c for c in plan.cells}


def dependants(cells: dict, key: str) -> set[str]:
    """Every cell that reads ``key``'s output, directly or through other cells."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for k, c in cells.items():
            if k not in out and any(d == key or d in out for d in c.deps.values()):
                out.add(k)
                changed = True
    return out


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A store with cells, metric records, a run and a weight file, for commands that must not
    change it. Written directly (no training): a failing command must leave any store alone,
    and a command that wrongly went on to run the tiny suite would add cells to this one."""
    from advarena.api.records import Measurement
    from advarena.store import Store

    root = tmp_path_factory.mktemp("populated") / "store"
    store = Store.open(root)
    try:
        store.start_run("r0", {"name": "hand-made"}, [], "cpu", {})
        weights = store.put_tensors({"w": torch.arange(6.0).reshape(2, 3)})  # (sha256, bytes)
        for i, defense in enumerate(("none", "gda-brelu")):
            labels = {"dataset": "digits", "architecture": "cnn-001", "defense": defense,
                      "params": {}, "seed": 0}
            store.record_cell(key=f"train-{i}", kind="train", spec={}, run_id="r0",
                              labels={**labels, "role": "reference" if i == 0 else "defense"},
                              started=0.0, seconds=1.0, device="cpu", provenance={},
                              result={}, measurements=[], artifacts={"model": weights})
            store.record_cell(key=f"eval-{i}", kind="eval", spec={}, run_id="r0",
                              labels={**labels, "protocol": "white-box"}, started=0.0,
                              seconds=1.0, device="cpu", provenance={}, result={},
                              measurements=[Measurement("accuracy", 0.9, 100, 0.8, 0.95),
                                            Measurement("worst_case_accuracy", 0.5, 100, 0.4,
                                                        0.6, "worst-case", 0.1,
                                                        {"headline": True})],
                              artifacts={})
        store.finish_run("r0", "complete")
    finally:
        store.close()
    assert snapshot(root)[0] == 4
    return root


# -- end to end through the console script ----------------------------------------------------

def _check_records(path: Path, defenses: set[str]) -> list[dict]:
    recs = json.loads(path.read_text())
    assert isinstance(recs, list) and recs
    for r in recs:
        assert set(EXPORT_KEYS) <= set(r), set(EXPORT_KEYS) - set(r)
        assert isinstance(r["value"], float), r
        assert isinstance(r["n"], int) and not isinstance(r["n"], bool), r
        assert isinstance(r["seed"], int) and not isinstance(r["seed"], bool)
        assert isinstance(r["params"], dict)
        for k in ("eps", "ci_low", "ci_high"):
            assert r[k] is None or isinstance(r[k], float), (k, r)
        for k in ("dataset", "architecture", "defense", "protocol", "metric"):
            assert isinstance(r[k], str), (k, r)
        assert r["attack"] is None or isinstance(r["attack"], str)
    assert {r["defense"] for r in recs} == defenses
    # every (defense, attack, eps) of the suite's white-box sweep is there, with the suite's n
    import tomllib

    suite = tomllib.loads(TINY.read_text())
    wb = suite["protocols"]["white-box"]
    robust = {(r["defense"], r["attack"], r["eps"]) for r in recs
              if r["protocol"] == "white-box" and r["metric"] == "robust_accuracy"}
    assert robust == {(d, a, float(e)) for d in defenses for a in wb["attacks"]
                      for e in wb["eps"]}
    for r in recs:
        # (the gradient shares count the correctly classified examples only)
        if r["protocol"] == "white-box" and not (r.get("extra") or {}).get("denominator"):
            assert r["n"] == suite["eval"]["n_examples"]
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
    return recs


def test_end_to_end_run_reuse_and_shared_reference(tmp_path, capsys):
    store = tmp_path / "S"
    out = tmp_path / "r.json"

    first = script(tiny_run_args(store, "gda-brelu", output=out), tmp_path, PYTHONHASHSEED="1")
    assert "Traceback" not in first.stderr
    _check_records(out, {"none", "gda-brelu"})
    assert first.returncode == 0, first.stdout + first.stderr
    plan = planned("gda-brelu")
    assert summary(first.stdout) == (len(plan), 0, 0, 0)
    after_first = cells(store)
    assert set(after_first) == set(plan)
    assert {c["status"] for c in after_first.values()} == {"done"}
    (run1, status1), = runs(store)
    assert status1 == "complete"

    # the same run again, in another process with another hash seed: nothing is recomputed
    out.unlink()
    second = script(tiny_run_args(store, "gda-brelu", output=out), tmp_path, PYTHONHASHSEED="2")
    assert second.returncode == 0, second.stderr
    assert summary(second.stdout) == (0, len(plan), 0, 0)
    assert cells(store) == after_first  # every cell still carries the first run's id
    assert [r[1] for r in runs(store)] == ["complete", "complete"]
    _check_records(out, {"none", "gda-brelu"})  # the export is written on reuse too

    # another defense afterwards: the reference model (and its evaluation) come from the store
    code, stdout, err = invoke(tiny_run_args(store, "brelu"), capsys)
    assert code == 0, err
    plan_brelu = planned("brelu")
    shared = set(plan_brelu) & set(plan)
    assert summary(stdout) == (len(set(plan_brelu) - shared), len(shared), 0, 0)
    now = cells(store)
    (ref_key,) = [k for k, c in now.items() if c["labels"].get("role") == "reference"]
    assert now[ref_key]["run_id"] == run1
    new_keys = set(now) - set(after_first)
    assert {now[k]["labels"]["defense"] for k in new_keys} == {"brelu"}
    assert all(now[k]["run_id"] != run1 for k in new_keys)
    for k, c in after_first.items():
        assert now[k] == c


# -- resume after a failed cell ---------------------------------------------------------------

def test_failed_cell_is_recorded_dependants_skipped_and_rerun_resumes(tmp_path, capsys,
                                                                       monkeypatch):
    import advarena.executors.local as local

    store = tmp_path / "S"
    real = local.run_cell

    def flaky(cell, env, progress):
        if cell.kind == "train" and cell.labels.get("defense") == "gda-brelu":
            raise RuntimeError("injected failure")
        return real(cell, env, progress)

    monkeypatch.setattr(local, "run_cell", flaky)
    plan = planned("gda-brelu")
    (failing,) = [k for k, c in plan.items()
                  if c.kind == "train" and c.labels["defense"] == "gda-brelu"]
    blocked = dependants(plan, failing)
    assert blocked  # the white-box evaluation of gda-brelu reads the failing model
    others = set(plan) - blocked - {failing}

    code, stdout, err = invoke(tiny_run_args(store, "gda-brelu"), capsys)
    assert code == 1, err
    assert "Traceback" not in stdout + err
    assert summary(stdout) == (len(others), 0, 1, len(blocked))
    assert "injected failure" in stdout
    state = cells(store)
    assert state[failing]["status"] == "failed"
    assert "injected failure" in state[failing]["error"]
    assert {k for k, c in state.items() if c["status"] == "done"} == others
    assert not blocked & set(state)  # skipped: never run, nothing stored
    (run1, status1), = runs(store)
    assert status1 == "incomplete"
    conn = db(store)
    n_failed_metrics = conn.execute(
        "SELECT COUNT(*) FROM metrics m JOIN cells c ON c.key = m.cell_key "
        "WHERE c.status != 'done'").fetchone()[0]
    conn.close()
    assert n_failed_metrics == 0

    # the fix: the rerun runs only what is missing (the failed cell and the ones it blocked)
    monkeypatch.setattr(local, "run_cell", real)
    code, stdout, err = invoke(tiny_run_args(store, "gda-brelu"), capsys)
    assert code == 0, err
    assert summary(stdout) == (1 + len(blocked), len(others), 0, 0)
    state = cells(store)
    assert set(state) == set(plan)
    assert {c["status"] for c in state.values()} == {"done"}
    for k in others:
        assert state[k]["run_id"] == run1
    for k in blocked | {failing}:
        assert state[k]["run_id"] != run1
    assert [r[1] for r in runs(store)] == ["incomplete", "complete"]


def test_data_error_aborts_the_run(tmp_path, monkeypatch):
    import advarena.executors.local as local
    from advarena.errors import DataError
    from advarena.executors import LocalExecutor
    from advarena.plan import make_plan
    from advarena.plugins import default_registry
    from advarena.runner import Environment
    from advarena.store import Store
    from advarena.suite import load_suite

    reg = default_registry()
    plan = make_plan(load_suite(str(TINY)), reg, ["brelu"])
    seen = []

    def fake(cell, env, progress):
        seen.append(cell.key)
        raise DataError("dataset files went missing")

    monkeypatch.setattr(local, "run_cell", fake)
    store = Store.open(tmp_path / "S")
    try:
        env = Environment(reg, store, torch.device("cpu"))
        with pytest.raises(DataError):
            LocalExecutor(env, reg.pm.hook).run(plan)
        assert len(seen) == 1  # stopped at the first cell, not recorded as a cell failure
        assert store.cells() == []
    finally:
        store.close()


# -- bad input ----------------------------------------------------------------------------------

def _bad_suite(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _newer_store(tmp_path: Path, populated: Path) -> Path:
    store = tmp_path / "newer"
    shutil.copytree(populated, store)
    conn = db(store)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    return store


def _empty_store(tmp_path: Path, populated: Path) -> Path:
    from advarena.store import Store

    store = tmp_path / "empty"
    Store.open(store).close()
    return store


# Each case: (id, builder(tmp_path, populated) -> (args, store to watch), needle in the message)
BAD = [
    ("unknown-defense",
     lambda t, s: (tiny_run_args(s, "gda-brelo"), s), "'gda-brelu'"),
    ("unknown-dataset",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--dataset", "digit"], s), "'digits'"),
    ("unknown-protocol",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--protocol", "white-bx"], s), "white-box"),
    ("unknown-suite-name",
     lambda t, s: (["run", "--suite", "no-such-suite", "--store", s], s), "no-such-suite"),
    ("missing-suite-file",
     lambda t, s: (["run", "--suite", t / "missing.toml", "--store", s], s), "missing.toml"),
    ("suite-path-is-directory",
     lambda t, s: (["run", "--suite", t, "--store", s], s), "cannot read suite"),
    ("invalid-toml",
     lambda t, s: (["run", "--suite", _bad_suite(t, "name = [\n"), "--store", s], s),
     "not valid TOML"),
    ("negative-eps",
     lambda t, s: (["run", "--suite", _bad_suite(t, re.sub(
         r"(?m)^eps = .*$", "eps = [-0.1, 0.1]", TINY.read_text())), "--store", s], s), "eps"),
    ("bad-train-setting",
     lambda t, s: (["run", "--suite", _bad_suite(t, TINY.read_text().replace(
         "epochs = ", "epochs = -", 1)), "--store", s], s), "epochs"),
    ("cuda-on-cpu",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--device", "cuda"], s), "CUDA"),
    ("unknown-device",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--device", "tpu"], s), "tpu"),
    ("mnist-without-data-dir",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--dataset", "mnist"], s), "--data-dir"),
    ("missing-data-dir",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--dataset", "mnist", "--data-dir",
                                                 t / "no-data"], s), "no-data"),
    ("newer-schema-store",
     lambda t, s: (tiny_run_args(st := _newer_store(t, s), "brelu"), st), "newer"),
    ("leaderboard-missing-store",
     lambda t, s: (["leaderboard", "--store", t / "nostore", "--out", t / "lb"], s),
     "no advarena store"),
    ("leaderboard-empty-store",
     lambda t, s: (["leaderboard", "--store", st := _empty_store(t, s), "--out", t / "lb"], st),
     "no white-box results"),
    ("leaderboard-bad-format",
     lambda t, s: (["leaderboard", "--store", s, "--out", t / "lb", "--format", "md,pdf"], s),
     "pdf"),
    ("unknown-option",
     lambda t, s: (tiny_run_args(s, "brelu") + ["--bogus"], s), "--bogus"),
    ("unknown-command",
     lambda t, s: (["rnu"], s), "rnu"),
    ("output-is-directory",
     lambda t, s: (tiny_run_args(s, "brelu", output=t), s), "directory"),
]


@pytest.mark.parametrize("builder, needle", [pytest.param(b, n, id=i) for i, b, n in BAD])
def test_bad_input_is_one_line_exit_2_store_unchanged(builder, needle, tmp_path, populated,
                                                      capsys, request):
    if request.node.callspec.id == "cuda-on-cpu" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    args, watched = builder(tmp_path, populated)
    before = snapshot(watched)
    before_populated = snapshot(populated)
    code, out, err = invoke(args, capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert snapshot(watched) == before
    assert snapshot(populated) == before_populated
    # nothing new appeared: no store for a missing one, no leaderboard directory
    assert not (tmp_path / "nostore").exists()
    assert not (tmp_path / "lb").exists()


def test_bad_input_through_the_console_script(tmp_path, populated):
    before = snapshot(populated)
    proc = script(tiny_run_args(populated, "gda-brelo"), tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'gda-brelu'" in lines[0], proc.stderr
    assert snapshot(populated) == before


# -- list and help ----------------------------------------------------------------------------

def test_list_attacks_json():
    result = CliRunner().invoke(cli, ["list", "attacks", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {d["name"]: d for d in data}
    for name in ("fgsm", "pgd"):
        d = by_name[name]
        assert {"name", "paper", "parameters", "distribution"} <= set(d)
        assert isinstance(d["paper"], str) and d["paper"]
        assert isinstance(d["distribution"], str) and d["distribution"]
        params = {p["name"]: p for p in d["parameters"]}
        assert "eps" in params and isinstance(params["eps"]["default"], float)
    assert {"steps", "random_start"} <= {p["name"] for p in by_name["pgd"]["parameters"]}


def test_list_all_kinds_json():
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {"attacks", "defenses", "datasets", "architectures", "protocols"} <= set(data)
    assert "gda-brelu" in {d["name"] for d in data["defenses"]}
    assert "white-box" in {d["name"] for d in data["protocols"]}


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [()] + list(_commands(cli)), ids=lambda p: " ".join(p) or "advarena")
def test_every_command_help_has_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert re.search(r"\d+\.\d+", result.stdout)
