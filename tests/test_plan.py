"""Planning: content keys are deterministic, shared models share keys, parameter changes touch
only their own cells, bad names and settings fail before any work, cells come in dependency
order."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from advarena.api import Defense, Protocol
from advarena.errors import AdvarenaError, ParameterError, SuiteError, UnknownPluginError
from advarena.hookimpl import hookimpl
from advarena.params import param
from advarena.plan import make_plan
from advarena.plugins import Registry, default_registry, make_plugin_manager
from advarena.suite import load_suite, parse_suite

TINY = Path(__file__).parent / "suites" / "tiny.toml"


def tiny_raw() -> dict:
    return tomllib.loads(TINY.read_text())


def plan_of(raw: dict, defenses=None, protocols=None, registry=None):
    return make_plan(parse_suite(raw, "tiny-test"), registry or default_registry(), defenses,
                     protocols)


def keys_by(plan, kind, defense=None, role=None):
    return {c.key for c in plan.cells if c.kind == kind
            and (defense is None or c.labels.get("defense") == defense)
            and (role is None or c.labels.get("role") == role)}


def reference_key(plan) -> str:
    (key,) = keys_by(plan, "train", role="reference")
    return key


# -- determinism and sharing ------------------------------------------------------------------

def test_same_suite_gives_same_keys():
    a = plan_of(tiny_raw(), ["gda-brelu", "brelu"])
    b = plan_of(tiny_raw(), ["gda-brelu", "brelu"])
    assert [c.key for c in a.cells] == [c.key for c in b.cells]
    assert len({c.key for c in a.cells}) == len(a.cells)  # no duplicate cells
    # loading from the file gives the same plan as parsing the same table
    c = make_plan(load_suite(str(TINY)), default_registry(), ["gda-brelu", "brelu"])
    assert [x.key for x in c.cells] == [x.key for x in a.cells]


def test_plan_shape_of_tiny_suite():
    plan = plan_of(tiny_raw(), ["gda-brelu"])
    assert plan.defenses == ["none", "gda-brelu"]  # the reference always comes first
    suite = tiny_raw()
    assert plan.counts()["train"] == 2  # one model per defense, the reference included
    evals = [c for c in plan.cells if c.kind == "eval"]
    # one eval cell per (model, protocol of the suite)
    assert sorted((c.labels["defense"], c.labels["protocol"]) for c in evals) == sorted(
        (d, p) for d in ("none", "gda-brelu") for p in suite["protocols"])
    ref = reference_key(plan)
    for c in evals:
        assert c.deps["reference"] == ref
        assert c.deps["model"] in keys_by(plan, "train", defense=c.labels["defense"])


def test_reference_train_cell_is_shared_between_defenses():
    with_gda = plan_of(tiny_raw(), ["gda-brelu"])
    with_brelu = plan_of(tiny_raw(), ["brelu"])
    assert reference_key(with_gda) == reference_key(with_brelu)
    # the reference's eval cell is shared too; the defenses' own cells differ
    assert keys_by(with_gda, "eval", "none") == keys_by(with_brelu, "eval", "none")
    assert keys_by(with_gda, "train", "gda-brelu").isdisjoint(
        keys_by(with_brelu, "train", "brelu"))


def test_changing_a_defense_parameter_changes_only_its_cells():
    raw = tiny_raw()
    before = plan_of(raw, ["gda-brelu", "brelu"])
    changed = copy.deepcopy(raw)
    changed["defense_params"]["gda-brelu"] = {"n": raw["defense_params"]["gda-brelu"]["n"] + 1}
    after = plan_of(changed, ["gda-brelu", "brelu"])

    old = {c.key: c for c in before.cells}
    new = {c.key: c for c in after.cells}
    gone = {k for k in old if k not in new}
    added = {k for k in new if k not in old}
    assert {old[k].labels["defense"] for k in gone} == {"gda-brelu"}
    assert {new[k].labels["defense"] for k in added} == {"gda-brelu"}
    assert {"train", "eval"} <= {old[k].kind for k in gone}
    assert len(gone) == len(added)
    # every cell of gda-brelu's own model changed (it reads the changed model)
    assert gone == {k for k, c in old.items() if c.labels.get("defense") == "gda-brelu"}
    # the changed value shows in the new cells' labels
    (train,) = [new[k] for k in added if new[k].kind == "train"]
    assert train.labels["params"]["n"] == changed["defense_params"]["gda-brelu"]["n"]


@pytest.mark.parametrize("edit", [
    lambda r: r["train"].__setitem__("epochs", r["train"]["epochs"] + 1),
    lambda r: r.__setitem__("seeds", [1]),
    lambda r: r["eval"].__setitem__("n_examples", r["eval"]["n_examples"] + 1),
    lambda r: r["attacks"]["pgd"].__setitem__("steps", r["attacks"]["pgd"]["steps"] + 1),
], ids=["epochs", "seed", "n_examples", "pgd-steps"])
def test_settings_that_change_results_change_keys(edit):
    raw = tiny_raw()
    changed = copy.deepcopy(raw)
    edit(changed)
    a = {c.key for c in plan_of(raw, ["brelu"]).cells}
    b = {c.key for c in plan_of(changed, ["brelu"]).cells}
    assert a != b


def test_eval_settings_do_not_change_train_keys():
    raw = tiny_raw()
    changed = copy.deepcopy(raw)
    changed["protocols"]["white-box"]["eps"] = [0.05, 0.1]
    a, b = plan_of(raw, ["brelu"]), plan_of(changed, ["brelu"])
    assert keys_by(a, "train") == keys_by(b, "train")

    def evals(plan, white_box):
        return {c.key for c in plan.cells if c.kind == "eval"
                and (c.labels["protocol"] == "white-box") == white_box}

    assert evals(a, True) and evals(a, True).isdisjoint(evals(b, True))
    # other protocols' evaluations do not read the white-box settings
    assert evals(a, False) == evals(b, False)


# -- errors ------------------------------------------------------------------------------------

def test_unknown_defense_suggests_close_match():
    with pytest.raises(UnknownPluginError) as info:
        plan_of(tiny_raw(), ["gda-brelo"])
    assert "gda-brelo" in str(info.value) and "'gda-brelu'" in str(info.value)


def test_unknown_defense_in_suite_list_suggests_close_match():
    raw = tiny_raw()
    raw["defenses"] = ["none", "brelus"]
    with pytest.raises(UnknownPluginError) as info:
        plan_of(raw)
    assert "'brelu'" in str(info.value)


def test_unknown_protocol_table_suggests_close_match():
    raw = tiny_raw()
    raw["protocols"] = {"white-bx": raw["protocols"]["white-box"]}
    with pytest.raises(UnknownPluginError) as info:
        plan_of(raw, ["brelu"])
    assert "white-bx" in str(info.value) and "'white-box'" in str(info.value)


def test_protocol_not_in_suite_names_the_configured_ones():
    with pytest.raises(SuiteError) as info:
        plan_of(tiny_raw(), ["brelu"], ["white-bx"])
    assert "white-bx" in str(info.value) and "white-box" in str(info.value)


def test_unknown_attack_in_protocol_suggests_close_match():
    raw = tiny_raw()
    raw["protocols"]["white-box"]["attacks"] = ["fgms", "pgd"]
    with pytest.raises(UnknownPluginError) as info:
        plan_of(raw, ["brelu"])
    assert "fgms" in str(info.value) and "'fgsm'" in str(info.value)


def test_unknown_attack_table_suggests_close_match():
    raw = tiny_raw()
    raw["attacks"]["pgdd"] = {"steps": 3}
    with pytest.raises(UnknownPluginError) as info:
        plan_of(raw, ["brelu"])
    assert "'pgd'" in str(info.value)


def test_bad_plugin_parameter_is_refused():
    raw = tiny_raw()
    raw["attacks"]["pgd"] = {"stpes": 3}
    with pytest.raises(ParameterError) as info:
        plan_of(raw, ["brelu"])
    assert "stpes" in str(info.value)
    raw = tiny_raw()
    raw["protocols"]["white-box"]["eps"] = [-0.1, 0.1]
    with pytest.raises(ParameterError) as info:
        plan_of(raw, ["brelu"])
    assert "eps" in str(info.value)


@pytest.mark.parametrize("train", [
    {"epochs": 0},
    {"batch_size": 0},
    {"lr": 0.0},
    {"lr": -1e-3},
    {"optimizer": "adamw"},
    {"val_fraction": 1.0},
    {"val_fraction": -0.1},
    {"epochs": "two"},
    {"epoch": 3},  # unknown key
], ids=lambda t: "-".join(f"{k}={v}" for k, v in t.items()))
def test_bad_train_values_give_suite_error(train):
    raw = tiny_raw()
    raw["train"].update(train)
    with pytest.raises(SuiteError) as info:
        plan_of(raw, ["brelu"])
    assert "[train]" in str(info.value) and "\n" not in str(info.value)


def test_bad_per_dataset_train_override_gives_suite_error():
    raw = tiny_raw()
    raw["train"]["digits"] = {"epochs": 0}
    with pytest.raises(SuiteError):
        plan_of(raw, ["brelu"])


@pytest.mark.parametrize("train", [{"epochs": 2.5}, {"batch_size": 1.5}],
                         ids=["epochs-float", "batch_size-float"])
def test_non_integer_epochs_give_suite_error(train):
    raw = tiny_raw()
    raw["train"].update(train)
    with pytest.raises(SuiteError):
        plan_of(raw, ["brelu"])


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.__setitem__("datasets", []), "datasets"),
    (lambda r: r.__setitem__("seeds", ["0"]), "seeds"),
    (lambda r: r.__setitem__("protocols", {}), "protocols"),
    (lambda r: r.__setitem__("train", 3), "train"),
    (lambda r: r.__setitem__("bogus", 1), "bogus"),
], ids=["no-datasets", "string-seed", "no-protocols", "train-not-table", "unknown-key"])
def test_malformed_suite_gives_suite_error(edit, needle):
    raw = tiny_raw()
    edit(raw)
    with pytest.raises(SuiteError) as info:
        parse_suite(raw, "bad")
    assert needle in str(info.value)


# -- order ------------------------------------------------------------------------------------

class FineTune(Defense):
    """Fixture: a defense that starts from the trained reference."""

    name = "test-finetune"
    needs_reference = True
    steps: int = param(1, ge=1)


class SharedProto(Protocol):
    """Fixture: a protocol with a shared substitute model and a prepare step."""

    name = "test-shared"
    eps: float = param(0.1, ge=0)

    def shared_models(self, setting):
        return {"substitute": {"defense": "none", "seed": setting["seed"] + 100}}

    def prepare(self, ctx):
        return {}

    def evaluate(self, ctx):
        return []


class _Fixtures:
    @hookimpl
    def advarena_register_defenses(self):
        return [FineTune]

    @hookimpl
    def advarena_register_protocols(self):
        return [SharedProto]


@pytest.fixture(scope="module")
def registry():
    return Registry(make_plugin_manager([_Fixtures()]))


def _assert_topological(plan):
    pos = {c.key: i for i, c in enumerate(plan.cells)}
    assert len(pos) == len(plan.cells)
    for c in plan.cells:
        for role, dep in c.deps.items():
            assert dep in pos, f"{c.title}: {role} dependency is not in the plan"
            assert pos[dep] < pos[c.key], f"{c.title} comes before its {role}"


def test_cells_are_topologically_ordered(registry):
    raw = tiny_raw()
    raw["protocols"]["test-shared"] = {"eps": 0.2}
    raw["seeds"] = [0, 1]
    plan = plan_of(raw, ["test-finetune", "gda-brelu", "brelu"], registry=registry)
    _assert_topological(plan)
    kinds = {c.kind for c in plan.cells}
    assert {"train", "prepare", "eval"} <= kinds
    # the fine-tuned model reads the reference; the shared substitute and prepared data are read
    # by every defense's eval cell of that protocol
    for ft in (c for c in plan.cells if c.kind == "train" and c.labels["defense"] == "test-finetune"):
        ref = next(c for c in plan.cells if c.key == ft.deps["reference"])
        assert ref.labels["role"] == "reference" and ref.labels["seed"] == ft.labels["seed"]
    for seed in (0, 1):
        evals = [c for c in plan.cells if c.kind == "eval" and c.labels["protocol"] ==
                 "test-shared" and c.labels["seed"] == seed]
        assert len(evals) == 4
        assert len({c.deps["shared:substitute"] for c in evals}) == 1
        assert len({c.deps["prepared"] for c in evals}) == 1


def test_shared_model_key_does_not_depend_on_defense(registry):
    raw = tiny_raw()
    raw["protocols"]["test-shared"] = {}
    a = plan_of(raw, ["gda-brelu"], registry=registry)
    b = plan_of(raw, ["test-finetune"], registry=registry)
    sub = lambda p: {c.deps["shared:substitute"] for c in p.cells if "shared:substitute" in c.deps}
    assert sub(a) == sub(b) and len(sub(a)) == 1
    assert keys_by(a, "prepare") == keys_by(b, "prepare")


def test_topological_order_rejects_cycles():
    from advarena.plan import Cell, _topological

    a = Cell("a", "train", {}, {}, {"x": "b"})
    b = Cell("b", "train", {}, {}, {"x": "a"})
    with pytest.raises(AdvarenaError):
        _topological([a, b])
