"""Peak memory of the training-set distance at the largest paper dataset's size.

``advarena.protocols.minimal_perturbation.nearest_train_distance`` finds, for each query, the L2
distance to its nearest training example. Done naively it needs a queries x train matrix
(10,000 x 73,257 float32 = 2.9 GB for SVHN); it is blocked instead, so its working memory is
bounded by the blocks, whatever the sizes.

Measured in a fresh subprocess on synthetic tensors of SVHN's training split (73,257 x 3,072
float32, the largest of the paper datasets: MNIST is 60,000 x 784, CIFAR-10 50,000 x 3,072):
the growth of the process's peak resident memory (``ru_maxrss``) during the call, after the
inputs are allocated. The query count is 256 and 1,024 (the memory does not depend on it past
one block of 256; the time is linear in it, and 10,000 queries take minutes on a 2-core CPU):
``ADVARENA_BENCH_QUERIES=10000`` measures the full count. CPU only (torch's CPU allocator).

Run: ``pytest benchmarks/bench_memory.py --benchmark-only``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

N_TRAIN, DIM = 73_257, 3 * 32 * 32
QUERIES = [int(q) for q in os.environ.get("ADVARENA_BENCH_QUERIES", "256,1024").split(",")]

SCRIPT = r"""
import json, resource, sys, time
import torch
from advarena.protocols.minimal_perturbation import nearest_train_distance

n_train, dim, n_query = map(int, sys.argv[1:4])
torch.manual_seed(0)
train = torch.rand(n_train, dim)
queries = torch.rand(n_query, dim)
nearest_train_distance(queries[:2], train[:16])  # first-call allocations out of the way
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
start = time.perf_counter()
d = nearest_train_distance(queries, train)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert d.shape == (n_query,) and bool(torch.isfinite(d).all())
print(json.dumps({"seconds": seconds, "peak_before_mib": before / 1024,
                  "peak_after_mib": after / 1024, "delta_mib": (after - before) / 1024,
                  "inputs_mib": (train.numel() + queries.numel()) * 4 / 2**20,
                  "threads": torch.get_num_threads()}))
"""


def measure(n_query: int) -> dict:
    env = dict(os.environ)
    if os.environ.get("ADVARENA_BENCH_THREADS"):
        env["OMP_NUM_THREADS"] = os.environ["ADVARENA_BENCH_THREADS"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(N_TRAIN), str(DIM), str(n_query)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n_query", QUERIES)
def test_nearest_train_distance_peak_memory(benchmark, n_query):
    result = {}
    benchmark.pedantic(lambda: result.update(measure(n_query)), rounds=1, iterations=1)
    naive_mib = n_query * N_TRAIN * 4 / 2**20
    benchmark.extra_info.update(n_train=N_TRAIN, dim=DIM, n_query=n_query,
                                naive_distance_matrix_mib=naive_mib, **result)
    # blocked: far below the full distance matrix of 10,000 queries (2.9 GB)
    assert result["delta_mib"] < 512, result
