"""The result store: one SQLite database (WAL, one transaction a cell) and content-addressed
``safetensors`` weight files beside it. Nothing is ever unpickled from disk.

Layout of a store directory::

    results.sqlite           runs, cells, metrics, artifacts
    weights/<sha256>.safetensors
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

SCHEMA_VERSION = 1
DEFAULT_STORE = Path(".advarena")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, started REAL, finished REAL, suite TEXT, argv TEXT,
    device TEXT, versions TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL, labels TEXT NOT NULL,
    status TEXT NOT NULL, run_id TEXT, started REAL, finished REAL, seconds REAL,
    device TEXT, provenance TEXT, result TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY, cell_key TEXT NOT NULL REFERENCES cells(key),
    dataset TEXT, architecture TEXT, defense TEXT, params TEXT, seed INTEGER,
    protocol TEXT, attack TEXT, eps REAL, metric TEXT NOT NULL, value REAL NOT NULL,
    n INTEGER, ci_low REAL, ci_high REAL, extra TEXT);
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


def _schema_version(db: Path) -> int | None:
    """The schema version recorded in an existing database, read without writing to it."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


class Store:
    """A store directory. Open it with :meth:`open`; every write is one transaction."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn
        self.weights = root / "weights"

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
        if db.exists():
            found = _schema_version(db)
            if found is not None and found > SCHEMA_VERSION:
                # Refused before anything is written: the newer store stays as it is.
                raise StoreError(f"the store at {root} was written by a newer advarena (schema "
                                 f"{found}, this one reads {SCHEMA_VERSION}); upgrade advarena "
                                 f"or pass another --store")
        try:
            (root / "weights").mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {root} ({exc}); pass --store DIR "
                             f"naming a writable directory") from None
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
        path = self.weights / f"{digest}.safetensors"
        try:
            return sha256_bytes(path.read_bytes()) == digest
        except OSError:
            return False

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, run_id: str, suite: dict, argv: list[str], device: str,
                  versions: dict) -> None:
        self.conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                          (run_id, time.time(), None, json.dumps(suite), json.dumps(argv),
                           device, json.dumps(versions), "running"))

    def finish_run(self, run_id: str, status: str) -> None:
        self.conn.execute("UPDATE runs SET finished=?, status=? WHERE id=?",
                          (time.time(), status, run_id))

    # -- cells -------------------------------------------------------------------------------

    def done_cell(self, key: str) -> dict | None:
        """The stored result of a finished cell whose artifacts are intact, else None."""
        row = self.conn.execute("SELECT result FROM cells WHERE key=? AND status='done'",
                                (key,)).fetchone()
        if row is None:
            return None
        for (digest,) in self.conn.execute("SELECT sha256 FROM artifacts WHERE cell_key=?",
                                           (key,)):
            if not self.artifact_ok(digest):
                return None
        return json.loads(row[0])

    def cell(self, key: str) -> dict[str, Any] | None:
        rows = self.cells(key=key)
        return rows[0] if rows else None

    def artifacts(self, key: str) -> dict[str, str]:
        return dict(self.conn.execute("SELECT name, sha256 FROM artifacts WHERE cell_key=?",
                                      (key,)).fetchall())

    def record_cell(self, *, key: str, kind: str, spec: dict, labels: dict, run_id: str,
                    started: float, seconds: float, device: str, provenance: dict,
                    result: dict, measurements: Iterable[Measurement],
                    artifacts: dict[str, tuple[str, int]]) -> None:
        """Store a finished cell, its metrics and artifact hashes in one transaction, replacing
        any earlier row of the same key (a failed attempt, or one whose files were damaged)."""
        rows = [(key, labels.get("dataset"), labels.get("architecture"), labels.get("defense"),
                 json.dumps(labels.get("params", {}), sort_keys=True), labels.get("seed"),
                 labels.get("protocol"), m.attack, m.eps, m.metric, m.value, m.n, m.ci_low,
                 m.ci_high, json.dumps(m.extra, sort_keys=True)) for m in measurements]
        with self._transaction():
            self._delete_cell(key)
            self.conn.execute(
                "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, kind, json.dumps(spec, sort_keys=True), json.dumps(labels, sort_keys=True),
                 "done", run_id, started, started + seconds, seconds, device,
                 json.dumps(provenance, sort_keys=True), json.dumps(result, sort_keys=True), None))
            self.conn.executemany(
                "INSERT INTO metrics (cell_key, dataset, architecture, defense, params, seed, "
                "protocol, attack, eps, metric, value, n, ci_low, ci_high, extra) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.conn.executemany("INSERT INTO artifacts VALUES (?,?,?,?)",
                                  [(key, name, d, b) for name, (d, b) in artifacts.items()])

    def record_failure(self, *, key: str, kind: str, spec: dict, labels: dict, run_id: str,
                       started: float, seconds: float, device: str, error: str) -> None:
        with self._transaction():
            self._delete_cell(key)
            self.conn.execute(
                "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, kind, json.dumps(spec, sort_keys=True), json.dumps(labels, sort_keys=True),
                 "failed", run_id, started, started + seconds, seconds, device, None, None,
                 error))

    def _delete_cell(self, key: str) -> None:
        self.conn.execute("DELETE FROM metrics WHERE cell_key=?", (key,))
        self.conn.execute("DELETE FROM artifacts WHERE cell_key=?", (key,))
        self.conn.execute("DELETE FROM cells WHERE key=?", (key,))

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
        out = []
        for row in self.conn.execute(sql, tuple(args)):
            key, kind_, spec, labels, status, run_id, seconds, device, prov, result, err = row
            out.append({"key": key, "kind": kind_, "spec": json.loads(spec),
                        "labels": json.loads(labels), "status": status, "run_id": run_id,
                        "seconds": seconds, "device": device,
                        "provenance": json.loads(prov) if prov else {},
                        "result": json.loads(result) if result else None, "error": err})
        return out

    def metrics(self, cell_keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Every metric record of finished cells (or of ``cell_keys``), flat, with
        provenance."""
        sql = ("SELECT m.dataset, m.architecture, m.defense, m.params, m.seed, m.protocol, "
               "m.attack, m.eps, m.metric, m.value, m.n, m.ci_low, m.ci_high, m.extra, "
               "m.cell_key, c.device, c.provenance, c.run_id FROM metrics m "
               "JOIN cells c ON c.key = m.cell_key WHERE c.status='done'")
        args: tuple = ()
        if cell_keys is not None:
            sql += f" AND m.cell_key IN ({','.join('?' * len(cell_keys))})"
            args = tuple(cell_keys)
        out = []
        for r in self.conn.execute(sql + " ORDER BY m.id", args):
            out.append({"dataset": r[0], "architecture": r[1], "defense": r[2],
                        "params": json.loads(r[3]) if r[3] else {}, "seed": r[4],
                        "protocol": r[5], "attack": r[6], "eps": r[7], "metric": r[8],
                        "value": r[9], "n": r[10], "ci_low": r[11], "ci_high": r[12],
                        "extra": json.loads(r[13]) if r[13] else {}, "cell_key": r[14],
                        "device": r[15], "provenance": json.loads(r[16]) if r[16] else {},
                        "run_id": r[17]})
        return out

    def failures(self) -> list[dict[str, Any]]:
        """Failed cells, newest first: ``kind``, ``labels``, ``error`` (the one-line reason,
        which names the plugin), ``detail`` (the full text, traceback included), ``run_id``,
        ``finished`` and ``key``. A cell that later succeeds replaces its failed row."""
        rows = self.conn.execute("SELECT key, kind, labels, error, run_id, finished FROM cells "
                                 "WHERE status='failed' ORDER BY finished DESC").fetchall()
        return [{"key": k, "kind": kind, "labels": json.loads(labels),
                 "error": (err or "").split("\n", 1)[0], "detail": err or "", "run_id": rid,
                 "finished": fin} for k, kind, labels, err, rid, fin in rows]

    def runs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT id, started, finished, suite, argv, device, versions, "
                                 "status FROM runs ORDER BY started").fetchall()
        return [{"id": r[0], "started": r[1], "finished": r[2], "suite": json.loads(r[3]),
                 "argv": json.loads(r[4]), "device": r[5], "versions": json.loads(r[6]),
                 "status": r[7]} for r in rows]
