"""Runtime guards around every plugin call (see ``docs/threat-model.md``, "Runtime isolation").

* :func:`plugin_state` saves torch's process-wide settings (grad mode, default dtype and
  device, deterministic algorithms, thread count, anomaly mode, autocast, TF32 and cuDNN
  flags), the working directory and the SIGINT handler before a plugin call and restores them
  after it. A plugin that changed one fails its cell, named: its own numbers were computed in
  a state it changed, and every later cell would otherwise run in it. So does a plugin that
  leaves a non-daemon thread running (it would keep a finished run alive).
* :class:`ModelGuard` holds the harness's own copy of the parameters and buffers of the
  models a cell hands to plugins and tells which plugin changed them.
* :func:`watch_sigint` tells a genuine Ctrl-C (the signal arrived) from a plugin that raises
  ``KeyboardInterrupt`` itself: the first stops the run, the second fails the plugin's cell.

The global RNG is not restored after each call: every cell seeds it afresh when it starts
(:func:`advarena.device.seed_everything`), so a plugin's draws cannot reach another cell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


class CellError(Exception):
    """A cell failed because of one plugin; the message names the plugin and the reason."""


# -- process-wide torch settings --------------------------------------------------------------

def _autocast(device: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _set_autocast(device: str, value: tuple[bool, torch.dtype]) -> None:
    torch.set_autocast_enabled(device, value[0])
    torch.set_autocast_dtype(device, value[1])


def _cudnn() -> tuple[bool, bool, bool, bool]:
    b = torch.backends.cudnn
    return b.enabled, b.benchmark, b.deterministic, b.allow_tf32


def _set_cudnn(value: tuple[bool, bool, bool, bool]) -> None:
    b = torch.backends.cudnn
    b.enabled, b.benchmark, b.deterministic, b.allow_tf32 = value


def _set_tf32(value: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = value


def _sigint() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGINT)


def _set_sigint(handler: Any) -> None:
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


# name -> (read, restore). Reading all of them costs microseconds: no tensor is touched.
SETTINGS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    # cpu is also what "unset" reads as; restoring unset avoids a device mode on every call
    "default device": (torch.get_default_device,
                       lambda v: torch.set_default_device(None if v == torch.device("cpu")
                                                          else v)),
    "deterministic algorithms": (
        lambda: (torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    "intra-op threads": (torch.get_num_threads, torch.set_num_threads),
    "anomaly mode": (lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
                     lambda v: torch.set_anomaly_enabled(v[0], v[1])),
    "float32 matmul precision": (torch.get_float32_matmul_precision,
                                 torch.set_float32_matmul_precision),
    "CUDA matmul TF32": (lambda: torch.backends.cuda.matmul.allow_tf32, _set_tf32),
    "cuDNN flags": (_cudnn, _set_cudnn),
    "CPU autocast": (lambda: _autocast("cpu"), lambda v: _set_autocast("cpu", v)),
    "CUDA autocast": (lambda: _autocast("cuda"), lambda v: _set_autocast("cuda", v)),
    "working directory": (os.getcwd, os.chdir),
    "SIGINT handler": (_sigint, _set_sigint),
}


def snapshot() -> dict[str, Any]:
    return {name: read() for name, (read, _) in SETTINGS.items()}


def restore(saved: dict[str, Any]) -> list[str]:
    """Put back every setting that differs from ``saved``; return what had changed."""
    changed = []
    now = snapshot()
    for name, value in saved.items():
        if now[name] != value:
            changed.append(f"{name} {_show(value)} -> {_show(now[name])}")
            try:
                SETTINGS[name][1](value)
            except Exception:  # noqa: BLE001 - e.g. the old directory is gone; still reported
                pass
    return changed


def _show(value: Any) -> str:
    return getattr(value, "__name__", None) or str(value)


# Set when a plugin left something behind that restoring cannot undo (a running thread): a
# worker process that saw it is replaced before its next cell.
POISONED = threading.Event()

# Violations seen in the current cell: a plugin may catch the CellError raised at the call,
# but the cell still fails (see :func:`advarena.runner.run_cell`).
INCIDENTS: list[str] = []


def _alive_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


@contextlib.contextmanager
def plugin_state(label: str) -> Iterator[None]:
    """Save the process-wide settings, run the block (a plugin call), restore them; raise a
    :class:`CellError` naming ``label`` if the call changed any, or left a non-daemon thread
    running. A failing call's own exception wins (its cell fails anyway)."""
    saved = snapshot()
    threads = _alive_threads()
    try:
        yield
    except BaseException:
        restore(saved)
        raise
    problems = []
    changed = restore(saved)
    if changed:
        problems.append(f"{label} changed global torch state and did not restore it "
                        f"({'; '.join(changed)}); the harness restored it")
    stray = [t for t in threading.enumerate()
             if t.ident not in threads and t.is_alive() and not t.daemon]
    if stray:
        POISONED.set()
        problems.append(f"{label} left {len(stray)} non-daemon thread(s) running "
                        f"({', '.join(repr(t.name) for t in stray[:3])}): a plugin's threads "
                        f"must end (or be daemons) before its call returns")
    if problems:
        INCIDENTS.extend(problems)
        raise CellError("; ".join(problems))


# -- models ------------------------------------------------------------------------------------

class ModelGuard:
    """The harness's copy of the parameters and buffers of the models a cell lends to plugins
    (``{role: model}``); :meth:`check` fails the cell naming the plugin that changed one."""

    def __init__(self, models: dict[str, nn.Module | None]) -> None:
        self.models = {role: (m, _state(m)) for role, m in models.items() if m is not None}

    def check(self, label: str) -> None:
        for role, (model, saved) in self.models.items():
            changed = _changed(saved, _state(model, copy=False))
            if changed:
                msg = (f"{label} changed the parameters or buffers of {role} ({changed}); "
                       f"nothing computed after it is stored")
                INCIDENTS.append(msg)
                raise CellError(msg)


def _state(model: nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.Tensor):
            out[name] = t.detach().clone() if copy else t.detach()
    return out


def _changed(saved: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> str:
    if saved.keys() != now.keys():
        diff = sorted(set(saved) ^ set(now))
        return f"tensors added or removed, e.g. '{diff[0]}'"
    for name, a in saved.items():
        b = now[name]
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return f"'{name}' replaced"
        if not torch.equal(a, b):
            if a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all()):
                continue  # NaN == NaN: unchanged
            return f"'{name}' modified"
    return ""


# -- Ctrl-C ------------------------------------------------------------------------------------

_SIGINT_SEEN = threading.Event()


def user_interrupted() -> bool:
    """Whether the user pressed Ctrl-C (SIGINT arrived) during the run being watched."""
    return _SIGINT_SEEN.is_set()


@contextlib.contextmanager
def watch_sigint() -> Iterator[None]:
    """During the block, SIGINT also sets the flag :func:`user_interrupted` reads, then does
    what it did before (raise KeyboardInterrupt). Only in the main thread, and only where
    SIGINT is not ignored."""
    _SIGINT_SEEN.clear()
    previous = _sigint()
    if previous is None or previous is signal.SIG_IGN:
        yield
        return

    def on_sigint(signum, frame):
        _SIGINT_SEEN.set()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
