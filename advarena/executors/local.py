"""The local executor (the default): cells one after another on this machine.

Without a cell time limit, cells run in this process: nothing is cheaper, and a plugin that
raises, returns NaN, the wrong shape or points outside its threat model still fails only its
own cell. With a limit (``--cell-timeout SECONDS``, or ``cell_timeout`` in the suite's
``[eval]`` table; the option wins), cells run in one spawned worker process
(:mod:`advarena.executors.isolation`), so a cell that hangs (or crashes the interpreter) can be
stopped; the worker is started once and replaced only after a kill.

Why not always a worker: measured on the tiny test suite (8 cells, a 2-core CPU), the run takes
1.6 s in process and 5.0 s with a worker; the difference is the worker's start (importing torch
and the plugins, about 3.4 s once a run), with nothing measurable per cell. On the quick suite
(27 cells, two minutes) that is 3%, which a long unattended run should pay for a time limit;
the default keeps interactive runs fast.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import DataError
from ..plan import Cell
from ..runner import Environment, describe_failure, run_cell
from .base import Executor, Outcome


class LocalExecutor(Executor):
    """Runs cells one after another, in this process or (with ``cell_timeout``) in a child
    process that is killed when a cell overruns the limit."""

    name = "local"

    def __init__(self, env: Environment, hook: Any, *, cell_timeout: float | None = None,
                 isolate: bool | None = None) -> None:
        super().__init__(env, hook)
        self.cell_timeout = cell_timeout
        self.isolate = cell_timeout is not None if isolate is None else isolate
        self._worker = None
        self._outcomes: list[tuple[Cell, Outcome]] = []

    def _open(self) -> None:
        if self.isolate:
            from .isolation import ChildWorker

            self._worker = ChildWorker(self.env.worker_settings())
            self._worker.start()

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
        if self._worker is not None:
            answer = self._worker.run(cell, self.cell_timeout, self._progress(cell))
            outcome = Outcome.from_encoded(answer, started, time.time() - started)
        else:
            outcome = self._in_process(cell, started)
        self._outcomes.append((cell, outcome))

    def _in_process(self, cell: Cell, started: float) -> Outcome:
        try:
            out, seconds = run_cell(cell, self.env, self._progress(cell))
        except DataError:
            raise
        except (Exception, SystemExit) as exc:  # a plugin's fault fails its own cell only
            reason, detail = describe_failure(exc)
            return Outcome("failed", started=started, seconds=time.time() - started,
                           reason=reason, detail=detail)
        return Outcome("done", started=started, seconds=seconds,
                       header={"result": out.result, "provenance": out.provenance},
                       tensors=out.tensors, measurements=out.measurements)

    def _collect(self) -> tuple[Cell, Outcome]:
        return self._outcomes.pop(0)
