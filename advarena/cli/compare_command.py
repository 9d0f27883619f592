r"""``advarena compare BASE HEAD``: did a change make a defense more or less robust?

CI recipe (GitHub Actions; the job fails when a headline metric got significantly worse, and the
table is posted to the run's summary page either way):

```yaml
# .github/workflows/robustness.yml
name: robustness
on: pull_request
jobs:
  compare:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with: {path: head}
      - uses: actions/checkout@v4
        with: {ref: "${{ github.base_ref }}", path: base}
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      # Same suite, same defenses (those the submission touches), same device on both sides.
      - name: Default suite on the base
        shell: bash
        run: |
          python -m venv base/.venv
          base/.venv/bin/pip install -q torch torchvision \
            --index-url https://download.pytorch.org/whl/cpu
          base/.venv/bin/pip install -q ./base
          base/.venv/bin/advarena run --defense gda-brelu --device cpu --quiet \
            --store base-store --output base.json
      - name: Default suite on the submission
        shell: bash
        run: |
          python -m venv head/.venv
          head/.venv/bin/pip install -q torch torchvision \
            --index-url https://download.pytorch.org/whl/cpu
          head/.venv/bin/pip install -q ./head
          head/.venv/bin/advarena run --defense gda-brelu --device cpu --quiet \
            --store head-store --output head.json
      - name: Compare and post the table
        shell: bash
        run: |
          status=0
          head/.venv/bin/advarena compare base.json head.json --fail-on worse \
            > compare.md || status=$?
          cat compare.md >> "$GITHUB_STEP_SUMMARY"
          exit $status
```

Elsewhere the same in four lines (exit status 1: a headline metric got significantly worse; 2:
bad input, e.g. the two runs are of different suites):

```bash
advarena run --defense gda-brelu --store base-store --output base.json   # in the base checkout
advarena run --defense gda-brelu --store head-store --output head.json   # in the submission
status=0; advarena compare base.json head.json --fail-on worse > compare.md || status=$?
cat compare.md; exit $status
```

Run both sides with the same suite, defenses and ``--device`` (ideally the same machine type):
each side needs its own fresh ``--store``, or the second run would reuse the first one's cells.
``--format json`` gives the same comparison for machines.

The statistics (paired exact McNemar tests on the shared examples, Newcombe intervals, Holm
across headline rows, pooling over seeds) are documented in :mod:`advarena.report.compare`.
This module only parses options and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("compare")
@click.argument("base")
@click.argument("head")
@click.option("--store", "store_dir", type=click.Path(path_type=Path), default=None,
              help="Compare two models (defenses or external models) of this store: BASE and "
                   "HEAD are their names. Example: --store .advarena none gda-brelu")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md",
              show_default=True, help="Markdown table, or JSON rows and a summary.")
@click.option("--fail-on", type=click.Choice(["worse", "never"]), default="never",
              show_default=True,
              help="'worse': exit 1 when a headline metric got significantly worse (or a "
                   "headline record is missing from HEAD).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.05, show_default=True, help="Significance level of every test.")
@click.option("--all", "show_all", is_flag=True,
              help="List every compared metric, not only changed and headline ones (Markdown; "
                   "JSON always has every row).")
@click.option("--correction", type=click.Choice(["holm", "none"]), default="holm",
              show_default=True,
              help="Multiple-testing correction across the gated headline rows.")
def compare_cmd(base: str, head: str, store_dir: Path | None, fmt: str, fail_on: str,
                alpha: float, show_all: bool, correction: str) -> None:
    """Compare two result exports (or stores): every metric both hold, its change with an
    interval, and a verdict (better, worse, no significant change).

    BASE and HEAD are JSON files written by 'advarena run --output' or store directories;
    with --store, two models of that store (same examples, so paired tests apply).
    Accuracies are compared pairwise on the shared examples (exact McNemar test) where the
    records carry per-example outcomes; other metrics through their intervals.

    \b
    Exit status: 0 compared; 1 --fail-on worse and a headline metric got significantly worse;
    2 bad input (unreadable file, not an export, runs of different suites).

    \b
    Example:
      advarena compare base.json head.json
      advarena compare base.json head.json --fail-on worse >> "$GITHUB_STEP_SUMMARY"
      advarena compare .advarena-main .advarena --format json --all
      advarena compare --store .advarena none gda-brelu
    """
    from ..report.compare import compare, compare_paths, failed, render_markdown, to_json

    if store_dir is not None:
        from ..report.compare_store import store_sides

        result = compare(*store_sides(store_dir, base, head), alpha=alpha,
                         correction=correction)
    else:
        result = compare_paths(Path(base), Path(head), alpha=alpha, correction=correction)
    if fmt == "json":
        click.echo(json.dumps(to_json(result, fail_on), indent=1))
    else:
        click.echo(render_markdown(result, show_all=show_all, fail_on=fail_on), nl=False)
    sys.exit(1 if failed(result, fail_on) else 0)
