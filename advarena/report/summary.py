"""The answer of a run: per evaluated model, its headline number with its interval, its clean
accuracy and the sanity flags it raised (data only; ``advarena run`` prints it as a table)."""

from __future__ import annotations

from typing import Any

from ..store import Store


def _stat(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {k: rec.get(k) for k in ("protocol", "metric", "attack", "eps", "value", "ci_low",
                                    "ci_high", "n")}


def _model_of(cell, by_key: dict, memo: dict) -> str | None:
    """The train cell a cell is about: its ``model`` input, else (headline and flags cells)
    that of its own inputs (never the reference's, which comparisons also read)."""
    if cell.key in memo:
        return memo[cell.key]
    found = cell.deps.get("model")
    if found is None:
        for role, key in sorted(cell.deps.items()):
            dep = by_key.get(key)
            if role.startswith("reference") or dep is None or dep.kind == "train":
                continue
            found = _model_of(dep, by_key, memo)
            if found is not None:
                break
    memo[cell.key] = found
    return found


def headline_rows(store: Store, plan) -> list[dict[str, Any]]:
    """One row per model the plan evaluated, in plan order.

    ``headline``: the stored record its cells marked ``headline`` in ``extra`` (a record of a
    ``headline`` protocol first, else e.g. white-box's worst case at ``headline_eps``), None
    where none is stored; ``clean``: the white-box clean accuracy; ``flags``: the names of the
    raised sanity flags, None where no flags cell of the model is stored."""
    by_key = {c.key: c for c in plan.cells}
    memo: dict[str, str | None] = {}
    cells_of: dict[str, list] = {}
    for cell in plan.cells:
        if cell.kind != "train":
            model = _model_of(cell, by_key, memo)
            if model is not None:
                cells_of.setdefault(model, []).append(cell)
    rows = []
    for model, cells in cells_of.items():
        recs = store.metrics([c.key for c in cells])
        heads = [r for r in recs if (r.get("extra") or {}).get("headline")]
        head = next((r for r in heads if r["protocol"] == "headline"), heads[0] if heads
                    else None)
        clean = next((r for r in recs if r["protocol"] == "white-box"
                      and r["metric"] == "accuracy"), None)
        flag_cells = [c.key for c in cells if c.kind == "flags"
                      and store.done_cell(c.key) is not None]
        flags = None
        if flag_cells:
            flags = sorted({r["metric"].removeprefix("flag_") for r in store.metrics(flag_cells)
                            if r["metric"].startswith("flag_") and r["value"] >= 0.5})
        lab = by_key[model].labels if model in by_key else cells[0].labels
        rows.append({"dataset": lab.get("dataset"), "architecture": lab.get("architecture"),
                     "defense": lab.get("defense"), "params": lab.get("params", {}),
                     "seed": lab.get("seed"), "external": lab.get("role") == "external",
                     "clean": _stat(clean), "headline": _stat(head), "flags": flags})
    return rows
