"""External models: ``advarena evaluate`` and ``advarena.evaluate`` run a model trained elsewhere
through the protocols without training it, and score it exactly as ``advarena run`` scores the
same weights trained by advarena."""

from __future__ import annotations

import hashlib
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import advarena
import advarena.plugins
from advarena.evaluation import unpack_outcomes
from advarena.report.export import RESULT_COLUMNS
from advarena.api.records import EXPORT_KEYS
from advarena.store import Store
from tests.test_cli import invoke

TINY = Path(__file__).parent / "suites" / "tiny.toml"

FACTORY = textwrap.dedent("""
    import advarena
    from torch import nn


    def cnn(info):
        return advarena.architecture("cnn-001").build(info)


    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
""")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with the tiny suite's reference (``none``) trained and evaluated by advarena,
    its weights taken out of the store, and a factory file."""
    root = tmp_path_factory.mktemp("evaluate")
    store_dir = root / "store"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = _main(["run", "--suite", TINY, "--defense", "none", "--store", store_dir,
                      "--device", "cpu", "--quiet"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    store = Store.open(store_dir)
    train = next(c for c in store.cells("train") if c["labels"]["defense"] == "none")
    state = store.get_tensors(store.artifacts(train["key"])["model"])
    store.close()
    weights = root / "none.safetensors"
    # The Classifier's state dict holds the network under "net."; the factory builds the net.
    save_file({k.removeprefix("net."): v for k, v in state.items()}, str(weights))
    factory = root / "factory.py"
    factory.write_text(FACTORY)
    return {"root": root, "store": store_dir, "weights": weights, "factory": factory}


def _main(args) -> int:
    from advarena.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _records(store_dir: Path, defense: str) -> dict[tuple, dict]:
    store = Store.open(store_dir, readonly=True)
    try:
        return {(r["protocol"], r["metric"], r["attack"], r["eps"]): r
                for r in store.metrics() if r["defense"] == defense}
    finally:
        store.close()


def test_external_weights_score_as_advarena_trained_ones(world, capsys, single_thread):
    code, out, err = invoke(["evaluate", "--model", f"{world['factory']}:cnn", "--weights",
                             world["weights"], "--suite", TINY, "--store", world["store"],
                             "--device", "cpu", "--quiet", "--name", "none-outside"], capsys)
    assert code == 0, err
    ours, theirs = _records(world["store"], "none"), _records(world["store"], "none-outside")
    white = [k for k in ours if k[0] == "white-box"]
    assert any(k[1] == "robust_accuracy" for k in white)
    for k in white:
        assert theirs[k]["value"] == ours[k]["value"], k
        assert theirs[k]["n"] == ours[k]["n"]
        assert unpack_outcomes(theirs[k]["extra"]["outcomes"]) == \
            unpack_outcomes(ours[k]["extra"]["outcomes"]), k
    # never trained: no training-cost records, but sanity flags as for any model
    assert not [k for k in theirs if k[0] == "training-cost"]
    assert [k for k in ours if k[0] == "training-cost"]
    assert [k for k in theirs if k[0] == "sanity"]
    # the row is marked external, with the weights' SHA-256 as provenance
    df = advarena.results(world["store"])
    mine = df[df["defense"] == "none-outside"]
    digest = hashlib.sha256(world["weights"].read_bytes()).hexdigest()
    assert mine["external"].all() and (mine["external_weights_sha256"] == digest).all()
    assert mine["external_source_sha256"].notna().all()
    assert not df[df["defense"] == "none"]["external"].any()
    assert "(external)" in out and "result on digits" in out  # the closing table marks it


def test_a_model_trained_with_plain_torch_gets_a_leaderboard_row(world, capsys, single_thread):
    from advarena.report.leaderboard import build_tables

    splits = advarena.dataset("digits", test_fraction=0.5).load()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):
        for i in range(0, len(splits.train), 64):
            opt.zero_grad()
            F.cross_entropy(net(splits.train.x[i:i + 64]), splits.train.y[i:i + 64]).backward()
            opt.step()
    weights = world["root"] / "mlp.safetensors"
    save_file(net.state_dict(), str(weights))
    code, out, err = invoke(["evaluate", "--model", f"{world['factory']}:mlp", "--weights",
                             weights, "--suite", TINY, "--store", world["store"], "--device",
                             "cpu", "--quiet", "--protocol", "white-box"], capsys)
    assert code == 0, err
    store = Store.open(world["store"], readonly=True)
    try:
        rows = [r for t in build_tables(store) for r in t["rows"]]
    finally:
        store.close()
    row = next(r for r in rows if r["defense"] == "mlp")
    assert row["params"]["external"] == "factory.py:mlp" and row["architecture"] == "external"
    assert row["clean_accuracy"]["value"] > 0.5  # it learnt something: a real model, scored
    assert "leaderboard" in out


def test_python_api_returns_the_export_columns(world, single_thread):
    net = advarena.architecture("cnn-001").build(advarena.dataset("digits").load().info)
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(world["weights"])))
    df = advarena.evaluate(net, dataset="digits", suite=str(TINY), store=str(world["store"]),
                           device="cpu", protocols=["white-box"], name="api-net")
    assert list(df.columns) == [*EXPORT_KEYS, *RESULT_COLUMNS]
    assert len(df) and (df["defense"] == "api-net").all() and df["external"].all()
    ours = _records(world["store"], "none")
    for r in df.itertuples():
        if r.metric == "robust_accuracy":
            assert r.value == ours[("white-box", r.metric, r.attack, r.eps)]["value"]


@pytest.mark.parametrize("case", ["pickle", "misfit", "defense-name", "no-factory"])
def test_bad_external_models_are_one_line(world, capsys, case):
    args = ["evaluate", "--model", f"{world['factory']}:cnn", "--suite", TINY, "--store",
            world["root"] / f"bad-{case}", "--device", "cpu", "--quiet"]
    if case == "pickle":
        bad = world["root"] / "w.pt"
        bad.write_bytes(pickle.dumps({"a": 1}))
        args += ["--weights", bad]
        expected = "not a safetensors file"
    elif case == "misfit":
        args[2] = f"{world['factory']}:mlp"
        args += ["--weights", world["weights"]]
        expected = "do not fit"
    elif case == "defense-name":
        args += ["--weights", world["weights"], "--name", "gda"]
        expected = "name of a defense"
    else:
        args[2] = f"{world['factory']}:nothing"
        expected = "has no 'nothing'"
    code, out, err = invoke(args, capsys)
    assert code == 2
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (world["root"] / f"bad-{case}").exists()  # refused before the store is made


def test_changed_weights_fail_the_cell(world):
    """The train cell verifies the hash that entered its key: a file swapped after planning is
    refused, not evaluated under the old key."""
    from advarena.external import ExternalModelError, run_external

    info = advarena.dataset("digits").load().info
    spec = {"external": {"label": "x", "weights_file": str(world["weights"]),
                         "source": {"kind": "file", "path": str(world["factory"]),
                                    "attr": "cnn"},
                         "weights_sha256": "0" * 64, "source_sha256": "0" * 64}}
    registry = advarena.plugins.default_registry()
    with pytest.raises(ExternalModelError, match="weights changed"):
        run_external(spec, info, registry, torch.device("cpu"))
