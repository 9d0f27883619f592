"""``advarena run --dry-run`` and :mod:`advarena.estimate`: nothing stored, counts of the plan,
passes that grow with epochs and examples, reuse after a real run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from advarena.estimate import estimate_plan, probe_attack
from advarena.plan import make_plan
from advarena.plugins import default_registry
from advarena.suite import load_suite
from advarena.testing import TINY_INFO

from test_cli import invoke

TINY = Path(__file__).parent / "suites" / "tiny.toml"
# A fixed calibration: the tests check passes and counts, not this machine's speed.
CAL = {"cnn-001": {"forward_seconds": 1e-5, "backward_seconds": 2e-5, "batch_size": 128}}


def _rows(out: str) -> dict[str, list[str]]:
    """The dry-run table's rows by their first cell."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) >= 4 and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def _estimate(suite, defenses=None):
    reg = default_registry()
    plan = make_plan(suite, reg, defenses)
    return plan, estimate_plan(plan, reg, store_dir=None, device=torch.device("cpu"),
                               calibration=CAL)


def test_dry_run_stores_nothing_and_counts_the_plan(tmp_path, capsys):
    store = tmp_path / "store"
    code, out, err = invoke(["run", "--suite", TINY, "--store", store, "--dry-run"], capsys)
    assert code == 0, err
    assert not store.exists()  # not even created
    plan = make_plan(load_suite(str(TINY)), default_registry())
    rows = _rows(out)
    for kind, n in plan.counts().items():
        assert rows[kind][0] == str(n), (kind, rows.get(kind))
        assert rows[kind][1] == "0"  # nothing stored
    assert rows["total"][0] == str(len(plan.cells))


def test_dry_run_needs_no_data_files(tmp_path, capsys):
    """The mnist suite's datasets are read from disk; a dry run without --data-dir still
    plans it, from the official sizes (here only its first architecture and one defense, to
    keep the test quick)."""
    code, out, err = invoke(["run", "--suite", "mnist", "--store", tmp_path / "s", "--dry-run",
                             "--defense", "none", "--protocol", "white-box", "--epochs", "1",
                             "--set", "architectures=[\"mlp-002\"]", "--set", "seeds=[0]",
                             "--set", "protocols.white-box.attacks=[\"fgsm\"]",
                             "--eps", "0.1,0.3", "--set", "protocols.white-box.headline_eps=0.3"],
                            capsys)
    assert code == 0, err
    assert "60000 training" in out and "no data read" in out
    assert not (tmp_path / "s").exists()


def test_train_passes_grow_linearly_with_epochs():
    s = load_suite(str(TINY))
    two = _estimate(s, ["none"])[1]
    four = _estimate(dataclasses.replace(s, train={**s.train, "epochs": 4}), ["none"])[1]
    t2 = [c for c in two.cells if c.kind == "train"]
    t4 = [c for c in four.cells if c.kind == "train"]
    assert len(t2) == len(t4) == 1
    # `none` makes one forward and one backward pass per example and epoch
    assert t2[0].forward == pytest.approx(2 * t2[0].examples)
    assert t4[0].forward == pytest.approx(2 * t2[0].forward)
    assert t4[0].seconds > t2[0].seconds > 0


def test_eval_passes_grow_with_examples_and_steps():
    s = load_suite(str(TINY))
    def wb(e):
        return next(c for c in e.cells if c.kind == "eval" and c.protocol == "white-box")

    base = wb(_estimate(s, ["none"])[1])
    half = wb(_estimate(dataclasses.replace(s, eval={**s.eval, "n_examples": 50}), ["none"])[1])
    more = wb(_estimate(dataclasses.replace(s, attacks={"pgd": {"steps": 20}}), ["none"])[1])
    assert half.examples == 50 and base.examples == 100
    assert base.forward == pytest.approx(2 * half.forward)
    assert more.backward > base.backward  # pgd at 20 steps costs more than at 5


def test_attack_probe_counts_its_budget():
    """PGD against the probe network it cannot fool: a random start and one forward and
    backward pass per step (steps + its output, counted by the trainer's PassCounter)."""
    f10, b10 = probe_attack(default_registry(), "pgd", {"steps": 10}, TINY_INFO, 0.1)
    f20, b20 = probe_attack(default_registry(), "pgd", {"steps": 20}, TINY_INFO, 0.1)
    assert b10 >= 10 and b20 - b10 == pytest.approx(10)
    assert f20 - f10 == pytest.approx(10)


def test_reuse_count_after_a_real_run(tmp_path, capsys):
    store = tmp_path / "store"
    code, _, err = invoke(["run", "--suite", TINY, "--store", store, "--defense", "none",
                           "--quiet"], capsys)
    assert code == 0, err
    code, out, err = invoke(["run", "--suite", TINY, "--store", store, "--dry-run"], capsys)
    assert code == 0, err
    suite = load_suite(str(TINY))
    reg = default_registry()
    done = {c.key for c in make_plan(suite, reg, ["none"]).cells}
    plan = make_plan(suite, reg)  # the suite's defenses: none and gda-brelu
    rows = _rows(out)
    for kind, n in plan.counts().items():
        stored = sum(c.key in done for c in plan.cells if c.kind == kind)
        assert rows[kind][1] == str(stored), (kind, rows[kind])
        assert rows[kind][2] == str(n - stored)
    assert rows["train"][1] == "1"  # the reference, trained by the first run


def test_evaluate_dry_run_stores_nothing(tmp_path, capsys):
    """``advarena evaluate --dry-run`` plans the external model's cells beside the reference's
    and writes nothing; the external model is loaded, never trained, so its train cell costs no
    pass."""
    factory = tmp_path / "factory.py"
    factory.write_text("from torch import nn\n\n\ndef mlp():\n    return nn.Sequential("
                       "nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n")
    store = tmp_path / "store"
    code, out, err = invoke(["evaluate", "--model", f"{factory}:mlp", "--suite", TINY,
                             "--store", store, "--dry-run"], capsys)
    assert code == 0, err
    assert not store.exists()
    rows = _rows(out)
    assert rows["train"][0] == "2"  # the reference and the external model
    assert "no calibration for architecture" in out


def test_a_failing_probe_is_a_note_not_a_crash(monkeypatch):
    """A defense whose probe raises is left out of the passes with a note naming it."""
    import advarena.estimate as est

    def broken(*args, **kwargs):
        raise RuntimeError("planted")

    monkeypatch.setattr(est, "probe_defense", broken)
    plan, e = _estimate(load_suite(str(TINY)), ["none"])
    assert any("defense 'none'" in n and "planted" in n for n in e.notes)
    assert all(c.forward == 0 for c in e.cells if c.kind == "train")
    assert any(c.forward > 0 for c in e.cells if c.kind == "eval")  # attacks still probed


def test_the_estimate_is_not_part_of_any_key():
    """estimate.py runs in no cell: editing it must not invalidate the store."""
    from advarena import plan as plan_module

    names = [p.relative_to(plan_module.HARNESS_ROOT).as_posix()
             for p in plan_module.harness_files()]
    assert "estimate.py" not in names and "trainer.py" in names
