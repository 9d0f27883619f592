"""The headline (one worst case over every bounded attack) and the masking checks, through the
real planner and executor on a tiny suite (issue 11): a logit-scaled copy of a trained model
scores like the model and is flagged; a transform with NaN gradients is flagged (or fails its
cell) and never ranks above ``none``; the honest model raises no flag."""

from __future__ import annotations

import json

import pytest
import torch

from advarena.cli.main import main
from advarena.evaluation import accuracy_measurement, record_outcomes, unpack_outcomes
from advarena.headline import HeadlineError, compute_headline
from advarena.plan import make_plan
from advarena.plugins import Registry, make_plugin_manager
from advarena.store import Store, inconsistency
from advarena.suite import load_suite

# digits, cnn-001, 2 epochs on half the data; white-box: a CE attack, a DLR attack (scale-free)
# and the score-based Square; black-box: one undefended substitute of the same architecture.
SUITE = """
name = "tiny-headline"
datasets = ["digits"]
architectures = ["cnn-001"]
seeds = [0]
defenses = ["none"]
reference = "none"

[train]
epochs = 3
batch_size = 128
lr = 0.003
optimizer = "adam"
val_fraction = 0.1

[dataset_params.digits]
test_fraction = 0.5

[eval]
n_examples = 100
batch_size = 100

[attacks.apgd-dlr]
steps = 10

[attacks.square]
n_queries = 300

[protocols.white-box]
attacks = {attacks}
eps = [0.1, 0.3]
headline_eps = 0.1

[protocols.black-box]
substitutes = ["none"]
substitute_architecture = ""
attacks = ["fgsm"]
eps = [0.1]
"""


def _attacks() -> list[str]:
    from advarena.plugins import default_registry

    names = {e.name for e in default_registry().entries("attacks")}
    return ["fgsm", "apgd-dlr"] + (["square"] if "square" in names else [])


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    from conftest import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def registry():
    from conftest import load_fixture_plugin

    return Registry(make_plugin_manager([load_fixture_plugin("masking_defenses")]))


@pytest.fixture(scope="module")
def run(tmp_path_factory, registry):
    """One real run of none, logit-scale (x100) and nan-grad; the leaderboard's JSON rows."""
    import advarena.cli.main as cli_main
    import advarena.cli.run_command as run_command
    import advarena.plugins as plugins

    root = tmp_path_factory.mktemp("headline")
    attacks = _attacks()
    text = SUITE.replace("{attacks}", json.dumps(attacks))
    if "square" not in attacks:
        text = text.replace("[attacks.square]\nn_queries = 300\n", "")
    suite = root / "suite.toml"
    suite.write_text(text)
    store, out = root / "store", root / "lb"
    mp = pytest.MonkeyPatch()
    mp.setattr(run_command, "default_registry", lambda: registry)
    mp.setattr(plugins, "default_registry", lambda: registry)
    try:
        with pytest.raises(SystemExit):
            main(["run", "--suite", str(suite), "--store", str(store), "--quiet",
                  "--defense", "logit-scale", "--defense", "nan-grad"])
        try:
            cli_main.main(["leaderboard", "--store", str(store), "--out", str(out),
                           "--plots", "none"])
        except SystemExit as exc:
            assert exc.code in (0, None)
    finally:
        mp.undo()
    s = Store.open(store, create=False)
    try:
        records = s.metrics()
        failures = s.failures()
    finally:
        s.close()
    rows = {r["defense"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    return {"records": records, "failures": failures, "rows": rows, "suite": suite,
            "md": (out / "leaderboard.md").read_text()}


def _raised(run, defense):
    return {r["metric"]: r["extra"].get("detail") for r in run["records"]
            if r["defense"] == defense and r["protocol"].startswith("sanity")
            and r["value"] >= 0.5}


def test_the_plan_has_a_headline_cell_per_model_reading_white_and_black_box(run, registry):
    plan = make_plan(load_suite(str(run["suite"])), registry, ["logit-scale", "nan-grad"])
    heads = [c for c in plan.cells if c.kind == "headline"]
    assert len(heads) == 3
    by_key = plan.by_key()
    for c in heads:
        assert {by_key[k].labels["protocol"] for k in c.deps.values()} == {"white-box",
                                                                           "black-box"}
        flags = [f for f in plan.cells if f.kind == "flags" and c.key in f.deps.values()]
        assert len(flags) == 1  # the sanity cell reads the headline


def test_headline_is_the_worst_case_over_every_group(run):
    rec = {r["metric"]: r for r in run["records"] if r["defense"] == "none"
           and r["protocol"] == "headline"}
    head = rec["headline_accuracy"]
    assert head["extra"]["headline"] is True and head["eps"] == 0.1 and head["n"] == 100
    groups = head["extra"]["attacks"]
    assert groups["white-box"] and groups["transfer"]
    assert set(head["extra"]["protocols"]) == {"white-box", "black-box"}
    for metric in ("white_box_only_accuracy", "transfer_only_accuracy"):
        assert head["value"] <= rec[metric]["value"]
    if "square" in _attacks():
        assert groups["score"] == ["square"]
        assert head["value"] <= rec["score_only_accuracy"]["value"]


def test_honest_model_raises_no_flag(run):
    checked = [r for r in run["records"] if r["defense"] == "none"
               and r["protocol"].startswith("sanity")]
    assert checked
    assert _raised(run, "none") == {}
    assert run["rows"]["none"]["flags"] == []


def test_logit_scaling_is_seen_through_and_flagged(run):
    rows = run["rows"]
    none, scaled = rows["none"]["headline"]["value"], rows["logit-scale"]["headline"]["value"]
    assert abs(none - scaled) <= 0.05
    raised = _raised(run, "logit-scale")
    assert "flag_zero_gradients" in raised
    assert "exactly zero" in raised["flag_zero_gradients"]
    assert rows["logit-scale"]["flagged"]
    assert "⚠" in run["md"]


def test_nan_gradients_are_flagged_or_fail_and_never_rank_above_none(run):
    rows = run["rows"]
    failed = [f for f in run["failures"] if f["labels"].get("defense") == "nan-grad"]
    if "nan-grad" in rows:
        raised = _raised(run, "nan-grad")
        assert "flag_non_finite" in raised and "NaN" in raised["flag_non_finite"]
        assert rows["nan-grad"]["rank"] > rows["none"]["rank"] or (
            rows["nan-grad"]["headline"]["value"] <= rows["none"]["headline"]["value"])
        assert rows["nan-grad"]["rank"] >= rows["none"]["rank"]
    else:
        assert failed


# -- compute_headline on hand-made records -----------------------------------------------------

def _rec(protocol, metric, bits, eps=None, attack=None, **extra):
    m = accuracy_measurement(metric, torch.tensor(bits, dtype=torch.bool), attack=attack,
                             eps=eps, **extra)
    return {"protocol": protocol, "metric": metric, "value": m.value, "n": m.n,
            "attack": attack, "eps": eps, "extra": m.extra}


def test_compute_headline_ands_the_groups_at_the_headline_eps_only():
    clean = [1, 1, 1, 1, 1, 0]
    records = [
        _rec("white-box", "accuracy", clean),
        _rec("white-box", "worst_case_accuracy", [1, 1, 1, 0, 0, 0], 0.1, "worst-case",
             norm="linf", headline=True),
        _rec("white-box", "robust_accuracy", [1, 1, 1, 0, 1, 0], 0.1, "pgd", norm="linf"),
        _rec("white-box", "robust_accuracy", [1, 1, 1, 1, 0, 0], 0.1, "square", norm="linf"),
        _rec("white-box", "robust_accuracy", [0, 0, 0, 0, 0, 0], 0.3, "pgd", norm="linf"),
        _rec("black-box", "transfer_accuracy", [0, 1, 1, 1, 1, 0], 0.1, "fgsm@none",
             source_attack="fgsm"),
        _rec("black-box", "transfer_accuracy", [0, 0, 0, 0, 0, 0], 0.3, "fgsm@none",
             source_attack="fgsm"),
    ]
    threat = {"pgd": {"norm": "linf", "access": "gradient"},
              "square": {"norm": "linf", "access": "score"},
              "fgsm": {"norm": "linf", "access": "gradient"}}
    out = {m.metric: m for m in compute_headline(records, threat)}
    assert out["white_box_only_accuracy"].value == pytest.approx(4 / 6)
    assert out["score_only_accuracy"].value == pytest.approx(4 / 6)
    assert out["transfer_only_accuracy"].value == pytest.approx(4 / 6)
    assert out["headline_accuracy"].value == pytest.approx(2 / 6)  # examples 1 and 2
    assert out["headline_accuracy"].extra["attacks"] == {
        "white-box": ["pgd"], "score": ["square"], "transfer": ["fgsm@none"]}
    # an L2 transfer attack does not enter a Linf headline
    threat["fgsm"] = {"norm": "l2", "access": "gradient"}
    out = {m.metric: m for m in compute_headline(records, threat)}
    assert "transfer_only_accuracy" not in out
    assert out["headline_accuracy"].extra["missing"] == ["transfer"]
    assert out["headline_accuracy"].value == pytest.approx(3 / 6)


def test_compute_headline_refuses_records_on_other_examples():
    records = [
        _rec("white-box", "accuracy", [1, 1, 1]),
        _rec("white-box", "worst_case_accuracy", [1, 0, 0], 0.1, "worst-case", norm="linf",
             headline=True),
        _rec("white-box", "robust_accuracy", [1, 0, 0], 0.1, "pgd", norm="linf"),
        _rec("black-box", "transfer_accuracy", [1, 0], 0.1, "fgsm@none", source_attack="fgsm"),
    ]
    with pytest.raises(HeadlineError):
        compute_headline(records, {"pgd": {"norm": "linf"}, "fgsm": {"norm": "linf"}})


# -- the white-box protocol's gradient checks, on the trained digits model ---------------------

class _Scaled(torch.nn.Module):
    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale, self.bounds = model, scale, model.bounds

    def forward(self, x):
        return self.model(x) * self.scale


def _white_box(model, splits, attacks=("fgsm", "pgd")):
    import advarena
    from advarena.evaluation import EvalContext
    from advarena.protocols.white_box import WhiteBox

    data = splits.test.subset(slice(0, 60))
    ctx = EvalContext(info=splits.info, data=data, train=splits.train,
                      device=torch.device("cpu"), seed=0, batch_size=60, model=model,
                      attacks={a: advarena.attack(a) for a in attacks})
    out = WhiteBox(attacks=attacks, eps=(0.1,), headline_eps=0.1).evaluate(ctx)
    return {(m.metric, m.attack): m for m in out}


def test_zero_gradient_share_sees_a_saturated_softmax(digits_model):
    model, splits = digits_model
    plain = _white_box(model, splits)
    scaled = _white_box(_Scaled(model, 1000.0), splits)
    share = ("zero_gradient_share", None)
    assert plain[share].value <= 0.05 < 0.5 <= scaled[share].value
    assert scaled[share].n == round(scaled[("accuracy", None)].value * 60)  # of the correct
    # the same predictions, and the blind CE attacks overstate robustness
    assert scaled[("accuracy", None)].value == plain[("accuracy", None)].value
    assert scaled[("robust_accuracy", "pgd")].value > plain[("robust_accuracy", "pgd")].value


def test_nan_gradients_are_measured_and_attacks_stay_finite(digits_model, fixture_plugin):
    model, splits = digits_model
    from advarena.models import Classifier

    nan = Classifier(model.net, model.bounds, fixture_plugin("masking_defenses")
                     .NanGradTransform()).eval()
    out = _white_box(nan, splits)
    assert out[("nonfinite_gradient_share", None)].value == 1.0
    assert out[("robust_accuracy", "pgd")].value == out[("accuracy", None)].value  # blind
    flags = {f.metric: f for f in compute_flags_of(out)}
    assert flags["flag_non_finite"].value == 1.0


def test_non_finite_clean_logits_fail_the_evaluation(digits_model):
    model, splits = digits_model
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        _white_box(_Scaled(model, float("inf")), splits)


def compute_flags_of(out):
    from advarena.sanity import compute_flags

    flat = [{"protocol": "white-box", "metric": m.metric, "value": m.value, "n": m.n,
             "attack": m.attack, "eps": m.eps, "ci_low": m.ci_low, "ci_high": m.ci_high,
             "extra": m.extra} for m in out.values()]
    return compute_flags(flat, [], {"fgsm"})


@pytest.mark.parametrize("fault", ["none", "value", "n", "too-many-bits", "not-hex", "no-colon",
                                   "negative", "not-a-string"])
def test_one_outcome_reader_refuses_exactly_what_the_store_refuses(fault):
    """Headline, flags, leaderboard and compare read packed outcomes through one reader; it
    returns the bits of a consistent record and None for every planted inconsistency, in
    agreement with the store's own check on write and read."""
    mask = torch.tensor([True, False, True, True, False, True, True])
    m = accuracy_measurement("accuracy", mask)
    rec = {"metric": m.metric, "value": m.value, "n": m.n, "ci_low": m.ci_low,
           "ci_high": m.ci_high, "extra": dict(m.extra)}
    packed = rec["extra"]["outcomes"]
    if fault == "value":
        rec["value"] = 6 / 7
    elif fault == "n":
        rec["n"] = 8
    elif fault == "too-many-bits":
        rec["extra"]["outcomes"] = f"3:{packed.split(':')[1]}"
        rec["n"], rec["value"] = 3, 1.0
    elif fault == "not-hex":
        rec["extra"]["outcomes"] = "7:zz"
    elif fault == "no-colon":
        rec["extra"]["outcomes"] = "7"
    elif fault == "negative":
        rec["extra"]["outcomes"] = "-7:5"
    elif fault == "not-a-string":
        rec["extra"]["outcomes"] = 93
    bits = record_outcomes(rec)
    store_says = inconsistency(rec["metric"], rec["value"], rec["n"], rec["ci_low"],
                               rec["ci_high"], rec["extra"])
    if fault == "none":
        assert bits == mask.tolist() == unpack_outcomes(packed) and store_says is None
    else:
        assert bits is None, fault
        assert store_says is not None, fault
