"""``advarena export``: every stored metric record as a CSV, JSON or Parquet table."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.option("--store", "store_dir", default=".advarena", show_default=True,
              type=click.Path(path_type=Path), help="Result store directory (read only).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv",
              show_default=True,
              help="Table format (parquet needs pyarrow). Example: --format json")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="File to write (default: standard output; parquet needs a file). Example: "
                   "--out results.csv")
def export_cmd(store_dir: Path, fmt: str, out: Path | None) -> None:
    """Export the store's metric records, one row each: dataset, architecture, defense,
    params, seed, protocol, attack, eps, metric, value, n, ci_low, ci_high, then labels and
    provenance (headline, norm, external, weights' SHA-256, cell, run, device, versions).
    The same table in Python: advarena.results(store).

    \b
    Example:
      advarena export --store .advarena --format csv --out results.csv
      advarena export --format json | jq '.[] | select(.headline)'
    """
    from ..report.export import results_frame, write_table

    frame = results_frame(store_dir)
    text = write_table(frame, out, fmt)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"{len(frame)} records written to {out}", err=True)
