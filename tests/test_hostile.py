"""Runtime isolation (issue 12): hostile plugins that write into what they are lent, change
global torch state, try to take the run's outcome or return malformed data are each caught,
fail their own cell naming themselves, and leave every other cell's stored values exactly as
a run without them stores them.

The fixtures are ``tests/plugins/hostile_*.py``. One clean run of first-party plugins is the
baseline; the hostile runs put the hostile plugins before the first-party ones in the plan
(train cells in the order of ``defenses``, eval cells in the order of the protocols), so that
anything they leak would reach the first-party cells that follow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
import torch

from advarena.executors import LocalExecutor
from advarena.plan import make_plan
from advarena.plugins import Registry, make_plugin_manager
from advarena.runner import Environment
from advarena.store import Store
from advarena.suite import load_suite
# tests/ is on sys.path (it has no __init__.py): the isolation tests' helpers
from test_isolation import TIMING, _one_torch_thread, invoke  # noqa: F401 - a fixture
from test_isolation import suite_file as isolation_suite

FIXTURES = ("hostile_tensors", "hostile_state", "hostile_exit", "hostile_output")
PLUGIN_DIR = Path(__file__).parent / "plugins"


def suite_file(directory: Path, defenses: list[str], protocols: list[str]) -> Path:
    """A tiny suite: one epoch, no validation split (defenses get the whole training split,
    which the harness caches), 50 evaluation examples, ``protocols`` before white-box FGSM
    at one eps."""
    tables = "".join(f"\n[protocols.{p}]\n" + ('eps = [0.1]\nheadline_eps = 0.1\n'
                                              if p.startswith("wb-") else "")
                     for p in protocols)
    return isolation_suite(directory, defenses=defenses, attacks=["fgsm"],
                           first_protocols=tables, epochs=1, val_fraction=0, n_examples=50,
                           training_cost=False)


def hostile_registry(fixture_plugin) -> Registry:
    return Registry(make_plugin_manager([fixture_plugin(m) for m in FIXTURES]))


def run_local(suite: Path, registry: Registry, store_dir: Path, **executor) -> dict:
    store = Store.open(store_dir)
    try:
        env = Environment(registry, store, torch.device("cpu"))
        plan = make_plan(load_suite(str(suite)), registry)
        return LocalExecutor(env, registry.pm.hook, **executor).run(plan)
    finally:
        store.close()


def stored(store_dir: Path) -> tuple[dict, dict, dict]:
    """(metric rows by (cell, metric, attack, eps), weight digests by cell, cell rows by
    (kind, defense, protocol)), timing metrics left out."""
    conn = sqlite3.connect(store_dir / "results.sqlite")
    try:
        rows = conn.execute("SELECT cell_key, metric, attack, eps, value, n, ci_low, ci_high, "
                            "extra FROM metrics").fetchall()
        weights = dict(conn.execute("SELECT cell_key, sha256 FROM artifacts WHERE name = "
                                    "'model'"))
    finally:
        conn.close()
    metrics = {(k, m, a, e): (v, n, lo, hi, json.loads(x)) for k, m, a, e, v, n, lo, hi, x
               in rows if not any(t in m for t in TIMING)}
    s = Store.open(store_dir, create=False)
    try:
        cells = {(c["kind"], c["labels"].get("defense"), c["labels"].get("protocol")): c
                 for c in s.cells()}
    finally:
        s.close()
    return metrics, weights, cells


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The first-party cells, run without any hostile plugin."""
    d = tmp_path_factory.mktemp("baseline")
    suite = suite_file(d, ["none", "brelu"], [])
    registry = Registry(make_plugin_manager())
    summary = run_local(suite, registry, d / "S")
    assert summary["done"] and not summary["failed"], summary
    return d / "S"


def assert_first_party_unchanged(baseline: Path, store_dir: Path,
                                 defenses: tuple[str, ...] = ("none", "brelu")) -> None:
    """Every train and white-box cell of the baseline (of ``defenses``) is stored with the
    same key, the same weights and the same metric values (outcome bits included)."""
    metrics, weights, cells = stored(baseline)
    h_metrics, h_weights, h_cells = stored(store_dir)
    keys = {c["key"] for (kind, defense, proto), c in cells.items()
            if defense in defenses and (kind == "train" or proto == "white-box")}
    assert len(keys) == 2 * len(defenses)
    for key in keys:
        assert h_cells_status(h_cells, key) == "done", key
    assert {k: weights[k] for k in keys if k in weights} == \
        {k: h_weights[k] for k in keys if k in weights}
    ours = {k: v for k, v in metrics.items() if k[0] in keys}
    assert ours and ours == {k: v for k, v in h_metrics.items() if k[0] in keys}


def h_cells_status(cells: dict, key: str) -> str | None:
    return next((c["status"] for c in cells.values() if c["key"] == key), None)


def fgsm_records(store_dir: Path, protocol: str) -> dict:
    """{defense: (clean accuracy row, FGSM row)} of one protocol's cells."""
    metrics, _, cells = stored(store_dir)
    out = {}
    for (kind, defense, proto), c in cells.items():
        if proto == protocol and c["status"] == "done":
            rows = {(m, a): v for (k, m, a, e), v in metrics.items() if k == c["key"]}
            out[defense] = (rows[("accuracy", None)], rows[("robust_accuracy", "fgsm")])
    return out


IN_PROCESS_FAILURES = {
    # (kind, defense, protocol): (the plugin named, the reason)
    ("train", "hostile-nograd-defense", None):
        ("defense 'hostile-nograd-defense'", "grad mode True -> False"),
    ("train", "hostile-float64-defense", None):
        ("defense 'hostile-float64-defense'", "default dtype torch.float32 -> torch.float64"),
    ("train", "hostile-sysexit-defense", None):
        ("defense 'hostile-sysexit-defense'", "raised SystemExit"),
    ("train", "hostile-kbint-defense", None):
        ("defense 'hostile-kbint-defense'", "raised KeyboardInterrupt"),
    ("train", "hostile-genexit-defense", None):
        ("defense 'hostile-genexit-defense'", "raised GeneratorExit"),
    ("train", "hostile-base-defense", None):
        ("defense 'hostile-base-defense'", "raised HostileBaseException"),
    ("train", "hostile-thread-defense", None):
        ("defense 'hostile-thread-defense'", "non-daemon thread"),
    ("train", "hostile-extra-state-defense", None):
        ("defense 'hostile-extra-state-defense'", "not a tensor"),
    ("train", "hostile-reference-defense", None):
        ("defense 'hostile-reference-defense'", "changed the parameters or buffers of the "
                                                "reference model"),
    ("eval", "none", "wb-one-minus"): ("attack 'hostile-one-minus'", "left the linf ball"),
    ("eval", "none", "wb-zero-weights"):
        ("attack 'hostile-zero-weights'", "changed the parameters or buffers of the defended"),
    ("eval", "none", "hostile-zero-protocol"):
        ("protocol 'hostile-zero-protocol'", "changed the parameters or buffers"),
    ("eval", "none", "wb-nograd"): ("attack 'hostile-nograd'", "grad mode True -> False"),
    ("eval", "none", "wb-flags"):
        ("attack 'hostile-flags'", "deterministic algorithms (False, False) -> (True, False)"),
    ("eval", "none", "hostile-none-metric"):
        ("protocol 'hostile-none-metric'", "metric is NoneType"),
    ("eval", "none", "hostile-dict-attack"):
        ("protocol 'hostile-dict-attack'", "attack is dict"),
    ("eval", "none", "hostile-wrong-types"):
        ("protocol 'hostile-wrong-types'", "value is str, n is 2.5"),
    # protocols read the cached dataset in place; a write into it is seen by its fingerprint
    ("eval", "none", "hostile-data-protocol"):
        ("protocol 'hostile-data-protocol'", "wrote into the shared dataset 'digits'"),
}
HOSTILE_DEFENSES = ["hostile-augment-defense"] + sorted(
    {d for k, d, _ in IN_PROCESS_FAILURES if k == "train"})
HOSTILE_PROTOCOLS = ["wb-inplace"] + sorted(
    {p for k, _, p in IN_PROCESS_FAILURES if k == "eval"})


def test_in_process_hostile_plugins_fail_their_own_cells_only(tmp_path, baseline,
                                                             fixture_plugin):
    registry = hostile_registry(fixture_plugin)
    suite = suite_file(tmp_path, ["none", *HOSTILE_DEFENSES, "brelu"],
                       HOSTILE_PROTOCOLS)
    cwd, dtype = os.getcwd(), torch.get_default_dtype()
    summary = run_local(suite, registry, tmp_path / "S", isolate=False)
    # the harness put back what the plugins changed
    assert (os.getcwd(), torch.get_default_dtype(), torch.is_grad_enabled()) == \
        (cwd, dtype, True)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.is_anomaly_enabled()
    assert torch.get_num_threads() == 1
    _, _, cells = stored(tmp_path / "S")
    for where, (plugin, reason) in IN_PROCESS_FAILURES.items():
        row = cells[where]
        assert row["status"] == "failed", where
        assert plugin in row["error"] and reason in row["error"], (where, row["error"])
    failed = {k for k, c in cells.items() if c["status"] == "failed"}
    # one failure per hostile plugin; the protocols fail on every model they evaluate
    assert {k for k in failed if k[0] == "train"} == \
        {k for k in IN_PROCESS_FAILURES if k[0] == "train"}
    assert {k for k in failed if k[0] == "eval"} == {
        ("eval", d, p) for _, _, p in IN_PROCESS_FAILURES if p
        for d in ("none", "hostile-augment-defense", "brelu")}
    assert summary["failed"] == len(failed)
    # nothing of a failed cell is stored
    conn = sqlite3.connect(tmp_path / "S" / "results.sqlite")
    try:
        assert conn.execute("SELECT COUNT(*) FROM metrics m JOIN cells c ON c.key = "
                            "m.cell_key WHERE c.status != 'done'").fetchone()[0] == 0
    finally:
        conn.close()
    # The augment defense zeroed its own copy of the cached training split (its cell is
    # fine); the in-place attacks and the protocol that wrote into the cached data (failed,
    # the dataset loaded again) reached no other cell: brelu trains after them and white-box
    # runs after them.
    assert cells[("train", "hostile-augment-defense", None)]["status"] == "done"
    assert_first_party_unchanged(baseline, tmp_path / "S")
    # FGSM after the in-place attacks in the same cell sees the clean inputs and labels
    assert fgsm_records(tmp_path / "S", "wb-inplace") == {
        d: v for d, v in fgsm_records(tmp_path / "S", "white-box").items()}
    assert set(fgsm_records(tmp_path / "S", "wb-inplace")) >= {"none", "brelu"}


def test_default_run_isolates_third_party_cells_in_a_worker(tmp_path, baseline, capsys,
                                                            fixture_plugin, monkeypatch):
    """Without --cell-timeout: os._exit(0) in an attack and a thread left running fail their
    cells (the run goes on and exits 1); global state changed in one worker cell does not
    reach the next cell in the same worker; first-party cells run in process, unchanged."""
    import advarena.cli.run_command as run_command

    registry = hostile_registry(fixture_plugin)
    monkeypatch.setattr(run_command, "default_registry", lambda: registry)
    # Worker starts are the cost here: the first, one after the thread, none after the exit.
    suite = suite_file(tmp_path, ["none", "hostile-nograd-defense",
                                             "hostile-float64-defense",
                                             "hostile-thread-defense"],
                       ["wb-nograd", "wb-exit0"])
    code, out, err = invoke(["run", "--suite", suite, "--store", tmp_path / "S", "--quiet"],
                            capsys)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    _, _, cells = stored(tmp_path / "S")
    expected = {
        ("eval", "none", "wb-exit0"): ("attack 'hostile-exit0'", "exited with status 0"),
        ("eval", "none", "wb-nograd"): ("attack 'hostile-nograd'", "grad mode True -> False"),
        ("train", "hostile-nograd-defense", None): ("defense 'hostile-nograd-defense'",
                                                    "grad mode True -> False"),
        # trained in the worker the nograd defense had used: grad mode was back on
        ("train", "hostile-float64-defense", None): ("defense 'hostile-float64-defense'",
                                                     "default dtype torch.float32 -> torch.float64"),
        ("train", "hostile-thread-defense", None): ("defense 'hostile-thread-defense'",
                                                    "non-daemon thread"),
    }
    for where, (plugin, reason) in expected.items():
        row = cells[where]
        assert row["status"] == "failed" and plugin in row["error"] and \
            reason in row["error"], (where, row["error"])
        assert plugin in out
    assert {k for k, c in cells.items() if c["status"] == "failed"} == set(expected)
    assert_first_party_unchanged(baseline, tmp_path / "S", defenses=("none",))


# -- Ctrl-C ------------------------------------------------------------------------------------

def test_a_genuine_ctrl_c_stops_the_run_but_a_raised_keyboardinterrupt_fails_a_cell():
    from advarena.guards import CellError, watch_sigint
    from advarena.runner import blame

    with watch_sigint():
        with pytest.raises(CellError, match="defense 'x' raised KeyboardInterrupt"):
            with blame("defense 'x'"):
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            with blame("defense 'x'"):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- start-up: registrations and imports --------------------------------------------------------

def test_a_malformed_registration_exits_2_naming_the_plugin(tmp_path, capsys, fixture_plugin,
                                                           monkeypatch):
    import advarena.cli.run_command as run_command

    module = fixture_plugin("hostile_registration")
    monkeypatch.setattr(run_command, "default_registry",
                        lambda: Registry(make_plugin_manager([module])))
    suite = suite_file(tmp_path, ["none"], [])
    code, out, err = invoke(["run", "--suite", suite, "--store", tmp_path / "S"], capsys)
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "advarena_testplugin_hostile_registration" in lines[0]
    assert "not iterable" in lines[0] or "not a subclass" in lines[0]
    assert not (tmp_path / "S").exists()


def test_a_plugin_that_fails_to_import_is_skipped_with_one_warning(tmp_path, baseline, capsys,
                                                                  monkeypatch):
    from advarena import plugins

    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN_DIR / "hostile_import.py", site / "advarena_fixture_broken.py")
    info = site / "advarena_fixture_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-fixture\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[advarena]\nbroken = advarena_fixture_broken\n")
    monkeypatch.syspath_prepend(str(site))
    plugins.default_registry.cache_clear()
    try:
        registry = plugins.default_registry()
        (warning,) = registry.warnings
        assert "'broken'" in warning and "hostile import failure" in warning
        assert "fgsm" in registry.names("attacks")  # the others still load
        for args in (["list", "attacks"],
                     ["run", "--suite", suite_file(tmp_path, ["none", "brelu"], []),
                      "--store", baseline, "--quiet"],  # every cell stored: nothing runs
                     ["leaderboard", "--store", baseline, "--out", tmp_path / "lb", "--format", "md",
                      "--plots", "none"]):
            code, out, err = invoke(args, capsys)
            assert code == 0, (args, out, err)
            assert "Traceback" not in out + err
            # one warning (the terminal may wrap it)
            assert " ".join(err.split()).count("skipped plugin 'broken'") == 1, (args, err)
            assert "warning: " + " ".join(warning.split()) in " ".join(err.split())
    finally:
        plugins.default_registry.cache_clear()
