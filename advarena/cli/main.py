"""``advarena``: run suites, list plugins, render leaderboards.

Every error a user can cause is printed as one line on stderr with exit status 2; nothing is
printed as a traceback and nothing already stored is touched by a failed command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import AdvarenaError
from ..text import printable, rich_text

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

KIND_CHOICES = ["attacks", "defenses", "datasets", "architectures", "protocols", "models"]

from .options import override_options, overrides_of, plugin_option  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="advarena")
def cli() -> None:
    """advarena: a plugin-based benchmark of adversarial robustness for PyTorch classifiers.

    \b
    Example:
      advarena run --defense gda-brelu      # the default suite (digits), one defense
      advarena leaderboard --out leaderboards
    """


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(KIND_CHOICES))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@plugin_option
def list_cmd(kind: str | None, as_json: bool) -> None:
    """List the installed plugins with their paper, parameters and distribution.

    \b
    Example:
      advarena list attacks
      advarena list defenses --json
    """
    from ..plugins import default_registry

    reg = default_registry()
    kinds = [kind] if kind else KIND_CHOICES
    data = {k: [e.describe() for e in reg.entries(k)] for k in kinds}
    if as_json:
        click.echo(json.dumps(data if not kind else data[kind], indent=1, default=str))
        return
    for k in kinds:
        table = Table(title=k, title_justify="left", show_lines=False)
        for col in ("name", "paper", "parameters", "from"):
            table.add_column(col, overflow="fold")
        for d in data[k]:
            params = ", ".join(f"{p['name']}={_short(p['default'])}" for p in d["parameters"])
            name = d["name"] + (f" ({', '.join(d['aliases'])})" if d["aliases"] else "")
            # Text cells: a plugin's strings are never parsed as rich markup.
            table.add_row(*(rich_text(c) for c in (name, d["paper"], params or "-",
                                                    f"{d['distribution']} {d['version']}"
                                                    .strip())))
        console.print(table)
    for w in reg.warnings:
        err_console.print(f"warning: {printable(w)}", markup=False)


def _short(value) -> str:
    """Compact parameter defaults for the table (``0.0314`` rather than 0.03137254901960784)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)


@cli.command("run")
@click.option("--suite", default="quick", show_default=True,
              help="A shipped suite name or a path to a suite TOML file.")
@click.option("--defense", "defenses", multiple=True, metavar="NAME[:KEY=VALUE,...]",
              help="Defense to evaluate (repeatable; 'a+b' composes), with parameters after "
                   "':'. Default: the suite's. Example: --defense gda-brelu:sigma=0.2")
@click.option("--dataset", "datasets", multiple=True, help="Restrict to these datasets.")
@click.option("--protocol", "protocols", multiple=True, help="Restrict to these protocols.")
@click.option("--store", "store_dir", default=".advarena", show_default=True,
              type=click.Path(path_type=Path), help="Result store directory.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", type=int, default=None, help="Run this seed instead of the suite's.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where on-disk datasets (mnist, cifar10, ...) live.")
@click.option("--download", is_flag=True, help="Allow downloading on-disk datasets.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Export every stored metric record as JSON to this file.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="local: cells one after another here; ray: one Ray task a cell.")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster to use with --executor ray (default: RAY_ADDRESS, else a "
                   "local instance started for the run).")
@click.option("--cell-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS",
              help="Fail any cell still running after SECONDS (cells then run in a child "
                   "process that is killed). Default: the suite's [eval] cell_timeout, else "
                   "no limit.")
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), default=None, is_flag=False,
              flag_value="bf16",
              help="Mixed-precision training (bf16 if no value; fp16 is for CUDA). Attacks "
                   "and evaluation stay in float32.")
@click.option("--channels-last", is_flag=True,
              help="Train convolutional networks in channels_last memory layout (GPUs).")
@click.option("--dry-run", is_flag=True,
              help="Plan and print the cells (how many the store already holds), their "
                   "forward/backward passes and a time estimate calibrated on the device; "
                   "run nothing, write nothing.")
@override_options
@plugin_option
def run_cmd(suite, defenses, datasets, protocols, store_dir, device, seed, data_dir, download,
            output, quiet, executor, address, cell_timeout, amp, channels_last, dry_run, sets,
            eps, examples, epochs) -> None:
    """Train (or reuse) the models a suite needs and run its protocols.

    \b
    Example:
      advarena run --defense gda-brelu
      advarena run --suite quick --defense none --defense fgsm-at --output results.json
      advarena run --executor ray --address auto --cell-timeout 3600
      advarena run --defense gda-brelu:sigma=0.2 --set attacks.pgd.steps=100 --eps 0.05,0.1
      advarena run --defense my-defense --plugin my_defense.py --examples 1000 --epochs 5
      advarena run --suite mnist --dry-run      # cells, passes and time before a GPU run
    """
    from .run_command import execute_run

    code = execute_run(console, suite=suite, defenses=list(defenses), datasets=list(datasets),
                       protocols=list(protocols), store_dir=store_dir, device=device,
                       seed=seed, data_dir=data_dir, download=download, output=output,
                       quiet=quiet, executor=executor, address=address,
                       cell_timeout=cell_timeout, amp=amp, channels_last=channels_last,
                       overrides=overrides_of(sets, eps, examples, epochs), dry_run=dry_run)
    sys.exit(code)


@cli.command("leaderboard")
@click.option("--store", "store_dir", default=".advarena", show_default=True,
              type=click.Path(path_type=Path), help="Result store directory.")
@click.option("--out", "out_dir", default="leaderboards", show_default=True,
              type=click.Path(path_type=Path), help="Directory to write into.")
@click.option("--format", "formats", default="md,html,json", show_default=True,
              help="Comma-separated formats: md, html, json.")
@click.option("--plots", "plot_format", default="png", show_default=True,
              type=click.Choice(["png", "svg", "none"]),
              help="Image format of the detail pages' plots, or none.")
@plugin_option
def leaderboard_cmd(store_dir: Path, out_dir: Path, formats: str, plot_format: str) -> None:
    """Render the store's leaderboards as Markdown, HTML and JSON, with one detail page per
    row (parameters, provenance, every metric, plots) under OUT/details/.

    \b
    Example:
      advarena leaderboard --out leaderboards --format md,html
      advarena leaderboard --store .advarena --out site --format html --plots svg
    """
    from ..plugins import default_registry
    from ..report.export import open_for_reading
    from ..report.leaderboard import write_leaderboards

    fmts = tuple(dict.fromkeys(f.strip() for f in formats.split(",") if f.strip()))
    bad = [f for f in fmts if f not in ("md", "html", "json")]
    if bad or not fmts:
        raise AdvarenaError(f"unknown leaderboard format '{','.join(bad) or formats}'; use a "
                            f"comma-separated list of md, html, json")
    for w in default_registry().warnings:  # e.g. a plugin that failed to import, skipped
        err_console.print(f"warning: {w}", markup=False)
    store = open_for_reading(store_dir)  # a published store is often on a read-only mount
    try:
        written = write_leaderboards(store, out_dir, fmts, default_registry(),
                                     plots=None if plot_format == "none" else plot_format)
    finally:
        store.close()
    for fmt, path in written.items():
        if fmt == "details":
            pages = len({p.stem for p in path.iterdir() if p.suffix in (".md", ".html")})
            console.print(f"{'details':7} {path}/ ({pages} pages)", markup=False)
        else:
            console.print(f"{fmt:7} {path}", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit 2 for every user error, no traceback."""
    try:
        cli.main(args=argv, prog_name="advarena", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click >= 8.2
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.UsageError as exc:
        hint = f"; see 'advarena {exc.ctx.info_name} --help'" if exc.ctx and \
            exc.ctx.info_name != "advarena" else "; see 'advarena --help'"
        err_console.print(f"error: {printable(exc.format_message())}{hint}", markup=False,
                          soft_wrap=True)
        sys.exit(2)
    except click.Abort:
        err_console.print("aborted", markup=False)
        sys.exit(130)
    except AdvarenaError as exc:
        # Messages quote plugin strings: control characters are shown, not obeyed.
        err_console.print(f"error: {printable(exc)}", markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished cells are stored, run again to resume",
                          markup=False)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


from .compare_command import compare_cmd  # noqa: E402
cli.add_command(compare_cmd)
from .new_plugin_command import new_plugin_cmd  # noqa: E402
cli.add_command(new_plugin_cmd)
from .evaluate_command import evaluate_cmd  # noqa: E402
cli.add_command(evaluate_cmd)
from .export_command import export_cmd  # noqa: E402
cli.add_command(export_cmd)
from .papers_command import papers_cmd  # noqa: E402
cli.add_command(papers_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
