"""Device selection and reproducibility helpers.

GPU readiness
-------------

``--device auto`` (the default) runs on CUDA where present; every tensor a cell makes is put on
that device, the harness syncs with the host only between batches. Training options:

* ``--amp [bf16|fp16]`` (or ``amp = "bf16"`` in a suite's ``[train]``): the training step runs
  under ``torch.autocast`` (fp16, with a gradient scaler, is for CUDA; bf16 needs no scaler
  and is the one to use on the CPU). Weights stay float32. Attacks made inside training (adversarial training) run in
  float32 unless ``amp_attacks = true``; evaluation cells never use autocast, so every reported
  number comes from float32 attacks. ``amp`` is part of the train cells' keys: an AMP model is
  another model, stored beside the float32 one.
* ``--channels-last``: convolutions train in NHWC layout (faster with tensor cores). It changes
  no value beyond rounding and is not part of any key; weights are stored contiguous.

Batch sizes of the paper suites (``[train] batch_size`` 128; ``[eval] batch_size`` 1000 for
mnist and svhn, 500 for cifar10) were checked against memory estimates from the activations of
one example (the outputs of every layer, float32, doubled for the backward pass), measured on
the CPU; there was no GPU to confirm them on. An attack batch (forward and backward w.r.t. the
input at the eval batch size) needs about:

==============  =======  ===============  ===========================
architecture    params   attack batch     training batch (+ Adam)
==============  =======  ===============  ===========================
cnn-004-mnist   3.3 M    0.7 GiB (1000)   0.14 GiB (128)
cnn-004-svhn    1.8 M    1.2 GiB (1000)   0.19 GiB (128)
vgg13-bn-gap    9.4 M    2.9 GiB (500)    0.9 GiB (128)
resnet32        0.5 M    3.4 GiB (500)    0.9 GiB (128)
nin-002         1.0 M    5.0 GiB (500)    1.3 GiB (128)
==============  =======  ===============  ===========================

so each suite fits on one 16 GB GPU, adversarial training (clean plus adversarial batch)
included. The exception is ensemble-transfer crafting, which runs all members on one batch:
five cifar10 members of the larger architectures need up to 5x the attack figure; on a 16 GB
GPU set ``[eval] batch_size = 250`` for cifar10 (24 GB and more fit as shipped). The
training-set distance (minimal-perturbation) is blocked and needs about 150 MiB whatever the
dataset size (``benchmarks/bench_memory.py``).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import AdvarenaError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA where present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvarenaError("--device cuda was asked for but no CUDA device is available; "
                            "use --device cpu or --device auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AdvarenaError(f"unknown device '{name}'; use auto, cpu or cuda") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def generator_on(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
