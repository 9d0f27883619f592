"""Suite settings from the command line: ``--defense NAME:K=V``, ``--set``, ``--eps``,
``--examples``, ``--epochs`` change the suite before planning, are validated as suite values
are, and give the cell keys a TOML file with the same values gives."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from advarena.overrides import apply_overrides, parse_eps, split_defense
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.suite import load_suite, parse_suite
from tests.test_cli import invoke

TINY = Path(__file__).parent / "suites" / "tiny.toml"
ARGS = dict(sets=["attacks.pgd.steps=3", "protocols.white-box.attacks=['pgd']"],
            eps="0.05,0.1", examples=50, epochs=1)


def _keys(plan) -> set[str]:
    return {c.key for c in plan.cells}


def test_overrides_plan_like_the_same_toml_suite():
    reg = default_registry()
    s, names = apply_overrides(load_suite(str(TINY)), reg, ["gda-brelu:sigma=0.2,n=2"], **ARGS)
    assert names == ["gda-brelu"]
    raw = tomllib.loads(TINY.read_text())
    raw["defense_params"]["gda-brelu"] = {"n": 2, "sigma": 0.2}
    raw["attacks"]["pgd"]["steps"] = 3
    raw["protocols"]["white-box"].update(attacks=["pgd"], eps=[0.05, 0.1])
    raw["eval"]["n_examples"] = 50
    raw["train"]["epochs"] = 1
    by_hand = parse_suite(raw, "by-hand.toml")
    assert _keys(make_plan(s, reg, names)) == _keys(make_plan(by_hand, reg, names))
    plain = load_suite(str(TINY))
    assert not _keys(make_plan(s, reg, names)) & {c.key for c in make_plan(plain, reg, names)
                                                  .cells if c.kind == "eval"}


def test_headline_eps_follows_an_eps_list_that_leaves_it_out():
    s, _ = apply_overrides(load_suite(str(TINY)), default_registry(), eps="0.05,0.2")
    assert s.protocols["white-box"]["eps"] == [0.05, 0.2]
    assert s.protocols["white-box"]["headline_eps"] == 0.05  # the closest to 0.1


def test_parsing():
    assert split_defense("a+b:b.eps=[0.1, 0.2],a.k=sgd") == ("a+b", [(["b", "eps"], [0.1, 0.2]),
                                                                    (["a", "k"], "sgd")])
    assert parse_eps("4/255, 8/255") == [4 / 255, 8 / 255]
    assert parse_eps(8 / 255) == [8 / 255] and parse_eps([0.1, 0.2]) == [0.1, 0.2]  # Python


def test_run_with_overrides(capsys, tmp_path, single_thread):
    store = tmp_path / "store"
    code, out, err = invoke(["run", "--suite", TINY, "--defense", "gda-brelu:sigma=0.2",
                             "--set", "attacks.pgd.steps=2", "--eps", "0.1", "--examples", "40",
                             "--epochs", "1", "--protocol", "white-box", "--store", store,
                             "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    import advarena

    df = advarena.results(store)
    assert set(df["n"][df.metric == "robust_accuracy"]) == {40}
    assert set(df["eps"].dropna()) == {0.1}
    assert all(p["sigma"] == 0.2 for p in df[df.defense == "gda-brelu"]["params"])
    # the result table names the row and its headline
    assert "gda-brelu" in out and "headline_accuracy" in " ".join(out.split())


@pytest.mark.parametrize("args,expected", [
    (["--set", "attacks.pgd.steps=many"], "pgd: parameter 'steps'"),
    (["--set", "nonsense.x=1"], "unknown key(s) nonsense"),
    (["--set", "attacks.pgd.steps"], "expected KEY=VALUE"),
    (["--defense", "gda-brelu:sigmaa=0.2"], "did you mean sigma"),
    (["--eps", "0.1,big"], "'big' is not a number"),
    (["--examples", "0"], "--examples"),
])
def test_bad_overrides_are_one_line(args, expected, capsys, tmp_path):
    store = tmp_path / "store"
    code, out, err = invoke(["run", "--suite", TINY, "--store", store, "--quiet", *args],
                            capsys)
    assert code == 2, (out, err)
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not store.exists()


@pytest.mark.parametrize("command,options", [
    ("run", ["--set", "--eps", "--examples", "--epochs", "--plugin", "gda-brelu:sigma=0.2"]),
    ("evaluate", ["--model", "--weights", "--name", "--set", "--plugin"]),
    ("export", ["--format", "--out"]),
    ("compare", ["--store"]),
    ("list", ["--plugin"]),
])
def test_help_shows_the_new_options_with_examples(command, options, capsys):
    code, out, err = invoke([command, "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "Example" in text
    for opt in options:
        assert opt in text, opt
