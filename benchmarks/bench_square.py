"""Square Attack's cost and queries per example, against torchattacks.Square.

On cnn-001 trained briefly on digits (a model Square has to work on: an untrained one is fooled
at the first query), for ``square`` (Linf, eps 0.1) and ``square-l2`` (eps 0.5) with
``N_QUERIES`` queries on ``BATCH`` test examples, interleaved round by round:

* ``ours``: ``advarena.attack(name, n_queries=N_QUERIES)`` through the public, checked call path;
* ``torchattacks``: ``torchattacks.Square`` with the same eps and ``N_QUERIES - 1`` iterations
  (the same number of model evaluations: it also queries the initial point).

Recorded in ``benchmark.extra_info``: median seconds of both, their ratio (target at most 1),
the robust accuracy of both, and advarena's queries per example (``attack.last_queries``): mean
and median over the examples the model classified correctly, mean over those fooled, and the
share of examples that used the whole budget. On CUDA when present, else the CPU.

Run: ``pytest benchmarks -k square --benchmark-only`` (naming the file itself collects it twice:
the folder's conftest and pytest both pick it up).
"""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

import advarena
from advarena.models import Classifier, predict
from _timing import DEVICE, timed  # benchmarks/ is on sys.path (rootless modules)

N_QUERIES = 1000
BATCH = 256
ROUNDS = 3
CASES = {"square": ("Linf", 0.1), "square-l2": ("L2", 0.5)}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = advarena.dataset("digits").load()
    net = advarena.architecture("cnn-001").build(data.info)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = data.train.x, data.train.y
    for _ in range(4):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    model = Classifier(net, data.info.bounds).to(DEVICE).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, data.test.x[:BATCH].to(DEVICE), data.test.y[:BATCH].to(DEVICE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_square_queries_and_cost(benchmark, trained, name):
    import torchattacks

    model, x, y = trained
    norm, eps = CASES[name]
    ours = advarena.attack(name, n_queries=N_QUERIES)
    peer = torchattacks.Square(model, norm=norm, eps=eps, n_queries=N_QUERIES - 1, seed=0)
    out = {}

    def run_ours():
        out["ours"] = ours(model, x, y, eps=eps)

    def run_peer():
        out["peer"] = peer(x, y)

    t_ours, t_peer = [], []
    for _ in range(ROUNDS):
        t_ours.append(timed(run_ours))
        t_peer.append(timed(run_peer))
    benchmark.pedantic(run_ours, rounds=1, iterations=1, warmup_rounds=0)

    q = ours.last_queries.float()
    correct = predict(model, x) == y
    fooled = correct & (predict(model, out["ours"]) != y)
    benchmark.extra_info.update({
        "device": str(DEVICE),
        "n_queries": N_QUERIES,
        "batch": BATCH,
        "eps": eps,
        "seconds_ours": statistics.median(t_ours),
        "seconds_torchattacks": statistics.median(t_peer),
        "ratio_to_torchattacks": statistics.median(t_ours) / statistics.median(t_peer),
        "robust_accuracy_ours": float((predict(model, out["ours"]) == y).float().mean()),
        "robust_accuracy_torchattacks": float((predict(model, out["peer"]) == y).float().mean()),
        "queries_mean_correct": float(q[correct].mean()),
        "queries_median_correct": float(q[correct].median()),
        "queries_mean_fooled": float(q[fooled].mean()) if bool(fooled.any()) else None,
        "share_full_budget": float((q[correct] == N_QUERIES).float().mean()),
    })
