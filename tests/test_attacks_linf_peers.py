"""The gradient-sign attacks (fgsm, fgsm-l2, ifgsm/bim, mi-fgsm, rfgsm, gradient-ensemble,
apgd-ce, fgsm-minimal) against peer libraries on one trained digits model, plus properties
specific to them.

Agreement is measured, never copied: every expected value below is what a peer library computes
on the same model, inputs and parameters in this very run. Bounded attacks must agree on robust
accuracy within 2 percentage points; ``fgsm-minimal`` must equal ART's ``empirical_robustness``.

Findings (where a peer does something different, and who is right):

* torchattacks (FGSM, BIM, MIFGSM) averages the cross-entropy over the batch; advarena sums it.
  The gradient differs by the factor 1/batch, which the sign ignores: same attack.
* torchattacks.MIFGSM normalises the gradient by its per-example mean absolute value, advarena
  (as Dong et al., Algorithm 1) by its per-example L1 norm. The two differ by the constant factor
  d (the input dimension), so the momentum buffers differ by d at every step and their signs are
  equal: same attack.
* torchattacks.BIM with ``steps=0`` derives the step count from Kurakin's rule by truncation;
  advarena rounds up (``kurakin_steps``). They agree whenever the rule gives an integer (000's
  4, 8, 16 /255 budgets); elsewhere torchattacks may take one step too few to reach the budget
  with 1/255 steps (e.g. eps = 1.1/255 gives 1 step of 1/255). Not a bug either way, a choice.
* torchattacks.RFGSM is an iterative variant (``steps`` steps of ``alpha`` after the random
  step); with ``steps=1`` and ``eps = 2 * alpha`` it is exactly 001's single-step Random + FGSM.
* torchattacks.APGD (a copy of the authors' code) skips condition 2 at the first checkpoint,
  tests condition 1 with ``<=`` and, after a reset to the best point, counts the next loss
  increase against the loss of the discarded iterate; advarena follows the paper (``<``,
  condition 2 from w_0 = 0, the reset point's loss). It also draws its random start for the
  initially correct examples only, so the draws differ per example. None of this is a bug on
  either side; the two agree within 2 pp (and to within a few examples across seeds).
* ART's ``empirical_robustness`` (1.20.1) divides ``||delta||_p`` by ``||x||_p`` with p the
  crafter's ``norm`` (inf for Linf FGSM), not by ``||x||_2`` as 001 eq. 2 writes; we compare
  with ART's definition here. ART also steps eps by a running sum (``eps += eps_step``), which
  can drop the last grid value (0.01 * 100 passes 1.0); the grid below is chosen so both agree
  and the test checks that it does.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advarena
from advarena.models import Classifier, predict
from advarena.threat import perturbation_norm

TRAIN_SEED = 0
N_TEST = 200
TOL_PP = 0.02  # robust-accuracy agreement, as a fraction of examples
EPS = 0.1  # mid-range robust accuracy on the digits CNN: differences show


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tensors are tiny, and with two threads a loaded 2-core machine
    makes OpenMP wait for a busy core at every op (measured 20 ms vs 0.5 s per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits(one_thread):
    """(model, x, y): cnn-001 trained on digits for a few epochs with a fixed seed, in eval mode,
    and the first N_TEST test examples."""
    torch.manual_seed(TRAIN_SEED)
    data = advarena.dataset("digits").load()
    net = advarena.architecture("cnn-001").build(data.info)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    x, y = data.train.x, data.train.y
    net.train()
    for _ in range(5):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    model = Classifier(net, data.info.bounds).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    xt, yt = data.test.x[:N_TEST].contiguous(), data.test.y[:N_TEST].contiguous()
    clean = (predict(model, xt) == yt).float().mean().item()
    assert clean > 0.8, f"the fixture model did not train (clean accuracy {clean:.2f})"
    return model, xt, yt


def robust_accuracy(model, x_adv, y) -> float:
    return (predict(model, x_adv) == y).float().mean().item()


def art_classifier(model, x):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                             input_shape=tuple(x.shape[1:]), nb_classes=10,
                             clip_values=(0.0, 1.0), device_type="cpu")


def assert_agree(ours: float, peer: float, who: str) -> None:
    assert abs(ours - peer) <= TOL_PP + 1e-9, (
        f"robust accuracy {ours:.3f} (advarena) vs {peer:.3f} ({who}): more than "
        f"{TOL_PP:.0%} apart")


def assert_same_examples(ours: torch.Tensor, peer: torch.Tensor, who: str) -> None:
    """Deterministic peers compute the same attack, so beyond robust accuracy nearly every
    example must come out the same (to float rounding). A few may differ: a gradient entry
    within rounding of zero can change sign between a summed and a batch-averaged loss."""
    same = ((ours - peer).abs().flatten(1).amax(1) <= 1e-5).float().mean().item()
    assert same >= 1 - TOL_PP, f"only {same:.1%} of examples equal {who}'s"


# --- peer agreement -------------------------------------------------------------------------

def test_fgsm_agrees_with_torchattacks_and_art(digits):
    import torchattacks
    from art.attacks.evasion import FastGradientMethod

    model, x, y = digits
    ours_x = advarena.attack("fgsm")(model, x, y, eps=EPS)
    ta_x = torchattacks.FGSM(model, eps=EPS)(x, y)
    art_x = torch.from_numpy(FastGradientMethod(art_classifier(model, x), norm=np.inf, eps=EPS,
                                                batch_size=N_TEST).generate(x.numpy(), y.numpy()))
    ours = robust_accuracy(model, ours_x, y)
    assert_agree(ours, robust_accuracy(model, ta_x, y), "torchattacks.FGSM")
    assert_agree(ours, robust_accuracy(model, art_x, y), "ART FastGradientMethod")
    assert_same_examples(ours_x, ta_x, "torchattacks.FGSM")
    assert_same_examples(ours_x, art_x, "ART FastGradientMethod")


def test_fgsm_l2_agrees_with_art(digits):
    from art.attacks.evasion import FastGradientMethod

    model, x, y = digits
    eps = 0.5  # L2 on 8x8 inputs in [0, 1]
    ours_x = advarena.attack("fgsm-l2")(model, x, y, eps=eps)
    art_x = torch.from_numpy(FastGradientMethod(art_classifier(model, x), norm=2, eps=eps,
                                                batch_size=N_TEST).generate(x.numpy(), y.numpy()))
    assert_agree(robust_accuracy(model, ours_x, y), robust_accuracy(model, art_x, y),
                 "ART FGM (L2)")
    assert_same_examples(ours_x, art_x, "ART FGM (L2)")


@pytest.mark.parametrize("eps, steps", [
    (EPS, 10),          # 004's rule: a = eps / steps
    (16 / 255, None),   # 000's rule: I = min(16 + 4, 1.25 * 16) = 20 steps of 1/255
])
def test_ifgsm_agrees_with_torchattacks_bim_and_foolbox(digits, eps, steps):
    import foolbox as fb
    import torchattacks

    model, x, y = digits
    ours_x = advarena.attack("ifgsm", steps=steps)(model, x, y, eps=eps)
    ours = robust_accuracy(model, ours_x, y)
    if steps is None:
        # torchattacks applies Kurakin's rule itself when steps=0 (step 1/255 given explicitly).
        n, step = 20, 1 / 255
        ta_attack = torchattacks.BIM(model, eps=eps, alpha=step, steps=0)
        assert ta_attack.steps == n
    else:
        n, step = steps, eps / steps
        ta_attack = torchattacks.BIM(model, eps=eps, alpha=step, steps=n)
    ta_x = ta_attack(x, y)
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    bim = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=step, steps=n, random_start=False)
    _, fb_x, _ = bim(fmodel, x, y, epsilons=eps)
    assert_agree(ours, robust_accuracy(model, ta_x, y), "torchattacks.BIM")
    assert_agree(ours, robust_accuracy(model, fb_x, y), "foolbox LinfBasicIterativeAttack")
    assert_same_examples(ours_x, ta_x, "torchattacks.BIM")
    assert_same_examples(ours_x, fb_x, "foolbox LinfBasicIterativeAttack")


def test_pgd_without_random_start_is_ifgsm(digits):
    model, x, y = digits
    pgd = advarena.attack("pgd", steps=10, step_size=EPS / 10, random_start=False)
    ifgsm = advarena.attack("bim", steps=10)
    assert torch.equal(pgd(model, x, y, eps=EPS), ifgsm(model, x, y, eps=EPS))


def test_mi_fgsm_agrees_with_torchattacks(digits):
    import torchattacks

    model, x, y = digits
    ours_x = advarena.attack("mi-fgsm")(model, x, y, eps=EPS)
    # torchattacks divides by mean(|grad|) = ||grad||_1 / d, a per-example positive multiple
    # of our L1 norm: the momentum is scaled by d throughout and its sign is the same.
    peer = torchattacks.MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=10, decay=1.0)
    peer_x = peer(x, y)
    assert_agree(robust_accuracy(model, ours_x, y), robust_accuracy(model, peer_x, y),
                 "torchattacks.MIFGSM")
    assert_same_examples(ours_x, peer_x, "torchattacks.MIFGSM")


def test_rfgsm_agrees_with_single_step_torchattacks_rfgsm(digits):
    import torchattacks

    model, x, y = digits
    alpha = 0.05
    ours_x = advarena.attack("rfgsm", alpha=alpha)(model, x, y, eps=2 * alpha, seed=3)
    # torchattacks.RFGSM with steps=1 is x' = x + alpha*sign(randn), then one FGSM step of
    # alpha = eps - alpha: 001's Random + FGSM. Same seed, same CPU generator, same noise.
    torch.manual_seed(3)
    peer_x = torchattacks.RFGSM(model, eps=2 * alpha, alpha=alpha, steps=1)(x, y)
    assert_agree(robust_accuracy(model, ours_x, y), robust_accuracy(model, peer_x, y),
                 "torchattacks.RFGSM(steps=1)")
    assert_same_examples(ours_x, peer_x, "torchattacks.RFGSM(steps=1)")


def test_apgd_ce_agrees_with_torchattacks(digits):
    import torchattacks

    model, x, y = digits
    ours = robust_accuracy(model, advarena.attack("apgd-ce", steps=100)(model, x, y, eps=EPS), y)
    peer = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce",
                             seed=0)
    assert_agree(ours, robust_accuracy(model, peer(x, y), y), "torchattacks.APGD(loss='ce')")
    # And it is at least as strong as the fixed-step baseline on the same budget.
    pgd = robust_accuracy(model, advarena.attack("pgd", steps=100)(model, x, y, eps=EPS), y)
    assert ours <= pgd + TOL_PP


def _art_eps_grid(eps_step: float, eps_max: float) -> list[float]:
    """The eps values ART's minimal FGSM tries (its running sum, as in fast_gradient.py)."""
    grid, eps = [], eps_step
    while eps <= eps_max:
        grid.append(eps)
        eps = eps + eps_step
    return grid


def test_fgsm_minimal_equals_art_empirical_robustness(digits):
    from art.metrics import empirical_robustness

    model, x, y = digits
    eps_step, eps_max = 1 / 32, 1.0  # binary fractions: ART's running sum is exact
    art_grid = _art_eps_grid(eps_step, eps_max)
    ours_grid = [k * eps_step for k in range(1, math.floor(eps_max / eps_step * (1 + 1e-9)) + 1)]
    assert len(art_grid) == len(ours_grid), "choose a grid ART's running sum does not cut short"
    assert np.allclose(art_grid, ours_grid, rtol=1e-12)

    art = empirical_robustness(art_classifier(model, x), x.numpy(), "fgsm",
                               attack_params={"eps_step": eps_step, "eps": eps_max,
                                              "norm": np.inf, "batch_size": N_TEST})
    # ART labels with the model's own predictions; so do we here.
    labels = predict(model, x)
    x_adv = advarena.attack("fgsm-minimal", eps_step=eps_step, eps_max=eps_max)(model, x, labels)
    success = predict(model, x_adv) != labels
    assert success.any()
    # ART's norm: p = the crafter's norm (inf) for numerator and denominator.
    ratio = (perturbation_norm(x_adv - x, "linf") / perturbation_norm(x, "linf"))[success]
    ours = ratio.double().mean().item()
    assert ours == pytest.approx(float(art), rel=1e-5)


# --- properties -----------------------------------------------------------------------------

def test_gradient_ensemble_of_one_model_is_ifgsm(digits):
    model, x, y = digits
    for eps, steps in ((8 / 255, None), (EPS, 5)):
        ens = advarena.attack("gradient-ensemble", steps=steps)([model], x, y, eps=eps)
        ref = advarena.attack("ifgsm", steps=steps)(model, x, y, eps=eps)
        assert torch.equal(ens, ref)


def test_gradient_ensemble_of_two_identical_models_is_ifgsm(digits):
    model, x, y = digits
    twin = copy.deepcopy(model)
    # g/||g|| + g/||g|| is exactly 2 g/||g||: the sign, hence every step, is I-FGSM's.
    ens = advarena.attack("gradient-ensemble")([model, twin], x, y, eps=16 / 255)
    ref = advarena.attack("ifgsm")(model, x, y, eps=16 / 255)
    assert torch.equal(ens, ref)


def test_gradient_ensemble_ignores_the_scale_of_a_members_gradient(digits):
    """Each member's gradient is normalised (000 eq. 2), so a member whose input gradient is
    scaled (here by 2**-10, exact in float, through a backward-only scaling) pulls exactly as
    before: one vote per model, whatever its loss scale."""
    model, x, y = digits

    class GradScaled(nn.Module):
        def __init__(self, m, s):
            super().__init__()
            self.m, self.s, self.bounds = m, s, m.bounds

        def forward(self, z):
            out = self.m(z)
            return out * self.s + (out - out * self.s).detach()  # value out, gradient s * ...

    torch.manual_seed(1)
    other = Classifier(advarena.architecture("cnn-001").build(
        advarena.dataset("digits").load().info)).eval()
    eps = 16 / 255
    a = advarena.attack("gradient-ensemble")([model, other], x, y, eps=eps)
    scaled = GradScaled(model, 2.0 ** -10).eval()  # eval: the harness restores this mode
    b = advarena.attack("gradient-ensemble")([scaled, other], x, y, eps=eps)
    assert torch.equal(a, b)
    # Without normalisation the down-scaled member would lose its say: check it matters here.
    c = advarena.attack("gradient-ensemble")([other], x, y, eps=eps)
    assert not torch.equal(a, c)


BOUNDED = {  # name: (params, eps) for the public-path threat-model checks
    "fgsm-l2": ({}, 0.5),
    "ifgsm": ({}, EPS),
    "mi-fgsm": ({}, EPS),
    "rfgsm": ({}, EPS),
    "gradient-ensemble": ({}, EPS),
    "apgd-ce": ({"steps": 20}, EPS),
}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_bounded_attacks_keep_their_threat_model(digits, name):
    model, x, y = digits
    params, eps = BOUNDED[name]
    attack = advarena.attack(name, **params)
    x_adv = attack(model, x, y, eps=eps)  # run_checked raises on any violation
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    norms = perturbation_norm(x_adv - x, attack.threat_model.norm)
    assert float(norms.max()) <= eps * (1 + 1e-5) + 1e-6
    assert robust_accuracy(model, x_adv, y) <= robust_accuracy(model, x, y)


@pytest.mark.parametrize("name", ["rfgsm", "apgd-ce"])
def test_randomised_attacks_are_deterministic_under_a_seed(digits, name):
    model, x, y = digits
    attack = advarena.attack(name, **({"steps": 10} if name == "apgd-ce" else {}))
    a = attack(model, x, y, eps=EPS, seed=7)
    b = attack(model, x, y, eps=EPS, seed=7)
    c = attack(model, x, y, eps=EPS, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name, params", [
    ("ifgsm", {}), ("ifgsm", {"steps": 10}), ("mi-fgsm", {}), ("gradient-ensemble", {}),
    ("apgd-ce", {"steps": 20}),
])
def test_larger_eps_is_no_weaker(digits, name, params):
    model, x, y = digits
    attack = advarena.attack(name, **params)
    accs = [robust_accuracy(model, attack(model, x, y, eps=e), y) for e in (0.05, 0.1, 0.2)]
    assert accs[0] >= accs[1] >= accs[2], accs


def test_rfgsm_below_alpha_is_model_free_noise(digits):
    """eps <= alpha: 001 Fig. 5's "Gaussian noise" case. The output is x + eps*sign(noise) in
    the box, the same for any model, and stays in the eps-ball."""
    model, x, y = digits
    torch.manual_seed(2)
    other = Classifier(advarena.architecture("cnn-001").build(
        advarena.dataset("digits").load().info)).eval()
    attack = advarena.attack("rfgsm", alpha=0.05)
    a = attack(model, x, y, eps=0.03, seed=5)
    b = attack(other, x, y, eps=0.03, seed=5)
    assert torch.equal(a, b)
    delta = (a - x).abs()
    inside = (x > 0.03) & (x < 0.97)  # coordinates the box does not clip
    assert torch.allclose(delta[inside], torch.full_like(delta[inside], 0.03), atol=1e-6)


def test_fgsm_minimal_returns_the_first_flipping_fgsm_example(digits):
    """Per example, the output is fgsm's output at the first grid eps that changes the
    prediction, and the input itself where none does (or where it was already wrong)."""
    model, x, y = digits
    step, top = 0.05, 0.6
    x_adv = advarena.attack("fgsm-minimal", eps_step=step, eps_max=top)(model, x, y)
    expected = x.clone()
    done = predict(model, x) != y
    fgsm = advarena.attack("fgsm")
    for k in range(1, round(top / step) + 1):
        cand = fgsm(model, x, y, eps=k * step)
        flip = ~done & (predict(model, cand) != y)
        expected[flip] = cand[flip]
        done |= flip
    assert torch.equal(x_adv, expected)
    changed = (x_adv != x).flatten(1).any(1)
    assert bool((predict(model, x_adv)[changed] != y[changed]).all())
    assert not bool(changed[predict(model, x) != y].any())


def test_fgsm_l2_step_has_length_eps_before_clipping(digits):
    model, x, y = digits
    x_adv = advarena.attack("fgsm-l2")(model, x, y, eps=0.5)
    norms = perturbation_norm(x_adv - x, "l2")
    assert float(norms.max()) <= 0.5 * (1 + 1e-5)
    assert float(norms.min()) > 0  # the box never removes the whole step on real digits


def test_step_rules_follow_the_papers():
    from advarena_attacks.apgd_ce import apgd_checkpoints
    from advarena_attacks.ifgsm import ifgsm_schedule

    box = (0.0, 1.0)
    # 000: I = min(eps + 4, 1.25 eps) in /255 units, steps of 1/255: 4 -> 5, 8 -> 10, 16 -> 20.
    for levels, n in ((4, 5), (8, 10), (16, 20)):
        assert ifgsm_schedule(levels / 255, None, None, box) == (n, 1 / 255)
    # eps = 0.3 is 76.5 levels: min(80.5, 95.625) = 80.5, rounded up to 81.
    assert ifgsm_schedule(0.3, None, None, box)[0] == 81
    # A box of width 2 has grey levels of 2/255: the same 8 levels are eps = 16/255.
    assert ifgsm_schedule(16 / 255, None, None, (-1.0, 1.0)) == (10, 2 / 255)
    # 004: a = eps / N.
    assert ifgsm_schedule(0.3, 10, None, box) == (10, 0.3 / 10)
    assert ifgsm_schedule(0.3, 10, 0.05, box) == (10, 0.05)
    # Croce & Hein: p = 0, 0.22, then steps of max(previous - 0.03, 0.06):
    # 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (next 1.05 > 1); w_j = ceil(p_j * 100).
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
