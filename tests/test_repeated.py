"""003 sec. 4.4's repeated attacks: a distortion budget that tells defenses apart (issue 13.9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advarena
from advarena.evaluation import EvalContext
from advarena.models import Classifier
from advarena.report.compare import direction

N = 120


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def _linear(splits, adversarial_eps: float) -> Classifier:
    """A softmax-linear digits classifier, FGSM-trained at ``adversarial_eps`` (0: plain)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(splits.train.x[0].numel(), 10))
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        x, y = splits.train.x, splits.train.y
        for _ in range(150):
            xa = x
            if adversarial_eps:
                xg = x.clone().requires_grad_(True)
                g, = torch.autograd.grad(F.cross_entropy(net(xg), y), xg)
                xa = (x + adversarial_eps * g.sign()).clamp(0, 1)
            opt.zero_grad()
            F.cross_entropy(net(xa), y).backward()
            opt.step()
    model = Classifier(net, splits.info.bounds).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def models():
    splits = advarena.dataset("digits").load()
    return splits, {"plain": _linear(splits, 0.0), "robust": _linear(splits, 0.15)}


def _rate(splits, model, **kw) -> tuple[float, dict]:
    data = splits.test.subset(slice(0, N))
    attacks = {"adam-evasion": advarena.attack("adam-evasion", steps=200)}
    ctx = EvalContext(info=splits.info, data=data, train=splits.train,
                      device=torch.device("cpu"), seed=0, attacks=attacks, batch_size=N,
                      model=model)
    wb = advarena.protocol("white-box", attacks=("fgsm",), eps=(0.1,), headline_eps=0.1,
                           repeated=("adam-evasion",), **kw)
    rec = wb._repeated(ctx, model, "adam-evasion", ctx.correct(model, data.x, data.y))
    return rec.value, rec.extra


def test_budget_separates_a_more_robust_model_where_the_unbounded_form_saturates(models):
    splits, m = models
    # 003's unbounded form: the minimal attack fools (nearly) every example of both models.
    plain_inf, _ = _rate(splits, m["plain"], repeated_budget=None)
    robust_inf, _ = _rate(splits, m["robust"], repeated_budget=None)
    assert plain_inf > 0.95 and robust_inf > 0.95
    # Under a stated distortion budget the FGSM-trained model, whose boundary lies farther
    # from the inputs, keeps more examples: a lower error rate.
    plain, extra = _rate(splits, m["plain"], repeated_budget=0.01)
    robust, _ = _rate(splits, m["robust"], repeated_budget=0.01)
    assert robust < plain - 0.1
    assert extra["budget"] == 0.01 and extra["attacked"] == N


def test_budget_and_class_restrict_what_counts(models):
    splits, m = models
    y = splits.test.y[:N]
    # A budget of (almost) nothing leaves only the clean errors.
    tiny, _ = _rate(splits, m["plain"], repeated_budget=1e-9)
    clean_err = 1 - float((m["plain"](splits.test.x[:N]).argmax(1) == y).float().mean())
    assert tiny == pytest.approx(clean_err)
    # 003's malicious class: only its examples are attacked, the rate stays over all examples.
    full, _ = _rate(splits, m["plain"], repeated_budget=None)
    one, extra = _rate(splits, m["plain"], repeated_budget=None, repeated_class=4)
    assert extra["attacked"] == int((y == 4).sum())
    share = float((y == 4).float().mean())
    assert clean_err <= one <= clean_err + share + 1e-9 and one < full


def test_compare_reads_a_lower_repeated_error_rate_as_better():
    assert direction("repeated_error_rate", "white-box") == -1
