"""The papers' headline tables as data: ``advarena/papers/tables/<id>.json``, one file per
table, each cell with its source (paper, table, row, column), the published value and its unit,
and the store records it is compared with (``match``); plus the paper's qualitative claims as
orderings of cells. ``advarena papers`` (:mod:`advarena.report.papers`) renders them against a
store.

A cell's ``match`` selects metric records by ``dataset``, ``architecture``, ``defense``,
``protocol``, ``attack`` (``null``: a record without attack), ``eps``, ``metric``; ``params``
(the defense's parameters) and ``attack_params`` (the parameters the eval cell ran the attack
with) match as subsets; ``fraction`` matches ``extra.fraction`` (002's multiples of eps_ref);
``transform = "complement"`` compares ``1 - value`` (an error rate published, an accuracy
stored). Keys left out match anything.

Units: ``%`` (the stored proportion times 100), ``fraction``, ``ratio``, ``l2``, ``l2/n``
(stored as is).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from ..errors import AdvarenaError

UNITS = {"%": 100.0, "fraction": 1.0, "ratio": 1.0, "l2": 1.0, "l2/n": 1.0}
MATCH_KEYS = {"dataset", "architecture", "defense", "params", "protocol", "attack", "eps",
              "metric", "fraction", "attack_params", "transform"}
CLAIM_KINDS = {"greater", "less", "not_less", "at_least"}


def _check(table: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("id", "paper", "table", "title", "suite", "reduced_suite", "cells", "claims"):
        if key not in table:
            raise AdvarenaError(f"{where}: paper table without '{key}'")
    ids = set()
    for c in table["cells"]:
        if c["unit"] not in UNITS:
            raise AdvarenaError(f"{where}: cell {c['id']} has unknown unit {c['unit']!r}")
        unknown = set(c["match"]) - MATCH_KEYS
        if unknown:
            raise AdvarenaError(f"{where}: cell {c['id']} matches on unknown key(s) "
                                f"{', '.join(sorted(unknown))}")
        if c["id"] in ids:
            raise AdvarenaError(f"{where}: cell id {c['id']} twice")
        ids.add(c["id"])
    for claim in table["claims"]:
        if claim["kind"] not in CLAIM_KINDS:
            raise AdvarenaError(f"{where}: claim {claim['text']!r} has unknown kind")
        refs = claim["a"] if isinstance(claim["a"], list) else [claim["a"], *claim.get("b", [])]
        missing = [r for r in refs if r not in ids]
        if missing:
            raise AdvarenaError(f"{where}: claim {claim['text']!r} names unknown cell(s) "
                                f"{', '.join(missing)}")
    return table


def tables() -> list[dict[str, Any]]:
    """Every shipped paper table, validated, in file-name order."""
    folder = resources.files("advarena.papers") / "tables"
    out = []
    for res in sorted(folder.iterdir(), key=lambda r: r.name):
        if res.name.endswith(".json"):
            out.append(_check(json.loads(res.read_text()), f"advarena/papers/tables/{res.name}"))
    return out
