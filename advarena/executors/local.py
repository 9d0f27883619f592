"""The local executor (the default): cells one after another on this machine.

Cells whose plugins all come from ``advarena`` itself run in this process: nothing is cheaper,
and a plugin that raises (any ``BaseException``), returns NaN, the wrong shape or points
outside its threat model, writes into what it was lent or changes global torch state still
fails only its own cell (:mod:`advarena.guards`). A cell that runs a third-party plugin
(dataset, architecture, defense, protocol or attack from another distribution) runs in a
spawned worker process (:mod:`advarena.executors.isolation`), because some faults cannot be
caught in process: ``os._exit`` (which would end the run with its status, no output), a crash
in native code, a thread that never ends. With a cell time limit (``--cell-timeout SECONDS``,
or ``cell_timeout`` in the suite's ``[eval]`` table; the option wins) every cell runs in the
worker, so any cell that hangs can be stopped. The worker starts at the first cell that needs
it and is replaced only after a kill, a death or a plugin that left a thread behind.

Cost of the worker: its start (importing torch and the plugins, about 3.4 s once a run on a
2-core CPU); nothing measurable per cell (measured on the tiny test suite: 1.6 s in process,
5.0 s with a worker). A run of first-party plugins only never starts it.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import AdvarenaError, DataError
from ..plan import Cell
from ..runner import Environment, cell_trusted, describe_failure, is_interrupt, run_cell
from .base import Executor, Outcome


class LocalExecutor(Executor):
    """Runs cells one after another: first-party cells in this process, cells with
    third-party plugins (and, with ``cell_timeout``, every cell) in a child process that is
    killed when a cell overruns the limit."""

    name = "local"

    def __init__(self, env: Environment, hook: Any, *, cell_timeout: float | None = None,
                 isolate: bool | str | None = None) -> None:
        """``isolate``: True (every cell in the worker), False (every cell in process: a
        plugin's ``os._exit`` then ends the run) or "auto" (the default: every cell with a
        time limit, else the cells that run a third-party plugin)."""
        super().__init__(env, hook)
        self.cell_timeout = cell_timeout
        if isolate is None or isolate == "auto":
            isolate = True if cell_timeout is not None else "auto"
        self.isolate = isolate
        self._worker = None
        self._outcomes: list[tuple[Cell, Outcome]] = []

    def _in_worker(self, cell: Cell) -> bool:
        if self.isolate == "auto":
            return not cell_trusted(cell, self.env) and self._worker_can_load()
        return bool(self.isolate)

    def _worker_can_load(self) -> bool:
        """Plugins registered as objects rather than modules (from the Python API) cannot be
        rebuilt in a worker; their cells then run in process."""
        if not hasattr(self, "_loadable"):
            try:
                self.env.worker_settings()
                self._loadable = True
            except AdvarenaError:
                self._loadable = False
        return self._loadable

    def _open(self) -> None:
        if self.isolate is True:  # start it before the first cell, as before
            self._ensure_worker()

    def _ensure_worker(self):
        if self._worker is None:
            from .isolation import ChildWorker

            self._worker = ChildWorker(self.env.worker_settings())
            self._worker.start()
        return self._worker

    def _close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def _progress(self, cell: Cell):
        def progress(stage: str, done: int, total: int) -> None:
            self.hook.advarena_cell_progress(cell=cell, stage=stage, done=done, total=total)

        return progress

    def _launch(self, cell: Cell) -> None:
        started = time.time()
        if self._in_worker(cell):
            answer = self._ensure_worker().run(cell, self.cell_timeout, self._progress(cell))
            outcome = Outcome.from_encoded(answer, started, time.time() - started)
        else:
            outcome = self._in_process(cell, started)
        self._outcomes.append((cell, outcome))

    def _in_process(self, cell: Cell, started: float) -> Outcome:
        try:
            out, seconds = run_cell(cell, self.env, self._progress(cell))
        except DataError:
            raise
        except BaseException as exc:  # a plugin's fault fails its own cell only
            if is_interrupt(exc):
                raise
            reason, detail = describe_failure(exc)
            return Outcome("failed", started=started, seconds=time.time() - started,
                           reason=reason, detail=detail)
        return Outcome("done", started=started, seconds=seconds,
                       header={"result": out.result, "provenance": out.provenance},
                       tensors=out.tensors, measurements=out.measurements)

    def _collect(self) -> tuple[Cell, Outcome]:
        return self._outcomes.pop(0)
