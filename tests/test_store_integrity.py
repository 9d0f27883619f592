"""Stored numbers cannot change unseen: every metric and cell row carries a digest checked on
read, accuracies are checked against their own per-example outcomes and intervals, damaged
databases (flipped bytes, a 0-byte file) give one line and exit 2, and older schemas are
migrated or refused.

One real store (the tiny suite, ``none``, white-box) is made once per module; every test
damages a copy of it.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
import torch

from advarena.api import Defense
from advarena.api.records import Measurement
from advarena.errors import StoreError
from advarena.evaluation import accuracy_measurement
from advarena.store import SCHEMA_VERSION, Store

TINY = Path(__file__).parent / "suites" / "tiny.toml"


pytestmark = pytest.mark.usefixtures("single_thread")


def invoke(args) -> tuple[int, str, str]:
    """Run the CLI in process; (exit status, stdout, stderr)."""
    import contextlib
    import io

    from advarena.cli import main as main_module

    # The CLI's consoles write to whatever sys.stdout and sys.stderr are when they print.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main_module.main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def run_args(store: Path, *extra) -> list:
    return ["run", "--suite", TINY, "--store", store, "--defense", "none", "--protocol",
            "white-box", "--quiet", *extra]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity") / "store"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU (as the single_thread fixture)
    try:
        code, out, err = invoke(run_args(root))
    finally:
        torch.set_num_threads(before)
    assert code == 0, (out, err)
    return root


@pytest.fixture
def store(made, tmp_path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(made, root)
    return root


def values(root: Path) -> list[tuple]:
    s = Store.open(root, create=False)
    try:
        return [(m["cell_key"], m["metric"], m["attack"], m["eps"], m["value"])
                for m in s.metrics()]
    finally:
        s.close()


def raw(root: Path, sql: str, args: tuple = ()) -> list:
    conn = sqlite3.connect(root / "results.sqlite")
    try:
        rows = conn.execute(sql, args).fetchall()
        conn.commit()
    finally:
        conn.close()
    return rows


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def flip_bit(x: float, bit: int) -> float:
    (n,) = struct.unpack("<Q", struct.pack("<d", x))
    return struct.unpack("<d", struct.pack("<Q", n ^ (1 << bit)))[0]


def headline(root: Path) -> tuple[int, float]:
    (row,) = raw(root, "SELECT id, value FROM metrics WHERE metric='worst_case_accuracy' AND "
                       "eps=0.1")
    return row


# -- a flipped bit in a stored metric ------------------------------------------------------

def test_a_bit_flipped_in_a_stored_value_is_refused_by_every_reading_command(store, tmp_path):
    mid, value = headline(store)
    # the case: one bit of the exponent halves the headline (0.47 -> 0.235)
    raw(store, "UPDATE metrics SET value=? WHERE id=?", (flip_bit(value, 52), mid))
    s = Store.open(store, create=False)
    try:
        bad = s.check_cells()
        assert len(bad) == 1 and "digest" in next(iter(bad.values()))
        with pytest.raises(StoreError) as info:
            s.metrics()
        assert "\n" not in str(info.value) and "advarena run" in str(info.value)
    finally:
        s.close()
    for args in (["leaderboard", "--store", store, "--out", tmp_path / "lb", "--plots", "none"],
                 ["compare", store, store]):
        line = one_line_error(*invoke(args))
        assert "fail their checks" in line, line
    assert not (tmp_path / "lb").exists()


def test_a_flipped_value_whose_digest_was_recomputed_still_disagrees_with_its_outcomes(store):
    """The cross-check a forger has to fake too: the value against its own outcome bits."""
    from advarena import store as store_module

    mid, value = headline(store)
    conn = sqlite3.connect(store / "results.sqlite")
    key = conn.execute("SELECT cell_key FROM metrics WHERE id=?", (mid,)).fetchone()[0]
    conn.execute("UPDATE metrics SET value=? WHERE id=?", (flip_bit(value, 52), mid))
    store_module._seal(conn, key)  # what a plugin that knows the scheme could do
    conn.commit()
    conn.close()
    s = Store.open(store, create=False)
    try:
        problem = s.check_cells()[key]
        assert "outcomes" in problem, problem
        with pytest.raises(StoreError):
            s.metrics()
    finally:
        s.close()


def test_a_flipped_bit_in_the_file_is_detected(store):
    """A bit flipped in the bytes of results.sqlite (not through SQL): the headline value's 8
    bytes (SQLite stores REAL big-endian) are found in the file (the first record holding that
    value) and one bit of them flipped."""
    _, value = headline(store)
    db = store / "results.sqlite"
    data = bytearray(db.read_bytes())
    needle = struct.pack(">d", value)
    at = data.find(needle)
    assert at >= 0
    data[at + 1] ^= 0x10  # an exponent bit
    db.write_bytes(bytes(data))
    s = Store.open(store, create=False)
    try:
        assert s.check_cells()
        with pytest.raises(StoreError):
            s.metrics()
    finally:
        s.close()


def test_run_reports_a_tampered_cell_and_recomputes_it(store):
    before = values(store)
    mid, value = headline(store)
    raw(store, "UPDATE metrics SET value=? WHERE id=?", (flip_bit(value, 52), mid))
    code, out, err = invoke(run_args(store))
    assert code == 0, (out, err)
    text = " ".join(out.split())
    assert "warning" in text and "does not match its digest" in text, text
    assert "1 cells run" in text, text  # the tampered eval cell, nothing else
    # recomputed (deterministic on the CPU): the values stored before the edit
    assert sorted(values(store), key=repr) == sorted(before, key=repr)


def test_a_tampered_weight_file_is_rebuilt_with_a_warning_naming_it(store):
    s = Store.open(store, create=False)
    try:
        (train,) = s.cells(kind="train")
        digest = s.artifacts(train["key"])["model"]
    finally:
        s.close()
    path = store / "weights" / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    code, out, err = invoke(run_args(store))
    assert code == 0, (out, err)
    text = " ".join(out.split())
    assert "warning" in text and digest in text and "rebuilding" in text, text
    assert Store.open(store, create=False).artifact_ok(digest)


def test_the_run_summary_carries_the_store_warnings(store):
    """Functions return data: the executor's summary holds the warning the CLI prints."""
    from advarena.executors import make_executor
    from advarena.plan import make_plan
    from advarena.plugins import default_registry
    from advarena.runner import Environment
    from advarena.suite import load_suite

    mid, value = headline(store)
    raw(store, "UPDATE metrics SET n=n+1 WHERE id=?", (mid,))
    plan = make_plan(load_suite(str(TINY)), default_registry(), ["none"], ["white-box"])
    s = Store.open(store)
    try:
        env = Environment(default_registry(), s, torch.device("cpu"))
        summary = make_executor("local", env, default_registry().pm.hook).run(plan)
    finally:
        s.close()
    assert summary["done"] == 1 and len(summary["warnings"]) == 1
    assert "digest" in summary["warnings"][0]


# -- damaged databases -----------------------------------------------------------------------

def test_a_database_truncated_to_0_bytes_is_refused_not_started_over(store, tmp_path):
    db = store / "results.sqlite"
    db.write_bytes(b"")
    for args in (run_args(store), ["leaderboard", "--store", store, "--out", tmp_path / "lb"],
                 ["compare", store, store]):
        line = one_line_error(*invoke(args))
        assert "0 bytes" in line and "backup" in line, line
        assert db.stat().st_size == 0  # nothing was started over
    with pytest.raises(StoreError, match="0 bytes"):
        Store.open(store)


def read_everything(root: Path) -> list:
    """What the reading commands read, through the store's API."""
    s = Store.open(root, create=False)
    try:
        return [s.cells(), s.metrics(), s.failures(), s.runs(),
                [s.done_cell(c["key"]) for c in s.cells()]]
    finally:
        s.close()


@pytest.mark.parametrize("seed", range(6))
def test_random_byte_flips_never_give_a_traceback(store, tmp_path, seed):
    before = read_everything(store)
    db = store / "results.sqlite"
    data = bytearray(db.read_bytes())
    rng = random.Random(seed)
    for _ in range(200):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    db.write_bytes(bytes(data))
    try:
        after = read_everything(store)
    except StoreError as exc:
        assert "\n" not in str(exc)
    else:  # the flips fell where nothing is read (free pages): what is served is unchanged
        assert after[1] == before[1]
    commands = [["leaderboard", "--store", store, "--out", tmp_path / "lb", "--plots", "none"]]
    if seed < 2:  # a run too (it may retrain what the flips damaged): a few seconds each
        commands.append(run_args(store))
    for args in commands:
        code, out, err = invoke(args)
        assert code in (0, 2), (out, err)
        assert "Traceback" not in out + err
        if code == 2:
            one_line_error(code, out, err)


def test_a_file_that_is_not_a_database_is_one_line(store):
    (store / "results.sqlite").write_bytes(b"this is not SQLite" * 100)
    line = one_line_error(*invoke(run_args(store)))
    assert "damaged" in line and "results.sqlite" in line, line


# -- schema versions ---------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id TEXT PRIMARY KEY, started REAL, finished REAL, suite TEXT, argv TEXT,
    device TEXT, versions TEXT, status TEXT);
CREATE TABLE cells (key TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL,
    labels TEXT NOT NULL, status TEXT NOT NULL, run_id TEXT, started REAL, finished REAL,
    seconds REAL, device TEXT, provenance TEXT, result TEXT, error TEXT);
CREATE TABLE metrics (id INTEGER PRIMARY KEY, cell_key TEXT NOT NULL REFERENCES cells(key),
    dataset TEXT, architecture TEXT, defense TEXT, params TEXT, seed INTEGER, protocol TEXT,
    attack TEXT, eps REAL, metric TEXT NOT NULL, value REAL NOT NULL, n INTEGER, ci_low REAL,
    ci_high REAL, extra TEXT);
CREATE TABLE artifacts (cell_key TEXT NOT NULL REFERENCES cells(key), name TEXT NOT NULL,
    sha256 TEXT NOT NULL, bytes INTEGER, PRIMARY KEY (cell_key, name));
INSERT INTO meta VALUES ('schema_version', '1');
"""


def v1_store(root: Path, value: float) -> Path:
    root.mkdir()
    (root / "weights").mkdir()
    m = accuracy_measurement("accuracy", torch.tensor([True] * 47 + [False] * 53))
    conn = sqlite3.connect(root / "results.sqlite")
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO cells VALUES ('k', 'eval', '{}', '{}', 'done', 'r', 0, 1, 1, "
                 "'cpu', '{}', '{}', NULL)")
    conn.execute("INSERT INTO metrics (cell_key, metric, value, n, ci_low, ci_high, extra) "
                 "VALUES ('k', 'accuracy', ?, ?, ?, ?, ?)",
                 (value, m.n, m.ci_low, m.ci_high, json.dumps(m.extra)))
    conn.commit()
    conn.close()
    return root


def test_a_version_1_store_is_migrated_and_its_rows_checked(tmp_path):
    s = Store.open(v1_store(tmp_path / "v1", 0.47), create=False)
    try:
        (version,) = s.conn.execute("SELECT value FROM meta WHERE "
                                    "key='schema_version'").fetchone()
        assert int(version) == SCHEMA_VERSION
        assert [m["value"] for m in s.metrics()] == [0.47]
    finally:
        s.close()
    # a value changed while the store had no digests is sealed as found, and still caught
    s = Store.open(v1_store(tmp_path / "v1-flipped", 0.235), create=False)
    try:
        with pytest.raises(StoreError, match="outcomes"):
            s.metrics()
    finally:
        s.close()


def test_a_schema_without_a_migration_is_refused_with_one_line(tmp_path):
    root = v1_store(tmp_path / "v0", 0.47)
    raw(root, "UPDATE meta SET value='0' WHERE key='schema_version'")
    with pytest.raises(StoreError) as info:
        Store.open(root)
    assert "cannot migrate" in str(info.value) and "\n" not in str(info.value)


# -- what is refused at write ------------------------------------------------------------------

def test_a_record_that_disagrees_with_its_own_outcomes_is_not_stored(tmp_path):
    m = accuracy_measurement("accuracy", torch.tensor([True, False, True, True]))
    s = Store.open(tmp_path / "s")
    try:
        with pytest.raises(ValueError, match="outcomes"):
            s.record_cell(key="k", kind="eval", spec={}, labels={}, run_id="r", started=0.0,
                          seconds=1.0, device="cpu", provenance={}, result={},
                          measurements=[Measurement("accuracy", 0.5, m.n, m.ci_low, m.ci_high,
                                                    extra=m.extra)], artifacts={})
        assert s.cells() == []
    finally:
        s.close()


# -- a plugin that edits the store from fit ----------------------------------------------------

class StoreEditor(Defense):
    """Trains plainly, but first rewrites another defense's stored headline in results.sqlite
    (what any plugin can do: it runs with the user's privileges)."""

    name = "test-store-editor"
    paper = "a hostile fixture"
    target = None  # the store's database path, set by the test

    def fit(self, session) -> None:
        conn = sqlite3.connect(type(self).target, timeout=30)
        conn.execute("UPDATE metrics SET value=0.99 WHERE metric='worst_case_accuracy'")
        conn.commit()
        conn.close()
        session.train()


def test_a_plugin_that_edits_the_store_from_fit_is_caught(store, tmp_path, monkeypatch):
    import types

    import advarena.cli.run_command as run_command
    import advarena.plugins as plugins
    from advarena.hookimpl import hookimpl
    from advarena.plugins import Registry, make_plugin_manager

    before = values(store)
    # A module (hashable, as pluggy's plugin set needs), registered as an object.
    fixture = types.ModuleType("store_editor")
    fixture.advarena_register_defenses = hookimpl(lambda: [StoreEditor])
    registry = Registry(make_plugin_manager([fixture]))
    monkeypatch.setattr(run_command, "default_registry", lambda: registry)
    monkeypatch.setattr(plugins, "default_registry", lambda: registry)
    monkeypatch.setattr(StoreEditor, "target", str(store / "results.sqlite"))
    code, out, err = invoke(["run", "--suite", TINY, "--store", store, "--defense",
                             StoreEditor.name, "--protocol", "white-box", "--quiet"])
    # The editor trains before the reference's stored evaluation is looked at: the edit is
    # found, reported, and the evaluation run again; the edited value is never served.
    assert code == 0, (out, err)
    text = " ".join(out.split())
    assert "warning" in text and "worst_case_accuracy' does not match its digest" in text, text
    reference = {b[0] for b in before}
    assert {v for v in values(store) if v[0] in reference} == set(before)
    assert 0.99 not in {v[4] for v in values(store)}
    code, out, err = invoke(["leaderboard", "--store", store, "--out", tmp_path / "lb",
                             "--plots", "none"])
    assert code == 0, (out, err)
