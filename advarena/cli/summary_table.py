"""What ``advarena run`` and ``advarena evaluate`` print last: each evaluated model's headline
number with its interval, its clean accuracy, its raised flags, and where the leaderboard is."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import AdvarenaError
from ..report.summary import headline_rows
from ..store import Store


def _pct(stat: dict | None) -> str:
    if not stat or stat.get("value") is None:
        return "-"
    text = f"{100 * stat['value']:.1f}%"
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        text += f" [{100 * stat['ci_low']:.1f}, {100 * stat['ci_high']:.1f}]"
    return text


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((p or {}).items())) or "-"


def print_answer(console: Console, store_dir: Path, plan) -> None:
    try:
        store = Store.open(store_dir, readonly=True)
    except AdvarenaError:
        return
    try:
        rows = headline_rows(store, plan)
    finally:
        store.close()
    if not rows:
        return
    head = next((r["headline"] for r in rows if r["headline"]), None)
    what = "headline"
    if head:
        what = f"{head['metric']} at eps {head['eps']:g}" if head.get("eps") is not None \
            else head["metric"]
    datasets = sorted({str(r["dataset"]) for r in rows})
    table = Table(title=f"result on {', '.join(datasets)}: headline = {what} (95% intervals)",
                  title_justify="left")
    for col in ("model", "params", "seed", "clean", "headline", "flags"):
        table.add_column(col, overflow="fold", min_width=10 if col == "model" else None)
    for r in rows:
        flags = ("not checked" if r["flags"] is None
                 else ", ".join(r["flags"]) or "none raised")
        name = r["defense"] + ("\n(external)" if r["external"] else "")
        if len(datasets) > 1:
            name = f"{r['dataset']}: {name}"
        params = r["params"].get("external") if r["external"] else _params(r["params"])
        table.add_row(*(Text(str(v)) for v in (name, params, r["seed"], _pct(r["clean"]),
                                                 _pct(r["headline"]), flags)))
    console.print(table, markup=False)
    console.print(f"leaderboard: advarena leaderboard --store {store_dir} --out leaderboards "
                  f"(writes leaderboards/leaderboard.html and .md)", markup=False)
