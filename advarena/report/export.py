"""Flat metric-record exports (``advarena run --output``), readable by ``advarena compare``."""

from __future__ import annotations

import json
import math
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
