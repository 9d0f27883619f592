"""Flat metric-record exports (``advarena run --output``), readable by ``advarena compare``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..api.records import EXPORT_KEYS
from ..errors import AdvarenaError
from ..store import Store

EXPORT_FORMAT = "advarena-records/1"


def records(store: Store) -> list[dict[str, Any]]:
    """Every stored metric record as a flat dict: the export keys first (numbers as numbers,
    ``None`` where a field does not apply), then provenance."""
    out = []
    for m in store.metrics():
        rec = {k: m[k] for k in EXPORT_KEYS}
        rec.update({"extra": m["extra"], "cell_key": m["cell_key"], "device": m["device"],
                    "run_id": m["run_id"], "provenance": m["provenance"]})
        out.append(rec)
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def write_records(path: str | Path, recs: list[dict[str, Any]]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(_clean(recs), indent=1, sort_keys=False))
        tmp.replace(path)
    except OSError as exc:
        raise AdvarenaError(f"cannot write {path} ({exc.strerror}); pass --output with a "
                            f"writable path") from None
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise AdvarenaError(f"cannot read {path} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise AdvarenaError(f"{path} is not a JSON export of advarena records ({exc.msg} at "
                            f"line {exc.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and "metric" in r
                                             for r in data):
        raise AdvarenaError(f"{path} is not a JSON list of advarena metric records")
    return data


# -- results as a table ----------------------------------------------------------------------

# Columns of :func:`results_frame` after the export keys.
RESULT_COLUMNS = ("norm", "headline", "external", "model_key", "weights_sha256",
                  "external_weights_sha256", "external_source_sha256", "external_source",
                  "cell_key", "run_id", "device", "advarena_version", "torch_version", "extra")
TABLE_FORMATS = ("csv", "json", "parquet")


def open_for_reading(path: str | Path) -> Store:
    """A store opened read-only, for the commands that only read (a published store is often
    on a read-only mount): missing, newer and damaged stores each get their own message."""
    from ..store import SCHEMA_VERSION, _schema_version

    root = Path(path)
    db = root / "results.sqlite"
    if not db.is_file():
        raise AdvarenaError(f"no advarena store at {root}; pass --store DIR naming a directory "
                            f"that holds results.sqlite (run 'advarena run' to make one)")
    found = _schema_version(db)
    if found is not None and found > SCHEMA_VERSION:
        raise AdvarenaError(f"the store at {root} was written by a newer advarena (schema "
                            f"{found}, this one reads {SCHEMA_VERSION}); upgrade advarena")
    if found is not None and found < SCHEMA_VERSION:
        # An older store: migrate it where we may write (what ``run`` would do), else say how.
        if os.access(root, os.W_OK) and os.access(db, os.W_OK):
            return Store.open(root, create=False)
        raise AdvarenaError(f"the store at {root} was written by an older advarena (schema "
                            f"{found}, this one reads {SCHEMA_VERSION}) and is read-only here; "
                            f"copy it somewhere writable and read the copy (it is migrated on "
                            f"first open), or read it with the advarena that wrote it")
    try:
        return Store.open(root, readonly=True)
    except AdvarenaError as exc:
        raise AdvarenaError(f"{db} cannot be read as an advarena store ({exc}); it is damaged "
                            f"or not a store: restore it from a copy, or pass another "
                            f"--store") from None


def _model_key(cells: dict[str, dict], cell_key: str) -> str | None:
    """The train cell of the model a cell evaluated (a flags cell through its own model's
    eval cells)."""
    deps = (cells.get(cell_key) or {}).get("spec", {}).get("deps", {})
    if not isinstance(deps, dict):
        return None
    if "model" in deps:
        return deps["model"]
    own = [k for role, k in sorted(deps.items()) if role.startswith("eval:")]
    return _model_key(cells, own[0]) if own else None


def result_rows(store: Store) -> list[dict[str, Any]]:
    """One flat dict per metric record: the export keys, then labels and provenance (the
    evaluated model's train cell and weights, whether it is an external model and its hashes,
    the cell, run, device and versions)."""
    cells = {c["key"]: c for c in store.cells()}
    model_of: dict[str, dict[str, Any]] = {}
    out = []
    for m in store.metrics():
        ck = m["cell_key"]
        if ck not in model_of:
            mk = _model_key(cells, ck)
            train = cells.get(mk or "") or {}
            ext = train.get("spec", {}).get("external") or {}
            model_of[ck] = {
                "external": bool(ext), "model_key": mk,
                "weights_sha256": store.artifacts(mk).get("model") if mk else None,
                "external_weights_sha256": ext.get("weights_sha256"),
                "external_source_sha256": ext.get("source_sha256"),
                "external_source": ext.get("source")}
        extra = m["extra"] or {}
        versions = (m["provenance"] or {}).get("versions") or {}
        rec = {k: m[k] for k in EXPORT_KEYS}
        rec.update({"norm": extra.get("norm"), "headline": bool(extra.get("headline", False)),
                    **model_of[ck], "cell_key": ck, "run_id": m["run_id"],
                    "device": m["device"], "advarena_version": versions.get("advarena"),
                    "torch_version": versions.get("torch"), "extra": extra})
        out.append(rec)
    return out


def results_frame(store: str | Path | Store):
    """:func:`result_rows` as a pandas DataFrame (reading only; a path is opened read-only)."""
    import pandas as pd

    if isinstance(store, Store):
        rows = result_rows(store)
    else:
        s = open_for_reading(store)
        try:
            rows = result_rows(s)
        finally:
            s.close()
    return pd.DataFrame(rows, columns=[*EXPORT_KEYS, *RESULT_COLUMNS])


def write_table(frame, path: str | Path | None, fmt: str) -> str | None:
    """Write ``frame`` as csv, json (a list of records, numbers as numbers) or parquet to
    ``path``; with no path, return the text (csv or json)."""
    if fmt not in TABLE_FORMATS:
        raise AdvarenaError(f"unknown format '{fmt}'; use one of {', '.join(TABLE_FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise AdvarenaError("--format parquet needs pyarrow (pip install pyarrow); use "
                                "--format csv or json") from None
        if path is None:
            raise AdvarenaError("--format parquet writes a binary file; pass --out FILE")
    frame = frame.copy()
    nested = [c for c in ("params", "extra", "external_source") if c in frame]
    if fmt in ("csv", "parquet"):  # nested values as JSON text
        for c in nested:
            frame[c] = [json.dumps(_clean(v), sort_keys=True) if v is not None else None
                        for v in frame[c]]
    if fmt == "json":
        text = json.dumps(_clean(frame.to_dict(orient="records")), indent=1, default=str)
    elif fmt == "csv":
        text = frame.to_csv(index=False)
    if path is None:
        return text
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            path.write_text(text)
    except OSError as exc:
        raise AdvarenaError(f"cannot write {path} ({exc.strerror}); pass --out with a writable "
                            f"path") from None
    return None
