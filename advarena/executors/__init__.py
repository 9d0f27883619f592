"""Executors run a plan's cells in dependency order; the driver alone writes the store.

* ``local`` (:class:`LocalExecutor`, the default): one cell after another on this machine, in
  this process, or in a child process (cells with third-party plugins, and every cell when a
  cell time limit is set: it is killed at the limit).
* ``ray`` (:class:`RayExecutor`): one Ray task a cell, GPUs requested where the cluster has them.
"""

from __future__ import annotations

from typing import Any

from .base import Executor, Outcome
from .local import LocalExecutor
from .ray_executor import RayExecutor

EXECUTORS = ("local", "ray")


def make_executor(name: str, env: Any, hook: Any, *, address: str | None = None,
                  cell_timeout: float | None = None) -> Executor:
    if name == "ray":
        return RayExecutor(env, hook, address=address, cell_timeout=cell_timeout)
    return LocalExecutor(env, hook, cell_timeout=cell_timeout)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "Outcome", "RayExecutor", "make_executor"]
