"""Timing shared by the benchmarks: the device they run on, the thread count a run may pin
(``ADVARENA_BENCH_THREADS``), and a wall-clock timer that waits for queued CUDA work, so a
ratio taken in one run compares finished work on both sides."""

from __future__ import annotations

import os
import time

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

if os.environ.get("ADVARENA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["ADVARENA_BENCH_THREADS"]))


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Seconds ``fn()`` takes, with the device's queue drained before and after."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start
