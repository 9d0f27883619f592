"""Results as data: ``advarena export`` (csv, json; parquet only with pyarrow),
``advarena.results(store)`` read-only, and ``advarena compare --store S A B`` pairing two
defenses of one store on the same examples."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch

import advarena
from advarena.api.records import EXPORT_KEYS
from advarena.report.export import RESULT_COLUMNS
from tests.test_cli import invoke

TINY = Path(__file__).parent / "suites" / "tiny.toml"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from advarena.cli.main import main

    path = tmp_path_factory.mktemp("export") / "store"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["run", "--suite", str(TINY), "--defense", "gda-brelu", "--store", str(path),
                  "--device", "cpu", "--quiet", "--protocol", "white-box"])
    finally:
        torch.set_num_threads(before)
    assert exc.value.code == 0
    return path


def test_results_frame_has_one_row_per_record(store):
    df = advarena.results(store)
    assert list(df.columns) == [*EXPORT_KEYS, *RESULT_COLUMNS]
    from advarena.store import Store

    s = Store.open(store, readonly=True)
    n = len(s.metrics())
    s.close()
    assert len(df) == n and set(df["defense"]) == {"none", "gda-brelu"}
    # Marked headline: each model's overall headline and its white-box worst case at that eps.
    head = df[df["headline"]]
    assert set(head["metric"]) == {"headline_accuracy", "worst_case_accuracy"}
    assert (head.groupby("defense")["metric"].nunique() == 2).all() and len(head) == 4
    assert df["weights_sha256"].str.len().eq(64).all()  # every record names its model's weights


def test_export_csv_and_json_round_trip(store, capsys, tmp_path):
    code, out, err = invoke(["export", "--store", store, "--format", "csv"], capsys)
    assert code == 0, err
    csv = pd.read_csv(io.StringIO(out))
    df = advarena.results(store)
    assert list(csv.columns) == list(df.columns) and len(csv) == len(df)
    assert csv["value"].tolist() == pytest.approx(df["value"].tolist())
    assert json.loads(csv["params"][0]) == df["params"][0]  # nested values as JSON text
    target = tmp_path / "r.json"
    code, out, err = invoke(["export", "--store", store, "--format", "json", "--out", target],
                            capsys)
    assert code == 0, err
    data = json.loads(target.read_text())
    assert len(data) == len(df) and isinstance(data[0]["value"], float)
    assert isinstance(data[0]["params"], dict)


def test_parquet_without_pyarrow_is_one_line(store, capsys, tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed")
    except ImportError:
        pass
    code, out, err = invoke(["export", "--store", store, "--format", "parquet", "--out",
                             tmp_path / "r.parquet"], capsys)
    assert code == 2 and "pyarrow" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_store_is_readable(store, tmp_path):
    import shutil

    copy = tmp_path / "ro"
    shutil.copytree(store, copy)
    for p in [copy, *copy.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        assert len(advarena.results(copy)) == len(advarena.results(store))
    finally:
        for p in [copy, *copy.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_compare_two_defenses_of_one_store(store, capsys):
    code, out, err = invoke(["compare", "--store", store, "none", "gda-brelu", "--format",
                             "json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = [r for r in result["rows"] if r["metric"] == "robust_accuracy"]
    assert rows and all(r["defense"] == "none vs gda-brelu" for r in rows)
    # same examples on both sides: the accuracies are tested pairwise
    assert all(r["method"].startswith("paired") or "mcnemar" in r["method"].lower()
               for r in rows), {r["method"] for r in rows}
    df = advarena.results(store)
    for r in rows:
        base = df[(df.defense == "none") & (df.metric == r["metric"]) & (df.attack == r["attack"])
                  & (df.eps == r["eps"])]["value"].item()
        assert r["base_value"] == pytest.approx(base)


def test_compare_store_unknown_name_is_one_line(store, capsys):
    code, out, err = invoke(["compare", "--store", store, "none", "fgsm-at"], capsys)
    assert code == 2 and "no records of 'fgsm-at'" in err and "gda-brelu" in err


def test_damaged_and_newer_stores_say_what_is_wrong(store, capsys, tmp_path):
    from tests.test_bad_input import newer_store

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.sqlite").write_bytes(b"not a database at all" * 10)
    for command in (["export", "--store", bad], ["leaderboard", "--store", bad, "--out",
                                                   tmp_path / "lb"]):
        code, out, err = invoke(command, capsys)
        assert code == 2 and "is damaged" in err and "writable" not in err
    code, out, err = invoke(["export", "--store", newer_store(tmp_path, store)], capsys)
    assert code == 2 and "newer advarena" in err
