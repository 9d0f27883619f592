"""Leaderboards as data first (one reviewable record a row, as in RobustBench), rendered by
jinja2 templates into Markdown and HTML, and written as JSON with numbers as numbers."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2

from ..errors import AdvarenaError
from ..plugins import Registry
from ..store import Store


def _key(m: dict) -> tuple:
    return (m["dataset"], m["architecture"], m["defense"],
            json.dumps(m["params"], sort_keys=True), m["seed"])


def _stat(m: dict | None) -> dict | None:
    if m is None:
        return None
    return {"value": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"]}


def build_tables(store: Store, registry: Registry | None = None) -> list[dict[str, Any]]:
    """One table per (dataset, threat model): rows of defenses with their headline numbers,
    ranked by worst-case white-box accuracy at the headline eps.

    A rank is 1 + the number of rows whose interval lies entirely above this row's, so rows whose
    intervals overlap share a rank instead of being shown in an order the data do not support.
    """
    metrics = store.metrics()
    by_model: dict[tuple, list[dict]] = defaultdict(list)
    for m in metrics:
        by_model[_key(m)].append(m)
    cost = {k: {m["metric"]: m["value"] for m in ms if m["protocol"] == "training-cost"}
            for k, ms in by_model.items()}
    tables: dict[tuple, dict] = {}
    for k, ms in by_model.items():
        wb = [m for m in ms if m["protocol"] == "white-box"]
        if not wb:
            continue
        dataset, arch, defense, params, seed = k
        clean = next((m for m in wb if m["metric"] == "accuracy"), None)
        heads = [m for m in wb if m["metric"] == "worst_case_accuracy"
                 and m["extra"].get("headline")]
        for head in heads:
            norm = head["extra"].get("norm", "linf")
            per_attack = {m["attack"]: _stat(m) for m in wb if m["metric"] == "robust_accuracy"
                          and m["eps"] == head["eps"] and m["extra"].get("norm", norm) == norm}
            c = cost.get(k, {})
            paper = ""
            if registry is not None:
                try:
                    paper = registry.entry("defenses", defense.split("+")[0]).cls.paper
                except Exception:
                    paper = ""
            table = tables.setdefault((dataset, norm), {
                "dataset": dataset, "threat_model": norm, "eps": head["eps"], "rows": [],
                "attacks": set()})
            table["attacks"].update(per_attack)
            table["rows"].append({
                "defense": defense, "params": json.loads(params), "paper": paper,
                "architecture": arch, "seed": seed,
                "clean_accuracy": _stat(clean), "robust_accuracy": _stat(head),
                "per_attack": per_attack,
                "median_epoch_seconds": c.get("median_epoch_seconds"),
                "overhead": c.get("overhead"), "passes_per_example": c.get("passes_per_example"),
                "data_copies": c.get("data_copies"),
                "flags": [],
            })
    out = []
    for (dataset, norm), t in sorted(tables.items()):
        rows = t["rows"]
        for r in rows:
            r["rank"] = 1 + sum(1 for o in rows if o["robust_accuracy"]["ci_low"]
                                > r["robust_accuracy"]["ci_high"])
        rows.sort(key=lambda r: (-r["robust_accuracy"]["value"], r["defense"]))
        t["attacks"] = sorted(t["attacks"])
        out.append(t)
    return out


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("advarena", "report/templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=True),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)

    def pct(stat: dict | None) -> str:
        return "–" if not stat else f"{100 * stat['value']:.1f}"

    def ci(stat: dict | None) -> str:
        if not stat or stat.get("ci_low") is None:
            return ""
        return f"[{100 * stat['ci_low']:.1f}, {100 * stat['ci_high']:.1f}]"

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "–" if v is None else format(v, fmt)

    def params(p: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in p.items() if v is not None) or "defaults"

    def md(text: str) -> str:
        # Markdown table cells: neutralise pipes, newlines and inline HTML from plugins.
        return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
                .replace("<", "&lt;").replace(">", "&gt;"))

    env.filters.update(pct=pct, ci=ci, num=num, params=params, md=md)
    return env


def render_markdown(tables: list[dict]) -> str:
    return _env().get_template("leaderboard.md.j2").render(tables=tables)


def render_html(tables: list[dict]) -> str:
    return _env().get_template("leaderboard.html.j2").render(tables=tables)


def write_leaderboards(store: Store, out_dir: str | Path, formats: tuple[str, ...] = (
        "md", "html", "json"), registry: Registry | None = None) -> dict[str, Path]:
    """Render the store's leaderboards into ``out_dir``; return the written paths by format."""
    tables = build_tables(store, registry)
    if not tables:
        raise AdvarenaError(f"the store at {store.root} holds no white-box results yet; run "
                            f"'advarena run' first")
    out_dir = Path(out_dir)
    written = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            if fmt == "md":
                text = render_markdown(tables)
            elif fmt == "html":
                text = render_html(tables)
            elif fmt == "json":
                text = json.dumps([dict(row, dataset=t["dataset"], threat_model=t["threat_model"],
                                        eps=t["eps"]) for t in tables for row in t["rows"]],
                                  indent=1)
            else:
                raise AdvarenaError(f"unknown leaderboard format '{fmt}'; use md, html or json")
            path = out_dir / f"leaderboard.{fmt}"
            path.write_text(text)
            written[fmt] = path
    except OSError as exc:
        raise AdvarenaError(f"cannot write leaderboards to {out_dir} ({exc.strerror}); pass "
                            f"--out DIR naming a writable directory") from None
    return written
