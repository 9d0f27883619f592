"""Shared fixtures.

``digits_model``: a small classifier trained once per session on the embedded 8x8 digits (no
files, no network), for tests that need a model whose gradients mean something.

``fixture_plugin``: loads a plugin module from ``tests/plugins/`` by file name. The modules are
loaded by path under a prefixed module name (``advarena_testplugin_<name>``) so that nothing is
put on ``sys.path`` and no name can clash with the repository's own ``plugins/`` folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

PLUGIN_DIR = Path(__file__).parent / "plugins"
TRAIN_SEED = 0
TRAIN_EPOCHS = 6
TRAIN_BATCH = 64
# Wall time of the training loop of each trained fixture (tests/test_models.py bounds it).
TRAINING_SECONDS: dict[str, float] = {}


def load_fixture_plugin(name: str) -> ModuleType:
    """Import ``tests/plugins/<name>.py`` (once per process) and return the module."""
    module_name = f"advarena_testplugin_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = PLUGIN_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no fixture plugin {path}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@pytest.fixture(scope="session")
def fixture_plugin():
    """``fixture_plugin("bad_attacks")`` -> the module ``tests/plugins/bad_attacks.py``."""
    return load_fixture_plugin


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: the models here are tiny, and on a shared, busy CPU
    several threads per op cost more in contention than they gain."""
    with torch_threads(1):
        yield


def _train_digits():
    import advarena
    from advarena.models import Classifier

    splits = advarena.dataset("digits").load()
    start = time.perf_counter()
    # fork_rng: the fixed seed of this fixture must not leak into the global RNG of other tests.
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(TRAIN_SEED)
        net = advarena.architecture("cnn-001").build(splits.info)
        gen = torch.Generator().manual_seed(TRAIN_SEED)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        x, y = splits.train.x, splits.train.y
        net.train()
        for _ in range(TRAIN_EPOCHS):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), TRAIN_BATCH):
                idx = order[i:i + TRAIN_BATCH]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        opt.zero_grad(set_to_none=True)
    model = Classifier(net, splits.info.bounds).eval()
    for p in model.parameters():
        # Attacks differentiate w.r.t. inputs only; a shared model must never be trained by a test.
        p.requires_grad_(False)
    TRAINING_SECONDS["digits_model"] = time.perf_counter() - start
    return model, splits


@pytest.fixture(scope="session")
def digits_model():
    """(Classifier in eval mode, Splits): ``cnn-001`` trained on ``digits`` with a fixed seed.

    Its parameters do not require gradients (input gradients still flow), so no test can change
    the shared weights by accident. Training alone takes well under a second on a CPU.
    """
    return _train_digits()


@pytest.fixture(scope="session")
def digits_model_training_seconds(digits_model) -> float:
    """Wall time of the ``digits_model`` training loop (data loading excluded)."""
    return TRAINING_SECONDS["digits_model"]
