"""Bad input: every wrong command ends in one clear line on stderr and exit status 2, before any
work, with nothing stored lost.

Table-driven: each case builds its arguments against a populated store (cells, metric records, a
run, a weight file); the store is snapshotted before and after. Read-only directories are made
with ``chmod 0o500``; where that does not stop writes (tests running as root), those cases are
skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advarena.store import SCHEMA_VERSION

TINY = Path(__file__).parent / "suites" / "tiny.toml"
CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")


# -- a populated store and its snapshot ------------------------------------------------------

def snapshot(store: Path):
    """Everything a failed command must leave alone: rows of every table, weight files and
    their bytes."""
    if not (store / "results.sqlite").exists():
        return None
    db = store / "results.sqlite"
    # A closed store has no WAL left; reading it as immutable needs no -shm file (which a
    # read-only directory could not hold).
    immutable = "" if Path(f"{db}-wal").exists() else "&immutable=1"
    conn = sqlite3.connect(f"file:{db}?mode=ro{immutable}", uri=True)
    try:
        tables = {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall()))
                  for t in ("meta", "runs", "cells", "metrics", "artifacts")}
    finally:
        conn.close()
    weights = {p.name: p.read_bytes() for p in sorted((store / "weights").iterdir())}
    return tables, weights


@pytest.fixture
def populated(tmp_path) -> Path:
    from advarena.api.records import Measurement
    from advarena.store import Store

    root = tmp_path / "populated"
    store = Store.open(root)
    try:
        store.start_run("r0", {"name": "hand-made"}, [], "cpu", {})
        weights = store.put_tensors({"w": torch.arange(6.0).reshape(2, 3)})
        labels = {"dataset": "digits", "architecture": "cnn-001", "defense": "none",
                  "params": {}, "seed": 0}
        store.record_cell(key="train-0", kind="train", spec={}, run_id="r0",
                          labels={**labels, "role": "reference"}, started=0.0, seconds=1.0,
                          device="cpu", provenance={}, result={}, measurements=[],
                          artifacts={"model": weights})
        store.record_cell(key="eval-0", kind="eval", spec={}, run_id="r0",
                          labels={**labels, "protocol": "white-box"}, started=0.0, seconds=1.0,
                          device="cpu", provenance={}, result={},
                          measurements=[Measurement("accuracy", 0.9, 100, 0.8, 0.95),
                                        Measurement("worst_case_accuracy", 0.5, 100, 0.4, 0.6,
                                                    "worst-case", 0.1, {"headline": True})],
                          artifacts={})
        store.finish_run("r0", "complete")
    finally:
        store.close()
    return root


# -- builders ---------------------------------------------------------------------------------

def tiny_args(store: Path, *extra) -> list:
    return ["run", "--suite", TINY, "--store", store, "--defense", "none", "--quiet", *extra]


def bad_suite(t: Path, text: str) -> Path:
    path = t / "bad.toml"
    path.write_text(text)
    return path


def read_only_dir(t: Path, name: str = "ro") -> Path:
    path = t / name
    path.mkdir()
    path.chmod(0o500)
    if os.access(path, os.W_OK):
        pytest.skip("chmod 0o500 does not stop this user from writing (running as root)")
    return path


def unreadable_file(t: Path) -> Path:
    path = t / "secret.toml"
    path.write_text(TINY.read_text())
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("chmod 0 does not stop this user from reading (running as root)")
    return path


def newer_store(t: Path, s: Path) -> Path:
    store = t / "newer"
    shutil.copytree(s, store)
    conn = sqlite3.connect(store / "results.sqlite")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    return store


def read_only_store(t: Path, s: Path) -> Path:
    store = t / "ro-store"
    shutil.copytree(s, store)
    for p in (store, store / "weights"):
        p.chmod(0o500)
    if os.access(store, os.W_OK):
        pytest.skip("chmod 0o500 does not stop this user from writing (running as root)")
    return store


# id, builder (tmp_path, populated store) -> (args, store to watch), what the line must say
CASES = [
    ("unknown-defense", lambda t, s: (tiny_args(s, "--defense", "gda-brelo"), s),
     "unknown defense 'gda-brelo'"),
    ("unknown-attack-in-suite", lambda t, s: (["run", "--suite", bad_suite(t, re.sub(
        r'attacks = \["fgsm", "pgd"\]', 'attacks = ["fgsm", "pgd-typo"]', TINY.read_text())),
        "--store", s], s), "unknown attack 'pgd-typo'"),
    ("unknown-protocol-in-suite", lambda t, s: (["run", "--suite", bad_suite(
        t, TINY.read_text() + "\n[protocols.whitebox]\n"), "--store", s], s),
     "unknown protocol 'whitebox'"),
    ("negative-eps", lambda t, s: (["run", "--suite", bad_suite(t, re.sub(
        r"(?m)^eps = .*$", "eps = [-0.1, 0.1]", TINY.read_text())), "--store", s], s), "eps"),
    ("eps-not-a-number", lambda t, s: (["run", "--suite", bad_suite(t, re.sub(
        r"(?m)^eps = .*$", 'eps = ["big"]', TINY.read_text())), "--store", s], s), "eps"),
    ("suite-not-utf8", lambda t, s: (["run", "--suite", _binary(t), "--store", s], s),
     "UTF-8"),
    ("suite-unreadable", lambda t, s: (["run", "--suite", unreadable_file(t), "--store", s], s),
     "cannot read suite file"),
    ("suite-missing", lambda t, s: (["run", "--suite", t / "missing.toml", "--store", s], s),
     "missing.toml"),
    ("missing-data-dir", lambda t, s: (tiny_args(s, "--dataset", "mnist", "--data-dir",
                                                 t / "no-data"), s), "no-data"),
    ("newer-schema-store", lambda t, s: (tiny_args(st := newer_store(t, s)), st), "newer"),
    ("read-only-store", lambda t, s: (tiny_args(st := read_only_store(t, s)), st),
     "read-only"),
    ("output-in-read-only-dir", lambda t, s: (tiny_args(s, "--output",
                                                        read_only_dir(t) / "r.json"), s),
     "not writable"),
    ("output-below-read-only-dir", lambda t, s: (tiny_args(s, "--output", read_only_dir(t) /
                                                           "sub" / "r.json"), s),
     "not writable"),
    ("leaderboard-out-read-only", lambda t, s: (["leaderboard", "--store", s, "--out",
                                                 read_only_dir(t)], s),
     "cannot write leaderboards"),
    ("leaderboard-out-below-read-only", lambda t, s: (["leaderboard", "--store", s, "--out",
                                                       read_only_dir(t) / "lb"], s),
     "cannot write leaderboards"),
    ("address-without-ray", lambda t, s: (tiny_args(s, "--address", "auto"), s),
     "--executor ray"),
    ("cell-timeout-negative", lambda t, s: (tiny_args(s, "--cell-timeout", "-5"), s),
     "--cell-timeout"),
    ("cell-timeout-in-suite", lambda t, s: (["run", "--suite", bad_suite(
        t, TINY.read_text().replace("[eval]\n", "[eval]\ncell_timeout = -1\n")), "--store",
        s], s), "cell_timeout"),
    ("unknown-executor", lambda t, s: (tiny_args(s, "--executor", "dask"), s), "dask"),
    ("amp-unknown", lambda t, s: (tiny_args(s, "--amp", "fp8"), s), "fp8"),
    ("amp-in-suite", lambda t, s: (["run", "--suite", bad_suite(
        t, TINY.read_text().replace("[train]\n", '[train]\namp = "fp8"\n')), "--store", s], s),
     "amp"),
]


# Suite values validated at load (issue 12): counts, finite numbers, seeds torch accepts.
def sub(pattern: str, repl: str):
    return lambda t, s: (["run", "--suite", bad_suite(t, re.sub(pattern, repl, TINY.read_text())),
                          "--store", s], s)


CASES += [
    ("n-examples-negative", sub(r"(?m)^n_examples = .*$", "n_examples = -5"), "n_examples"),
    ("n-examples-not-integer", sub(r"(?m)^n_examples = .*$", "n_examples = 2.5"),
     "n_examples"),
    ("eval-batch-size-text", sub(r"(?m)^batch_size = 100$", 'batch_size = "100"'),
     "batch_size"),
    ("eps-infinite", sub(r"(?m)^eps = .*$", "eps = [inf, 0.1]"), "finite"),
    ("eps-nan", sub(r"(?m)^eps = .*$", "eps = [nan]"), "finite"),
    ("lr-infinite", sub(r"(?m)^lr = .*$", "lr = inf"), "finite"),
    ("seed-too-large", sub(r"(?m)^seeds = .*$", f"seeds = [{2**70}]"), "seed"),
    ("seed-negative", sub(r"(?m)^seeds = .*$", "seeds = [-1]"), "seed"),
    ("seed-option-too-large", lambda t, s: (tiny_args(s, "--seed", str(2**70)), s), "--seed"),
    ("store-0-bytes", lambda t, s: (tiny_args(zero_byte_store(t)), s), "0 bytes"),
    ("store-not-a-database", lambda t, s: (tiny_args(garbage_store(t)), s), "damaged"),
    ("store-schema-without-migration", lambda t, s: (tiny_args(st := older_store(t, s, 0)), st),
     "cannot migrate"),
    ("leaderboard-store-0-bytes", lambda t, s: (["leaderboard", "--store", zero_byte_store(t),
                                                 "--out", t / "lb"], s), "0 bytes"),
]


def zero_byte_store(t: Path) -> Path:
    store = t / "zero"
    (store / "weights").mkdir(parents=True)
    (store / "results.sqlite").write_bytes(b"")
    return store


def garbage_store(t: Path) -> Path:
    store = t / "garbage"
    (store / "weights").mkdir(parents=True)
    (store / "results.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    return store


def older_store(t: Path, s: Path, version: int) -> Path:
    store = t / "older"
    shutil.copytree(s, store)
    conn = sqlite3.connect(store / "results.sqlite")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    conn.commit()
    conn.close()
    return store


def _binary(t: Path) -> Path:
    path = t / "binary.toml"
    path.write_bytes(b"name = \"\xff\xfe\x00bad\"\n")
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
    return code, out, err


def _listing(root: Path) -> list[Path]:
    """Every path under ``root`` but SQLite's own -wal/-shm companions (reading a WAL
    database may create them; they hold nothing)."""
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if not p.name.endswith(("-wal", "-shm")))


def _restore_modes(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)


@pytest.mark.parametrize("builder, needle", [pytest.param(b, n, id=i) for i, b, n in CASES])
def test_bad_input_is_one_line_exit_2_nothing_lost(builder, needle, tmp_path, populated,
                                                   capsys):
    work = tmp_path / "work"
    work.mkdir()
    try:
        args, watched = builder(work, populated)
        before, before_populated = snapshot(watched), snapshot(populated)
        listing = _listing(tmp_path)
        code, out, err = invoke(args, capsys)
        assert code == 2, (out, err)
        assert "Traceback" not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("error: ")
        assert needle in lines[0], lines[0]
        assert snapshot(watched) == before
        assert snapshot(populated) == before_populated
        # nothing was created: no store, no leaderboard, no export, no directory
        assert _listing(tmp_path) == listing
    finally:
        _restore_modes(tmp_path)


def test_bad_input_through_the_console_script(tmp_path, populated):
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    before = snapshot(populated)
    proc = subprocess.run([str(CONSOLE_SCRIPT), *map(str, tiny_args(
        populated, "--suite", _binary(tmp_path)))], capture_output=True, text=True,
        timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "UTF-8" in lines[0], proc.stderr
    assert snapshot(populated) == before


def test_ray_executor_without_ray_is_one_line_exit_2(tmp_path, populated, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    before = snapshot(populated)
    code, out, err = invoke(tiny_args(populated, "--executor", "ray"), capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'advarena[ray]'" in lines[0], err
    assert snapshot(populated) == before


def test_a_non_finite_plugin_parameter_is_refused_naming_it():
    import advarena
    from advarena.errors import ParameterError

    for bad in (float("inf"), float("nan"), "inf"):
        with pytest.raises(ParameterError, match="fgsm: parameter 'eps' must be a finite"):
            advarena.attack("fgsm", eps=bad)
