"""Scale: the Ray executor and GPU readiness.

* ``advarena run --executor ray`` on a local Ray instance (2 CPUs, started by the test) stores the
  same cells with the same values (metric records and bit-identical weight files) as the local
  executor; a GPU is requested for train and evaluate cells only where the cluster has GPUs; a
  cell over the time limit is cancelled and fails alone, naming the plugin it ran.
* Mixed precision and channels_last for training: ``--amp`` is part of the train cells' keys
  (an AMP-trained model is another model), ``--channels-last`` is not (a memory layout); the
  training step runs under autocast while attacks inside training stay in float32.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advarena.api import Attack, Defense, ThreatModel
from advarena.executors import LocalExecutor, RayExecutor
from advarena.plan import make_plan
from advarena.plugins import Registry, default_registry, make_plugin_manager
from advarena.runner import Environment
from advarena.store import Store
from advarena.suite import load_suite
from advarena.trainer import TrainConfig, TrainingSession

TINY = Path(__file__).parent / "suites" / "tiny.toml"
TIMING = ("seconds", "time_to", "overhead")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for this module; shut down at its end."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


def comparable(store: Path) -> dict:
    """Everything a run stored that does not depend on timing: cells, metric records (values,
    counts, intervals, per-example outcomes) and weight hashes."""
    conn = sqlite3.connect(store / "results.sqlite")
    try:
        cells = sorted(conn.execute("SELECT key, kind, status FROM cells"))
        rows = conn.execute("SELECT cell_key, metric, attack, eps, value, n, ci_low, ci_high, "
                            "extra FROM metrics").fetchall()
        artifacts = sorted(conn.execute("SELECT cell_key, name, sha256, bytes FROM artifacts"))
    finally:
        conn.close()
    metrics = {}
    for key, metric, attack, eps, value, n, lo, hi, extra in rows:
        if any(t in metric for t in TIMING):
            continue
        extra = {k: v for k, v in json.loads(extra).items() if k != "curve"}
        assert (key, metric, attack, eps) not in metrics
        metrics[(key, metric, attack, eps)] = (value, n, lo, hi, extra)
    return {"cells": cells, "metrics": metrics, "artifacts": artifacts}


def run_local(store_dir: Path, defenses: list[str]) -> dict:
    registry = default_registry()
    plan = make_plan(load_suite(str(TINY)), registry, defenses)
    store = Store.open(store_dir)
    try:
        env = Environment(registry, store, torch.device("cpu"))
        summary = LocalExecutor(env, registry.pm.hook).run(plan)
    finally:
        store.close()
    assert summary["done"] == len(plan.cells) and not summary["failed"]
    return summary


def invoke(args, capsys) -> tuple[int, str, str]:
    from advarena.cli.main import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


# -- Ray -------------------------------------------------------------------------------------

def test_ray_executor_matches_the_local_executor(ray_cluster, tmp_path, capsys):
    run_local(tmp_path / "local", ["gda-brelu"])
    code, out, err = invoke(["run", "--suite", TINY, "--defense", "gda-brelu", "--store",
                             tmp_path / "ray", "--executor", "ray", "--quiet"], capsys)
    assert code == 0, (out, err)
    plan = make_plan(load_suite(str(TINY)), default_registry(), ["gda-brelu"])
    assert f"{len(plan.cells)} cells run, 0 reused" in out
    assert ray_cluster.is_initialized()  # a cluster it did not start is left running
    local, distributed = comparable(tmp_path / "local"), comparable(tmp_path / "ray")
    assert {k for k, _, _ in distributed["cells"]} == {c.key for c in plan.cells}
    assert {s for _, _, s in distributed["cells"]} == {"done"}
    assert distributed["metrics"] and distributed["artifacts"]
    assert distributed == local  # same keys, same values, bit-identical weights
    store = Store.open(tmp_path / "ray", create=False)
    try:
        assert {c["provenance"]["executor"] for c in store.cells()} == {"ray"}
        # the workers wrote nothing: one run row, from the driver
        assert [r["status"] for r in store.runs()] == ["complete"]
    finally:
        store.close()


class _FakeTask:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def options(self, **options):
        self.calls.append(options)
        return self

    def remote(self, *args):
        return object()


def test_ray_requests_a_gpu_per_train_and_evaluate_cell_only_where_there_are_gpus(
        ray_cluster, tmp_path):
    registry = default_registry()
    plan = make_plan(load_suite(str(TINY)), registry, ["none"])
    store = Store.open(tmp_path / "S")
    try:
        executor = RayExecutor(Environment(registry, store, torch.device("cpu")),
                               registry.pm.hook)
        executor._open()
        try:
            assert executor.gpus == 0 and executor.slots == 2  # the test cluster: 2 CPUs
            for gpus in (0.0, 2.0):
                executor.gpus, executor._task = gpus, _FakeTask()
                for cell in plan.cells:
                    executor._launch(cell)
                for cell, options in zip(plan.cells, executor._task.calls):
                    assert options["num_cpus"] == 1 and options["max_retries"] == 0
                    wants_gpu = bool(gpus) and cell.kind in ("train", "prepare", "eval")
                    assert options.get("num_gpus", 0) == (1 if wants_gpu else 0), cell.title
                executor._running.clear()
        finally:
            executor._close()
    finally:
        store.close()


def test_ray_cell_time_limit_and_crash_fail_only_their_cells(ray_cluster, tmp_path,
                                                             fixture_plugin):
    from test_isolation import suite_file

    registry = Registry(make_plugin_manager([fixture_plugin("hostile")]))
    suite = suite_file(tmp_path, defenses=["none", "hostile-crash-defense"],
                       attacks=["fgsm", "hostile-hang"])
    plan = make_plan(load_suite(str(suite)), registry)
    store = Store.open(tmp_path / "S")
    try:
        env = Environment(registry, store, torch.device("cpu"))
        # With Ray the limit counts from submission, a fresh worker's imports included: room
        # for a slow machine.
        summary = RayExecutor(env, registry.pm.hook, cell_timeout=20.0).run(plan)
        rows = {(c["kind"], c["labels"].get("defense"), c["labels"].get("protocol")): c
                for c in store.cells()}
    finally:
        store.close()
    assert summary["failed"] == 2 and summary["done"] == 2, summary
    hang = rows[("eval", "none", "white-box")]
    assert hang["status"] == "failed"
    assert "'hostile-hang'" in hang["error"] and "cell time limit of 20s" in hang["error"]
    crash = rows[("train", "hostile-crash-defense", None)]
    assert crash["status"] == "failed" and "defense 'hostile-crash-defense'" in crash["error"]
    assert rows[("train", "none", None)]["status"] == "done"
    assert rows[("eval", "none", "training-cost")]["status"] == "done"


# -- mixed precision and channels_last -------------------------------------------------------

def test_amp_is_part_of_train_keys_and_defaults_leave_keys_unchanged():
    assert "amp" not in TrainConfig().to_dict() and "amp_attacks" not in TrainConfig().to_dict()
    assert TrainConfig(amp="bf16").to_dict()["amp"] == "bf16"
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    import dataclasses

    registry = default_registry()
    suite = load_suite(str(TINY))
    plain = make_plan(suite, registry, ["none"])
    amp = make_plan(dataclasses.replace(suite, train={**suite.train, "amp": "bf16"}), registry,
                    ["none"])
    assert not {c.key for c in plain.cells} & {c.key for c in amp.cells}
    train = next(c for c in amp.cells if c.kind == "train")
    assert train.spec["train"]["amp"] == "bf16"


class _Probe(Attack):
    """Records the precision it ran in; returns its inputs."""

    name = "probe-precision"
    threat_model = ThreatModel(norm="linf")
    seen = []

    def run(self, model, inputs, labels, eps, generator=None):
        _Probe.seen.append((torch.is_autocast_enabled("cpu"), model(inputs).dtype))
        return inputs.clone()


class _AdversarialProbe(Defense):
    """Trains on clean plus probe examples; records the dtype of its logits."""

    name = "probe-adversarial"
    seen = []

    def loss(self, model, x, y, ctx):
        x_adv = ctx.run_attack(_Probe(), model, x, y, eps=0.1)
        logits = model(torch.cat([x, x_adv]))
        # the layout of the convolutions with several input channels (for one channel
        # both layouts coincide)
        layouts = {p.is_contiguous(memory_format=torch.channels_last)
                   for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1}
        _AdversarialProbe.seen.append((logits.dtype, layouts))
        return F.cross_entropy(logits, torch.cat([y, y]))


@pytest.mark.parametrize("amp, channels_last", [("bf16", False), ("off", True),
                                                ("bf16", True)])
def test_amp_trains_in_low_precision_with_attacks_in_float32(amp, channels_last):
    import advarena

    splits = advarena.dataset("digits").load()
    torch.manual_seed(0)
    net = advarena.architecture("cnn-001").build(splits.info)
    config = TrainConfig(epochs=1, batch_size=256, amp=amp)
    _Probe.seen.clear()
    _AdversarialProbe.seen.clear()
    session = TrainingSession(net, splits.info, splits.train.subset(slice(0, 512)),
                              splits.train.subset(slice(512, 612)), config,
                              _AdversarialProbe(), device=torch.device("cpu"), seed=0,
                              channels_last=channels_last)
    session.train()
    low = torch.bfloat16 if amp == "bf16" else torch.float32
    assert _AdversarialProbe.seen and all(dtype == low and layouts == {channels_last}
                                          for dtype, layouts in _AdversarialProbe.seen)
    # the attack inside training ran in full precision, autocast off
    assert _Probe.seen and all(not on and dtype == torch.float32 for on, dtype in _Probe.seen)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # counted as usual: one sweep a step, through clean and probe rows (2 example-passes)
    assert session.cost()["backward_sweeps_per_example"] == pytest.approx(1.0)
    assert session.cost()["backward_per_example"] == pytest.approx(2.0)
    assert 0 <= session.history[-1].val_accuracy <= 1


def test_channels_last_run_stores_the_same_cells(tmp_path, capsys):
    """--channels-last changes no key; --amp does (and trains)."""
    args = ["run", "--suite", TINY, "--defense", "none", "--protocol", "white-box", "--quiet"]
    code, out, err = invoke(args + ["--store", tmp_path / "A", "--channels-last"], capsys)
    assert code == 0, (out, err)
    code, out, err = invoke(args + ["--store", tmp_path / "A"], capsys)
    assert code == 0 and " 0 cells run" in " " + out, out  # all reused: same keys
    code, out, err = invoke(args + ["--store", tmp_path / "A", "--amp"], capsys)
    assert code == 0 and "0 reused" in out, out  # bf16: new train and evaluate cells
    store = Store.open(tmp_path / "A", create=False)
    try:
        trains = [c for c in store.cells(kind="train")]
    finally:
        store.close()
    assert sorted(c["spec"]["train"].get("amp", "off") for c in trains) == ["bf16", "off"]
    assert {c["provenance"]["channels_last"] for c in trains} == {True, False}
