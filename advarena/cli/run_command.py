"""``advarena run``: plan, execute, export, and say what happened."""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from pathlib import Path

from rich.console import Console

from ..device import resolve_device
from ..errors import AdvarenaError, DataError, SuiteError
from ..executors import make_executor
from ..overrides import apply_overrides
from ..plan import make_plan
from ..plugins import default_registry
from ..report.export import records, write_records
from ..runner import Environment, package_versions
from ..store import Store
from ..suite import check_seed, load_suite
from ..text import rich_escape
from .progress import RichProgress
from .summary_table import print_answer


def execute_run(console: Console, *, suite: str, defenses: list[str], datasets: list[str],
                protocols: list[str], store_dir: Path, device: str, seed: int | None,
                data_dir: Path | None, download: bool, output: Path | None,
                quiet: bool, executor: str = "local", address: str | None = None,
                cell_timeout: float | None = None, amp: str | None = None,
                channels_last: bool = False, overrides: dict | None = None,
                externals=None, summary_out: dict | None = None,
                dry_run: bool = False) -> int:
    """Run and return the exit status: 0 complete, 1 incomplete (some cells failed).

    Everything the user can get wrong is checked before the store is opened (suite, plugin
    names and parameters, data directory, device, output path, executor options), so a bad
    command leaves the store as it was.

    ``overrides``: suite values from the command line (:mod:`advarena.overrides`);
    ``externals(registry, suite)``: the external models to evaluate beside the reference
    (``advarena evaluate``); ``summary_out`` receives the executor's summary. ``dry_run``
    plans, estimates and prints the cost (:mod:`advarena.estimate`) and returns 0: nothing
    runs and the store is only read."""
    if address is not None and executor != "ray":
        raise AdvarenaError("--address names a Ray cluster; use it with --executor ray")
    reg = default_registry()
    for w in reg.warnings:  # e.g. a plugin that failed to import, skipped
        print(f"warning: {w}", file=sys.stderr)
    try:
        s = load_suite(suite)
    except UnicodeDecodeError:
        raise SuiteError(f"cannot read suite file {suite}: it is not UTF-8 text; pass --suite "
                         f"with a TOML file") from None
    s, defenses = apply_overrides(s, reg, list(defenses), **(overrides or {}))
    cell_timeout = _cell_timeout(cell_timeout, s)
    if amp:
        s = dataclasses.replace(s, train={**s.train, "amp": amp})
    if datasets:
        for d in datasets:
            reg.entry("datasets", d)
        s = dataclasses.replace(s, datasets=list(datasets))
    if seed is not None:
        s = dataclasses.replace(s, seeds=[check_seed(seed, "--seed")])
    for d in s.datasets:
        cls = reg.get("datasets", d)
        if cls.needs_data_dir and data_dir is None and not download and not dry_run:
            raise DataError(f"dataset '{d}' is read from disk; pass --data-dir DIR pointing at "
                            f"its files (or add --download to fetch them)")
    if data_dir is not None and not data_dir.is_dir() and not download and not dry_run:
        raise DataError(f"--data-dir {data_dir} is not a directory; pass the directory that "
                        f"holds the dataset files")
    exts = externals(reg, s) if externals is not None else []
    if exts and not defenses:
        defenses = [s.reference]
    plan = make_plan(s, reg, list(defenses) or None, list(protocols) or None, exts)
    dev = resolve_device(device)
    if amp == "fp16" and dev.type != "cuda":
        raise AdvarenaError(f"--amp fp16 needs a CUDA device (this run is on {dev}); use --amp "
                            f"bf16 on the CPU")
    if dry_run:
        _print_estimate(console, plan, reg, store_dir, dev, data_dir)
        return 0
    if output is not None:
        _check_writable(output)
    _check_store_dir(store_dir)
    owns_ray = False
    try:
        if executor == "ray":  # reach the cluster before anything is written
            from ..executors.ray_executor import connect

            owns_ray = connect(address)
        summary = _execute(console, reg, s, plan, store_dir=store_dir, dev=dev, device=device,
                           data_dir=data_dir, download=download, output=output, quiet=quiet,
                           executor=executor, address=address, cell_timeout=cell_timeout,
                           channels_last=channels_last)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    _report(console, summary, plan, store_dir, output)
    if summary_out is not None:
        summary_out.update(summary)
    print_answer(console, store_dir, plan)
    return 0 if not summary["failed"] and not summary["skipped"] else 1


def _execute(console: Console, reg, s, plan, *, store_dir: Path, dev, device: str,
             data_dir: Path | None, download: bool, output: Path | None, quiet: bool,
             executor: str, address: str | None, cell_timeout: float | None,
             channels_last: bool) -> dict:
    store = Store.open(store_dir)
    try:
        env = Environment(reg, store, dev, data_dir, download, channels_last=channels_last,
                          device_request=device)
        run_id = uuid.uuid4().hex[:12]
        store.start_run(run_id, s.to_dict(), sys.argv[1:], str(dev), package_versions())
        listener = RichProgress(console, quiet=quiet)
        reg.pm.register(listener)
        status = "interrupted"
        try:
            with listener:
                summary = make_executor(executor, env, reg.pm.hook, address=address,
                                        cell_timeout=cell_timeout).run(plan, run_id)
            status = "complete" if not (summary["failed"] or summary["skipped"]) \
                else "incomplete"
        finally:
            reg.pm.unregister(listener)
            store.finish_run(run_id, status)
        if output is not None:
            write_records(output, records(store))
    finally:
        store.close()
    return summary


def _print_estimate(console: Console, plan, reg, store_dir: Path, dev, data_dir) -> None:
    """``--dry-run``: the plan's cells and their estimated cost, one table."""
    from rich.table import Table

    from ..estimate import estimate_plan

    est = estimate_plan(plan, reg, store_dir=store_dir, device=dev,
                        data_dir=data_dir if data_dir is not None and data_dir.is_dir() else None,
                        calibration_cap=256 if dev.type == "cpu" else None)
    table = Table(title=f"dry run of suite {rich_escape(plan.suite.name)} on {dev} "
                        "(estimates: nothing was run or stored)", title_justify="left")
    for col in ("cells", "count", "stored (reused)", "to run", "forward passes",
                "backward passes", "estimated time"):
        table.add_column(col, justify="left" if col == "cells" else "right")
    rows = est.by_kind()
    for kind, r in list(rows.items()) + [("total", est.totals())]:
        table.add_row(kind, *_cost_cells(r))
    console.print(table)
    protocols = Table(title="prepare and eval cells by protocol", title_justify="left")
    for col in ("protocol", "count", "stored (reused)", "to run", "forward passes",
                "backward passes", "estimated time"):
        protocols.add_column(col, justify="left" if col == "protocol" else "right")
    for name, r in est.by_protocol().items():
        protocols.add_row(rich_escape(name), *_cost_cells(r))
    console.print(protocols)
    for name, c in est.calibration.items():
        console.print(f"calibration {rich_escape(name)}: {c['forward_seconds'] * 1e6:.3g} us "
                      f"forward, {c['backward_seconds'] * 1e6:.3g} us backward per example "
                      f"(batch {c['batch_size']})")
    for note in est.notes:
        console.print(rich_escape(note), soft_wrap=True)
    console.print(f"passes are example-passes through a network (advarena.trainer.PASS_UNIT); "
                  f"time = passes x calibrated seconds per pass, one cell after another "
                  f"(probes and calibration took {est.probe_seconds:.1f}s); see "
                  f"advarena.estimate for what the estimate leaves out")


def _cost_cells(r: dict) -> list[str]:
    return [f"{r['cells']:,}", f"{r['stored']:,}", f"{r['cells'] - r['stored']:,}",
            f"{r['forward']:.3g}", f"{r['backward']:.3g}", _duration(r["seconds"])]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _cell_timeout(option: float | None, s) -> float | None:
    """``--cell-timeout`` wins over the suite's ``[eval] cell_timeout``."""
    if option is not None:
        return float(option)
    value = s.eval.get("cell_timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SuiteError(f"suite {s.source}: [eval] cell_timeout must be a number of seconds "
                         f"> 0, got {value!r}")
    return float(value)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(path: Path) -> None:
    """Refuse an --output the run could not write, before any work is done."""
    if path.is_dir():
        raise AdvarenaError(f"--output {path} is a directory; pass a file path such as "
                            f"results.json")
    parent = _existing_ancestor(path.parent if str(path.parent) else Path("."))
    if not parent.is_dir():
        raise AdvarenaError(f"cannot write --output {path}: {parent} is not a directory")
    if not _can_write(parent):
        raise AdvarenaError(f"cannot write --output {path}: {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise AdvarenaError(f"cannot write --output {path}: the file is read-only")


def _check_store_dir(store_dir: Path) -> None:
    """A store that cannot be written fails before it is opened, with the path named."""
    if store_dir.exists():
        if not store_dir.is_dir():
            return  # Store.open explains
        if not _can_write(store_dir):
            raise AdvarenaError(f"cannot write to the store {store_dir}: the directory is "
                                f"read-only; pass --store DIR naming a writable directory")
        return
    parent = _existing_ancestor(store_dir)
    if parent.is_dir() and not _can_write(parent):
        raise AdvarenaError(f"cannot create the store {store_dir}: {parent} is not writable; "
                            f"pass --store DIR naming a writable directory")


def _can_write(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def _report(console: Console, summary: dict, plan, store_dir: Path, output: Path | None) -> None:
    kinds = summary["cached_kinds"]
    reused = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"
    console.print(f"run {summary['run_id']}: {summary['done']} cells run, {summary['cached']} "
                  f"reused from the store ({reused}), {summary['failed']} failed, "
                  f"{summary['skipped']} skipped, in {summary['seconds']:.1f}s")
    console.print(f"defenses: {rich_escape(', '.join(plan.defenses))}; store: "
                  f"{rich_escape(store_dir)}")
    for w in summary.get("warnings", ()):  # one line each: paths and hashes stay whole
        console.print(f"[yellow]warning[/] {rich_escape(w)}", soft_wrap=True)
    for f in summary["failures"]:
        console.print(f"[red]failed[/] {rich_escape(f['cell'])}: {rich_escape(f['error'])}")
    if output is not None:
        console.print(f"records exported to {output}")
    if summary["failed"] or summary["skipped"]:
        console.print("the run is incomplete: fix the failures above and run again; stored "
                      "cells are kept")
