"""``advarena run``: plan, execute, export, and say what happened."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..device import resolve_device
from ..errors import AdvarenaError, DataError
from ..executors import LocalExecutor
from ..plan import make_plan
from ..plugins import default_registry
from ..report.export import records, write_records
from ..runner import Environment, package_versions
from ..store import Store
from ..suite import load_suite
from .progress import RichProgress


def execute_run(console: Console, *, suite: str, defenses: list[str], datasets: list[str],
                protocols: list[str], store_dir: Path, device: str, seed: int | None,
                data_dir: Path | None, download: bool, output: Path | None,
                quiet: bool) -> int:
    """Run and return the exit status: 0 complete, 1 incomplete (some cells failed)."""
    reg = default_registry()
    s = load_suite(suite)
    if datasets:
        for d in datasets:
            reg.entry("datasets", d)
        s = dataclasses.replace(s, datasets=list(datasets))
    if seed is not None:
        s = dataclasses.replace(s, seeds=[seed])
    for d in s.datasets:
        cls = reg.get("datasets", d)
        if cls.needs_data_dir and data_dir is None and not download:
            raise DataError(f"dataset '{d}' is read from disk; pass --data-dir DIR pointing at "
                            f"its files (or add --download to fetch them)")
    if data_dir is not None and not data_dir.is_dir() and not download:
        raise DataError(f"--data-dir {data_dir} is not a directory; pass the directory that "
                        f"holds the dataset files")
    plan = make_plan(s, reg, list(defenses) or None, list(protocols) or None)
    dev = resolve_device(device)
    if output is not None:
        _check_writable(output)
    store = Store.open(store_dir)
    try:
        env = Environment(reg, store, dev, data_dir, download)
        run_id = uuid.uuid4().hex[:12]
        store.start_run(run_id, s.to_dict(), sys.argv[1:], str(dev), package_versions())
        listener = RichProgress(console, quiet=quiet)
        reg.pm.register(listener)
        status = "interrupted"
        try:
            with listener:
                summary = LocalExecutor(env, reg.pm.hook).run(plan, run_id)
            status = "complete" if not summary["failed"] else "incomplete"
        finally:
            reg.pm.unregister(listener)
            store.finish_run(run_id, status)
        if output is not None:
            write_records(output, records(store))
    finally:
        store.close()
    _report(console, summary, plan, store_dir, output)
    return 0 if not summary["failed"] and not summary["skipped"] else 1


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AdvarenaError(f"--output {path} is a directory; pass a file path such as "
                            f"results.json")
    if parent.exists() and not (parent.is_dir() and _can_write(parent)):
        raise AdvarenaError(f"cannot write --output {path}: {parent} is not writable")


def _can_write(directory: Path) -> bool:
    import os

    return os.access(directory, os.W_OK)


def _report(console: Console, summary: dict, plan, store_dir: Path, output: Path | None) -> None:
    kinds = summary["cached_kinds"]
    reused = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"
    console.print(f"run {summary['run_id']}: {summary['done']} cells run, {summary['cached']} "
                  f"reused from the store ({reused}), {summary['failed']} failed, "
                  f"{summary['skipped']} skipped, in {summary['seconds']:.1f}s")
    console.print(f"defenses: {', '.join(plan.defenses)}; store: {store_dir}")
    for f in summary["failures"]:
        console.print(f"[red]failed[/] {escape(f['cell'])}: {escape(f['error'])}")
    if output is not None:
        console.print(f"records exported to {output}")
    if summary["failed"] or summary["skipped"]:
        console.print("the run is incomplete: fix the failures above and run again; stored "
                      "cells are kept")
