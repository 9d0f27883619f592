"""Collect ``bench_*.py`` here (pytest's default only collects ``test_*.py``).

Run with ``pytest benchmarks --benchmark-only``. The default test run never sees this folder:
``testpaths = ["tests"]`` in pyproject.toml, and this conftest only applies under
``benchmarks/``.
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself: not a second time here.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
