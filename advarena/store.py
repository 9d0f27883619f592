"""The result store: one SQLite database (WAL, one transaction a cell) and content-addressed
``safetensors`` weight files beside it. Nothing is ever unpickled from disk.

Layout of a store directory::

    results.sqlite           runs, cells, metrics, artifacts
    weights/<sha256>.safetensors

Every metric row carries a SHA-256 digest of its fields as stored (and of its cell's key), and
every cell row one of its fields, its artifact hashes and its metric rows' digests; both are
checked whenever a cell or record is read, as is the agreement of an accuracy with its own
per-example outcomes and of every value with its interval. A mismatch is never served: the
driver of a run reports it (:attr:`Store.warnings`) and runs the cell again, a reading command
gets a :class:`StoreError`. The digests are not keyed: they catch damage and edits made without
advarena, not a forger who recomputes them (see docs/threat-model.md). A damaged database
(random bytes, a 0-byte file) is a :class:`StoreError` with one line saying what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .api.records import Measurement
from .errors import StoreError

# 2: digests on cells and metrics (version-1 stores are migrated: their rows are sealed as
# found, then checked for consistency like every other row).
SCHEMA_VERSION = 2
DEFAULT_STORE = Path(".advarena")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, started REAL, finished REAL, suite TEXT, argv TEXT,
    device TEXT, versions TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL, labels TEXT NOT NULL,
    status TEXT NOT NULL, run_id TEXT, started REAL, finished REAL, seconds REAL,
    device TEXT, provenance TEXT, result TEXT, error TEXT, digest TEXT);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY, cell_key TEXT NOT NULL REFERENCES cells(key),
    dataset TEXT, architecture TEXT, defense TEXT, params TEXT, seed INTEGER,
    protocol TEXT, attack TEXT, eps REAL, metric TEXT NOT NULL, value REAL NOT NULL,
    n INTEGER, ci_low REAL, ci_high REAL, extra TEXT, digest TEXT);
CREATE INDEX IF NOT EXISTS metrics_cell ON metrics(cell_key);
CREATE TABLE IF NOT EXISTS artifacts (
    cell_key TEXT NOT NULL REFERENCES cells(key), name TEXT NOT NULL, sha256 TEXT NOT NULL,
    bytes INTEGER, PRIMARY KEY (cell_key, name));
"""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise with safetensors; tensors are copied to contiguous CPU memory first (shared
    storage, as in tied weights, would otherwise be refused)."""
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _check_safetensors_header(data: bytes) -> None:
    """Refuse bytes that are not a safetensors file (an 8-byte little-endian header length
    and a JSON header), without deserialising any tensor."""
    ok = len(data) >= 8
    if ok:
        n = int.from_bytes(data[:8], "little")
        ok = 8 + n <= len(data)
        if ok:
            try:
                ok = isinstance(json.loads(data[8:8 + n]), dict)
            except ValueError:
                ok = False
    if not ok:
        raise StoreError("refusing to store weights that are not a safetensors file")


# The columns a row's digest covers, in order (everything but its id and the digest itself).
_CELL_COLS = ("key, kind, spec, labels, status, run_id, started, finished, seconds, device, "
              "provenance, result, error")
_METRIC_COLS = ("cell_key, dataset, architecture, defense, params, seed, protocol, attack, eps, "
                "metric, value, n, ci_low, ci_high, extra")
_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit


def _row_digest(table: str, values: Iterable[Any]) -> str:
    """SHA-256 of a row's values exactly as SQLite returns them (floats by ``repr``, so every
    bit counts), prefixed by the table so a row cannot pass for one of another table."""
    text = json.dumps([table, *values], separators=(",", ":"), default=repr)
    return sha256_bytes(text.encode())


def _cell_digest(row: tuple, artifacts: list, metric_digests: list) -> str:
    """A cell row's digest: its fields, its artifact rows and its metric rows' digests (so a
    metric row removed, added or moved from another cell is noticed too)."""
    return _row_digest("cells", [*row, sorted(map(list, artifacts)), metric_digests])


def _count_outcomes(packed: str) -> tuple[int, int]:
    """(examples, ones) of a packed outcome string (``advarena.evaluation._pack``)."""
    n_str, hexpart = packed.split(":", 1)
    n = int(n_str)
    return n, (bin(int(hexpart, 16)).count("1") if n else 0)


def inconsistency(metric: str, value: Any, n: Any, ci_low: Any, ci_high: Any,
                  extra: Any) -> str | None:
    """What is wrong with a record whose per-example ``outcomes`` (in ``extra``) disagree with
    its own value, count or interval, or None. ``outcomes`` means: one bit per example whose
    mean is ``value`` (what :func:`advarena.evaluation.accuracy_measurement` writes and
    ``advarena compare`` pairs on)."""
    packed = extra.get("outcomes") if isinstance(extra, dict) else None
    if packed is None:
        return None
    try:
        count, ones = _count_outcomes(packed)
    except (AttributeError, ValueError):
        return f"metric '{metric}' has unreadable per-example outcomes"
    if count != n or (count and value != ones / count):
        return (f"metric '{metric}' = {value!r} of {n} examples disagrees with its own "
                f"per-example outcomes ({ones} of {count})")
    if ci_low is not None and ci_high is not None and not ci_low <= value <= ci_high:
        return (f"metric '{metric}' = {value!r} lies outside its own interval "
                f"[{ci_low!r}, {ci_high!r}]")
    return None


def _damage(db: Path, exc: BaseException | str) -> StoreError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if len(reason) > 160:  # SQLite quotes the damaged text: enough of it to recognise
        reason = reason[:157] + "..."
    return StoreError(f"the store database {db} is damaged ({reason}); restore it from a "
                      f"backup, or move it away and run again to start a new store")


def _schema_version(db: Path) -> int | None:
    """The schema version recorded in an existing database (None: no advarena tables yet),
    read without writing to it. A file that is not a readable advarena database is refused."""
    try:
        size = db.stat().st_size
    except OSError as exc:
        raise StoreError(f"cannot read the store database {db} ({exc.strerror})") from None
    if size == 0:
        # SQLite would take a 0-byte file for a new, empty database and start over silently.
        raise StoreError(f"the store database {db} is empty (0 bytes): it was truncated or "
                         f"never written; restore it from a backup, or delete it (and the "
                         f"weights/ folder beside it) to start a new store")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                if tables:
                    raise StoreError(f"{db} is an SQLite database but not an advarena store "
                                     f"(no meta table); pass --store naming an advarena store")
                return None
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        finally:
            conn.close()
        return int(row[0]) if row else None
    except StoreError:
        raise
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise _damage(db, exc) from None


def _migrate_1(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: add the digest columns and seal the rows as found (version 1 had no
    digests, so an earlier change is caught only by the consistency checks)."""
    conn.execute("ALTER TABLE cells ADD COLUMN digest TEXT")
    conn.execute("ALTER TABLE metrics ADD COLUMN digest TEXT")
    for (key,) in conn.execute("SELECT key FROM cells").fetchall():
        _seal(conn, key)


def _seal(conn: sqlite3.Connection, key: str) -> None:
    """Write the digests of cell ``key`` and its metric rows, computed from the rows as stored."""
    digests = []
    for mid, *row in conn.execute(f"SELECT id, {_METRIC_COLS} FROM metrics WHERE cell_key=? "
                                  f"ORDER BY id", (key,)).fetchall():
        digests.append(_row_digest("metrics", row))
        conn.execute("UPDATE metrics SET digest=? WHERE id=?", (digests[-1], mid))
    row = conn.execute(f"SELECT {_CELL_COLS} FROM cells WHERE key=?", (key,)).fetchone()
    artifacts = conn.execute("SELECT name, sha256, bytes FROM artifacts WHERE cell_key=?",
                             (key,)).fetchall()
    conn.execute("UPDATE cells SET digest=? WHERE key=?",
                 (_cell_digest(row, artifacts, digests), key))


_MIGRATIONS = {1: _migrate_1}


class Store:
    """A store directory. Open it with :meth:`open`; every write is one transaction.

    ``warnings`` collects what a run should tell the user about the store (a damaged weight
    file or a cell whose rows fail their digests, each then run again); the store prints
    nothing."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn
        self.weights = root / "weights"
        self.db = root / "results.sqlite"
        self.warnings: list[str] = []

    @classmethod
    def open(cls, root: str | Path = DEFAULT_STORE, *, create: bool = True,
             readonly: bool = False) -> "Store":
        """Open (or create) the store at ``root``. ``readonly`` opens an existing store for
        reading only (executor workers: the driver alone writes)."""
        root = Path(root)
        db = root / "results.sqlite"
        if readonly:
            return cls._open_readonly(root, db)
        if root.exists() and not root.is_dir():
            raise StoreError(f"store path {root} is a file; pass --store DIR naming a directory")
        if not db.exists() and not create:
            raise StoreError(f"no advarena store at {root}; run 'advarena run' first or pass "
                             f"--store DIR")
        found = _schema_version(db) if db.exists() else None
        if found is not None and found > SCHEMA_VERSION:
            # Refused before anything is written: the newer store stays as it is.
            raise StoreError(f"the store at {root} was written by a newer advarena (schema "
                             f"{found}, this one reads {SCHEMA_VERSION}); upgrade advarena "
                             f"or pass another --store")
        if found is not None and found < SCHEMA_VERSION and not all(
                v in _MIGRATIONS for v in range(found, SCHEMA_VERSION)):
            raise StoreError(f"the store at {root} has schema {found}, which this advarena "
                             f"(schema {SCHEMA_VERSION}) cannot migrate; use the advarena that "
                             f"wrote it, or pass another --store")
        try:
            (root / "weights").mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            if found is not None and found < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for version in range(found, SCHEMA_VERSION):
                        _MIGRATIONS[version](conn)
                    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                                 (str(SCHEMA_VERSION),))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise _damage(db, exc) from None
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {root} ({exc}); pass --store DIR "
                             f"naming a writable directory") from None
        if problem != "ok":
            conn.close()
            raise _damage(db, problem)
        return cls(root, conn)

    @classmethod
    def _open_readonly(cls, root: Path, db: Path) -> "Store":
        if not db.is_file():
            raise StoreError(f"no advarena store at {root}; the workers read the driver's store "
                             f"and need its directory (a shared filesystem on a cluster)")
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30,
                                   isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("SELECT 1 FROM cells LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store at {root} ({exc})") from None
        return cls(root, conn)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def _reading(self):
        """Damage found while reading (SQLite's own errors, text that no longer parses) is one
        :class:`StoreError`, never a traceback."""
        try:
            yield
        except StoreError:
            raise
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError, IndexError,
                AttributeError) as exc:
            raise _damage(self.db, exc) from None

    # -- weights -----------------------------------------------------------------------------

    def put_tensors(self, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
        """Write a safetensors file named by its content hash; return (sha256, bytes)."""
        return self.put_bytes(tensors_to_bytes(tensors))

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store serialised safetensors bytes (as a worker returns them) under their content
        hash; return (sha256, bytes). A file already there is kept only if it verifies: a
        tampered or truncated one is replaced, so rebuilding a cell repairs its weights."""
        _check_safetensors_header(data)
        digest = sha256_bytes(data)
        path = self.weights / f"{digest}.safetensors"
        if not self.artifact_ok(digest):
            fd, tmp = tempfile.mkstemp(dir=self.weights, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)  # atomic: a killed run never leaves a half-written file
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return digest, len(data)

    def get_tensors(self, digest: str) -> dict[str, torch.Tensor]:
        """Read a weight file, verifying its hash first; never unpickles."""
        path = self.weights / f"{digest}.safetensors"
        try:
            data = path.read_bytes()
        except OSError:
            raise StoreError(f"weight file {path} is missing") from None
        if sha256_bytes(data) != digest:
            raise StoreError(f"weight file {path} does not match its hash (tampered or "
                             f"truncated)")
        return st_load(data)

    def artifact_ok(self, digest: str) -> bool:
        return self._artifact_problem(digest) is None

    def _artifact_problem(self, digest: str) -> str | None:
        path = self.weights / f"{digest}.safetensors"
        try:
            data = path.read_bytes()
        except OSError:
            return f"weight file {path} is missing"
        if sha256_bytes(data) != digest:
            return f"weight file {path} does not match its hash (changed or truncated)"
        return None

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, run_id: str, suite: dict, argv: list[str], device: str,
                  versions: dict) -> None:
        with self._writing():
            self.conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                              (run_id, time.time(), None, json.dumps(suite), json.dumps(argv),
                               device, json.dumps(versions), "running"))

    def finish_run(self, run_id: str, status: str) -> None:
        with self._writing():
            self.conn.execute("UPDATE runs SET finished=?, status=? WHERE id=?",
                              (time.time(), status, run_id))

    # -- checks ------------------------------------------------------------------------------

    def _chunks(self, keys: Iterable[str] | None):
        """``(where clause, args)`` pieces covering ``keys`` (None: every cell)."""
        if keys is None:
            yield "", ()
            return
        keys = sorted(set(keys))
        for i in range(0, len(keys), _CHUNK):
            part = keys[i:i + _CHUNK]
            yield f" IN ({','.join('?' * len(part))})", tuple(part)

    def check_cells(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """``{key: what is wrong}`` for every cell of ``keys`` (None: all) whose rows fail
        their digests or whose records disagree with their own outcomes; empty when all is
        well."""
        bad: dict[str, str] = {}
        with self._reading():
            for where, args in self._chunks(keys):
                cond = (lambda col: f" WHERE {col}{where}") if where else (lambda col: "")
                arts: dict[str, list] = {}
                for k, *a in self.conn.execute(
                        "SELECT cell_key, name, sha256, bytes FROM artifacts"
                        + cond("cell_key"), args):
                    arts.setdefault(k, []).append(a)
                digests: dict[str, list] = {}
                for row in self.conn.execute(f"SELECT {_METRIC_COLS}, digest FROM metrics"
                                             + cond("cell_key") + " ORDER BY id", args):
                    *values, stored = row
                    key = values[0]
                    digests.setdefault(key, []).append(stored)
                    if _row_digest("metrics", values) != stored:
                        bad.setdefault(key, f"metric '{values[9]}' does not match its digest")
                        continue
                    try:
                        extra = json.loads(values[14]) if values[14] else {}
                    except ValueError:
                        extra = None
                    problem = inconsistency(values[9], values[10], values[11], values[12],
                                            values[13], extra)
                    if problem:
                        bad.setdefault(key, problem)
                for row in self.conn.execute(f"SELECT {_CELL_COLS}, digest FROM cells"
                                             + cond("key"), args):
                    *values, stored = row
                    key = values[0]
                    if _cell_digest(values, arts.get(key, []), digests.get(key, [])) != stored:
                        bad[key] = "its row does not match its digest"
        return bad

    def _refuse(self, bad: dict[str, str]) -> None:
        if not bad:
            return
        key = sorted(bad)[0]
        raise StoreError(
            f"the store at {self.root} holds {len(bad)} cell(s) whose stored records fail "
            f"their checks (e.g. cell {key[:12]}: {bad[key]}): they were changed outside "
            f"advarena and are not served; run 'advarena run' again with the suite that made "
            f"them to recompute them, or pass another --store")

    # -- cells -------------------------------------------------------------------------------

    def done_cell(self, key: str) -> dict | None:
        """The stored result of a finished cell whose rows pass their checks and whose
        artifacts are intact, else None. A stored cell that fails a check adds a line to
        :attr:`warnings` (the caller then runs it again)."""
        with self._reading():
            row = self.conn.execute("SELECT result, kind FROM cells WHERE key=? AND "
                                    "status='done'", (key,)).fetchone()
            if row is None:
                return None
            what = f"stored {row[1]} cell {key[:12]}"
            problem = self.check_cells([key]).get(key)
            if problem:
                self.warnings.append(f"{what}: {problem} (changed outside advarena); running "
                                     f"it again")
                return None
            for name, digest in self.conn.execute("SELECT name, sha256 FROM artifacts WHERE "
                                                  "cell_key=?", (key,)).fetchall():
                problem = self._artifact_problem(digest)
                if problem:
                    self.warnings.append(f"{what}: {problem}; rebuilding it")
                    return None
            return json.loads(row[0])

    def cell(self, key: str) -> dict[str, Any] | None:
        rows = self.cells(key=key)
        return rows[0] if rows else None

    def artifacts(self, key: str) -> dict[str, str]:
        """Artifact name -> weight file hash of a cell whose rows pass their checks."""
        self._refuse(self.check_cells([key]))
        with self._reading():
            return dict(self.conn.execute("SELECT name, sha256 FROM artifacts WHERE "
                                          "cell_key=?", (key,)).fetchall())

    def record_cell(self, *, key: str, kind: str, spec: dict, labels: dict, run_id: str,
                    started: float, seconds: float, device: str, provenance: dict,
                    result: dict, measurements: Iterable[Measurement],
                    artifacts: dict[str, tuple[str, int]]) -> None:
        """Store a finished cell, its metrics and artifact hashes in one transaction, replacing
        any earlier row of the same key (a failed attempt, or one whose files were damaged),
        and seal them with their digests. A record whose per-example outcomes disagree with
        its value is refused (``ValueError``): it could never be read back."""
        measurements = list(measurements)
        for m in measurements:
            problem = inconsistency(m.metric, m.value, m.n, m.ci_low, m.ci_high, m.extra)
            if problem:
                raise ValueError(problem)
        rows = [(key, labels.get("dataset"), labels.get("architecture"), labels.get("defense"),
                 json.dumps(labels.get("params", {}), sort_keys=True), labels.get("seed"),
                 labels.get("protocol"), m.attack, m.eps, m.metric, m.value, m.n, m.ci_low,
                 m.ci_high, json.dumps(m.extra, sort_keys=True)) for m in measurements]
        with self._writing(), self._transaction():
            self._delete_cell(key)
            self.conn.execute(
                f"INSERT INTO cells ({_CELL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, kind, json.dumps(spec, sort_keys=True), json.dumps(labels, sort_keys=True),
                 "done", run_id, started, started + seconds, seconds, device,
                 json.dumps(provenance, sort_keys=True), json.dumps(result, sort_keys=True), None))
            self.conn.executemany(
                f"INSERT INTO metrics ({_METRIC_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows)
            self.conn.executemany("INSERT INTO artifacts VALUES (?,?,?,?)",
                                  [(key, name, d, b) for name, (d, b) in artifacts.items()])
            _seal(self.conn, key)

    def record_failure(self, *, key: str, kind: str, spec: dict, labels: dict, run_id: str,
                       started: float, seconds: float, device: str, error: str) -> None:
        with self._writing(), self._transaction():
            self._delete_cell(key)
            self.conn.execute(
                f"INSERT INTO cells ({_CELL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, kind, json.dumps(spec, sort_keys=True), json.dumps(labels, sort_keys=True),
                 "failed", run_id, started, started + seconds, seconds, device, None, None,
                 error))
            _seal(self.conn, key)

    def _delete_cell(self, key: str) -> None:
        self.conn.execute("DELETE FROM metrics WHERE cell_key=?", (key,))
        self.conn.execute("DELETE FROM artifacts WHERE cell_key=?", (key,))
        self.conn.execute("DELETE FROM cells WHERE key=?", (key,))

    @contextlib.contextmanager
    def _writing(self):
        """A damaged database found while writing is one :class:`StoreError`; errors in what
        the caller passed (a value SQLite cannot bind) stay what they are."""
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.DatabaseError as exc:
            raise _damage(self.db, exc) from None

    def _transaction(self):
        conn = self.conn

        class _Tx:
            def __enter__(self):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                conn.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    # -- reading -----------------------------------------------------------------------------

    def cells(self, kind: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Cell rows (of ``kind``, or the one of ``key``); a store holding a row that fails its
        checks is refused (:class:`StoreError`), never served."""
        sql = "SELECT key, kind, spec, labels, status, run_id, seconds, device, provenance, " \
              "result, error FROM cells"
        clauses, args = [], []
        if kind:
            clauses.append("kind=?")
            args.append(kind)
        if key:
            clauses.append("key=?")
            args.append(key)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        self._refuse(self.check_cells([key] if key else None))
        out = []
        with self._reading():
            for row in self.conn.execute(sql, tuple(args)):
                key_, kind_, spec, labels, status, run_id, seconds, device, prov, result, err = \
                    row
                out.append({"key": key_, "kind": kind_, "spec": json.loads(spec),
                            "labels": json.loads(labels), "status": status, "run_id": run_id,
                            "seconds": seconds, "device": device,
                            "provenance": json.loads(prov) if prov else {},
                            "result": json.loads(result) if result else None, "error": err})
        return out

    def metrics(self, cell_keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Every metric record of finished cells (or of ``cell_keys``), flat, with
        provenance; refused (:class:`StoreError`) if any of those cells fails its checks."""
        sql = ("SELECT m.dataset, m.architecture, m.defense, m.params, m.seed, m.protocol, "
               "m.attack, m.eps, m.metric, m.value, m.n, m.ci_low, m.ci_high, m.extra, "
               "m.cell_key, c.device, c.provenance, c.run_id FROM metrics m "
               "JOIN cells c ON c.key = m.cell_key WHERE c.status='done'")
        args: tuple = ()
        if cell_keys is not None:
            sql += f" AND m.cell_key IN ({','.join('?' * len(cell_keys))})"
            args = tuple(cell_keys)
        self._refuse(self.check_cells(cell_keys))
        out = []
        with self._reading():
            for r in self.conn.execute(sql + " ORDER BY m.id", args):
                out.append({"dataset": r[0], "architecture": r[1], "defense": r[2],
                            "params": json.loads(r[3]) if r[3] else {}, "seed": r[4],
                            "protocol": r[5], "attack": r[6], "eps": r[7], "metric": r[8],
                            "value": r[9], "n": r[10], "ci_low": r[11], "ci_high": r[12],
                            "extra": json.loads(r[13]) if r[13] else {}, "cell_key": r[14],
                            "device": r[15],
                            "provenance": json.loads(r[16]) if r[16] else {},
                            "run_id": r[17]})
        return out

    def failures(self) -> list[dict[str, Any]]:
        """Failed cells, newest first: ``kind``, ``labels``, ``error`` (the one-line reason,
        which names the plugin), ``detail`` (the full text, traceback included), ``run_id``,
        ``finished`` and ``key``. A cell that later succeeds replaces its failed row."""
        self._refuse(self.check_cells())
        with self._reading():
            rows = self.conn.execute("SELECT key, kind, labels, error, run_id, finished FROM "
                                     "cells WHERE status='failed' ORDER BY finished "
                                     "DESC").fetchall()
            return [{"key": k, "kind": kind, "labels": json.loads(labels),
                     "error": (err or "").split("\n", 1)[0], "detail": err or "",
                     "run_id": rid, "finished": fin}
                    for k, kind, labels, err, rid, fin in rows]

    def runs(self) -> list[dict[str, Any]]:
        with self._reading():
            rows = self.conn.execute("SELECT id, started, finished, suite, argv, device, "
                                     "versions, status FROM runs ORDER BY started").fetchall()
            return [{"id": r[0], "started": r[1], "finished": r[2], "suite": json.loads(r[3]),
                     "argv": json.loads(r[4]), "device": r[5], "versions": json.loads(r[6]),
                     "status": r[7]} for r in rows]
