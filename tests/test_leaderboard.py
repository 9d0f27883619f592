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
from advarena.report.leaderboard import (aggregate, build_tables, render_html, render_json,
                                         render_markdown, write_leaderboards)
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


# -- from a real run -------------------------------------------------------------------------------

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
    assert sorted(p.name for p in out.iterdir()) == ["details", "leaderboard.html",
                                                     "leaderboard.json", "leaderboard.md"]


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
    # the headline (a worst case over more attacks) is never above the white-box worst case
    for r in rows:
        assert r["headline"]["value"] <= r["robust_accuracy"]["value"]
        assert r["headline"]["n"] == suite["eval"]["n_examples"]
    # the ranks follow the stated rule (McNemar on the paired headline outcomes)
    assert sorted(r["rank"] for r in rows)[0] == 1


def test_formats_agree(board):
    _, out, _ = board
    rows = {r["defense"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    md = {r[1]: r for r in md_rows((out / "leaderboard.md").read_text())}
    html = (out / "leaderboard.html").read_text()
    for name, r in rows.items():
        clean = f"{100 * r['clean_accuracy']['value']:.1f}"
        robust = f"{100 * r['robust_accuracy']['value']:.1f}"
        assert md[name][0] == str(r["rank"]) + (" ⚠" if r["flagged"] else "")
        assert md[name][4].startswith(clean)
        assert md[name][5].startswith(f"**{100 * r['headline']['value']:.1f}**")
        assert md[name][6].startswith(robust)  # white-box alone (no score-based attack here)
        assert f">{name}</a>" in html  # the defense links to its detail page


def test_leaderboard_format_subset(board, tmp_path):
    store, _, _ = board
    s = Store.open(store, create=False)
    try:
        written = write_leaderboards(s, tmp_path / "only", ("json",))
    finally:
        s.close()
    assert list(written) == ["json"]
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["leaderboard.json"]


# -- hand-made stores ------------------------------------------------------------------------------

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


# -- every protocol's records, hand-made -----------------------------------------------------------

HEADLINE = 0.1
WB_EPS = (0.05, 0.1, 0.3)


def _acc(metric, value, attack=None, eps=None, n=200, **extra):
    """An accuracy record with a Wilson interval, as the protocols write them."""
    from advarena.stats import wilson

    k = min(n, max(0, round(value * n)))
    lo, hi = wilson(k, n)
    return Measurement(metric, k / n, n, lo, hi, attack, eps, extra)


def _mean(metric, value, attack=None, eps=None, n=200, **extra):
    return Measurement(metric, value, n, value * 0.9, value * 1.1, attack, eps, extra)


def full_model(store: Store, defense: str, level: float, *, params: dict | None = None,
               seed: int = 0, role: str = "defense", reference_key: str | None = None,
               attacks: tuple[str, ...] = ("fgsm", "pgd"), flag_detail: str = "",
               dataset: str = "digits") -> str:
    """A defended model with records of all six protocols and sanity flags, stored the way the
    runner stores them (eval cells whose spec names the train cell they read). ``level`` in
    (0, 1) sets how robust it looks. Returns the train cell's key."""
    params = params or {}
    labels = {"dataset": dataset, "architecture": "cnn-001", "defense": defense,
              "params": params, "seed": seed}
    tag = f"{dataset}-{defense}-{json.dumps(params, sort_keys=True)}-{seed}"
    train_key = f"train-{tag}"
    digest = store.put_tensors({"w": torch.full((3,), level + seed)})
    store.record_cell(key=train_key, kind="train", spec={"seed": seed}, labels={**labels,
                      "role": role}, run_id="r", started=0.0, seconds=1.0, device="cpu",
                      provenance={"versions": {"torch": "9.9"}, "device": "cpu",
                                  "plugins": {"defense": [{"name": defense,
                                                           "distribution": "fixture-dist",
                                                           "version": "1.2.3"}]}},
                      result={}, measurements=[], artifacts={"model": digest})
    deps = {"model": train_key, "reference": reference_key or train_key}
    jitter = 0.01 * seed

    def cell(protocol, ms, kind="eval"):
        store.record_cell(key=f"{protocol}-{tag}", kind=kind, spec={"deps": deps},
                          labels={**labels, "protocol": protocol}, run_id="r", started=0.0,
                          seconds=1.0, device="cpu", provenance={"versions": {"numpy": "1.0"}},
                          result={}, measurements=ms, artifacts={})

    clean = 0.9 + jitter
    wb = [_acc("accuracy", clean)]
    for eps in WB_EPS:
        fall = min(1.0, eps * (1.2 - level) * 4)
        for i, a in enumerate(attacks):
            wb.append(_acc("robust_accuracy", clean * (1 - fall) - 0.02 * i, a, eps, norm="linf"))
        wb.append(_acc("worst_case_accuracy", clean * (1 - fall) - 0.02 * len(attacks),
                       "worst-case", eps, norm="linf", headline=eps == HEADLINE))
    cell("white-box", wb)
    bb = []
    for eps in (0.08, 0.12, 0.3):  # 0.08 and 0.12 tie around the headline: the larger is used
        for sub in ("none", "fgsm-at"):
            bb.append(_acc("transfer_accuracy", level * (1 - eps), f"fgsm@{sub}", eps,
                           substitute=f"substitute-{sub}", source_attack="fgsm"))
        bb.append(_acc("worst_transfer_accuracy", level * (1 - eps) - 0.05 - jitter,
                       "worst-case", eps))
    cell("black-box", bb)
    et = []
    for size in (1, 3, 5):
        for eps in (0.1, 0.2):
            label = f"gradient-ensemble@cnn-001x{size}"
            et += [_acc("adv_accuracy", level * (1 - eps) - 0.01 * size, label, eps,
                        members=size, member_architecture="cnn-001"),
                   _acc("true_accuracy", 0.95, label, eps, members=size,
                        member_architecture="cnn-001"),
                   Measurement("kept", 150 - 10 * size, 200, attack=label, eps=eps,
                               extra={"members": size})]
    cell("ensemble-transfer", et)
    mp = [_mean("rho_2", 0.2 + level / 10 + jitter, "deepfool"),
          _mean("empirical_robustness", 0.1 + level / 10, "fgsm-minimal"),
          _mean("rho_inf", 0.15, "fgsm-minimal"),
          Measurement("eps_ref", 0.2, 200, attack="fgsm"),
          _acc("success_rate", 0.99, "deepfool")]
    for f in (0.2, 0.5, 1.0):
        mp.append(_acc("accuracy_at_eps_ref", level * (1 - f / 2) + 0.001 * f, "fgsm", 0.2 * f,
                       fraction=f))
    cell("minimal-perturbation", mp)
    steps = [0.0, 0.1, 0.2]
    ls = [_mean("loss_sensitivity", 2.0 - level + jitter)]
    ls += [_mean("fgsm_loss", 0.3 + e * (3 - 2 * level), "fgsm", e) for e in (0.0, 0.1, 0.3)]
    ls.append(Measurement("loss_landscape", 1.0, 8, extra={
        "steps": steps, "loss": [[0.2 + a + b * (1 - level) for b in steps] for a in steps]}))
    cell("loss-sensitivity", ls)
    curve = [[1.0 * (k + 1) * (1 + level), 0.5 + 0.1 * k] for k in range(4)]
    cell("training-cost", [
        Measurement("median_epoch_seconds", 1 + level, 4),
        Measurement("passes_per_example", 2 + level, 4),
        Measurement("data_copies", 1.0, 4),
        Measurement("overhead", 1 + level, 3, 1 + level * 0.8, 1 + level * 1.2),
        Measurement("final_val_accuracy", 0.8, 4, extra={"curve": curve})])
    cell("sanity", [
        Measurement("flag_large_eps_not_broken", 1.0 if flag_detail else 0.0, 1,
                    extra={"detail": flag_detail or "broken at the largest eps"}),
        Measurement("flag_vanishing_gradients", 0.0, 1, extra={"detail": "fine"})],
        kind="flags")
    return train_key


@pytest.fixture
def full_store(store):
    """A reference and three defenses, every protocol; ``strong`` raises a flag."""
    ref = full_model(store, "none", 0.1, role="reference")
    full_model(store, "strong", 0.9, reference_key=ref, flag_detail="accuracy 0.8 at eps 0.3")
    full_model(store, "middle", 0.5, params={"n": 3, "sigma": None}, reference_key=ref)
    full_model(store, "another", 0.45, reference_key=ref)
    return store


@pytest.fixture
def small_store(store):
    """A reference and one defense with parameters, every protocol (plots cost time)."""
    ref = full_model(store, "none", 0.1, role="reference")
    full_model(store, "middle", 0.5, params={"n": 3, "sigma": None}, reference_key=ref)
    return store


def _records(store, **match):
    return [m for m in store.metrics() if all(m[k] == v for k, v in match.items())]


def test_new_columns_hold_the_stored_numbers(full_store):
    (table,) = build_tables(full_store)
    by = {r["defense"]: r for r in table["rows"]}
    assert set(by) == {"none", "strong", "middle", "another"}
    assert by["none"]["reference"] and not by["strong"]["reference"]
    for name, r in by.items():
        def one(protocol, metric, **kw):
            (m,) = _records(full_store, defense=name, protocol=protocol, metric=metric, **kw)
            return m
        # black-box: worst transfer case at the eps closest to the headline (0.08 and 0.12
        # tie; the larger, more demanding one is taken)
        bb = one("black-box", "worst_transfer_accuracy", eps=0.12)
        assert r["black_box"]["value"] == bb["value"] and r["black_box"]["eps"] == 0.12
        assert (r["black_box"]["ci_low"], r["black_box"]["ci_high"]) == (bb["ci_low"],
                                                                        bb["ci_high"])
        assert sorted(r["ensemble"], key=int) == ["1", "3", "5"]
        for size in (1, 3, 5):
            ms = [m for m in _records(full_store, defense=name, metric="adv_accuracy",
                                      eps=HEADLINE) if m["extra"]["members"] == size]
            assert r["ensemble"][str(size)]["value"] == ms[0]["value"]
            assert r["ensemble"][str(size)]["kept"] == 150 - 10 * size
        assert r["rho_2"]["value"] == one("minimal-perturbation", "rho_2")["value"]
        assert r["empirical_robustness"]["value"] == one("minimal-perturbation",
                                                         "empirical_robustness")["value"]
        at_ref = [m for m in _records(full_store, defense=name, metric="accuracy_at_eps_ref")
                  if m["extra"]["fraction"] == 1.0]
        assert r["accuracy_at_eps_ref"]["value"] == at_ref[0]["value"]
        assert r["loss_sensitivity"]["value"] == one("loss-sensitivity",
                                                     "loss_sensitivity")["value"]
        ov = one("training-cost", "overhead")
        assert r["overhead"] == ov["value"]
        assert r["overhead_interval"]["ci_low"] == ov["ci_low"]
        assert r["passes_per_example"] == one("training-cost", "passes_per_example")["value"]
        assert r["n_seeds"] == 1 and r["seeds"] == [0]
    assert by["strong"]["flags"] == [{"name": "large_eps_not_broken",
                                      "detail": "accuracy 0.8 at eps 0.3",
                                      "summary": "large_eps_not_broken"}]
    assert by["middle"]["flags"] == [] and by["middle"]["sanity_checked"]
    # ranks: strong alone on top; middle and another overlap, so they tie
    ranks = {n: r["rank"] for n, r in by.items()}
    assert ranks["strong"] == 1 and ranks["middle"] == ranks["another"] == 2
    for r in table["rows"]:
        above = [o for o in table["rows"]
                 if o["robust_accuracy"]["ci_low"] > r["robust_accuracy"]["ci_high"]]
        assert r["rank"] == 1 + len(above)


def test_new_columns_are_rendered(full_store):
    tables = build_tables(full_store)
    html = render_html(tables)
    heads = html_headers(html)
    for header in ("headline", "white-box", "transfer", "Adv. ×1", "Adv. ×3", "Adv. ×5", "ρ₂", "emp. rob.",
                   "acc. @ eps_ref", "loss sens.", "overhead", "passes", "seeds"):
        assert header in heads, header
    # flags and paper are lines of the (sticky) defense cell, never columns off-screen
    assert "sanity flags" not in heads
    strong = next(r for r in tables[0]["rows"] if r["defense"] == "strong")
    assert "paper" not in heads
    if strong["paper"]:
        assert f'<span class="sub paper" title="paper">{strong["paper"]}</span>' in html
    assert f'{100 * strong["black_box"]["value"]:.1f}' in html
    assert f'{strong["rho_2"]["value"]:.3g}' in html
    # the flag is named in the row and its detail is the tooltip; the rank carries a badge
    assert 'title="accuracy 0.8 at eps 0.3">large_eps_not_broken</span>' in html
    assert 'class="badge unreliable" title="unreliable evaluation: large_eps_not_broken"' in html
    md = render_markdown(tables)
    rows = {r[1]: r for r in md_rows(md)}
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    cols = [c.strip() for c in header.split("|")[1:-1]]
    assert cols[:7] == ["rank", "defense", "parameters", "architecture", "clean", "headline",
                        "white-box"]
    assert "transfer (eps 0.12)" in cols and "Adv. ×5 (eps 0.1)" in cols
    assert rows["strong"][0].endswith("⚠") and rows["middle"][0].isdigit()
    flags = rows["strong"][cols.index("sanity flags")]
    note = re.fullmatch(r"⚠ large_eps_not_broken\[\^([\w-]+)\]", flags)
    assert note, flags
    assert f"[^{note.group(1)}]: strong, large\\_eps" not in md  # no needless escapes
    assert f"[^{note.group(1)}]: strong, large_eps_not_broken: accuracy 0.8 at eps 0.3" in md
    assert rows["middle"][cols.index("sanity flags")] == "none"
    assert rows["middle"][cols.index("details")].startswith("[details](details/")


def test_columns_without_numbers_are_left_out(store):
    add_model(store, "none", (0.2, 0.1, 0.3), role="reference")
    add_model(store, "alpha", (0.8, 0.7, 0.9))
    heads = html_headers(render_html(build_tables(store)))
    assert heads[:5] == ["rank", "defense", "clean", "headline", "white-box"]
    assert not {"transfer", "score-based", "ρ₂", "Adv. ×1", "loss sens."} & set(heads)
    assert "overhead" in heads  # add_model stores training cost


def cols_of(md: str) -> list[str]:
    """The column headers of the first Markdown table."""
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    return [c.strip() for c in header.split("|")[1:-1]]


def html_headers(html: str) -> list[str]:
    """The column headers of the first table, as text (the eps note left out)."""
    thead = html[html.index("<thead>"):html.index("</thead>")]
    return [re.sub(r"<br>.*|<[^>]+>", "", h, flags=re.S).strip()
            for h in re.findall(r"<th[^>]*>(.*?)</th>", thead, re.S)]


def test_seeds_are_aggregated(store):
    ref = full_model(store, "none", 0.1, role="reference")
    full_model(store, "strong", 0.9, reference_key=ref)
    ref1 = full_model(store, "none", 0.1, role="reference", seed=1)
    full_model(store, "strong", 0.9, reference_key=ref1, seed=1)
    (table,) = build_tables(store)
    assert len(table["rows"]) == 2
    strong = next(r for r in table["rows"] if r["defense"] == "strong")
    assert strong["seeds"] == [0, 1] and strong["n_seeds"] == 2
    for key, metric, eps in (("robust_accuracy", "worst_case_accuracy", HEADLINE),
                             ("clean_accuracy", "accuracy", None),
                             ("black_box", "worst_transfer_accuracy", 0.12),
                             ("rho_2", "rho_2", None)):
        ms = [m for m in _records(store, defense="strong", metric=metric) if m["eps"] == eps
              and (key != "robust_accuracy" or m["extra"].get("headline"))]
        assert len(ms) == 2
        stat = strong[key]
        values = [m["value"] for m in ms]
        assert stat["value"] == pytest.approx(sum(values) / 2)
        # the interval holds the mean and is at least as wide as the seeds' mean half-widths
        assert stat["ci_low"] <= stat["value"] - sum(m["value"] - m["ci_low"] for m in ms) / 2
        assert stat["ci_high"] >= stat["value"] + sum(m["ci_high"] - m["value"] for m in ms) / 2
        assert stat["seeds"] == 2 and stat["sd"] == pytest.approx(abs(values[0] - values[1])
                                                                  / 2 ** 0.5)
        assert sorted(stat["seed_values"]) == sorted(values)
    spread = f'±{100 * strong["robust_accuracy"]["sd"]:.1f}'
    assert f'<span class="spread">{spread}</span>' in render_html([table])
    md = {r[1]: r for r in md_rows(render_markdown([table]))}
    assert md["strong"][5].endswith(spread) and md["strong"][5].startswith("**")
    assert md["strong"][cols_of(render_markdown([table])).index("seeds")] == "2"


def test_adding_agreeing_seeds_does_not_widen_the_interval():
    one = {"value": 0.6, "ci_low": 0.5, "ci_high": 0.68, "n": 100}
    widths = [(s["ci_low"], s["ci_high"]) for s in
              (aggregate([dict(one)] * k, unit=True) for k in (1, 2, 5))]
    assert widths == [pytest.approx((0.5, 0.68))] * 3
    # disagreeing seeds widen it with their spread, and more seeds at that spread narrow it
    two = aggregate([dict(one), dict(one, value=0.7, ci_low=0.6, ci_high=0.78)], unit=True)
    six = aggregate([dict(one), dict(one, value=0.7, ci_low=0.6, ci_high=0.78)] * 3, unit=True)
    assert two["ci_high"] - two["ci_low"] > six["ci_high"] - six["ci_low"] > 0.18
    assert 0 <= two["ci_low"] and two["ci_high"] <= 1
    # the old envelope would have been [0.5, 0.78] at any number of seeds; six seeds beat it
    assert six["ci_high"] - six["ci_low"] < 0.28


def test_detail_pages_and_plots(small_store, tmp_path):
    full_store = small_store
    out = tmp_path / "out"
    written = write_leaderboards(full_store, out)
    assert written["details"] == out / "details"
    rows = json.loads(written["json"].read_text())
    index_html, index_md = written["html"].read_text(), written["md"].read_text()
    digests = {c["labels"]["defense"]: full_store.artifacts(c["key"])["model"]
               for c in full_store.cells(kind="train")}
    assert len(rows) == 2
    for r in rows:
        html_page = out / r["detail"]["html"]
        md_page = out / r["detail"]["md"]
        assert html_page.is_file() and md_page.is_file()
        assert f'href="{r["detail"]["html"]}"' in index_html
        assert f'({r["detail"]["md"]})' in index_md
        html, md = html_page.read_text(), md_page.read_text()
        for page in (html, md):
            assert digests[r["defense"]] in page  # the weight hash
            assert "fixture-dist" in page and "1.2.3" in page  # plugin distribution, version
            assert "9.9" in page  # package versions
            assert f"train-digits-{r['defense']}" in page  # cell keys
            for metric in ("worst_case_accuracy", "transfer_accuracy", "adv_accuracy", "rho_2",
                           "loss_sensitivity", "final_val_accuracy", "flag_vanishing_gradients"):
                assert metric in page
        if r["defense"] == "middle":
            assert "<code>n</code> = 3" in html and "<code>sigma</code> = default" in html
            assert "n = 3, sigma = default" in md
        images = re.findall(r'<img src="([^"]+)"', html)
        md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
        assert images == md_images
        names = {Path(i).name for i in images}
        expected = {"accuracy-eps.png", "transfer.png", "loss-eps.png", "loss-landscape.png",
                    "training-curve.png"}
        assert names == expected
        for i in images:
            data = (html_page.parent / i).read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_svg_plots_and_no_plots(small_store, tmp_path):
    full_store = small_store
    written = write_leaderboards(full_store, tmp_path / "svg", ("html",), plots="svg")
    svgs = list(written["details"].rglob("*.svg"))
    assert len(svgs) == 2 * 5
    for p in svgs:
        text = p.read_text()
        assert "<svg" in text[:2000] and "<script" not in text
    written = write_leaderboards(full_store, tmp_path / "none", ("md",), plots=None)
    assert not [p for p in written["details"].rglob("*") if p.suffix in (".png", ".svg")]
    assert "No plots were drawn." in next(written["details"].glob("*.md")).read_text()


def test_rendering_writes_only_into_out(small_store, tmp_path):
    full_store = small_store
    def snapshot(root):
        return {p: p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}

    before = snapshot(full_store.root)
    rng = torch.get_rng_state()
    out = tmp_path / "out"
    # a stale page of a row that is gone is removed; files the renderer did not name are kept
    (out / "details").mkdir(parents=True)
    (out / "details" / "digits-cnn-001-gone-0123456789.html").write_text("old")
    (out / "details" / "notes.txt").write_text("mine")
    write_leaderboards(full_store, out)
    assert snapshot(full_store.root).keys() == before.keys()
    assert not (out / "details" / "digits-cnn-001-gone-0123456789.html").exists()
    assert (out / "details" / "notes.txt").read_text() == "mine"
    assert torch.equal(torch.get_rng_state(), rng)
    # rendering twice gives the same files
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_leaderboards(full_store, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first


class _PayloadRegistry:
    """Stands in for the plugin registry: every defense's paper is a script payload, every
    other lookup fails (as for plugins that are no longer installed)."""

    def entry(self, kind, name):
        if kind != "defenses":
            raise KeyError(name)
        return type("E", (), {"cls": type("C", (), {"paper": PAYLOAD + " [x](javascript:1)"})})

    def get(self, kind, name):
        raise KeyError(name)


def test_plugin_strings_are_escaped_everywhere(store, tmp_path):
    ref = full_model(store, "none", 0.1, role="reference")
    full_model(store, PAYLOAD, 0.6, params={"note": PAYLOAD, "x": "a|b"}, reference_key=ref,
               attacks=("fgsm", "pgd$x^{"), flag_detail=PAYLOAD)
    written = write_leaderboards(store, tmp_path / "out", registry=_PayloadRegistry())
    pages = [written["html"], written["md"], *written["details"].glob("*.html"),
             *written["details"].glob("*.md")]
    assert len(pages) == 6
    for page in pages:
        text = page.read_text()
        assert PAYLOAD not in text and "<script>alert" not in text, page
        if page.suffix == ".html":
            assert ESCAPED in text
            # the pages' own sorting script is the only script element
            assert text.count("<script") == 1
        else:
            assert "&lt;script&gt;" in text
            # no link syntax survives: the brackets are escaped
            assert "\\[x\\](javascript:1)" in text
            assert "[x](" not in text.replace("\\[x\\](", "")
    index = written["html"].read_text()
    assert f'title="{ESCAPED}"' in index  # the flag's detail as an escaped tooltip
    rows = json.loads(written["json"].read_text())
    assert {r["defense"] for r in rows} == {"none", PAYLOAD}  # data keeps the real name
    # the file names of the payload's pages are plain
    for p in written["details"].rglob("*"):
        assert re.fullmatch(r"[a-z0-9.-]+", p.name), p.name
    # the attack name with mathtext syntax did not stop the plot
    assert list(written["details"].rglob("accuracy-eps.png"))


def _walk(v, path="row"):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _walk(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _walk(x, f"{path}[{i}]")
    else:
        yield path, v


def test_json_rows_are_numbers_from_a_full_store(full_store, tmp_path):
    written = write_leaderboards(full_store, tmp_path / "out", ("json",))

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    rows = json.loads(written["json"].read_text(), parse_constant=no_constants)
    assert len(rows) == 4
    stat_keys = ("clean_accuracy", "robust_accuracy", "black_box", "rho_2",
                 "empirical_robustness", "accuracy_at_eps_ref", "loss_sensitivity",
                 "overhead_interval")
    for r in rows:
        for key in stat_keys:
            s = r[key]
            assert isinstance(s["value"], float), key
            assert isinstance(s["ci_low"], float) and isinstance(s["ci_high"], float), key
            assert isinstance(s["n"], int), key
        for s in r["ensemble"].values():
            assert isinstance(s["value"], float) and isinstance(s["eps"], float)
        assert isinstance(r["rank"], int) and isinstance(r["n_seeds"], int)
        for path, v in _walk(r):
            if isinstance(v, str):
                # strings are names and text, never numbers in disguise
                assert not re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", v), (path, v)
            else:
                assert v is None or isinstance(v, (bool, int, float)), (path, v)


# -- the decision boundary of a 2-D toy model, from a real run -------------------------------------

TOY = """
name = "toy-tiny"
datasets = ["moons"]
architectures = ["mlp-toy"]
seeds = [0]
defenses = ["none", "gda"]
reference = "none"

[train]
epochs = 3
batch_size = 64
lr = 0.01
val_fraction = 0.1

[dataset_params.moons]
n_samples = 300

[defense_params.gda]
n = 1
sigma = 0.05

[eval]
n_examples = 60
batch_size = 60

[protocols.white-box]
attacks = ["fgsm"]
eps = [0.05, 0.1]
headline_eps = 0.05
"""


def test_toy_detail_page_draws_the_decision_boundary(tmp_path):
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY)
    store_dir, out = tmp_path / "store", tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["run", "--suite", str(suite), "--store", str(store_dir), "--defense", "gda",
              "--quiet"])
    assert info.value.code == 0
    rng = torch.get_rng_state()
    main(["leaderboard", "--store", str(store_dir), "--out", str(out), "--format", "md,html"])
    assert torch.equal(torch.get_rng_state(), rng)
    for page in (out / "details").glob("*.html"):
        html = page.read_text()
        assert "decision-boundary.png" in html, html[html.find("Plots"):][:600]
        png = page.with_suffix("") / "decision-boundary.png"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
        assert "decision-boundary.png" in page.with_suffix(".md").read_text()


# -- the ranking rule: paired McNemar, flagged rows below unflagged rows they do not clear ---------

def add_paired(store: Store, defense: str, robust: list[int], *, flag: str | None = None,
               role: str = "defense") -> None:
    """A model whose white-box and headline records carry per-example outcomes (``robust``:
    which of the shared examples it survives on), optionally with a raised sanity flag."""
    from advarena.evaluation import accuracy_measurement

    labels = {"dataset": "digits", "architecture": "cnn-001", "defense": defense,
              "params": {}, "seed": 0}
    mask = torch.tensor(robust, dtype=torch.bool)

    def cell(key, kind, extra_labels, ms):
        store.record_cell(key=key, kind=kind, spec={}, run_id="r",
                          labels={**labels, **extra_labels}, started=0.0, seconds=1.0,
                          device="cpu", provenance={}, result={}, measurements=ms,
                          artifacts={})

    cell(f"train-{defense}", "train", {"role": role}, [])
    cell(f"wb-{defense}", "eval", {"protocol": "white-box"}, [
        accuracy_measurement("accuracy", torch.ones(len(robust), dtype=torch.bool)),
        accuracy_measurement("worst_case_accuracy", mask, attack="worst-case", eps=0.1,
                             norm="linf", headline=True)])
    cell(f"head-{defense}", "headline", {"protocol": "headline"}, [
        accuracy_measurement("headline_accuracy", mask, attack="worst-case", eps=0.1,
                             norm="linf", headline=True)])
    cell(f"flags-{defense}", "flags", {"protocol": "sanity"}, [
        Measurement(f"flag_{flag or 'zero_gradients'}", 1.0 if flag else 0.0, 1,
                    extra={"detail": "seen: something", "summary": "zero input gradients"})])


def _ranks(store):
    (table,) = build_tables(store)
    return {r["defense"]: r["rank"] for r in table["rows"]}, table["rows"]


def test_paired_test_separates_rows_whose_intervals_overlap(store):
    # 200 shared examples: a survives 120, b a subset of 100 of them (20 discordant, all one
    # way: exact McNemar p = 2 / 2**20), c 3 more than b (p = 0.25 against b: a tie)
    n = 200
    a = [1] * 120 + [0] * 80
    b = [1] * 100 + [0] * 100
    c = [1] * 103 + [0] * 97
    add_paired(store, "none", b, role="reference")
    add_paired(store, "a", a)
    add_paired(store, "c", c)
    ranks, rows = _ranks(store)
    stats = {r["defense"]: r["headline"] for r in rows}
    assert stats["a"]["ci_low"] < stats["none"]["ci_high"]  # the intervals overlap ...
    assert ranks["a"] < ranks["none"]  # ... and yet the paired test separates them
    assert ranks["c"] == ranks["none"] == 2  # 3 against 0 discordant, a tie; both below a
    assert len(a) == len(b) == len(c) == n


def test_flagged_row_is_never_above_an_unflagged_row_it_does_not_clear(store, tmp_path):
    honest = [1] * 100 + [0] * 100
    masked = [1] * 115 + [0] * 85  # better by the paired test, but its interval overlaps
    far = [1] * 190 + [0] * 10  # clears the honest row's interval entirely
    add_paired(store, "none", honest, role="reference")
    add_paired(store, "masked", masked, flag="zero_gradients")
    add_paired(store, "far", far, flag="zero_gradients")
    ranks, rows = _ranks(store)
    by = {r["defense"]: r for r in rows}
    assert by["masked"]["headline"]["ci_low"] <= by["none"]["headline"]["ci_high"]
    assert ranks["masked"] > ranks["none"]
    assert [r["defense"] for r in rows].index("masked") > [r["defense"] for r in rows].index(
        "none")
    assert by["far"]["headline"]["ci_low"] > by["none"]["headline"]["ci_high"]
    assert ranks["far"] < ranks["none"]
    # the same numbers unflagged rank above: the flag alone moved it
    store2 = Store.open(tmp_path / "store2")
    try:
        add_paired(store2, "none", honest, role="reference")
        add_paired(store2, "masked", masked)
        ranks2, _ = _ranks(store2)
        assert ranks2["masked"] < ranks2["none"]
    finally:
        store2.close()


def test_flagged_rows_carry_a_badge_and_the_reason(store):
    add_paired(store, "none", [1] * 50 + [0] * 50, role="reference")
    add_paired(store, "masked", [1] * 60 + [0] * 40, flag="zero_gradients")
    tables = build_tables(store)
    md = render_markdown(tables)
    rows = {r[1]: r for r in md_rows(md)}
    assert rows["masked"][0].endswith("⚠") and rows["none"][0].isdigit()
    assert "zero input gradients" in rows["masked"][cols_of(md).index("sanity flags")]
    assert "seen: something" in md  # the detail, in the footnote
    assert "McNemar" in md  # the rule is stated
    html = render_html(tables)
    assert 'class="badge unreliable" title="unreliable evaluation: zero input gradients"' in html
    assert "McNemar" in html
    rows_json = json.loads(render_json(tables))
    assert {r["defense"]: r["flagged"] for r in rows_json} == {"none": False, "masked": True}
    assert all(not k.startswith("_") for r in rows_json for k in r)


def test_a_none_parameter_shows_the_value_it_stood_for():
    from advarena.plugins import default_registry
    from advarena.report.leaderboard import _params_list, _resolved_defaults

    registry = default_registry()
    params = {"n": 10, "sigma": None, "t": 1.0}
    shown = dict(_params_list(params, defaults=_resolved_defaults(registry, "digits",
                                                                  "gda-brelu", params)))
    # digits is an MNIST-like dataset: gda's sigma defaults to 001's MNIST value, 0.3
    assert shown["sigma"].startswith("0.3 ") and "default" in shown["sigma"]
    assert shown["n"] == "10"
    # an unknown plugin keeps the plain word
    assert dict(_params_list(params, defaults=_resolved_defaults(
        registry, "digits", "no-such-defense", params)))["sigma"] == "default"


def test_transfer_labels_name_the_substitute_and_curves_have_an_epoch_axis(tmp_path):
    from advarena.report import plots

    rec = {"attack": "fgsm@fgsm-at", "extra": {"source_attack": "fgsm",
                                                "substitute": "substitute-fgsm-at"}}
    assert plots.transfer_label(rec) == "fgsm\nfrom fgsm-at"
    curve = [[0.5, 0.6], [1.0, 0.8], [1.5, 0.9]]
    recs = [{"protocol": "training-cost", "metric": "final_val_accuracy", "seed": 0,
             "extra": {"curve": curve}}]
    seen = {}
    original = plots._save

    def capture(fig, path, tight=False):
        seen["axes"] = [(ax.get_xlabel(), [tuple(line.get_xdata()) for line in ax.lines])
                        for ax in fig.axes]
        return original(fig, path, tight)

    plots._save = capture
    try:
        assert plots.training_curve(recs, [], tmp_path / "c.png") is not None
    finally:
        plots._save = original
    (epoch_label, epoch_x), (time_label, time_x) = seen["axes"]
    assert epoch_label == "epoch" and epoch_x == [(1, 2, 3)]
    assert "time" in time_label and time_x == [(0.5, 1.0, 1.5)]


def test_the_table_header_names_the_headline_attacks_and_examples():
    from advarena.report.leaderboard import _headline_note

    attacks = {"white-box": ["fgsm", "pgd"], "score": ["square"],
               "transfer": ["fgsm@none", "ifgsm@none", "fgsm@fgsm-at", "ifgsm@fgsm-at"]}
    rows = [{"defense": "a", "headline": {"value": 0.5, "n": 300, "attacks": attacks}},
            {"defense": "b", "headline": {"value": 0.4, "n": 300,
                                          "attacks": {**attacks, "score": []}}}]
    note = _headline_note(rows)
    assert note["n"] == "300"
    groups = {g["name"]: g for g in note["groups"]}
    assert groups["white-box gradient"]["attacks"] == ["fgsm", "pgd"]
    assert groups["black-box transfer"]["attacks"] == [
        "fgsm and ifgsm, each from the none and fgsm-at substitutes"]
    assert groups["score-based"]["partial"] == 1 and note["lacking"] == ["b"]
