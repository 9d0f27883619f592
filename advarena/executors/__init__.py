"""Executors run a plan's cells in dependency order; the driver alone writes the store."""

from .local import LocalExecutor

__all__ = ["LocalExecutor"]
