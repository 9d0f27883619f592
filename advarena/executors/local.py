"""The in-process executor (the default)."""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Iterable
from typing import Any

from ..errors import DataError
from ..plan import Cell, Plan
from ..runner import Environment, run_cell


class LocalExecutor:
    """Runs cells one after another in this process.

    A cell already stored (with intact weight files) is not run again. A cell that raises is
    recorded as failed with the reason, cells that read its output are skipped, and every
    other cell still runs. A missing dataset stops the run: it is the user's input, not a cell.
    """

    def __init__(self, env: Environment, hook: Any) -> None:
        self.env = env
        self.hook = hook

    def run(self, plan: Plan, run_id: str | None = None) -> dict[str, Any]:
        run_id = run_id or uuid.uuid4().hex[:12]
        store = self.env.store
        self.hook.advarena_run_started(run_id=run_id, total_cells=len(plan.cells))
        summary: dict[str, Any] = {"run_id": run_id, "done": 0, "cached": 0, "failed": 0,
                                   "skipped": 0, "failures": [], "cached_kinds": {},
                                   "seconds": 0.0}
        broken: set[str] = set()
        start_all = time.perf_counter()
        for cell in plan.cells:
            if any(dep in broken for dep in cell.deps.values()):
                broken.add(cell.key)
                summary["skipped"] += 1
                self.hook.advarena_cell_finished(cell=cell, status="skipped", seconds=0.0,
                                                 error="an input cell failed")
                continue
            if store.done_cell(cell.key) is not None:
                self.env.remember(cell)
                summary["cached"] += 1
                kinds = summary["cached_kinds"]
                kinds[cell.kind] = kinds.get(cell.kind, 0) + 1
                self.hook.advarena_cell_finished(cell=cell, status="cached", seconds=0.0,
                                                 error=None)
                continue
            self._run_one(cell, run_id, summary, broken)
        summary["seconds"] = time.perf_counter() - start_all
        self.hook.advarena_run_finished(run_id=run_id, summary=summary)
        return summary

    def _run_one(self, cell: Cell, run_id: str, summary: dict, broken: set[str]) -> None:
        store = self.env.store
        self.hook.advarena_cell_started(cell=cell)
        started = time.time()

        def progress(stage: str, done: int, total: int) -> None:
            self.hook.advarena_cell_progress(cell=cell, stage=stage, done=done, total=total)

        try:
            out, seconds = run_cell(cell, self.env, progress)
        except DataError:
            raise
        except Exception as exc:  # a plugin's fault fails its own cell only
            seconds = time.time() - started
            reason = f"{type(exc).__name__}: {exc}"
            store.record_failure(key=cell.key, kind=cell.kind, spec=cell.spec,
                                 labels=cell.labels, run_id=run_id, started=started,
                                 seconds=seconds, device=str(self.env.device),
                                 error=reason + "\n" + traceback.format_exc(limit=8))
            broken.add(cell.key)
            summary["failed"] += 1
            summary["failures"].append({"cell": cell.title, "key": cell.key, "error": reason})
            self.hook.advarena_cell_finished(cell=cell, status="failed", seconds=seconds,
                                             error=reason)
            return
        artifacts = {name: store.put_tensors(t) for name, t in out.tensors.items()}
        store.record_cell(key=cell.key, kind=cell.kind, spec=cell.spec, labels=cell.labels,
                          run_id=run_id, started=started, seconds=seconds,
                          device=str(self.env.device), provenance=out.provenance,
                          result=out.result, measurements=out.measurements,
                          artifacts=artifacts)
        self.env.remember(cell)
        summary["done"] += 1
        self.hook.advarena_cell_finished(cell=cell, status="done", seconds=seconds, error=None)


