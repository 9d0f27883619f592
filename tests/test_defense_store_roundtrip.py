"""Every registered defense saves and reloads bit-identically through the store.

Table-driven over ``default_registry().entries("defenses")``, so defenses added later are
covered without editing this file. One tiny suite (digits, cnn-001, 1 epoch, batch 128) is
written to a temporary directory, expanded by the real planner, and its train cells (every
defense plus the ``none`` reference that fine-tuning defenses start from) are run by the real
local executor into a temporary store. For each defense:

* its train cell finished and stored a ``model`` artifact as a ``.safetensors`` file named by
  its SHA-256;
* :meth:`advarena.runner.Environment.load_classifier` (a fresh environment, spec read back from
  the store, classifier rebuilt from the spec with the defense's activation and a *fresh* input
  transform, weights loaded strictly) gives a state dict bit-identical to the trained
  classifier's (same keys, dtypes, shapes and values) and the same logits on test inputs;
* reloading unpickles nothing (``pickle`` and ``torch.load`` are made to fail meanwhile).

Inner loops are made small through the suite's ``[defense_params.<name>]``: per-defense
settings below, plus generic ones (``steps``, ``max_examples``, ...) for any defense that
declares them. Only parameters a defense declares are passed.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import advarena.executors.local as local_executor
import advarena.runner as runner
from advarena.executors import LocalExecutor
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.runner import Environment
from advarena.store import Store
from advarena.suite import load_suite

REFERENCE = "none"
# Small inner loops, by defense name (unknown keys are dropped per defense).
SMALL: dict[str, dict] = {
    "gda": {"n": 1},
    "gda-brelu": {"n": 1},
    "pgd-at": {"steps": 2},
    "ifgsm-at": {"steps": 2},
    "deep-defense": {"steps": 2},
    "rad": {"attack": "fgsm", "rounds": 1, "retrain_epochs": 1, "max_examples": 64},
    "aec": {"attack": "fgsm", "ae_epochs": 1, "max_examples": 64, "hidden": [32, 16, 32]},
    "iaec": {"attack": "fgsm", "ae_epochs": 1, "max_examples": 64, "hidden": [32, 16, 32]},
    "deepfool-at": {"max_examples": 64, "max_iter": 10, "epochs": 1},
    "distillation": {"teacher_epochs": 1, "student_epochs": 1},
}
# For any defense that declares them (and has no per-name value).
GENERIC = {"steps": 2, "power_iterations": 1, "max_examples": 64, "max_iter": 10, "rounds": 1}

DEFENSES = [e.name for e in default_registry().entries("defenses")]


def small_params(name: str) -> dict:
    cls = default_registry().get("defenses", name)
    declared = {p.name for p in cls.describe_params()}
    params = {k: v for k, v in GENERIC.items() if k in declared}
    params.update(SMALL.get(name, {}))
    return {k: v for k, v in params.items() if k in declared}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def suite_text(defenses: list[str]) -> str:
    lines = [
        'name = "roundtrip"',
        'description = "tests only: every defense, 1 epoch, for the store round trip"',
        'datasets = ["digits"]',
        'architectures = ["cnn-001"]',
        "seeds = [0]",
        f"defenses = {toml_value(defenses)}",
        f'reference = "{REFERENCE}"',
        "",
        "[train]",
        "epochs = 1",
        "batch_size = 128",
        "lr = 0.002",
        'optimizer = "adam"',
        "val_fraction = 0.1",
        "",
        "[eval]",
        "n_examples = 20",
        "batch_size = 20",
        "",
        "[protocols.white-box]",
        'attacks = ["fgsm"]',
        "eps = [0.1]",
        "headline_eps = 0.1",
    ]
    for name in defenses:
        params = small_params(name)
        if params:
            lines += ["", f'[defense_params."{name}"]']
            lines += [f"{k} = {toml_value(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


class Stored:
    def __init__(self, store_dir, keys, trained, summary):
        self.store_dir, self.keys, self.trained, self.summary = store_dir, keys, trained, summary


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Plan and run the train cells of every defense once; keep each trained classifier and the
    state dict the executor stored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    root = tmp_path_factory.mktemp("roundtrip")
    suite_path = root / "suite.toml"
    defenses = [d for d in DEFENSES if d != REFERENCE]
    suite_path.write_text(suite_text(defenses))
    reg = default_registry()
    plan = make_plan(load_suite(str(suite_path)), reg)
    plan.cells = [c for c in plan.cells if c.kind == "train"]
    keys = {}
    for c in plan.cells:
        keys.setdefault(c.labels["defense"], c.key)

    built: list = []
    trained: dict[str, tuple] = {}

    class RecordingClassifier(runner.Classifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    real_run_cell = local_executor.run_cell

    def recording_run_cell(cell, env, progress):
        built.clear()
        out, seconds = real_run_cell(cell, env, progress)
        if cell.kind == "train":
            # The last classifier run_train builds is the trained one it stores.
            trained[cell.key] = (built[-1], {k: v.detach().clone()
                                             for k, v in out.tensors["model"].items()})
        return out, seconds

    store = Store.open(root / "store")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "Classifier", RecordingClassifier)
            mp.setattr(local_executor, "run_cell", recording_run_cell)
            env = Environment(reg, store, torch.device("cpu"))
            summary = LocalExecutor(env, reg.pm.hook).run(plan)
    finally:
        store.close()
        torch.set_num_threads(before)
    return Stored(root / "store", keys, trained, summary)


@pytest.fixture(scope="module")
def test_inputs():
    import advarena

    return advarena.dataset("digits").load().test.x[:64]


def _no_unpickling(*args, **kwargs):
    raise AssertionError("reloading a stored model must not unpickle anything")


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_reloads_bit_identically(stored, test_inputs, name):
    key = stored.keys[name]
    failures = {f["key"]: f["error"] for f in stored.summary["failures"]}
    assert key not in failures, f"{name}: train cell failed: {failures[key]}"
    assert key in stored.trained, f"{name}: train cell did not run"
    model, saved = stored.trained[key]

    store = Store.open(stored.store_dir, create=False)
    try:
        digest = store.artifacts(key)["model"]
        path = store.weights / f"{digest}.safetensors"
        assert path.is_file()
        row = next(c for c in store.cells("train") if c["key"] == key)
        assert row["status"] == "done"
        json.dumps(row["result"]["notes"])
        if name == "rad":  # RAD's per-round counts are part of the stored result
            assert isinstance(row["result"]["notes"]["rad_added"], list)
        env = Environment(default_registry(), store, torch.device("cpu"))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pickle, "load", _no_unpickling)
            mp.setattr(pickle, "loads", _no_unpickling)
            mp.setattr(torch, "load", _no_unpickling)
            loaded = env.load_classifier(key)
    finally:
        store.close()

    model.eval()
    trained_state = model.state_dict()
    loaded_state = loaded.state_dict()
    assert list(loaded_state) == list(trained_state) == list(saved)
    for k, v in trained_state.items():
        w = loaded_state[k]
        assert w.dtype == v.dtype and w.shape == v.shape, k
        assert torch.equal(w, v), f"{name}: {k} differs after reloading"
        assert torch.equal(saved[k], v), f"{name}: {k} stored differs from the trained one"
    assert type(loaded.transform) is type(model.transform)
    assert loaded.bounds == model.bounds
    with torch.no_grad():
        assert torch.equal(loaded(test_inputs), model(test_inputs)), f"{name}: logits differ"
