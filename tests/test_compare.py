"""``advarena compare``: identical inputs are "no change" and pass the gate; planted regressions
and improvements are caught in the right direction (lower-is-better metrics included); pooled
seeds; mismatched or unreadable inputs end in one line on stderr with exit 2; the statistics
against hand-computed cases; the JSON form.

Exports are built by hand from the real measurement helpers (so the outcomes are packed exactly
as a run packs them), plus one real tiny run. No number copied from a run is asserted: expected
values are computed from the records themselves.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advarena.cli.main import main
from advarena.evaluation import accuracy_measurement, mean_measurement, unpack_outcomes
from advarena.report import compare as cmp
from advarena.stats import wilson

TINY = Path(__file__).parent / "suites" / "tiny.toml"
CONSOLE_SCRIPT = Path(sys.executable).with_name("advarena")
N = 100


# -- helpers ------------------------------------------------------------------------------------

def invoke(args, capsys) -> tuple[int, str, str]:
    """Run ``main(args)`` in this process; return (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def record(m, *, protocol: str, defense: str = "none", seed: int = 0, dataset: str = "digits",
           params: dict | None = None) -> dict:
    """A flat export record from a Measurement, as ``advarena run --output`` writes it."""
    return {"dataset": dataset, "architecture": "cnn-001", "defense": defense,
            "params": params or {}, "seed": seed, "protocol": protocol, "attack": m.attack,
            "eps": m.eps, "metric": m.metric, "value": m.value, "n": m.n, "ci_low": m.ci_low,
            "ci_high": m.ci_high, "extra": json.loads(json.dumps(m.extra)),
            "cell_key": f"{protocol}-{defense}-{seed}", "device": "cpu", "run_id": "test",
            "provenance": {}}


def bits(n_true: int, n: int = N, offset: int = 0) -> list[bool]:
    """``n`` outcomes, ``n_true`` of them True, starting at ``offset`` (wrapping)."""
    out = [False] * n
    for i in range(n_true):
        out[(offset + i) % n] = True
    return out


def export(clean: list[bool], worst: list[bool], *, defense: str = "none", seed: int = 0,
           loss: list[float] | None = None, passes: float = 2.0,
           dataset: str = "digits", eps: float = 0.1) -> list[dict]:
    """One model's records: white-box clean and headline worst case, a loss-sensitivity mean,
    and a training-cost counter."""
    t = torch.tensor
    recs = [
        record(accuracy_measurement("accuracy", t(clean)), protocol="white-box",
               defense=defense, seed=seed, dataset=dataset),
        record(accuracy_measurement("worst_case_accuracy", t(worst), attack="worst-case",
                                    eps=eps, norm="linf", headline=True),
               protocol="white-box", defense=defense, seed=seed, dataset=dataset),
        record(mean_measurement("loss_sensitivity", t(loss if loss is not None else
                                                      [1.0 + 0.01 * (i % 7) for i in range(N)]),
                                seed=seed),
               protocol="loss-sensitivity", defense=defense, seed=seed, dataset=dataset),
    ]
    from advarena.api.records import Measurement
    recs.append(record(Measurement("passes_per_example", passes, 2), protocol="training-cost",
                       defense=defense, seed=seed, dataset=dataset))
    return recs


def write(path: Path, recs: list[dict]) -> Path:
    path.write_text(json.dumps(recs))
    return path


def row(result: dict, metric: str, *, seed=0, pooled: bool = False, defense: str = "none",
        eps: float | None = None):
    rows = [r for r in result["rows"] if r["metric"] == metric and r["pooled"] == pooled
            and r["defense"] == defense and (pooled or r["seed"] == seed)
            and (eps is None or r["eps"] == eps)]
    assert len(rows) == 1, rows
    return rows[0]


def flip(rec: dict, k: int, to: bool) -> dict:
    """The record with its first ``k`` outcomes that are ``not to`` set to ``to``; value and
    interval recomputed from the outcomes."""
    outcomes = unpack_outcomes(rec["extra"]["outcomes"])
    done = 0
    for i, o in enumerate(outcomes):
        if done == k:
            break
        if o != to:
            outcomes[i] = to
            done += 1
    assert done == k, "not enough outcomes to flip"
    m = accuracy_measurement(rec["metric"], torch.tensor(outcomes), attack=rec["attack"],
                             eps=rec["eps"], **{k_: v for k_, v in rec["extra"].items()
                                                if k_ != "outcomes"})
    return {**rec, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "extra": json.loads(json.dumps(m.extra))}


@pytest.fixture
def base_recs() -> list[dict]:
    return (export(bits(80), bits(50)) +
            export(bits(85, offset=3), bits(60, offset=3), defense="gda-brelu",
                   loss=[0.5 + 0.01 * (i % 5) for i in range(N)], passes=4.0))


# -- statistics against hand-computed cases -----------------------------------------------------

def test_mcnemar_exact_matches_hand_computed_binomial_tails():
    # m = 6 discordant examples: P[X <= 1] = (C(6,0) + C(6,1)) / 2^6 = 7/64, two-sided 14/64.
    assert cmp.mcnemar_exact(1, 5) == pytest.approx(14 / 64, abs=1e-15)
    assert cmp.mcnemar_exact(5, 1) == pytest.approx(14 / 64, abs=1e-15)
    assert cmp.mcnemar_exact(0, 6) == pytest.approx(2 / 64, abs=1e-15)
    # m = 10, k = 2: (1 + 10 + 45) / 1024, doubled.
    assert cmp.mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024, abs=1e-15)
    assert cmp.mcnemar_exact(3, 3) == 1.0  # the doubled tail exceeds 1: capped
    assert cmp.mcnemar_exact(0, 0) == 1.0  # no discordant example: no evidence
    # Large m stays exact and finite (big integers, one division).
    p = cmp.mcnemar_exact(2400, 2600)
    assert 0 < p < 0.01


def test_mcnemar_exact_agrees_with_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for lost, gained in [(0, 1), (1, 5), (7, 19), (30, 45), (120, 80), (13, 13)]:
        expected = stats.binomtest(min(lost, gained), lost + gained, 0.5).pvalue
        assert cmp.mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-9)


def test_holm_matches_hand_computation():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert cmp.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert cmp.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert cmp.holm([]) == []


def test_paired_interval_brackets_the_change_and_stays_wide_without_discordance():
    lo, hi = cmp.paired_interval(both=40, gained=2, lost=20, neither=38)
    assert lo < (2 - 20) / 100 < hi < 0  # clearly worse: the interval excludes 0
    lo, hi = cmp.paired_interval(both=50, gained=0, lost=0, neither=50)
    # No example changed side: centred on 0, but not a point (n is finite).
    assert lo == pytest.approx(-hi) and 0.005 < hi < 0.05
    lo, hi = cmp.paired_interval(both=100, gained=0, lost=0, neither=0)
    assert -1 <= lo <= 0 <= hi <= 1


def test_direction_of_metrics():
    for metric in ("accuracy", "worst_case_accuracy", "adv_accuracy", "rho_2",
                   "empirical_robustness", "rho_inf", "cw_l2", "distortion",
                   "training_set_distance"):
        assert cmp.direction(metric) == 1, metric
    for metric in ("loss_sensitivity", "fgsm_loss", "overhead", "passes_per_example",
                   "median_epoch_seconds", "time_to_50pct", "flag_large_eps_not_broken",
                   "success_rate"):
        assert cmp.direction(metric) == -1, metric
    assert cmp.direction("eps_ref") == 0 and cmp.direction("some_plugin_metric") == 0


# -- verdicts -----------------------------------------------------------------------------------

def test_identical_inputs_are_no_change_and_pass_the_gate(tmp_path, capsys, base_recs):
    a = write(tmp_path / "a.json", base_recs)
    b = write(tmp_path / "b.json", base_recs)
    result = cmp.compare_paths(a, b)
    assert result["rows"] and all(r["verdict"] == "no significant change"
                                  for r in result["rows"])
    assert all(r["change"] == 0 for r in result["rows"])
    code, out, err = invoke(["compare", a, b, "--fail-on", "worse"], capsys)
    assert code == 0, err
    assert "worse" not in out.split("verdicts:")[1].split(".")[0]
    assert "| ★ |" in out and "passed" in out


def test_planted_regression_in_headline_is_worse_and_fails_the_gate(tmp_path, capsys,
                                                                      base_recs):
    head = [dict(r) for r in base_recs]
    i = next(i for i, r in enumerate(head) if r["metric"] == "worst_case_accuracy"
             and r["defense"] == "gda-brelu")
    head[i] = flip(head[i], 20, False)  # 20 robust examples become non-robust
    assert head[i]["value"] < base_recs[i]["value"]
    a, b = write(tmp_path / "a.json", base_recs), write(tmp_path / "b.json", head)

    r = row(cmp.compare_paths(a, b), "worst_case_accuracy", defense="gda-brelu")
    assert r["method"] == "mcnemar-exact" and (r["lost"], r["gained"]) == (20, 0)
    assert r["p"] == pytest.approx(2 * 0.5 ** 20)  # every discordant pair went one way
    assert r["change"] == pytest.approx(head[i]["value"] - base_recs[i]["value"])
    assert r["change_low"] < r["change"] < r["change_high"] < 0
    assert r["verdict"] == "worse" and r["gating"]

    code, out, err = invoke(["compare", a, b, "--fail-on", "worse"], capsys)
    assert code == 1, err
    assert "**worse**" in out and "**failed**" in out
    # Without --fail-on worse the same comparison exits 0: the gate is opt-in.
    code, out, _ = invoke(["compare", a, b], capsys)
    assert code == 0 and "**worse**" in out


def test_planted_improvement_is_better_and_does_not_fail(tmp_path, capsys, base_recs):
    head = [dict(r) for r in base_recs]
    i = next(i for i, r in enumerate(head) if r["metric"] == "worst_case_accuracy"
             and r["defense"] == "none")
    head[i] = flip(head[i], 25, True)
    a, b = write(tmp_path / "a.json", base_recs), write(tmp_path / "b.json", head)
    r = row(cmp.compare_paths(a, b), "worst_case_accuracy")
    assert (r["lost"], r["gained"]) == (0, 25) and r["verdict"] == "better"
    code, out, err = invoke(["compare", a, b, "--fail-on", "worse"], capsys)
    assert code == 0, err
    assert "**better**" in out


def test_small_regression_is_no_significant_change(tmp_path, base_recs):
    head = [dict(r) for r in base_recs]
    i = next(i for i, r in enumerate(head) if r["metric"] == "worst_case_accuracy")
    head[i] = flip(head[i], 2, False)  # 2 discordant examples: p = 0.5
    result = cmp.compare(cmp.Side("a", base_recs), cmp.Side("b", head))
    r = row(result, "worst_case_accuracy")
    assert r["p"] == pytest.approx(0.5) and r["verdict"] == "no significant change"
    assert not cmp.failed(result, "worse")


def test_lower_is_better_metrics(tmp_path, capsys, base_recs):
    def with_loss(values):
        head = [dict(r) for r in base_recs]
        i = next(i for i, r in enumerate(head) if r["metric"] == "loss_sensitivity"
                 and r["defense"] == "none")
        m = mean_measurement("loss_sensitivity", torch.tensor(values), seed=0)
        head[i] = {**head[i], "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high}
        return head

    a = write(tmp_path / "a.json", base_recs)
    lower = write(tmp_path / "lower.json", with_loss([0.5 + 0.01 * (i % 7) for i in range(N)]))
    higher = write(tmp_path / "higher.json",
                   with_loss([1.5 + 0.01 * (i % 7) for i in range(N)]))

    r = row(cmp.compare_paths(a, lower), "loss_sensitivity")
    assert r["direction"] == "lower" and r["change"] < 0
    assert r["method"] == "normal-from-intervals" and r["verdict"] == "better"
    code, _, err = invoke(["compare", a, lower, "--fail-on", "worse"], capsys)
    assert code == 0, err

    r = row(cmp.compare_paths(a, higher), "loss_sensitivity")
    assert r["change"] > 0 and r["verdict"] == "worse" and r["headline"]
    code, _, err = invoke(["compare", a, higher, "--fail-on", "worse"], capsys)
    assert code == 1, err


def test_exact_counter_is_direction_aware_but_not_gated(tmp_path, capsys, base_recs):
    head = [dict(r) for r in base_recs]
    i = next(i for i, r in enumerate(head) if r["metric"] == "passes_per_example"
             and r["defense"] == "none")
    head[i] = {**head[i], "value": head[i]["value"] * 2}
    a, b = write(tmp_path / "a.json", base_recs), write(tmp_path / "b.json", head)
    r = row(cmp.compare_paths(a, b), "passes_per_example")
    assert r["method"] == "exact" and r["verdict"] == "worse" and not r["headline"]
    code, out, _ = invoke(["compare", a, b, "--fail-on", "worse"], capsys)
    assert code == 0 and "passes_per_example" in out  # shown (changed), not gated


def test_untested_timing_and_overlap_rule():
    def rec(metric, value, lo=None, hi=None, n=3):
        return {"dataset": "d", "architecture": "a", "defense": "x", "params": {}, "seed": 0,
                "protocol": "training-cost", "attack": None, "eps": None, "metric": metric,
                "value": value, "n": n, "ci_low": lo, "ci_high": hi, "extra": {}}

    base = [rec("median_epoch_seconds", 1.0), rec("overhead", 1.2, 1.1, 1.3)]
    head = [rec("median_epoch_seconds", 3.0), rec("overhead", 2.0, 1.9, 2.1)]
    result = cmp.compare(cmp.Side("a", base), cmp.Side("b", head))
    assert row(result, "median_epoch_seconds", defense="x")["verdict"] == "not tested"
    r = row(result, "overhead", defense="x")
    assert r["method"] == "interval-overlap" and r["verdict"] == "worse"
    assert r["change_low"] == pytest.approx(1.9 - 1.3)
    head[1] = rec("overhead", 1.25, 1.15, 1.35)  # overlapping intervals
    result = cmp.compare(cmp.Side("a", base), cmp.Side("b", head))
    assert row(result, "overhead", defense="x")["verdict"] == "no significant change"


def test_unpaired_when_outcomes_do_not_pair(base_recs):
    head = [dict(r) for r in base_recs]
    for r in head:
        r["extra"] = {k: v for k, v in r["extra"].items() if k != "outcomes"}
    r = row(cmp.compare(cmp.Side("a", base_recs), cmp.Side("b", head)), "accuracy")
    assert r["method"] == "two-proportion" and r["p"] == pytest.approx(1.0)
    k_b = round(r["base_value"] * N)
    lo, hi = cmp.unpaired_interval(k_b, N, k_b, N)
    assert (r["change_low"], r["change_high"]) == pytest.approx((lo, hi))


def test_model_selected_subsets_pair_only_on_a_fingerprint():
    """ensemble-transfer scores the examples its (trained) members all misclassify: equal n is
    no evidence of equal examples, an equal ``extra.examples`` fingerprint is."""
    def adv(outcomes, **extra):
        return record(accuracy_measurement("adv_accuracy", torch.tensor(outcomes),
                                           attack="gradient-ensemble@cnn-001x1", eps=0.1,
                                           members=1, **extra), protocol="ensemble-transfer")

    base, head = adv(bits(20, 40)), adv(bits(10, 40))
    r = cmp.compare(cmp.Side("a", [base]), cmp.Side("b", [head]))["rows"][0]
    assert r["method"] == "two-proportion" and r["lost"] is None
    base, head = adv(bits(20, 40), examples="abc"), adv(bits(10, 40), examples="abc")
    r = cmp.compare(cmp.Side("a", [base]), cmp.Side("b", [head]))["rows"][0]
    assert r["method"] == "mcnemar-exact" and (r["lost"], r["gained"]) == (10, 0)
    head = adv(bits(10, 40), examples="abd")
    r = cmp.compare(cmp.Side("a", [base]), cmp.Side("b", [head]))["rows"][0]
    assert r["method"] == "two-proportion"


def test_seeds_are_compared_each_and_pooled(tmp_path):
    base = export(bits(80), bits(50)) + export(bits(80, offset=5), bits(50, offset=5), seed=1)
    head = [dict(r) for r in base]
    for seed in (0, 1):
        i = next(i for i, r in enumerate(head) if r["metric"] == "worst_case_accuracy"
                 and r["seed"] == seed)
        head[i] = flip(head[i], 6, False)
    result = cmp.compare(cmp.Side("a", base), cmp.Side("b", head))
    per_seed = [row(result, "worst_case_accuracy", seed=s) for s in (0, 1)]
    pooled = row(result, "worst_case_accuracy", pooled=True)
    assert all(r["p"] == pytest.approx(2 * 0.5 ** 6) for r in per_seed)
    assert pooled["seeds"] == [0, 1] and pooled["seed"] is None
    assert (pooled["lost"], pooled["gained"]) == (12, 0)
    assert pooled["p"] == pytest.approx(2 * 0.5 ** 12)
    assert pooled["gating"] and not any(r["gating"] for r in per_seed)
    assert pooled["verdict"] == "worse" and cmp.failed(result, "worse")
    # Each pooled row is the mean over the seeds (equal n): 0.5 - 0.06 either seed.
    assert pooled["head_value"] == pytest.approx(
        sum(r["head_value"] for r in per_seed) / 2)


def test_headline_missing_from_an_evaluated_model_fails_the_gate(tmp_path, capsys, base_recs):
    head = [r for r in base_recs if not (r["metric"] == "worst_case_accuracy"
                                         and r["defense"] == "gda-brelu")]
    a, b = write(tmp_path / "a.json", base_recs), write(tmp_path / "b.json", head)
    result = cmp.compare_paths(a, b)
    assert result["summary"]["headline_missing"] == 1
    code, out, _ = invoke(["compare", a, b, "--fail-on", "worse"], capsys)
    assert code == 1 and "missing from head" in out
    # A model HEAD did not evaluate at all is listed, not a failure.
    head = [r for r in base_recs if r["defense"] != "gda-brelu"]
    b = write(tmp_path / "c.json", head)
    code, out, _ = invoke(["compare", a, b, "--fail-on", "worse"], capsys)
    assert code == 0 and "only in base" in out


def test_holm_correction_can_be_turned_off(base_recs):
    head = [dict(r) for r in base_recs]
    i = next(i for i, r in enumerate(head) if r["metric"] == "worst_case_accuracy")
    head[i] = flip(head[i], 6, False)  # p = 2/64 ~ 0.031: significant alone, not after Holm
    holm = cmp.compare(cmp.Side("a", base_recs), cmp.Side("b", head))
    # The family: this row and the two loss-sensitivity means. The untouched paired accuracies
    # (no discordant example, so p >= 1 whatever happens) are left out of it.
    assert holm["summary"]["holm_family"] == 3
    r = row(holm, "worst_case_accuracy")
    assert r["p_adjusted"] == pytest.approx(3 * 2 / 64)
    assert r["verdict"] == "no significant change"
    untouched = [x for x in holm["rows"] if x["gating"] and x["method"] == "mcnemar-exact"
                 and x is not r]
    assert untouched and all(x["p_adjusted"] is None for x in untouched)
    plain = cmp.compare(cmp.Side("a", base_recs), cmp.Side("b", head), correction="none")
    assert row(plain, "worst_case_accuracy")["verdict"] == "worse"


# -- output formats ----------------------------------------------------------------------------

def test_json_format_parses_with_numbers_as_numbers(tmp_path, capsys, base_recs):
    head = [dict(r) for r in base_recs]
    i = next(i for i, r in enumerate(head) if r["metric"] == "worst_case_accuracy")
    head[i] = flip(head[i], 20, False)
    a, b = write(tmp_path / "a.json", base_recs), write(tmp_path / "b.json", head)
    code, out, err = invoke(["compare", a, b, "--format", "json", "--fail-on", "worse"],
                            capsys)
    assert code == 1, err
    data = json.loads(out)
    assert data["summary"]["failed"] is True and data["summary"]["headline_worse"] == 1
    assert len(data["rows"]) == len(base_recs)  # every row, whatever --all says
    for r in data["rows"]:
        for k in ("base_value", "head_value", "change", "change_low", "change_high", "p"):
            assert r[k] is None or (isinstance(r[k], (int, float))
                                    and not isinstance(r[k], bool)), (k, r[k])
        assert isinstance(r["base_value"], float) and isinstance(r["change"], float)
        assert r["verdict"] in cmp.VERDICTS
    assert isinstance(data["summary"]["alpha"], float)


def test_markdown_shows_changed_and_headline_rows_unless_all(tmp_path, capsys, base_recs):
    a = write(tmp_path / "a.json", base_recs)
    code, out, _ = invoke(["compare", a, a], capsys)
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert code == 0 and "passes_per_example" not in out and "pass --all" in out
    assert len(table) - 1 == sum(1 for r in base_recs if cmp.is_headline(r))
    code, out, _ = invoke(["compare", a, a, "--all"], capsys)
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert len(table) - 1 == len(base_recs) and "passes_per_example" in out


def test_markdown_escapes_plugin_strings(tmp_path, capsys):
    recs = export(bits(80), bits(50), defense="evil|<b>x</b>")
    a = write(tmp_path / "a.json", recs)
    code, out, _ = invoke(["compare", a, a], capsys)
    assert code == 0 and "<b>" not in out
    header = next(ln for ln in out.splitlines() if ln.startswith("| |"))
    cols = header.count(" | ")
    for ln in out.splitlines():
        if ln.startswith("| ") and "evil" in ln:
            assert ln.replace("\\|", "").count(" | ") == cols


# -- bad input ---------------------------------------------------------------------------------

def test_mismatched_datasets_are_one_line_exit_2(tmp_path, capsys):
    a = write(tmp_path / "a.json", export(bits(80), bits(50)))
    b = write(tmp_path / "b.json", export(bits(80), bits(50), dataset="mnist"))
    assert_one_line_error(*invoke(["compare", a, b, "--fail-on", "worse"], capsys),
                          "no records in common", "datasets", "digits", "mnist")


def test_mismatched_eps_sweeps_are_one_line_exit_2(tmp_path, capsys):
    a = write(tmp_path / "a.json", export(bits(80), bits(50), eps=0.1))
    b = write(tmp_path / "b.json", export(bits(80), bits(50), eps=0.3))
    assert_one_line_error(*invoke(["compare", a, b], capsys), "eps sweeps", "0.1", "0.3")


@pytest.mark.parametrize("content, needle", [
    ("not json at all", "not a JSON export"),
    ('{"metric": "accuracy"}', "not a JSON list"),
    ('[{"metric": "accuracy", "value": 1}]', "lacks"),
    ("[]", "holds no metric records"),
])
def test_not_an_export_is_one_line_exit_2(tmp_path, capsys, content, needle):
    a = write(tmp_path / "a.json", export(bits(80), bits(50)))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert_one_line_error(*invoke(["compare", a, bad], capsys), needle, "bad.json")
    assert_one_line_error(*invoke(["compare", bad, a], capsys), needle)


def test_missing_paths_and_bad_options_are_one_line_exit_2(tmp_path, capsys):
    a = write(tmp_path / "a.json", export(bits(80), bits(50)))
    assert_one_line_error(*invoke(["compare", a, tmp_path / "nope.json"], capsys),
                          "does not exist", "nope.json")
    assert_one_line_error(*invoke(["compare", tmp_path, a], capsys), "results.sqlite")
    assert_one_line_error(*invoke(["compare", a, a, "--alpha", "2"], capsys), "--alpha")
    assert_one_line_error(*invoke(["compare", a, a, "--fail-on", "better"], capsys),
                          "--fail-on")
    if os.geteuid() != 0:  # root reads anything
        unreadable = write(tmp_path / "locked.json", export(bits(80), bits(50)))
        unreadable.chmod(0)
        assert_one_line_error(*invoke(["compare", a, unreadable], capsys), "cannot read")


def test_mixed_suites_in_one_export_are_refused(tmp_path, capsys):
    recs = export(bits(80), bits(50))
    other = {**recs[0], "value": 0.5, "cell_key": "another-cell"}
    b = write(tmp_path / "b.json", recs + [other])
    a = write(tmp_path / "a.json", recs)
    assert_one_line_error(*invoke(["compare", a, b], capsys), "two records", "fresh --store")


# -- a real run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The tiny suite, run once: (export path, store directory)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("real")
        try:
            main(["run", "--suite", str(TINY), "--defense", "gda-brelu", "--quiet",
                  "--device", "cpu", "--store", str(root / "store"),
                  "--output", str(root / "base.json")])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
    finally:
        torch.set_num_threads(before)
    return root / "base.json", root / "store"


def test_real_run_against_itself_and_its_store(real_run, capsys):
    export_path, store = real_run
    code, out, err = invoke(["compare", export_path, store, "--fail-on", "worse", "--format",
                             "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    n_records = len(json.loads(export_path.read_text()))
    assert data["summary"]["compared"] == n_records
    assert all(r["verdict"] == "no significant change" for r in data["rows"])
    assert data["summary"]["headline_rows"] >= 2
    assert any(r["method"] == "mcnemar-exact" for r in data["rows"])


def test_real_run_with_a_planted_regression_fails_the_gate(real_run, tmp_path, capsys):
    export_path, _ = real_run
    recs = json.loads(export_path.read_text())
    i = next(i for i, r in enumerate(recs) if r["metric"] == "worst_case_accuracy"
             and r["extra"].get("headline") and r["defense"] == "gda-brelu")
    robust = sum(unpack_outcomes(recs[i]["extra"]["outcomes"]))
    if robust < 12:
        pytest.skip(f"the tiny run left only {robust} robust examples to flip")
    head = list(recs)
    head[i] = flip(recs[i], robust, False)  # every robust example broken
    b = write(tmp_path / "head.json", head)
    code, out, err = invoke(["compare", export_path, b, "--fail-on", "worse"], capsys)
    assert code == 1, err
    r = row(cmp.compare_paths(export_path, b), "worst_case_accuracy", defense="gda-brelu",
            eps=recs[i]["eps"])
    assert (r["lost"], r["gained"]) == (robust, 0)
    assert r["p"] == pytest.approx(2 * 0.5 ** robust) and r["verdict"] == "worse"
    lo, hi = wilson(0, recs[i]["n"])
    assert head[i]["ci_low"] == lo and head[i]["ci_high"] == pytest.approx(hi)


def test_console_script_exit_status(real_run, tmp_path):
    """The installed script returns 1 for a gated regression and 2 for bad input: what CI
    sees."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} is not installed")
    export_path, _ = real_run
    recs = json.loads(export_path.read_text())
    i = next(i for i, r in enumerate(recs) if r["metric"] == "accuracy"
             and r["protocol"] == "white-box")
    correct = sum(unpack_outcomes(recs[i]["extra"]["outcomes"]))
    head = list(recs)
    head[i] = flip(recs[i], min(correct, 40), False)
    b = write(tmp_path / "head.json", head)
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run([str(CONSOLE_SCRIPT), "compare", str(export_path), str(b),
                          "--fail-on", "worse"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 1, run.stderr
    assert "| ★ |" in run.stdout and run.stderr == ""
    run = subprocess.run([str(CONSOLE_SCRIPT), "compare", str(export_path),
                          str(tmp_path / "missing.json")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1


def test_paired_p_is_exact_binomial_on_real_outcomes(real_run):
    """Two real records of one run (clean vs headline worst case of the same model) as if they
    were base and head: the p-value is the binomial tail of their discordant counts."""
    export_path, _ = real_run
    recs = json.loads(export_path.read_text())
    clean = next(r for r in recs if r["metric"] == "accuracy" and r["defense"] == "none")
    worst = next(r for r in recs if r["metric"] == "worst_case_accuracy"
                 and r["extra"].get("headline") and r["defense"] == "none")
    b = unpack_outcomes(clean["extra"]["outcomes"])
    h = unpack_outcomes(worst["extra"]["outcomes"])
    lost = sum(1 for x, y in zip(b, h) if x and not y)
    gained = sum(1 for x, y in zip(b, h) if y and not x)
    m, k = lost + gained, min(lost, gained)
    expected = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)
    head = {**clean, "value": worst["value"],
            "extra": {"outcomes": worst["extra"]["outcomes"]}}
    result = cmp.compare(cmp.Side("a", [clean]), cmp.Side("b", [head]), correction="none")
    r = result["rows"][0]
    assert (r["lost"], r["gained"]) == (lost, gained)
    assert r["p"] == pytest.approx(expected, rel=1e-12)
