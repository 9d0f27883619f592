"""End to end on real data: the official Fashion-MNIST files (gzip IDX, as Debian's
``dataset-fashion-mnist`` installs them) through a reduced paper suite: training, every
protocol, the leaderboard and ``advarena papers``.

Fashion-MNIST has MNIST's format and size, so it exercises everything the papers' MNIST suites
will. The files are looked for in ``$ADVARENA_FASHION_MNIST``, else
``/usr/share/datasets/fashion-mnist``. Without them the test is skipped, except in CI (``CI``
set), where it fails: ``.ci/run`` installs the package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import advarena
from advarena.papers.derive import smoke_suite
from test_cli import invoke  # main() in this process: (exit status, stdout, stderr)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
PROTOCOLS = {"white-box", "black-box", "ensemble-transfer", "minimal-perturbation",
             "loss-sensitivity", "training-cost"}


def data_dir() -> Path:
    folder = Path(os.environ.get("ADVARENA_FASHION_MNIST") or DEBIAN_DIR)
    if not all((folder / f).is_file() for f in FILES):
        hint = "apt-get install dataset-fashion-mnist, or set ADVARENA_FASHION_MNIST"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"the Fashion-MNIST files are missing in CI under {folder} ({hint})")
        pytest.skip(f"the Fashion-MNIST files are not under {folder} ({hint}); CI installs them")
    return folder


def test_the_official_files_load_whole():
    """Known answers of the distributed files: 60,000 + 10,000 images, 6,000 and 1,000 of
    each class."""
    splits = advarena.dataset("fashion-mnist").load(data_dir())
    assert splits.train.x.shape == (60000, 1, 28, 28) and splits.test.x.shape == (10000, 1, 28, 28)
    assert splits.train.y.bincount().tolist() == [6000] * 10
    assert splits.test.y.bincount().tolist() == [1000] * 10
    assert 0.0 <= float(splits.train.x.min()) and float(splits.train.x.max()) == 1.0


def reduced_suite(tmp_path: Path) -> Path:
    """The shipped ``paper-004-t1-reduced`` suite (004 Tables 1-2) on Fashion-MNIST, shrunk
    further for CI and with the protocols it lacks added (:func:`advarena.papers.derive.
    smoke_suite`), so that every protocol of the matrix runs."""
    path = tmp_path / "real.toml"
    path.write_text(smoke_suite("fashion-mnist"))
    return path


def test_a_reduced_paper_suite_runs_end_to_end_on_real_fashion_mnist(tmp_path, capsys):
    folder = data_dir()
    suite = reduced_suite(tmp_path)
    store, out_json = tmp_path / "store", tmp_path / "records.json"
    code, out, err = invoke(["run", "--suite", suite, "--store", store, "--data-dir", folder,
                             "--device", "cpu", "--quiet", "--output", out_json], capsys)
    assert code == 0, (out + err)[-3000:]
    records = json.loads(out_json.read_text())
    assert {r["dataset"] for r in records} == {"fashion-mnist"}
    assert PROTOCOLS <= {r["protocol"] for r in records}
    assert {r["defense"] for r in records} >= {"none", "e2sad"}
    clean = [r for r in records if r["protocol"] == "white-box" and r["metric"] == "accuracy"]
    assert clean and all(r["n"] == 100 for r in clean)
    # real images with their real labels are learnt well above chance (0.1) even in two
    # epochs on 450 of them; misaligned labels or misread pixels would stay near 0.1 (with
    # 100 examples, 0.3 is far outside chance's interval)
    ref = next(r for r in clean if r["defense"] == "none")
    assert ref["value"] > 0.3, ref["value"]
    for r in records:  # every accuracy interval brackets its value
        if r["ci_low"] is not None and r["value"] is not None:
            assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9
    code, out, err = invoke(["leaderboard", "--store", store, "--out", tmp_path / "lb",
                             "--format", "md,html", "--plots", "none"], capsys)
    assert code == 0, err
    board = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "fashion-mnist" in board and "e2sad" in board
    # the papers' tables are of MNIST: the suite ran (same name), nothing is matched
    code, out, err = invoke(["papers", "--store", store], capsys)
    assert code == 0, err
    assert "## 004-t1" in out and "0 of 45 cells measured" in out
