"""Plugin parameters: keyword-only dataclasses with coerced, validated values."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest

import advarena
from advarena.errors import ParameterError
from advarena.params import Plugin, param


class Toy(Plugin):
    """A plugin with one parameter of every supported kind."""

    name = "toy"

    eps: float = param(0.3, ge=0, help="budget")
    steps: int = param(10, ge=1, le=100, help="number of steps")
    sizes: tuple[int, ...] = param((1, 2), ge=1, help="layer sizes")
    mode: Literal["fast", "slow"] = param("fast", help="speed")
    flag: bool = param(False, help="a switch")
    step_size: float | None = param(None, gt=0, help="None means automatic")
    kernel: str = param("rbf", choices=("rbf", "linear"), help="kernel")


class ToyChild(Toy):
    """Inherits Toy's parameters and adds one."""

    name = "toy-child"
    extra: int = param(0, ge=0)


class Unnamed(Plugin):
    rate: float = param(1.0, gt=0)


# --- construction ---------------------------------------------------------------------------


def test_defaults_are_the_declared_ones():
    t = Toy()
    assert (t.eps, t.steps, t.sizes, t.mode, t.flag, t.step_size, t.kernel) == (
        0.3, 10, (1, 2), "fast", False, None, "rbf")


def test_construction_is_keyword_only():
    with pytest.raises(TypeError):
        Toy(0.1)
    with pytest.raises(TypeError):
        advarena.attack("fgsm").__class__(0.1)
    assert Toy(eps=0.1).eps == 0.1


def test_int_is_coerced_to_float():
    t = Toy(eps=1)
    assert t.eps == 1.0 and type(t.eps) is float


def test_integral_float_is_coerced_to_int_but_fraction_is_refused():
    assert type(Toy(steps=3.0).steps) is int
    with pytest.raises(ParameterError, match="steps"):
        Toy(steps=3.5)


@pytest.mark.parametrize("field", ["eps", "steps"])
def test_bool_is_not_a_number(field):
    with pytest.raises(ParameterError, match=field):
        Toy(**{field: True})


def test_strings_from_the_cli_are_parsed():
    t = Toy(eps="0.3", steps=" 5", flag="true", step_size="0.01", sizes="3,4")
    assert t.eps == 0.3 and type(t.eps) is float
    assert t.steps == 5 and type(t.steps) is int
    assert t.flag is True
    assert t.step_size == 0.01
    assert t.sizes == (3, 4)
    assert Toy(flag="no").flag is False
    assert Toy(step_size="none").step_size is None


@pytest.mark.parametrize("kwargs", [
    {"eps": "abc"}, {"steps": "1.5"}, {"flag": "maybe"}, {"flag": 1}, {"kernel": 3},
    {"eps": [0.1]}, {"step_size": "auto"},
])
def test_unparsable_values_raise_parameter_error(kwargs):
    (field,) = kwargs
    with pytest.raises(ParameterError, match=f"toy: parameter '{field}'"):
        Toy(**kwargs)


def test_none_is_taken_by_optional_parameters_only():
    assert Toy(step_size=None).step_size is None
    with pytest.raises(ParameterError, match="eps"):
        Toy(eps=None)


# --- bounds ---------------------------------------------------------------------------------


def test_negative_eps_names_plugin_and_parameter():
    with pytest.raises(ParameterError) as info:
        Toy(eps=-0.1)
    msg = str(info.value)
    assert "toy" in msg and "'eps'" in msg and ">= 0" in msg


def test_negative_eps_on_a_registered_attack():
    with pytest.raises(ParameterError) as info:
        advarena.attack("fgsm", eps=-0.1)
    assert "fgsm" in str(info.value) and "eps" in str(info.value)


@pytest.mark.parametrize("kwargs,bound", [
    ({"eps": 0.0}, None), ({"steps": 1}, None), ({"steps": 100}, None),
    ({"steps": 0}, ">= 1"), ({"steps": 101}, "<= 100"),
    ({"step_size": 0.0}, "> 0"), ({"step_size": -1}, "> 0"),
])
def test_bounds_are_inclusive_or_strict_as_declared(kwargs, bound):
    if bound is None:
        Toy(**kwargs)
    else:
        with pytest.raises(ParameterError, match=bound):
            Toy(**kwargs)


def test_nan_fails_every_bound():
    with pytest.raises(ParameterError, match="eps"):
        Toy(eps=float("nan"))
    with pytest.raises(ParameterError, match="eps"):
        Toy(eps="nan")


def test_bounds_apply_to_every_tuple_element():
    assert Toy(sizes=(5, 6, 7)).sizes == (5, 6, 7)
    with pytest.raises(ParameterError, match="sizes"):
        Toy(sizes="3,0")


def test_display_name_falls_back_to_the_class_name():
    with pytest.raises(ParameterError, match="Unnamed: parameter 'rate'"):
        Unnamed(rate=0)


# --- unknown names --------------------------------------------------------------------------


def test_unknown_parameter_suggests_close_match():
    with pytest.raises(ParameterError) as info:
        Toy.create(epss=0.1)
    msg = str(info.value)
    assert "toy" in msg and "'epss'" in msg and "did you mean" in msg and "eps" in msg


def test_unknown_parameter_on_a_registered_attack_suggests_eps():
    with pytest.raises(ParameterError, match=r"unknown parameter 'epss'.*eps"):
        advarena.attack("fgsm", epss=0.1)


def test_unknown_parameter_without_close_match_lists_the_known_ones():
    with pytest.raises(ParameterError) as info:
        Toy.create(zzzzzz=1)
    msg = str(info.value)
    for name in ("eps", "steps", "sizes", "mode"):
        assert name in msg


def test_create_validates_like_the_constructor():
    assert Toy.create(eps="0.2") == Toy(eps=0.2)
    with pytest.raises(ParameterError):
        Toy.create(eps=-1)


# --- tuples, literals, choices ---------------------------------------------------------------


@pytest.mark.parametrize("raw,expected", [
    ("3,4", (3, 4)), ("3, 4, 5", (3, 4, 5)), ("7", (7,)), ("3,4,", (3, 4)),
    ([3, 4], (3, 4)), ((3.0, 4), (3, 4)),
])
def test_tuple_params_from_strings_and_sequences(raw, expected):
    value = Toy(sizes=raw).sizes
    assert value == expected and type(value) is tuple
    assert all(type(v) is int for v in value)


class Names(Plugin):
    name = "names"
    attacks: tuple[str, ...] = param(("fgsm",), help="attack names")


def test_string_tuple_from_comma_separated_names():
    assert Names(attacks="fgsm,pgd").attacks == ("fgsm", "pgd")


def test_string_tuple_elements_are_stripped():
    assert Names(attacks="fgsm, pgd").attacks == ("fgsm", "pgd")


def test_tuple_rejects_bad_elements_and_scalars():
    with pytest.raises(ParameterError, match="sizes"):
        Toy(sizes="3,x")
    with pytest.raises(ParameterError, match="sizes"):
        Toy(sizes=3)


def test_literal_choices():
    assert Toy(mode="slow").mode == "slow"
    with pytest.raises(ParameterError) as info:
        Toy(mode="medium")
    msg = str(info.value)
    assert "mode" in msg and "'fast'" in msg and "'slow'" in msg


def test_param_choices():
    assert Toy(kernel="linear").kernel == "linear"
    with pytest.raises(ParameterError, match=r"kernel.*'rbf'"):
        Toy(kernel="poly")


def test_mutable_defaults_are_refused():
    with pytest.raises(TypeError, match="tuple"):
        param([1, 2])


# --- inheritance and introspection ----------------------------------------------------------


def test_subclass_inherits_parameters_and_bounds():
    c = ToyChild(eps=0.5, extra=2)
    assert (c.eps, c.extra, c.steps) == (0.5, 2, 10)
    with pytest.raises(ParameterError, match="toy-child: parameter 'eps'"):
        ToyChild(eps=-1)
    with pytest.raises(TypeError):
        ToyChild(0.5)


def test_describe_params_lists_name_type_default_help():
    info = {p.name: p for p in Toy.describe_params()}
    assert list(info) == [f.name for f in dataclasses.fields(Toy)]
    assert set(info) == {"eps", "steps", "sizes", "mode", "flag", "step_size", "kernel"}
    assert (info["eps"].type, info["eps"].default, info["eps"].help) == ("float", 0.3, "budget")
    assert (info["steps"].type, info["steps"].default) == ("int", 10)
    assert info["flag"].type == "bool"
    assert info["sizes"].type == "tuple[int, ...]" and info["sizes"].default == (1, 2)
    assert "'fast'" in info["mode"].type and "'slow'" in info["mode"].type
    assert "float" in info["step_size"].type and "None" in info["step_size"].type
    assert info["step_size"].default is None
    assert info["kernel"].choices == ("rbf", "linear")
    assert info["eps"].to_dict()["name"] == "eps"


def test_describe_params_of_registered_attack():
    params = {p.name: p for p in type(advarena.attack("pgd")).describe_params()}
    assert {"eps", "steps", "step_size", "random_start"} <= set(params)
    assert all(p.help for p in params.values())


def test_params_and_spec_are_json_ready():
    t = Toy(sizes="3,4")
    params = t.params()
    assert params["sizes"] == [3, 4]
    spec = t.spec()
    assert spec["name"] == "toy" and spec["params"] == params
    assert json.loads(json.dumps(spec)) == spec


def test_class_attributes_are_not_parameters():
    names = {f.name for f in dataclasses.fields(Toy)}
    assert not names & {"name", "paper", "aliases", "api_version", "distribution"}
