"""The answer of a run: per evaluated model, its headline number with its interval, its clean
accuracy and the sanity flags it raised (data only; ``advarena run`` prints it as a table)."""

from __future__ import annotations

from typing import Any

from ..store import Store


def _stat(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {k: rec.get(k) for k in ("metric", "attack", "eps", "value", "ci_low", "ci_high",
                                    "n")}


def headline_rows(store: Store, plan) -> list[dict[str, Any]]:
    """One row per model the plan evaluated (one per flags cell), in plan order.

    ``headline``: the record its protocols marked ``headline`` in ``extra`` (today white-box's
    worst case at ``headline_eps``), None where it was not stored; ``clean``: the white-box
    clean accuracy; ``flags``: the names of the raised sanity flags (None where the flags cell
    is not stored)."""
    rows = []
    for cell in plan.cells:
        if cell.kind != "flags":
            continue
        evals = [k for role, k in cell.deps.items() if not role.startswith("reference-")]
        recs = store.metrics(evals)
        head = next((r for r in recs if (r.get("extra") or {}).get("headline")), None)
        clean = next((r for r in recs if r["protocol"] == "white-box"
                      and r["metric"] == "accuracy"), None)
        flags = None
        if store.done_cell(cell.key) is not None:
            flags = [r["metric"].removeprefix("flag_") for r in store.metrics([cell.key])
                     if r["metric"].startswith("flag_") and r["value"] >= 0.5]
        lab = cell.labels
        rows.append({"dataset": lab.get("dataset"), "architecture": lab.get("architecture"),
                     "defense": lab.get("defense"), "params": lab.get("params", {}),
                     "seed": lab.get("seed"),
                     "external": "external" in (lab.get("params") or {}),
                     "clean": _stat(clean), "headline": _stat(head), "flags": flags})
    return rows
