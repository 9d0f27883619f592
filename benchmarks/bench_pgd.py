"""PGD's speed against the limit of its work and against torchattacks.

PGD with ``steps`` steps does ``steps`` forward-plus-backward passes (input gradient only) and
a few element-wise ops per step. On the same model and batch this file times, in one run and
interleaved round by round (so machine load hits all three alike):

* ``pgd``: ``advarena.attack("pgd", steps=STEPS)`` through the public, checked call path;
* ``limit``: ``STEPS`` forward-plus-backward passes of the same batch in a bare loop
  (cross-entropy, gradient w.r.t. the inputs), the least any PGD can cost;
* ``torchattacks``: ``torchattacks.PGD`` with the same eps, step and steps (random start).

Recorded in ``benchmark.extra_info``: the medians and the ratios ``pgd / limit`` (target within
1.15) and ``pgd / torchattacks`` (target at most 1). Models: cnn-001 on digits (1x8x8) and
cnn-001 at 001's CIFAR size (3x32x32), untrained (timing does not depend on the weights),
batch 128, on CUDA when present, else the CPU.

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

STEPS = 20
BATCH = 128
EPS = 8 / 255
ROUNDS = 5

CASES = {
    "digits-cnn-001": DatasetInfo("digits", (1, 8, 8), 10),
    "cifar-cnn-001": DatasetInfo("cifar10", (3, 32, 32), 10, family="cifar"),
}


def _setup(info: DatasetInfo):
    torch.manual_seed(0)
    net = advarena.architecture("cnn-001").build(info)
    model = Classifier(net, info.bounds).to(DEVICE).eval()
    x = torch.rand((BATCH, *info.input_shape), device=DEVICE)
    y = torch.randint(0, info.num_classes, (BATCH,), device=DEVICE)
    return model, x, y


@pytest.mark.parametrize("case", sorted(CASES))
def test_pgd_against_limit_and_torchattacks(benchmark, case):
    import torchattacks

    model, x, y = _setup(CASES[case])
    pgd = advarena.attack("pgd", eps=EPS, steps=STEPS)
    peer = torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / STEPS, steps=STEPS,
                            random_start=True)

    def forward_backward():
        xx = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xx), y, reduction="sum"), xx)

    def run_limit():
        for _ in range(STEPS):
            forward_backward()

    def run_ours():
        return pgd(model, x, y)

    def run_peer():
        return peer(x, y)

    for fn in (forward_backward, run_ours, run_peer):  # warm-up
        fn()
    t_limit, t_ours, t_peer = [], [], []
    for _ in range(ROUNDS):
        t_limit.append(timed(run_limit))
        t_ours.append(timed(run_ours))
        t_peer.append(timed(run_peer))
    limit = statistics.median(t_limit)
    ours = statistics.median(t_ours)
    theirs = statistics.median(t_peer)

    benchmark.pedantic(run_ours, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({
        "device": str(DEVICE),
        "threads": torch.get_num_threads(),
        "steps": STEPS,
        "batch": BATCH,
        "input_shape": list(CASES[case].input_shape),
        "seconds_pgd": ours,
        "seconds_limit": limit,
        "seconds_torchattacks": theirs,
        "ratio_to_limit": ours / limit,
        "ratio_to_torchattacks": ours / theirs,
    })
