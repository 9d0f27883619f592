"""A rich progress display that listens to the run's observer hooks."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)

from ..hookimpl import hookimpl
from ..text import rich_escape as escape


class RichProgress:
    """Registered on the plugin manager for the length of a run."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 transient=True, disable=quiet)
        self.run_task = None
        self.cell_task = None

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    @hookimpl
    def advarena_run_started(self, run_id, total_cells):
        self.run_task = self.progress.add_task(f"run {escape(run_id)}", total=total_cells)

    @hookimpl
    def advarena_cell_started(self, cell):
        if self.cell_task is not None:
            self.progress.remove_task(self.cell_task)
        # Task descriptions are rich markup: titles and stages hold plugin strings.
        self.cell_task = self.progress.add_task(f"  {escape(cell.title)}", total=None)

    @hookimpl
    def advarena_cell_progress(self, cell, stage, done, total):
        if self.cell_task is not None:
            self.progress.update(self.cell_task,
                                 description=f"  {escape(cell.title)}: {escape(stage)}",
                                 completed=done, total=total)

    @hookimpl
    def advarena_cell_finished(self, cell, status, seconds, error):
        if self.cell_task is not None:
            self.progress.remove_task(self.cell_task)
            self.cell_task = None
        if self.run_task is not None:
            self.progress.advance(self.run_task)
        if self.quiet:
            return
        if status == "done":
            self.console.print(f"[green]done[/]   {escape(cell.title)} [dim]({seconds:.1f}s)[/]")
        elif status == "cached":
            self.console.print(f"[cyan]stored[/] {escape(cell.title)} "
                               f"[dim](reused from the store)[/]")
        elif status == "failed":
            self.console.print(f"[red]failed[/] {escape(cell.title)}: {escape(str(error))}")
        else:
            self.console.print(f"[yellow]skipped[/] {escape(cell.title)}: {escape(str(error))}")
