"""Running cells in a child process, so a plugin that hangs can be stopped.

One worker process (started with ``spawn``: safe with CUDA and with the driver's threads) runs
the cells one after another, each under the cell time limit. It builds its own
:class:`~advarena.runner.Environment` once (the same plugins, the driver's store opened
read-only) and keeps its dataset cache between cells. A cell that overruns the limit gets its
worker killed (SIGKILL) and is recorded as failed, naming the plugin it was in; the next cell
starts a fresh worker. A worker that dies (a plugin crashing the interpreter, ``os._exit``,
even with status 0) fails its cell the same way, and so does one whose plugin left a thread
running (the worker is then replaced). The worker ignores SIGINT: Ctrl-C is the driver's.

Messages are JSON plus raw safetensors bytes over a pipe (``send_bytes``): the driver never
unpickles anything a worker sends.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import AdvarenaError
from ..plan import Cell
from ..runner import WorkerSettings, cell_from_dict, cell_plugins, cell_to_dict

# Building the worker's environment imports torch and every plugin: allow for a slow machine.
START_TIMEOUT = 300.0


class WorkerDied(Exception):
    pass


def _send(conn, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def _recv(conn) -> dict[str, Any]:
    return json.loads(conn.recv_bytes())


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this worker when the driver dies (even by SIGKILL), so a killed run
    leaves no orphan computing on."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


def _child_main(conn, settings: WorkerSettings, parent: int) -> None:
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the driver alone handles it (and stops this
    # worker), so any KeyboardInterrupt in here is a plugin's, failing its cell.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from ..runner import Environment, run_cell_encoded

        env = Environment.from_settings(settings)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, then exit
        _send(conn, {"type": "fatal", "reason": f"{type(exc).__name__}: {exc}"})
        return
    env.activity.listener = lambda label: _send(conn, {"type": "activity", "label": label})
    _send(conn, {"type": "ready"})
    while True:
        try:
            message = _recv(conn)
        except (EOFError, OSError):
            return
        if message.get("type") != "cell":
            return
        cell = cell_from_dict(message["cell"])

        def progress(stage: str, done: int, total: int) -> None:
            _send(conn, {"type": "progress", "stage": stage, "done": done, "total": total})

        out = run_cell_encoded(cell, env, progress)
        blobs = out.pop("blobs", {})
        out["type"] = "result"
        out["blob_names"] = list(blobs)
        _send(conn, out)
        for name in out["blob_names"]:
            conn.send_bytes(blobs[name])


class ChildWorker:
    """One spawned worker process and the pipe to it."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.proc = None
        self.conn = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_child_main, args=(child, self.settings, os.getpid()),
                                name="advarena-cell-worker")
        self.proc.start()
        child.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                message = self._next(deadline)
            except WorkerDied:
                code = self.proc.exitcode
                self.stop(kill=True)
                raise AdvarenaError(f"the cell worker process exited while starting (status "
                                    f"{code})") from None
            if message is None:
                self.stop(kill=True)
                raise AdvarenaError(f"the cell worker process did not start within "
                                    f"{START_TIMEOUT:.0f}s")
            if message["type"] == "ready":
                return
            if message["type"] == "fatal":
                self.stop()
                raise AdvarenaError(f"the cell worker process could not start: "
                                    f"{message['reason']}")

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next message, None at the deadline; raises WorkerDied if the process ended."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                if self.conn.poll(min(remaining, 0.5)):
                    return _recv(self.conn)
            except (EOFError, OSError):
                raise WorkerDied from None
            if not self.proc.is_alive() and not self.conn.poll(0):
                raise WorkerDied

    def run(self, cell: Cell, timeout: float | None,
            on_progress: Callable[[str, int, int], None]) -> dict[str, Any]:
        """Run ``cell``; return :func:`~advarena.runner.run_cell_encoded`'s answer, or a
        failure if the cell overran ``timeout`` seconds or the worker died."""
        if not self.alive():
            self.start()
        activity = ""
        try:
            _send(self.conn, {"type": "cell", "cell": cell_to_dict(cell)})
        except OSError:  # the idle worker went away: start another
            self.stop(kill=True)
            self.start()
            _send(self.conn, {"type": "cell", "cell": cell_to_dict(cell)})
        deadline = time.monotonic() + (timeout if timeout else float("inf"))
        try:
            while True:
                message = self._next(deadline)
                if message is None:
                    self.stop(kill=True)
                    where = activity or cell_plugins(cell)
                    return {"status": "failed",
                            "reason": f"{where} timed out: still running after the cell time "
                                      f"limit of {timeout:g}s; its worker process was killed"}
                kind = message["type"]
                if kind == "activity":
                    activity = message["label"]
                elif kind == "progress":
                    on_progress(message["stage"], message["done"], message["total"])
                elif kind == "result":
                    try:
                        message["blobs"] = {name: self.conn.recv_bytes()
                                            for name in message.pop("blob_names", [])}
                    except (EOFError, OSError):
                        raise WorkerDied from None
                    if message.pop("restart", False):  # a plugin's thread still runs in it
                        self.stop(kill=True)
                    return message
        except WorkerDied:
            if self.proc is not None:
                self.proc.join(timeout=5.0)
            code = self.proc.exitcode if self.proc is not None else None
            self.stop(kill=True)
            where = activity or cell_plugins(cell)
            how = (f"was killed by signal {-code}" if isinstance(code, int) and code < 0
                   else f"exited with status {code}")
            return {"status": "failed",
                    "reason": f"{where}: the cell's worker process {how} (a crash inside the "
                              f"plugin, or it exited)"}

    def stop(self, kill: bool = False) -> None:
        """End the worker: SIGKILL with ``kill`` (a cell overran), else a polite EOF first."""
        if self.proc is None:
            return
        try:
            if kill:
                self.proc.kill()
            if self.conn is not None:
                self.conn.close()
            self.proc.join(timeout=2.0)
        finally:
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(timeout=10.0)
            self.proc = None
            self.conn = None
