"""What every executor shares: dependency-ordered scheduling and the driver's writes.

An executor hands cells to workers (this process, a child process, Ray tasks) and the driver
alone writes the store: a cell is started when every cell it reads is stored, its output comes
back as data, and it is stored in one transaction. A cell already stored (with intact weight
files) is not run again. A cell that fails is recorded as failed with the reason (naming the
plugin), the cells that read its output are skipped, and every other cell still runs. A missing
dataset stops the run: it is the user's input, not a cell.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..errors import DataError
from ..guards import watch_sigint
from ..plan import Cell, Plan
from ..runner import Environment, decode_measurements


class Outcome:
    """What came back from running one cell."""

    def __init__(self, status: str, *, started: float, seconds: float,
                 header: dict | None = None, blobs: dict[str, bytes] | None = None,
                 tensors: dict | None = None, measurements: list | None = None,
                 reason: str = "", detail: str = "") -> None:
        self.status = status  # done | failed | data-error
        self.started = started
        self.seconds = seconds
        self.header = header or {}
        self.blobs = blobs or {}
        self.tensors = tensors or {}  # in-process outputs skip serialisation
        self.measurements = measurements
        self.reason = reason
        self.detail = detail or reason

    @classmethod
    def from_encoded(cls, data: dict[str, Any], started: float, seconds: float) -> "Outcome":
        """From :func:`advarena.runner.run_cell_encoded`'s plain-data answer."""
        if data.get("status") == "done":
            return cls("done", started=started, seconds=float(data.get("seconds", seconds)),
                       header=data["header"], blobs=data.get("blobs", {}))
        return cls(data.get("status", "failed"), started=started, seconds=seconds,
                   reason=data.get("reason", "unknown failure"), detail=data.get("detail", ""))


class Executor:
    """Base of the executors. Subclasses implement :meth:`_launch` (start a cell) and
    :meth:`_collect` (wait for one started cell and return it with its :class:`Outcome`);
    ``slots`` is how many cells may be running at once."""

    slots = 1
    name = "base"

    def __init__(self, env: Environment, hook: Any) -> None:
        self.env = env
        self.hook = hook

    # -- subclass interface ------------------------------------------------------------------

    def _open(self) -> None:
        """Acquire workers before the first cell."""

    def _close(self) -> None:
        """Release workers (also after an error)."""

    def _launch(self, cell: Cell) -> None:
        raise NotImplementedError

    def _collect(self) -> tuple[Cell, Outcome]:
        raise NotImplementedError

    # -- scheduling --------------------------------------------------------------------------

    def run(self, plan: Plan, run_id: str | None = None) -> dict[str, Any]:
        run_id = run_id or uuid.uuid4().hex[:12]
        self.run_id = run_id
        self.hook.advarena_run_started(run_id=run_id, total_cells=len(plan.cells))
        summary: dict[str, Any] = {"run_id": run_id, "done": 0, "cached": 0, "failed": 0,
                                   "skipped": 0, "failures": [], "cached_kinds": {},
                                   "seconds": 0.0, "executor": self.name}
        # key -> ok (stored, may be read) | broken (failed or skipped)
        state: dict[str, str] = {}
        self._missing: set[str] = set()
        start_all = time.perf_counter()
        with watch_sigint():
            self._schedule(plan, state, summary)
        summary["seconds"] = time.perf_counter() - start_all
        # What the store found wrong (damaged weights, rows failing their digests: run again).
        summary["warnings"] = list(self.env.store.warnings)
        self.hook.advarena_run_finished(run_id=run_id, summary=summary)
        return summary

    def _schedule(self, plan: Plan, state: dict[str, str], summary: dict) -> None:
        waiting = list(plan.cells)  # topological order; started in this order when ready
        running: set[str] = set()
        self._open()
        try:
            while waiting or running:
                waiting = self._start_ready(waiting, running, state, summary)
                if not running:
                    if waiting:  # cannot happen with a plan from the planner
                        raise RuntimeError("cells wait on inputs that are not in the plan")
                    break
                cell, outcome = self._collect()
                running.discard(cell.key)
                self._finish(cell, outcome, state, summary)
        finally:
            self._close()

    def _start_ready(self, waiting: list[Cell], running: set[str], state: dict[str, str],
                     summary: dict) -> list[Cell]:
        """Resolve every cell whose inputs are settled (skip, reuse or start it, while
        slots are free); return the cells still waiting."""
        changed = True
        while changed:
            changed = False
            still: list[Cell] = []
            for cell in waiting:
                deps = [state.get(d) for d in cell.deps.values()]
                if "broken" in deps:
                    state[cell.key] = "broken"
                    summary["skipped"] += 1
                    self.hook.advarena_cell_finished(cell=cell, status="skipped", seconds=0.0,
                                                     error="an input cell failed")
                    changed = True
                elif any(d is None for d in deps):
                    still.append(cell)
                elif self._stored(cell):
                    self.env.remember(cell)
                    state[cell.key] = "ok"
                    summary["cached"] += 1
                    kinds = summary["cached_kinds"]
                    kinds[cell.kind] = kinds.get(cell.kind, 0) + 1
                    self.hook.advarena_cell_finished(cell=cell, status="cached", seconds=0.0,
                                                     error=None)
                    changed = True
                elif len(running) < self.slots:
                    self.hook.advarena_cell_started(cell=cell)
                    self._launch(cell)
                    running.add(cell.key)
                else:
                    still.append(cell)
            waiting = still
        return waiting

    def _stored(self, cell: Cell) -> bool:
        """Whether ``cell`` is stored with intact files (checked once a run: a cell found
        missing is run, and only this driver writes)."""
        if cell.key in self._missing:
            return False
        if self.env.store.done_cell(cell.key) is not None:
            return True
        self._missing.add(cell.key)
        return False

    def _finish(self, cell: Cell, outcome: Outcome, state: dict[str, str],
                summary: dict) -> None:
        if outcome.status == "data-error":
            raise DataError(outcome.reason)
        if outcome.status == "done":
            try:
                self._store_done(cell, outcome)
            except (TypeError, ValueError) as exc:  # an output that cannot be stored
                outcome = Outcome("failed", started=outcome.started, seconds=outcome.seconds,
                                  reason=f"the output of this cell cannot be stored: {exc}")
            else:
                self.env.remember(cell)
                state[cell.key] = "ok"
                summary["done"] += 1
                self.hook.advarena_cell_finished(cell=cell, status="done",
                                                 seconds=outcome.seconds, error=None)
                return
        self.env.store.record_failure(key=cell.key, kind=cell.kind, spec=cell.spec,
                                      labels=cell.labels, run_id=self.run_id,
                                      started=outcome.started, seconds=outcome.seconds,
                                      device=str(self.env.device), error=outcome.detail)
        state[cell.key] = "broken"
        summary["failed"] += 1
        summary["failures"].append({"cell": cell.title, "key": cell.key,
                                    "error": outcome.reason})
        self.hook.advarena_cell_finished(cell=cell, status="failed", seconds=outcome.seconds,
                                         error=outcome.reason)

    def _store_done(self, cell: Cell, outcome: Outcome) -> None:
        """Weights first (content-addressed files: a kill before the cell row commits leaves
        only an unreferenced file), then the cell, its metrics and artifact hashes in one
        transaction."""
        store = self.env.store
        header = outcome.header
        measurements = outcome.measurements
        if measurements is None:
            measurements = decode_measurements(header.get("measurements", []))
        artifacts = {name: store.put_tensors(t) for name, t in outcome.tensors.items()}
        artifacts.update({name: store.put_bytes(b) for name, b in outcome.blobs.items()})
        provenance = dict(header.get("provenance", {}), executor=self.name)
        store.record_cell(key=cell.key, kind=cell.kind, spec=cell.spec, labels=cell.labels,
                          run_id=self.run_id, started=outcome.started, seconds=outcome.seconds,
                          device=provenance.get("device", str(self.env.device)),
                          provenance=provenance, result=header.get("result", {}),
                          measurements=measurements, artifacts=artifacts)
