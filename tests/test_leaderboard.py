"""Leaderboards: written from a real tiny run in three formats, built from hand-made stores for
ranking and escaping, numbers kept as numbers in JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from advarena.api.records import Measurement
from advarena.cli.main import main
from advarena.errors import AdvarenaError
from advarena.report.leaderboard import (build_tables, render_html, render_markdown,
                                         write_leaderboards)
from advarena.store import Store

TINY = Path(__file__).parent / "suites" / "tiny.toml"
PAYLOAD = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models train fastest on one thread, and on a CPU shared with other processes
    multi-threaded torch spins in its thread barriers (tens of times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- from a real run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    store, out = root / "store", root / "lb"
    with pytest.raises(SystemExit) as info:
        main(["run", "--suite", str(TINY), "--store", str(store), "--defense", "gda-brelu",
              "--quiet"])
    # the leaderboard reads finished cells only, so it is built (and tested) even when a run
    # ends incomplete; test_the_run_completed checks the run itself
    main(["leaderboard", "--store", str(store), "--out", str(out)])
    return store, out, info.value.code


def test_the_run_completed(board):
    store, _, code = board
    assert code == 0


def md_rows(md: str) -> list[list[str]]:
    rows = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| rank"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_leaderboard_files_are_written(board):
    _, out, _ = board
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.html", "leaderboard.json",
                                                     "leaderboard.md"]


def test_markdown_has_a_row_per_defense(board):
    _, out, _ = board
    rows = md_rows((out / "leaderboard.md").read_text())
    assert sorted(r[1] for r in rows) == ["gda-brelu", "none"]
    for r in rows:
        assert r[0].isdigit() and int(r[0]) >= 1


def test_json_rows_have_numbers_as_numbers(board):
    _, out, _ = board
    rows = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["defense"] for r in rows) == ["gda-brelu", "none"]
    import tomllib

    suite = tomllib.loads(TINY.read_text())
    for r in rows:
        assert isinstance(r["rank"], int) and r["rank"] >= 1
        assert isinstance(r["eps"], float) and r["eps"] == suite["protocols"]["white-box"][
            "headline_eps"]
        for stat in (r["clean_accuracy"], r["robust_accuracy"], *r["per_attack"].values()):
            assert isinstance(stat["value"], float)
            assert isinstance(stat["ci_low"], float) and isinstance(stat["ci_high"], float)
            assert isinstance(stat["n"], int) and stat["n"] == suite["eval"]["n_examples"]
        assert set(r["per_attack"]) == set(suite["protocols"]["white-box"]["attacks"])
        # worst case over attacks can be no better than any single attack or the clean score
        assert r["robust_accuracy"]["value"] <= min(s["value"] for s in r["per_attack"].values())
        assert r["robust_accuracy"]["value"] <= r["clean_accuracy"]["value"]
        for k in ("median_epoch_seconds", "passes_per_example", "data_copies", "overhead"):
            assert isinstance(r[k], float), k
    by = {r["defense"]: r for r in rows}
    assert all(r["overhead"] > 0 and r["median_epoch_seconds"] > 0 for r in rows)
    assert by["none"]["data_copies"] == 1.0
    assert by["gda-brelu"]["data_copies"] == suite["defense_params"]["gda-brelu"]["n"] + 1
    assert by["gda-brelu"]["paper"]  # taken from the plugin registry
    # the ranks follow the stated rule: 1 + rows whose interval lies entirely above
    for r in rows:
        above = sum(1 for o in rows
                    if o["robust_accuracy"]["ci_low"] > r["robust_accuracy"]["ci_high"])
        assert r["rank"] == 1 + above


def test_formats_agree(board):
    _, out, _ = board
    rows = {r["defense"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    md = {r[1]: r for r in md_rows((out / "leaderboard.md").read_text())}
    html = (out / "leaderboard.html").read_text()
    for name, r in rows.items():
        clean = f"{100 * r['clean_accuracy']['value']:.1f}"
        robust = f"{100 * r['robust_accuracy']['value']:.1f}"
        assert md[name][0] == str(r["rank"])
        assert md[name][4].startswith(clean)
        assert md[name][5].startswith(f"**{robust}**")
        assert f">{name}</td>" in html


def test_leaderboard_format_subset(board, tmp_path):
    store, _, _ = board
    s = Store.open(store, create=False)
    try:
        written = write_leaderboards(s, tmp_path / "only", ("json",))
    finally:
        s.close()
    assert list(written) == ["json"]
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["leaderboard.json"]


# -- hand-made stores -----------------------------------------------------------------------------

def add_model(store: Store, defense: str, robust: tuple[float, float, float], *,
              params: dict | None = None, clean: float = 0.95, epoch_seconds: float = 1.0,
              overhead: float = 1.0, role: str = "defense", attack: str = "fgsm",
              seed: int = 0, n: int = 100) -> None:
    """A train cell, a training-cost eval cell and a white-box eval cell (headline eps 0.1),
    labelled the way the planner labels them."""
    params = params or {}
    labels = {"dataset": "digits", "architecture": "cnn-001", "defense": defense,
              "params": params, "seed": seed}
    tag = f"{defense}-{json.dumps(params, sort_keys=True)}-{seed}"

    def cell(key, kind, extra_labels, ms):
        store.record_cell(key=key, kind=kind, spec={}, run_id="r",
                          labels={**labels, **extra_labels}, started=0.0, seconds=1.0,
                          device="cpu", provenance={}, result={}, measurements=ms,
                          artifacts={})

    cell(f"train-{tag}", "train", {"role": role}, [])
    cell(f"cost-{tag}", "eval", {"protocol": "training-cost"}, [
        Measurement("median_epoch_seconds", epoch_seconds, 2),
        Measurement("passes_per_example", 2.0, 2), Measurement("data_copies", 1.0, 2),
        Measurement("overhead", overhead, 3, overhead * 0.9, overhead * 1.1)])
    value, lo, hi = robust
    cell(f"wb-{tag}", "eval", {"protocol": "white-box"}, [
        Measurement("accuracy", clean, n, clean - 0.05, min(1.0, clean + 0.03)),
        Measurement("robust_accuracy", value, n, lo, hi, attack, 0.1, {"norm": "linf"}),
        Measurement("worst_case_accuracy", value, n, lo, hi, "worst-case", 0.1,
                    {"norm": "linf", "headline": True}),
        Measurement("worst_case_accuracy", value / 2, n, 0.0, hi, "worst-case", 0.3,
                    {"norm": "linf", "headline": False})])


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


def test_overlapping_intervals_share_rank(store):
    add_model(store, "none", (0.20, 0.12, 0.30), role="reference")
    add_model(store, "alpha", (0.80, 0.70, 0.88), epoch_seconds=3.0, overhead=2.5)
    add_model(store, "beta", (0.78, 0.68, 0.86))
    (table,) = build_tables(store)
    assert table["eps"] == 0.1 and table["threat_model"] == "linf"
    ranks = {r["defense"]: r["rank"] for r in table["rows"]}
    assert ranks == {"alpha": 1, "beta": 1, "none": 3}
    # shown best first, whatever the rank ties
    assert [r["defense"] for r in table["rows"]] == ["alpha", "beta", "none"]
    by = {r["defense"]: r for r in table["rows"]}
    assert by["alpha"]["overhead"] == pytest.approx(2.5)
    assert by["alpha"]["median_epoch_seconds"] == pytest.approx(3.0)
    assert by["none"]["overhead"] == pytest.approx(1.0)
    # only the headline eps makes the table
    assert by["alpha"]["robust_accuracy"]["value"] == 0.80


def test_separated_intervals_get_distinct_ranks(store):
    add_model(store, "none", (0.50, 0.45, 0.55), role="reference")
    add_model(store, "strong", (0.90, 0.85, 0.95))
    (table,) = build_tables(store)
    assert {r["defense"]: r["rank"] for r in table["rows"]} == {"strong": 1, "none": 2}


def test_same_defense_with_other_parameters_is_its_own_row(store):
    add_model(store, "none", (0.2, 0.1, 0.3), role="reference")
    add_model(store, "gda", (0.5, 0.4, 0.6), params={"n": 1})
    add_model(store, "gda", (0.6, 0.5, 0.7), params={"n": 10})
    (table,) = build_tables(store)
    gda = [r for r in table["rows"] if r["defense"] == "gda"]
    assert sorted(r["params"]["n"] for r in gda) == [1, 10]


def test_html_is_autoescaped_from_store(store):
    add_model(store, "none", (0.2, 0.1, 0.3), role="reference")
    add_model(store, PAYLOAD, (0.5, 0.4, 0.6), params={"note": PAYLOAD}, attack=PAYLOAD)
    tables = build_tables(store)
    html = render_html(tables)
    assert PAYLOAD not in html
    assert "alert(1)</script>" not in html
    assert ESCAPED in html
    md = render_markdown(tables)
    assert PAYLOAD not in md and "<script>" not in md


def test_html_is_autoescaped_from_table_dicts():
    stat = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 100}
    row = {"defense": PAYLOAD, "params": {"x": PAYLOAD}, "paper": PAYLOAD,
           "architecture": PAYLOAD, "seed": 0, "clean_accuracy": stat, "robust_accuracy": stat,
           "per_attack": {PAYLOAD: stat}, "median_epoch_seconds": 1.0, "overhead": None,
           "passes_per_example": 2.0, "data_copies": 1.0, "flags": [], "rank": 1}
    tables = [{"dataset": PAYLOAD, "threat_model": PAYLOAD, "eps": 0.1, "rows": [row],
               "attacks": [PAYLOAD]}]
    html = render_html(tables)
    assert PAYLOAD not in html
    # the page's own sorting script is the only script element
    assert html.count("<script>") == 1
    assert html.count(ESCAPED) >= 6
    md = render_markdown(tables)
    assert PAYLOAD not in md


def test_markdown_escapes_pipes(store):
    add_model(store, "none", (0.2, 0.1, 0.3), role="reference")
    add_model(store, "a|b", (0.5, 0.4, 0.6), params={"note": "x|y"})
    md = render_markdown(build_tables(store))
    rows = md_rows(md)
    assert all(len(r) == len(rows[0]) for r in rows)  # no row was split by a stray pipe
    assert {r[1] for r in rows} == {"none", "a\\|b"}


def test_json_from_hand_made_store_keeps_numbers(store, tmp_path):
    add_model(store, "none", (0.2, 0.1, 0.3), role="reference")
    add_model(store, "alpha", (0.8, 0.7, 0.9))
    written = write_leaderboards(store, tmp_path / "out")
    rows = json.loads(written["json"].read_text())
    for r in rows:
        assert isinstance(r["rank"], int)
        assert isinstance(r["robust_accuracy"]["value"], float)
        assert isinstance(r["robust_accuracy"]["n"], int)
        assert isinstance(r["eps"], float)


def test_empty_store_has_no_leaderboard(store, tmp_path):
    with pytest.raises(AdvarenaError) as info:
        write_leaderboards(store, tmp_path / "out")
    assert "no white-box results" in str(info.value)
    assert not (tmp_path / "out").exists()
