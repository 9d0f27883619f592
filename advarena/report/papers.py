"""Published tables against the store: for every paper table (:mod:`advarena.papers`) whose
suite has run, each cell's published value beside the measured one with its interval, the
difference and whether the published value lies inside the interval; and each qualitative
claim of the paper checked as an ordering of measured cells.

Reads the store only and returns data; ``advarena papers`` prints and writes.

Choices:

* Only records produced by a run of the table's suite or reduced suite (by the suite's
  ``name``) are read: a LeNet trained by 002's suite is not 003's LeNet-5. A suite of your own
  counts if it carries one of those names.
* Records a cell matches are grouped by seed; within a seed a record of the full suite wins
  over one of the reduced suite, and among those the latest stored wins (a suite edited and
  run again replaces its earlier numbers; the number of examples cannot decide, since a mean
  over the successful attacks counts fewer examples when more fail). Over seeds the value is the mean
  and the interval spans every seed's interval (:func:`advarena.report.leaderboard.aggregate`).
* "Inside" compares the published value, as printed (rounded), with the 95% interval of the
  measurement (Wilson for accuracies, bootstrap for means), in the paper's unit. A number stored
  without interval (a ratio of timings, eps_ref) is never "inside".
* A claim "a > b" is tested with :func:`advarena.report.compare._test` on the records of each
  seed both cells share: exact McNemar on the per-example outcomes where both are scored on the
  same examples, else a two-proportion or normal test; pooled over seeds as ``advarena compare``
  pools them. Verdicts: ``holds`` (every pair significant in the claimed direction),
  ``holds, not significant`` (every pair in the claimed direction, some not significant),
  ``contradicted`` (some pair significant against it), ``not confirmed`` (some pair reversed,
  none significantly), ``not measured`` (no pair has records on both sides). Where only some
  pairs are measured, the verdict is theirs, with "(k of n comparisons measured)".
"""

from __future__ import annotations

import math
from typing import Any

from .. import papers as paper_data
from ..errors import AdvarenaError
from ..store import Store
from .compare import _pool, _test
from .leaderboard import _stat, aggregate

ALPHA = 0.05


def _subset(want: Any, have: Any) -> bool:
    """Whether every key of ``want`` is in ``have`` with an equal value (recursively)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _subset(v, have[k])
                                              for k, v in want.items())
    if isinstance(want, float) or isinstance(have, float):
        try:
            return math.isclose(float(want), float(have), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return want == have


def _attack_params(spec: dict | None, attack: str | None) -> dict | None:
    if not spec or not attack:
        return None
    entry = (spec.get("attacks") or {}).get(attack.split("@", 1)[0])
    return entry.get("params") if isinstance(entry, dict) else None


def _matches(m: dict[str, Any], rec: dict[str, Any], specs: dict[str, dict]) -> bool:
    for key in ("dataset", "architecture", "defense", "protocol", "metric"):
        if key in m and rec.get(key) != m[key]:
            return False
    if "attack" in m and rec.get("attack") != m["attack"]:
        return False
    if "eps" in m and (rec.get("eps") is None or not _subset(m["eps"], rec["eps"])):
        return False
    if "params" in m and not _subset(m["params"], rec.get("params") or {}):
        return False
    if "fraction" in m and not _subset(m["fraction"], (rec.get("extra") or {}).get("fraction")):
        return False
    if "attack_params" in m:
        have = _attack_params(specs.get(rec.get("cell_key")), rec.get("attack"))
        if have is None or not _subset(m["attack_params"], have):
            return False
    return True


def _per_seed(records: list[dict[str, Any]], full: set[str] = frozenset()
              ) -> dict[int, dict[str, Any]]:
    """One record per seed: one of a run in ``full`` (the full suite's runs) before the
    others, then the latest."""
    out: dict[int, dict[str, Any]] = {}
    for rec in records:  # store order: oldest first
        old = out.get(rec["seed"])
        if old is None or (rec.get("run_id") in full) >= (old.get("run_id") in full):
            out[rec["seed"]] = rec
    return out


def _in_paper_units(stat: dict | None, cell: dict[str, Any]) -> dict | None:
    if stat is None:
        return None
    scale = paper_data.UNITS[cell["unit"]]
    flip = cell["match"].get("transform") == "complement"

    def conv(v: float | None) -> float | None:
        if v is None:
            return None
        return (1.0 - v if flip else v) * scale

    lo, hi = conv(stat.get("ci_low")), conv(stat.get("ci_high"))
    if flip:
        lo, hi = hi, lo
    return {"value": conv(stat["value"]), "ci_low": lo, "ci_high": hi, "n": stat.get("n"),
            "seeds": stat.get("seeds", 1)}


def _cell_result(cell: dict[str, Any], seeds: dict[int, dict]) -> dict[str, Any]:
    measured = _in_paper_units(aggregate([_stat(r) for r in seeds.values()]), cell) \
        if seeds else None
    out = {k: cell.get(k) for k in ("id", "row", "column", "unit", "published", "note")}
    out.update(measured=measured, difference=None, inside=None)
    if measured is not None and measured["value"] is not None:
        out["difference"] = measured["value"] - cell["published"]
        lo, hi = measured["ci_low"], measured["ci_high"]
        if lo is not None and hi is not None:
            out["inside"] = lo - 1e-12 <= cell["published"] <= hi + 1e-12
    return out


def _pair(a: dict[int, dict], b: dict[int, dict], sign: int, flip: bool) -> dict[str, Any]:
    """Test measured a against b (``sign`` +1: a should be higher, in the paper's terms)."""
    common = sorted(set(a) & set(b))
    if not common:
        return {"status": "not measured", "change": None, "p": None, "method": None}
    members = []
    for s in common:
        t = _test(b[s], a[s], ALPHA)
        t["base_n"], t["head_n"] = b[s].get("n"), a[s].get("n")
        members.append(t)
    res = members[0] if len(members) == 1 else (_pool(members, ALPHA) or members[0])
    change = res.get("change")
    if change is None:
        return {"status": "not measured", "change": None, "p": None, "method": None}
    if flip:  # the paper's number is 1 - the stored one: its ordering is the reverse
        change = -change
    lo, hi = res.get("change_low"), res.get("change_high")
    if flip and lo is not None and hi is not None:
        lo, hi = -hi, -lo
    if res.get("method") in (None, "untested"):
        status = "untested"
    elif res.get("significant"):
        status = "holds" if change * sign > 0 else "contradicted"
    else:
        status = "same direction" if change * sign > 0 else (
            "reversed" if change * sign < 0 else "equal")
    return {"status": status, "change": change, "change_low": lo, "change_high": hi,
            "p": res.get("p"), "method": res.get("method"), "seeds": len(common)}


def _claim_result(claim: dict[str, Any], cells: dict[str, dict],
                  seeds: dict[str, dict[int, dict]], results: dict[str, dict]
                  ) -> dict[str, Any]:
    out = {"text": claim["text"], "source": claim.get("source", ""), "kind": claim["kind"],
           "pairs": []}
    if claim["kind"] == "at_least":
        thr = claim["threshold"]
        states = []
        for cid in claim["a"]:
            m = results[cid]["measured"]
            unit = paper_data.UNITS[cells[cid]["unit"]]
            if m is None:
                st = "not measured"
            elif m["value"] >= thr * unit:
                st = "holds"
            elif m["ci_high"] is not None and m["ci_high"] < thr * unit:
                st = "contradicted"
            else:
                st = "reversed"
            states.append(st)
            out["pairs"].append({"a": cid, "b": f">= {thr * unit:g} {cells[cid]['unit']}",
                                 "status": st, "change": None if m is None else
                                 m["value"] - thr * unit, "p": None, "method": "threshold"})
    else:
        sign = {"greater": 1, "less": -1, "not_less": 1}[claim["kind"]]
        a = claim["a"]
        states = []
        for b in claim["b"]:
            fa = cells[a]["match"].get("transform") == "complement"
            fb = cells[b]["match"].get("transform") == "complement"
            if fa != fb:
                pair = {"status": "untested", "change": None, "p": None, "method": None}
            else:
                pair = _pair(seeds[a], seeds[b], sign, fa)
            if claim["kind"] == "not_less" and pair["status"] not in ("not measured",
                                                                       "untested"):
                pair["status"] = "contradicted" if pair["status"] == "contradicted" else "holds"
            states.append(pair["status"])
            out["pairs"].append({"a": a, "b": b, **pair})
    out["verdict"] = _verdict(states)
    return out


def _verdict(all_states: list[str]) -> str:
    states = [s for s in all_states if s not in ("not measured", "untested")]
    if not states:
        return "not measured"
    if len(states) < len(all_states):  # judged on the comparisons that could be made
        return f"{_verdict(states)} ({len(states)} of {len(all_states)} comparisons measured)"
    if any(s == "contradicted" for s in states):
        return "contradicted"
    if all(s == "holds" for s in states):
        return "holds"
    if all(s in ("holds", "same direction") for s in states):
        return "holds, not significant"
    return "not confirmed"


def _suites_run(store: Store) -> dict[str, str]:
    """Run id -> the name of the suite it ran."""
    out: dict[str, str] = {}
    for run in store.runs():
        name = (run.get("suite") or {}).get("name")
        if isinstance(name, str):
            out[run["id"]] = name
    return out


def build(store: Store, table_ids: list[str] | None = None, *, include_unrun: bool = False
          ) -> dict[str, Any]:
    """Every paper table whose suite (or reduced suite) ran in ``store`` (all of them with
    ``include_unrun``, or those of ``table_ids``), compared cell by cell and claim by claim."""
    all_tables = paper_data.tables()
    known = {t["id"] for t in all_tables}
    if table_ids:
        unknown = [t for t in table_ids if t not in known]
        if unknown:
            raise AdvarenaError(f"unknown paper table '{unknown[0]}'; the shipped tables: "
                                f"{', '.join(sorted(known))}")
    records = store.metrics()
    specs = {c["key"]: c["spec"] for c in store.cells(kind="eval")}
    ran = _suites_run(store)
    out = []
    for table in all_tables:
        if table_ids and table["id"] not in table_ids:
            continue
        cells = {c["id"]: c for c in table["cells"]}
        own = (table["suite"], table["reduced_suite"])
        mine = [r for r in records if ran.get(r.get("run_id")) in own]
        full = {run for run, name in ran.items() if name == table["suite"]}
        seeds = {cid: _per_seed([r for r in mine if _matches(c["match"], r, specs)], full)
                 for cid, c in cells.items()}
        results = {cid: _cell_result(cells[cid], seeds[cid]) for cid in cells}
        suites = [s for s in own if s in ran.values()]
        measured = [r for r in results.values() if r["measured"] is not None]
        if not (include_unrun or table_ids) and not suites and not measured:
            continue
        claims = [_claim_result(c, cells, seeds, results) for c in table["claims"]]
        judged = [r for r in measured if r["inside"] is not None]
        out.append({
            "id": table["id"], "paper": table["paper"], "table": table["table"],
            "title": table["title"], "seed_file": table.get("seed_file", ""),
            "suite": table["suite"], "reduced_suite": table["reduced_suite"],
            "suites_run": suites, "notes": list(table.get("notes", [])),
            "cells": list(results.values()), "claims": claims,
            "summary": {"cells": len(results), "measured": len(measured),
                        "inside": sum(1 for r in judged if r["inside"]),
                        "judged": len(judged),
                        "claims": {v: sum(1 for c in claims
                                          if c["verdict"].split(" (")[0] == v)
                                   for v in ("holds", "holds, not significant",
                                             "not confirmed", "contradicted",
                                             "not measured")}}})
    return {"alpha": ALPHA, "tables": out}


# -- rendering -------------------------------------------------------------------------------

def _fmt(v: float | None, unit: str, signed: bool = False) -> str:
    if v is None:
        return "–"
    if unit == "%":
        return f"{v:+.2f}" if signed else f"{v:.2f}"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def _env():
    from .leaderboard import _env as leaderboard_env

    env = leaderboard_env()
    env.filters["pv"] = lambda v, unit, signed=False: _fmt(v, unit, signed)
    env.filters["pval"] = lambda p: "–" if p is None else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")
    return env


def render_markdown(result: dict[str, Any]) -> str:
    return _env().get_template("papers.md.j2").render(result=result)


def render_html(result: dict[str, Any]) -> str:
    return _env().get_template("papers.html.j2").render(result=result)
