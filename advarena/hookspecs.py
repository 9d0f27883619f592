"""advarena's hook specifications (pluggy project ``advarena``). Specs only; one line each.

Registration hooks return lists of plugin classes; observer hooks let the CLI (and any other
listener) follow a run without the harness printing anything.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("advarena")


@hookspec
def advarena_register_attacks() -> list[type]:
    """Return attack classes (subclasses of ``advarena.api.Attack``)."""


@hookspec
def advarena_register_defenses() -> list[type]:
    """Return defense classes (subclasses of ``advarena.api.Defense``)."""


@hookspec
def advarena_register_datasets() -> list[type]:
    """Return dataset classes (subclasses of ``advarena.api.Dataset``)."""


@hookspec
def advarena_register_architectures() -> list[type]:
    """Return architecture classes (subclasses of ``advarena.api.Architecture``)."""


@hookspec
def advarena_register_protocols() -> list[type]:
    """Return protocol classes (subclasses of ``advarena.api.Protocol``)."""


@hookspec
def advarena_register_models() -> list[type]:
    """Return ready-trained model classes (subclasses of ``advarena.api.Model``): a model zoo."""


@hookspec
def advarena_run_started(run_id: str, total_cells: int) -> None:
    """Called once when a run starts, with the number of cells in its plan."""


@hookspec
def advarena_cell_started(cell: Any) -> None:
    """Called when a cell starts running (not for cells served from the store)."""


@hookspec
def advarena_cell_progress(cell: Any, stage: str, done: int, total: int) -> None:
    """Called as a cell advances (epochs of training, attacks of an evaluation)."""


@hookspec
def advarena_cell_finished(cell: Any, status: str, seconds: float, error: str | None) -> None:
    """Called when a cell ends; status is 'done', 'cached', 'failed' or 'skipped'."""


@hookspec
def advarena_run_finished(run_id: str, summary: dict) -> None:
    """Called once when a run ends, with counts of done, cached and failed cells."""
