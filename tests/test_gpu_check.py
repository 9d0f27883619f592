"""``benchmarks/gpu_check.sh`` in its CPU mode (``--device cpu --smoke``), as CI runs it: every
check runs (or is skipped for a stated reason), and the one table it prints names each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CHECKS = ("cuda-tests", "pgd-bench", "train-amp-bf16", "train-chlast", "paper-suite",
          "paper-suite-ray")


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def test_bad_options_are_one_line():
    for args in (["--device", "tpu"], ["--frobnicate"], ["--dataset", "cifar10"]):
        proc = run(*args, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "gpu_check:" in proc.stderr


def test_cpu_smoke_mode_runs_every_check(tmp_path):
    proc = run("--device", "cpu", "--smoke", "--keep", str(tmp_path / "work"))
    out = proc.stdout
    rows = dict(re.findall(r"^\| ([a-z0-9-]+) \| (pass|fail|skip) \|", out, flags=re.M))
    assert set(rows) == set(CHECKS), out + proc.stderr
    failed = [name for name, st in rows.items() if st == "fail"]
    assert not failed and proc.returncode == 0, out + proc.stderr
    assert rows["pgd-bench"] == "pass" and re.search(r"pgd/limit \d+\.\d+", out)
    assert rows["train-amp-bf16"] == rows["train-chlast"] == "pass"
    assert re.search(r"device cpu", out)
    if in_ci():  # CI installs the Fashion-MNIST files: the paper suite must really run there
        assert rows["paper-suite"] == "pass", out
    elif rows["paper-suite"] == "skip":
        pytest.skip("no Fashion-MNIST files here: the paper-suite checks were skipped")
    assert "device cpu" in out.split("| paper-suite |")[1].splitlines()[0]
