"""The Ray executor: one Ray task a cell (``advarena run --executor ray [--address ADDR]``).

Task shape: a cell is submitted when every cell it reads is stored; the task gets the cell (plain
data) and :class:`~advarena.runner.WorkerSettings`, rebuilds the driver's environment in the
worker once per process (the same plugins; the driver's store opened read-only, so workers on
other machines need the store directory on a shared filesystem), runs the cell and returns plain
data: the result and metric records as JSON-ready dicts, weights as safetensors bytes. The
driver alone writes the store, exactly as the local executor does, so results are identical.

Resources: one CPU a task; where the cluster has GPUs, one GPU for each train, prepare and
evaluate cell (the sanity-flag cells only read metrics). At most as many cells are in flight
as the cluster has CPUs (GPUs, with a cell time limit), so a time limit counts from submission
without queueing in between. A cell that overruns the limit is cancelled with
``ray.cancel(force=True)``, which kills its worker process, and recorded as failed. Tasks are
never retried: a plugin's failure is deterministic.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..errors import AdvarenaError
from ..plan import Cell
from ..runner import (Environment, WorkerSettings, cell_from_dict, cell_plugins,
                      cell_to_dict)
from .base import Executor, Outcome

GPU_KINDS = ("train", "prepare", "eval")

# Per worker process: environments by (settings, device), so datasets load once per worker.
_ENVS: dict[tuple, Environment] = {}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise AdvarenaError("--executor ray needs Ray; install it with "
                            "pip install 'advarena[ray]'") from None
    return ray


def connect(address: str | None = None) -> bool:
    """Start or join a Ray cluster unless this process already has one; return whether this
    call did (so its caller shuts it down). ``address=None``: ``RAY_ADDRESS``, else a local
    instance without the dashboard."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a local instance, started for this run
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "(local)"
        raise AdvarenaError(f"cannot start or reach the Ray cluster {where}: "
                            f"{' '.join(str(exc).split())[:300]}; check --address") from None
    return True


def run_cell_task(cell_data: dict[str, Any], settings: WorkerSettings) -> dict[str, Any]:
    """The body of a cell's Ray task (runs in a Ray worker)."""
    import ray
    import torch

    from ..runner import run_cell_encoded

    has_gpu = bool(ray.get_gpu_ids())
    device = "cuda" if has_gpu and settings.device != "cpu" else "cpu"
    key = (settings, device)
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = Environment.from_settings(settings, device=torch.device(device))
    return run_cell_encoded(cell_from_dict(cell_data), env, lambda stage, done, total: None)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, env: Environment, hook: Any, *, address: str | None = None,
                 cell_timeout: float | None = None, owns_ray: bool = False) -> None:
        """``owns_ray``: shut Ray down at the end although it was started before the run
        (by :func:`connect`, as the CLI does before opening the store)."""
        super().__init__(env, hook)
        self.address = address
        self.cell_timeout = cell_timeout
        self._owns_ray = owns_ray
        self._running: dict[Any, tuple[Cell, float, float]] = {}  # ref -> cell, wall, mono
        self.gpus = 0.0

    def _open(self) -> None:
        ray = self.ray = _import_ray()
        if connect(self.address):
            self._owns_ray = True
        resources = ray.cluster_resources()
        self.gpus = float(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        self.slots = max(1, int(self.gpus)) if self.gpus and self.cell_timeout else cpus
        self.settings = self.env.worker_settings()
        self._task = ray.remote(run_cell_task)

    def _close(self) -> None:
        ray = getattr(self, "ray", None)
        if ray is None:
            return
        for ref in list(self._running):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass
        self._running.clear()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _launch(self, cell: Cell) -> None:
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, "retry_exceptions": False,
                                   "name": f"advarena {cell.title}"[:100]}
        if self.gpus and cell.kind in GPU_KINDS:
            options["num_gpus"] = 1
        ref = self._task.options(**options).remote(cell_to_dict(cell), self.settings)
        self._running[ref] = (cell, time.time(), time.monotonic())

    def _collect(self) -> tuple[Cell, Outcome]:
        ray = self.ray
        while True:
            timeout = None
            if self.cell_timeout:
                first = min(t0 for _, _, t0 in self._running.values())
                timeout = max(0.0, first + self.cell_timeout - time.monotonic())
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
            if ready:
                ref = ready[0]
                cell, started, t0 = self._running.pop(ref)
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, or Ray failed
                    text = " ".join(str(exc).split())[:300]
                    answer = {"status": "failed",
                              "reason": f"{cell_plugins(cell)}: its Ray task failed "
                                        f"({type(exc).__name__}): {text}"}
                return cell, Outcome.from_encoded(answer, started, time.monotonic() - t0)
            now = time.monotonic()
            for ref, (cell, started, t0) in list(self._running.items()):
                if now - t0 >= self.cell_timeout:
                    del self._running[ref]
                    ray.cancel(ref, force=True)
                    reason = (f"{cell_plugins(cell)} timed out: still running after the "
                              f"cell time limit of {self.cell_timeout:g}s; its Ray task was "
                              f"cancelled")
                    return cell, Outcome("failed", started=started, seconds=now - t0,
                                         reason=reason)
