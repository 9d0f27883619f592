"""The Python API at its edges, as a torchattacks or foolbox user first tries it: plain modules,
numpy and integer inputs, one-hot labels, inputs outside the box, the 8 vs 8/255 slip,
``torch.no_grad()``; and impossible command-line combinations refused in one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import advarena
from advarena.errors import ParameterError, ThreatModelViolation
from tests.test_cli import invoke

TINY = Path(__file__).parent / "suites" / "tiny.toml"


@pytest.fixture(scope="module")
def plain(digits_model):
    """The trained network itself, without its Classifier (no ``bounds`` attribute)."""
    model, splits = digits_model
    assert not hasattr(model.net, "bounds")
    return model, model.net, splits.test.x[:32], splits.test.y[:32]


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_plain_module_is_attacked_as_on_unit_box(plain, name):
    model, net, x, y = plain
    attack = advarena.attack(name, eps=0.1, **({"steps": 3} if name == "pgd" else {}))
    assert torch.equal(attack(net, x, y), attack(model, x, y))  # same as Classifier(net, (0, 1))


def test_not_a_module_says_how_to_wrap(plain):
    _, net, x, y = plain
    with pytest.raises(TypeError, match="advarena.models.Classifier"):
        advarena.attack("fgsm")(lambda t: net(t), x, y)


def test_numpy_in_numpy_out(plain):
    model, _, x, y = plain
    fgsm = advarena.attack("fgsm", eps=0.1)
    out = fgsm(model, x.numpy(), y.numpy())
    assert isinstance(out, np.ndarray) and np.array_equal(out, fgsm(model, x, y).numpy())
    # float64 numpy is taken in the model's dtype
    assert fgsm(model, x.double().numpy(), y.numpy()).dtype == np.float32


def test_integer_images_are_refused_with_the_fix(plain):
    model, _, x, y = plain
    with pytest.raises(TypeError, match=r"x.float\(\) / 255"):
        advarena.attack("fgsm")(model, (x * 255).round().to(torch.uint8), y)


def test_one_hot_labels_are_their_classes(plain):
    model, _, x, y = plain
    fgsm = advarena.attack("fgsm", eps=0.1)
    assert torch.equal(fgsm(model, x, nn.functional.one_hot(y, 10)), fgsm(model, x, y))
    with pytest.raises(ValueError, match="one-hot"):
        fgsm(model, x, torch.rand(len(x), 10) * 3)
    with pytest.raises(ParameterError, match="inputs but"):
        fgsm(model, x, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        fgsm(model, x, y[:, None, None])


def test_inputs_outside_the_box_are_the_callers_error(plain):
    model, _, x, y = plain
    with pytest.raises(ValueError, match=r"inputs lie outside the model's input box \[0, 1\]"):
        advarena.attack("fgsm")(model, x * 255, y)
    try:
        advarena.attack("fgsm")(model, x - 0.5, y)
    except ThreatModelViolation:  # pragma: no cover - the failure this test guards against
        pytest.fail("out-of-box inputs blamed on the attack")
    except ValueError:
        pass


def test_eps_beyond_the_box_warns(plain):
    model, _, x, y = plain
    with pytest.warns(UserWarning, match="8/255"):
        advarena.attack("fgsm")(model, x, y, eps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        advarena.attack("fgsm")(model, x, y, eps=8 / 255)
        advarena.attack("fgsm-l2")(model, x, y, eps=2.0)  # an L2 budget of 2 fits in [0, 1]^64


def test_attacks_work_under_no_grad(plain):
    model, _, x, y = plain
    pgd = advarena.attack("pgd", eps=0.1, steps=3)
    expected = pgd(model, x, y)
    with torch.no_grad():
        got = pgd(model, x, y)
    assert torch.equal(got, expected) and not torch.equal(got, x)


@pytest.mark.parametrize("args,expected", [
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
    (["--defense", "gda+gda"], "names 'gda' twice"),
    (["--defense", "gda+gda-relu"], "names 'gda' twice"),  # an alias is the same defense
])
def test_impossible_combinations_are_one_line(args, expected, capsys, tmp_path):
    store = tmp_path / "store"
    code, out, err = invoke(["run", "--suite", TINY, "--store", store, "--quiet", *args],
                            capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not store.exists()
