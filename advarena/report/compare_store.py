"""Two models of one store as the two sides of :func:`advarena.report.compare.compare`
(``advarena compare --store S A B``): "is defense A better than B?" on the same examples.

Every defense (and external model) is scored on the same evaluation examples (a fixed seed-0
permutation of the test split), so their accuracies pair up example by example and the paired
tests of a two-run comparison apply unchanged. The two models' records are relabelled to one
configuration, ``A vs B``, so that they match metric by metric. Where a store holds a
protocol's records of one model from several runs, the latest run's are compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AdvarenaError
from .compare import Side
from .export import open_for_reading, records


def _latest(recs: list[dict], started: dict[str, float]) -> list[dict]:
    """Per model, seed and protocol, the records of the latest run's cell only (as the
    leaderboard reads a store that suites or plugin code changed between runs)."""
    best: dict[tuple, tuple[float, int, str]] = {}
    for i, r in enumerate(recs):
        k = (r["dataset"], r["architecture"], r["defense"],
             json.dumps(r["params"], sort_keys=True), r["seed"], r["protocol"])
        rank = (started.get(r["run_id"], 0.0), i, r["cell_key"])
        if k not in best or rank > best[k]:
            best[k] = rank
    keep = {v[2] for v in best.values()}
    return [r for r in recs if r["cell_key"] in keep]


def _configs(recs: list[dict]) -> list[tuple[str, str]]:
    return sorted({(r["architecture"], json.dumps(r["params"], sort_keys=True)) for r in recs})


def store_sides(store_dir: str | Path, a: str, b: str) -> tuple[Side, Side]:
    if a == b:
        raise AdvarenaError(f"compare --store: both sides are '{a}'; name two models")
    store = open_for_reading(store_dir)
    try:
        recs = _latest(records(store), {r["id"]: r["started"] or 0.0 for r in store.runs()})
    finally:
        store.close()
    names = sorted({r["defense"] for r in recs})
    sides = []
    for name in (a, b):
        mine = [r for r in recs if r["defense"] == name]
        if not mine:
            raise AdvarenaError(f"the store {store_dir} holds no records of '{name}'; it has "
                                f"{', '.join(names) or 'none'}")
        configs = _configs(mine)
        if len(configs) > 1:
            shown = "; ".join(f"{arch} {params}" for arch, params in configs)
            raise AdvarenaError(f"'{name}' has {len(configs)} settings in the store {store_dir} "
                                f"({shown}); compare two stores or exports instead")
        sides.append(mine)
    arch_a, arch_b = _configs(sides[0])[0][0], _configs(sides[1])[0][0]
    arch = arch_a if arch_a == arch_b else f"{arch_a} vs {arch_b}"
    label = f"{a} vs {b}"
    out = []
    for name, mine in zip((a, b), sides):
        relabelled = [{**r, "architecture": arch, "defense": label, "params": {}} for r in mine]
        out.append(Side(f"{store_dir}:{name}", relabelled))
    return out[0], out[1]
