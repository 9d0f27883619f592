"""DeepFool's and C&W L2's time in forward-plus-backward passes, against foolbox's.

For each model and attack, in one run and interleaved round by round (so machine load hits
all alike), this file times on the same batch:

* ``pass``: one forward-plus-backward pass of the batch (summed cross-entropy, gradient w.r.t.
  the inputs), the unit;
* ``ours``: ``advarena.attack(...)`` through the public, checked call path;
* ``foolbox``: foolbox 3's ``L2DeepFoolAttack`` / ``L2CarliniWagnerAttack`` with the same
  parameters (the fastest correct peer: torchattacks' DeepFool loops over examples in Python
  and its C&W has no binary search).

pytest-benchmark's own figure is the time of one such round (all three); the figures that
matter are in ``benchmark.extra_info``: medians in seconds, each attack's time in passes
(``seconds / seconds_pass``), the ratio ours / foolbox (target: at most 1, i.e. no more
passes) and both success rates (prediction differs from the label, scored here from the
returned inputs, over the examples the model gets right; foolbox's C&W "successes" that are its
all-zero placeholder for "nothing found" are not counted, see
tests/test_attacks_minimal_peers.py). Also the mean L2 of the successes.

Models: cnn-001 trained briefly on digits (batch: 64 test digits), and cnn-001 at 001's CIFAR
size (3x32x32, untrained, 64 uniform random inputs: the timing does not depend on the weights,
and an untrained network is still a classifier DeepFool and C&W must fool). Parameters:
DeepFool with its defaults (max_iter 50, overshoot 0.02, 10 candidates); C&W with 100 steps and
5 binary-search rounds (fewer than the defaults to keep the file quick; the same for both).
On CUDA when present, else the CPU.

Run: ``pytest benchmarks --benchmark-only`` (``ADVARENA_BENCH_THREADS=1`` pins torch's CPU
threads, useful on a loaded machine where OpenMP threads wait on each other).
"""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

import advarena
from advarena.api.data import DatasetInfo
from advarena.models import Classifier
from _timing import DEVICE, timed  # benchmarks/ is on sys.path (rootless modules)

BATCH = 64
ROUNDS = 3
DEEPFOOL = {"max_iter": 50, "overshoot": 0.02, "candidates": 10}
CW = {"steps": 100, "binary_search_steps": 5, "lr": 0.01, "confidence": 0.0,
      "initial_const": 0.001}
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, family="cifar")


def _digits():
    data = advarena.dataset("digits").load()
    torch.manual_seed(0)
    net = advarena.architecture("cnn-001").build(data.info)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = data.train.x, data.train.y
    for _ in range(5):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model = Classifier(net, data.info.bounds).to(DEVICE).eval()
    return model, data.test.x[:BATCH].to(DEVICE), data.test.y[:BATCH].to(DEVICE)


def _cifar():
    torch.manual_seed(0)
    net = advarena.architecture("cnn-001").build(CIFAR)
    model = Classifier(net, CIFAR.bounds).to(DEVICE).eval()
    x = torch.rand((BATCH, *CIFAR.input_shape), device=DEVICE)
    with torch.no_grad():
        y = model(x).argmax(1)   # the model's own predictions: every example is "right"
    return model, x, y


SETUPS = {"digits-cnn-001": _digits, "cifar-cnn-001": _cifar}


@pytest.fixture(scope="module")
def models():
    return {}


def _get(models, case):
    if case not in models:
        models[case] = SETUPS[case]()
    return models[case]


def _score(model, x, y, x_adv):
    with torch.no_grad():
        right = model(x).argmax(1) == y
        fooled = right & (model(x_adv).argmax(1) != y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    rate = float(fooled.sum()) / max(1, int(right.sum()))
    mean = float(norms[fooled].mean()) if fooled.any() else float("nan")
    return rate, mean


@pytest.mark.parametrize("attack", ["deepfool", "cw-l2"])
@pytest.mark.parametrize("case", sorted(SETUPS))
def test_minimal_attack_passes_against_foolbox(benchmark, models, case, attack):
    import foolbox as fb

    model, x, y = _get(models, case)
    fmodel = fb.PyTorchModel(model, bounds=model.bounds, device=DEVICE)
    if attack == "deepfool":
        ours_attack = advarena.attack("deepfool", **DEEPFOOL)
        peer = fb.attacks.L2DeepFoolAttack(steps=DEEPFOOL["max_iter"],
                                           candidates=DEEPFOOL["candidates"],
                                           overshoot=DEEPFOOL["overshoot"])
        params = DEEPFOOL
    else:
        ours_attack = advarena.attack("cw-l2", **CW)
        peer = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=CW["binary_search_steps"], steps=CW["steps"],
            stepsize=CW["lr"], confidence=CW["confidence"], initial_const=CW["initial_const"])
        params = CW

    def forward_backward():
        xx = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xx), y, reduction="sum"), xx)

    def run_pass():
        for _ in range(10):
            forward_backward()

    out = {}

    def run_ours():
        out["ours"] = ours_attack(model, x, y)

    def run_peer():
        out["peer"] = peer(fmodel, x, y, epsilons=None)[1]

    t_pass, t_ours, t_peer = [], [], []

    def one_round():
        t_pass.append(timed(run_pass) / 10)
        t_ours.append(timed(run_ours))
        t_peer.append(timed(run_peer))

    run_pass()  # warm-up (the attacks run long enough that their first-call costs vanish)
    # Each benchmark round times the three interleaved, so load hits all alike.
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    one = statistics.median(t_pass)
    ours = statistics.median(t_ours)
    theirs = statistics.median(t_peer)

    peer_adv = out["peer"]
    placeholder = (peer_adv.flatten(1) == 0).all(1) & (x.flatten(1) != 0).any(1)
    rate_peer_raw, _ = _score(model, x, y, peer_adv)
    peer_adv = torch.where(placeholder.view(-1, *([1] * (x.dim() - 1))), x, peer_adv)
    rate_ours, l2_ours = _score(model, x, y, out["ours"])
    rate_peer, l2_peer = _score(model, x, y, peer_adv)

    benchmark.extra_info.update({
        "device": str(DEVICE),
        "threads": torch.get_num_threads(),
        "attack": attack,
        "params": dict(params),
        "batch": BATCH,
        "input_shape": list(x.shape[1:]),
        "seconds_pass": one,
        "seconds_ours": ours,
        "seconds_foolbox": theirs,
        "passes_ours": ours / one,
        "passes_foolbox": theirs / one,
        "ratio_to_foolbox": ours / theirs,
        "success_ours": rate_ours,
        "success_foolbox": rate_peer,
        "success_foolbox_raw": rate_peer_raw,
        "mean_l2_ours": l2_ours,
        "mean_l2_foolbox": l2_peer,
    })
