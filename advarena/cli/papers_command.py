"""``advarena papers``: the papers' headline tables beside the store's measurements, and their
claims checked as orderings (:mod:`advarena.report.papers`). This module parses options and
prints or writes; the comparison is the report module's."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import AdvarenaError

FORMATS = ("md", "html", "json")


@click.command("papers")
@click.option("--store", "store_dir", default=".advarena", show_default=True,
              type=click.Path(path_type=Path), help="Result store directory.")
@click.option("--table", "table_ids", multiple=True, metavar="ID",
              help="Only this paper table (repeatable), e.g. 002-t1; shown even if not run.")
@click.option("--all", "include_unrun", is_flag=True,
              help="Also the tables none of whose suites ran (their cells read 'not run').")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Write papers.md / .html / .json into this directory (default: print "
                   "Markdown).")
@click.option("--format", "formats", default="md,html", show_default=True,
              help="With --out: comma-separated formats (md, html, json).")
def papers_cmd(store_dir: Path, table_ids: tuple[str, ...], include_unrun: bool,
               out_dir: Path | None, formats: str) -> None:
    """Compare the papers' published tables with the store: published value, measured value
    and interval, difference, inside or not; and each claim's verdict.

    \b
    Example:
      advarena run --suite paper-002-t1-reduced --data-dir ~/mnist
      advarena papers
      advarena papers --table 004-t1 --out leaderboards --format md,html,json
    """
    from ..report.papers import build, render_html, render_markdown
    from ..store import Store

    fmts = tuple(dict.fromkeys(f.strip() for f in formats.split(",") if f.strip()))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise AdvarenaError(f"unknown papers format '{','.join(bad) or formats}'; use a "
                            f"comma-separated list of {', '.join(FORMATS)}")
    store = Store.open(store_dir, create=False)
    try:
        result = build(store, list(table_ids) or None, include_unrun=include_unrun)
    finally:
        store.close()
    if out_dir is None:
        click.echo(render_markdown(result), nl=False)
        return
    render = {"md": render_markdown, "html": render_html,
              "json": lambda r: json.dumps(r, indent=1, default=str) + "\n"}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for fmt in fmts:
            path = out_dir / f"papers.{fmt}"
            path.write_text(render[fmt](result))
            click.echo(f"{fmt:5} {path}")
    except OSError as exc:
        raise AdvarenaError(f"cannot write into {out_dir} ({exc.strerror}); pass --out with a "
                            f"writable directory") from None
