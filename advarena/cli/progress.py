"""A rich progress display that listens to the run's observer hooks.

The ETA is the mean time of the cells run so far (cells served from the store take none)
times the cells still to come: an estimate that sharpens as cells finish. Rich's own remaining
time would extrapolate from the first seconds, where stored cells finish in a burst."""

from __future__ import annotations

from rich.progress import ProgressColumn  # (own line: the ETA column)
from rich.text import Text
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)

from ..hookimpl import hookimpl
from ..text import rich_escape as escape


class _EtaColumn(ProgressColumn):
    """The run's ETA (set by :class:`RichProgress`; cell tasks have none)."""

    def render(self, task) -> Text:
        return Text(task.fields.get("eta", ""))


class RichProgress:
    """Registered on the plugin manager for the length of a run."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 _EtaColumn(), console=console,
                                 transient=True, disable=quiet)
        self.run_task = None
        self.cell_task = None
        self.finished = 0
        self.ran = 0
        self.ran_seconds = 0.0

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def eta_seconds(self) -> float | None:
        """Mean seconds of the cells run so far times the cells left; None before any ran."""
        if not self.ran or self.run_task is None:
            return None
        total = next(t.total for t in self.progress.tasks if t.id == self.run_task) or 0
        return self.ran_seconds / self.ran * max(0, total - self.finished)

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        if eta is None:
            return "ETA: after the first cell"
        minutes, secs = divmod(int(round(eta)), 60)
        return f"ETA ~{minutes}:{secs:02d}" if minutes else f"ETA ~{secs}s"

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
        self.finished += 1
        if status == "done":
            self.ran += 1
            self.ran_seconds += seconds
        if self.run_task is not None:
            self.progress.update(self.run_task, advance=1, eta=self.eta_text())
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
