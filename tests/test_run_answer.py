"""A run ends with its answer (each evaluated model's headline record with its interval and its
raised flags) and shows an ETA while it runs."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from advarena.cli.progress import RichProgress
from advarena.plan import Cell, Plan
from advarena.report.summary import headline_rows
from advarena.store import Store
from advarena.api.records import Measurement


def _cell(key, kind, labels, deps=None):
    return Cell(key, kind, {}, labels, deps or {})


def test_headline_rows_take_the_record_marked_headline(tmp_path):
    store = Store.open(tmp_path)
    lab = {"dataset": "d", "architecture": "a", "defense": "x", "params": {}, "seed": 0}
    common = dict(run_id="r", started=0.0, seconds=0.0, device="cpu", provenance={},
                  result={}, artifacts={})
    store.record_cell(key="e", kind="eval", spec={}, labels={**lab, "protocol": "white-box"},
                      measurements=[
                          Measurement("accuracy", 0.9, 100, 0.8, 0.95),
                          Measurement("worst_case_accuracy", 0.2, 100, 0.1, 0.3, "worst-case",
                                      0.3, {"headline": False}),
                          Measurement("worst_case_accuracy", 0.5, 100, 0.4, 0.6, "worst-case",
                                      0.1, {"headline": True})], **common)
    store.record_cell(key="f", kind="flags", spec={}, labels={**lab, "protocol": "sanity"},
                      measurements=[Measurement("flag_a", 1.0, 1), Measurement("flag_b", 0.0,
                                                                                1)], **common)
    ref_flags = {**lab, "defense": "none"}
    plan = Plan(None, [_cell("t", "train", {**lab, "role": "defense"}),
                       _cell("r", "train", {**ref_flags, "role": "reference"}),
                       _cell("e", "eval", lab, {"model": "t", "reference": "r"}),
                       _cell("re", "eval", ref_flags, {"model": "r", "reference": "r"}),
                       _cell("f", "flags", lab, {"eval:white-box": "e",
                                                 "reference-eval:white-box": "re"})], ["x"])
    rows = headline_rows(store, plan)
    assert [r["defense"] for r in rows] == ["x", "none"]
    row = rows[0]
    assert row["headline"]["eps"] == 0.1 and row["headline"]["value"] == 0.5
    assert row["headline"]["ci_low"] == 0.4 and row["clean"]["value"] == 0.9
    assert row["flags"] == ["a"]  # the flags cell belongs to x, not to its reference
    assert rows[1]["headline"] is None and rows[1]["flags"] is None  # nothing stored for it


def test_a_headline_protocols_record_comes_first(tmp_path):
    store = Store.open(tmp_path)
    lab = {"dataset": "d", "architecture": "a", "defense": "x", "params": {}, "seed": 0}
    common = dict(run_id="r", started=0.0, seconds=0.0, device="cpu", provenance={},
                  result={}, artifacts={})
    store.record_cell(key="e", kind="eval", spec={}, labels={**lab, "protocol": "white-box"},
                      measurements=[Measurement("worst_case_accuracy", 0.5, 100, 0.4, 0.6,
                                                "worst-case", 0.1, {"headline": True})],
                      **common)
    store.record_cell(key="h", kind="headline", spec={}, labels={**lab, "protocol": "headline"},
                      measurements=[Measurement("headline_accuracy", 0.3, 100, 0.2, 0.4,
                                                "worst-case", 0.1, {"headline": True})],
                      **common)
    plan = Plan(None, [_cell("t", "train", {**lab, "role": "defense"}),
                       _cell("e", "eval", lab, {"model": "t"}),
                       _cell("h", "headline", lab, {"eval:white-box": "e"})], ["x"])
    (row,) = headline_rows(store, plan)
    assert row["headline"]["metric"] == "headline_accuracy" and row["flags"] is None


def test_eta_is_mean_cell_time_times_cells_left():
    p = RichProgress(Console(file=io.StringIO()), quiet=True)
    with p:
        p.advarena_run_started(run_id="r", total_cells=10)
        assert p.eta_seconds() is None
        cell = SimpleNamespace(title="c")
        p.advarena_cell_finished(cell=cell, status="cached", seconds=0.0, error=None)
        assert p.eta_seconds() is None  # stored cells say nothing about speed
        for s in (2.0, 4.0):
            p.advarena_cell_started(cell=cell)
            p.advarena_cell_finished(cell=cell, status="done", seconds=s, error=None)
        assert p.eta_seconds() == 3.0 * 7
        assert p.eta_text() == "ETA ~21s"
