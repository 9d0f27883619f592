"""``advarena papers``: published tables against the store, through the real CLI.

Stores are built two ways: records planted with known outcomes (so the verdicts have a known
answer), and a real run of a tiny paper suite on MNIST-format files written here."""

from __future__ import annotations

import json
import re
import struct
import time

import numpy as np
import pytest
import torch

from advarena import papers
from advarena.report.papers import build
from advarena.evaluation import accuracy_measurement, mean_measurement
from advarena.store import Store
from test_cli import invoke  # main() in this process: (exit status, stdout, stderr)

N = 400


def plant(store: Store, key: str, defense: str, protocol: str, measurements, *,
          architecture: str = "mlp-002", params=None, suite: str = "paper-002-t1-reduced",
          seed: int = 0, spec=None) -> None:
    run_id = f"run-{key}"
    if not any(r["id"] == run_id for r in store.runs()):
        store.start_run(run_id, {"name": suite}, [], "cpu", {})
    labels = {"dataset": "mnist", "architecture": architecture, "defense": defense,
              "params": params or {}, "seed": seed, "protocol": protocol}
    store.record_cell(key=key, kind="eval", spec=spec or {"kind": "eval"}, labels=labels,
                      run_id=run_id, started=time.time(), seconds=0.1, device="cpu",
                      provenance={}, result={}, measurements=measurements, artifacts={})


def mask(k: int, n: int = N, offset: int = 0) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[offset:offset + k] = True
    return m


def mlp_store(path, *, ours_acc: int, ref_acc: int, ours_rho: float) -> Store:
    """002 Table 1's MLP rows: reference and Deep Defense on the same N examples."""
    store = Store.open(path)
    g = torch.Generator().manual_seed(0)
    for name, acc, rho in (("none", ref_acc, 0.11), ("deep-defense", ours_acc, ours_rho)):
        plant(store, f"wb-{name}", name, "white-box", [accuracy_measurement("accuracy",
                                                                           mask(acc))])
        rhos = rho + 0.01 * torch.randn(N, generator=g, dtype=torch.float64)
        plant(store, f"mp-{name}", name, "minimal-perturbation",
              [mean_measurement("rho_2", rhos, attack="deepfool")]
              + [accuracy_measurement("accuracy_at_eps_ref", mask(int(N * f)), attack="fgsm",
                                      eps=0.1 * f, fraction=f) for f in (0.2, 0.5, 1.0)])
    return store


def table(result_json: dict, tid: str) -> dict:
    return next(t for t in result_json["tables"] if t["id"] == tid)


def claim(t: dict, text_start: str) -> dict:
    return next(c for c in t["claims"] if c["text"].startswith(text_start))


def cell(t: dict, cid: str) -> dict:
    return next(c for c in t["cells"] if c["id"] == cid)


def test_shipped_tables_are_valid_and_cite_their_source():
    ts = {t["id"]: t for t in papers.tables()}
    assert {"002-t1", "004-t1", "004-t2", "001-t2", "000-t1", "003-t1", "003-t5"} <= set(ts)
    from advarena.suite import shipped_suites

    suites = set(shipped_suites())
    for t in ts.values():
        assert t["suite"] in suites and t["reduced_suite"] in suites
        assert t["paper"] and t["table"] and t["cells"] and t["claims"]
        for c in t["cells"]:
            assert c["row"] and c["column"] and isinstance(c["published"], (int, float))
    # 002 Table 1: 2 networks x 4 methods x 5 columns, all MNIST
    assert len(ts["002-t1"]["cells"]) == 40
    assert {c["match"]["dataset"] for c in ts["002-t1"]["cells"]} == {"mnist"}


def test_a_broken_table_is_refused_with_one_line():
    from advarena.errors import AdvarenaError

    good = papers.tables()[0]
    bad = json.loads(json.dumps(good))
    bad["claims"][0]["a"] = "no-such-cell"
    with pytest.raises(AdvarenaError, match="unknown cell"):
        papers._check(bad, "x.json")
    bad = json.loads(json.dumps(good))
    bad["cells"][0]["unit"] = "furlongs"
    with pytest.raises(AdvarenaError, match="unknown unit"):
        papers._check(bad, "x.json")


def test_papers_compares_cells_and_checks_claims(tmp_path, capsys):
    # published MLP accuracies: reference 98.31%, Deep Defense 98.65%; rho_2 0.111 and 0.225
    store = mlp_store(tmp_path / "s", ours_acc=394, ref_acc=360, ours_rho=0.225)
    store.close()
    code, out, err = invoke(["papers", "--store", tmp_path / "s", "--out", tmp_path / "o",
                             "--format", "md,html,json"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "papers.json").read_text())
    assert [t["id"] for t in res["tables"]] == ["002-t1"]  # only the table whose suite ran
    t = table(res, "002-t1")
    assert t["suites_run"] == ["paper-002-t1-reduced"]
    ours = cell(t, "mlp.ours.acc")
    assert ours["measured"]["value"] == pytest.approx(100 * 394 / N)
    assert ours["difference"] == pytest.approx(100 * 394 / N - 98.65)
    assert ours["inside"] is True  # 98.5% of 400: the interval holds 98.65
    ref = cell(t, "mlp.ref.acc")
    assert ref["inside"] is False  # 90% of 400 excludes 98.31
    assert cell(t, "mlp.ours.rho2")["inside"] is True
    assert cell(t, "lenet.ours.acc")["measured"] is None
    # 34 examples gained, none lost: McNemar says the ordering holds
    c = claim(t, "MLP: Deep Defense is more accurate")
    assert c["verdict"] == "holds" and c["pairs"][0]["method"] == "mcnemar-exact"
    assert c["pairs"][0]["p"] < 1e-6
    # Parseval and Adv. Train I were not run: judged on the one comparison that can be made
    assert claim(t, "MLP: Deep Defense has the largest rho_2")["verdict"] == \
        "holds (1 of 3 comparisons measured)"
    assert claim(t, "LeNet:")["verdict"] == "not measured"
    md = (tmp_path / "o" / "papers.md").read_text()
    assert "| MLP / Ours | Acc. | 98.65 % | 98.50 |" in md and "**holds**" in md
    html = (tmp_path / "o" / "papers.html").read_text()
    assert "<table" in html and "Deep Defense: Training DNNs" in html
    # printing without --out gives the same Markdown
    code, out, _ = invoke(["papers", "--store", tmp_path / "s"], capsys)
    assert code == 0 and out == md


def test_a_reversed_ordering_is_contradicted_and_a_tie_is_not_significant(tmp_path, capsys):
    mlp_store(tmp_path / "a", ours_acc=300, ref_acc=390, ours_rho=0.2).close()
    code, _, err = invoke(["papers", "--store", tmp_path / "a", "--out", tmp_path / "oa",
                           "--format", "json"], capsys)
    assert code == 0, err
    t = table(json.loads((tmp_path / "oa" / "papers.json").read_text()), "002-t1")
    assert claim(t, "MLP: Deep Defense is more accurate")["verdict"] == "contradicted"
    mlp_store(tmp_path / "b", ours_acc=391, ref_acc=390, ours_rho=0.2).close()
    invoke(["papers", "--store", tmp_path / "b", "--out", tmp_path / "ob", "--format", "json"],
           capsys)
    t = table(json.loads((tmp_path / "ob" / "papers.json").read_text()), "002-t1")
    c = claim(t, "MLP: Deep Defense is more accurate")
    assert c["verdict"] == "holds, not significant" and c["pairs"][0]["p"] == 1.0


def test_complemented_cells_flip_values_and_orderings(tmp_path, capsys):
    """003 publishes error rates where the store keeps accuracies: 1 - value, and 'lower error'
    means 'higher accuracy'."""
    store = Store.open(tmp_path / "s")
    for name, params, acc in (("none", {}, 200), ("rad", {"attack": "adam-evasion"}, 390)):
        plant(store, f"wb-{name}", name, "white-box",
              [accuracy_measurement("accuracy", mask(396)),
               accuracy_measurement("robust_accuracy", mask(acc), attack="fgsm", eps=0.5),
               accuracy_measurement("repeated_error_rate", mask(N - acc),
                                    attack="adam-evasion")],
              architecture="lenet5", params=params, suite="paper-003-reduced")
    store.close()
    code, _, err = invoke(["papers", "--store", tmp_path / "s", "--table", "003-t1", "--out",
                           tmp_path / "o", "--format", "json"], capsys)
    assert code == 0, err
    t = table(json.loads((tmp_path / "o" / "papers.json").read_text()), "003-t1")
    assert cell(t, "lenet.fgs05")["measured"]["value"] == pytest.approx(50.0)  # 46.1% published
    assert cell(t, "lenet.clean")["measured"]["value"] == pytest.approx(1.0)
    lo, hi = (cell(t, "lenet.fgs05")["measured"][k] for k in ("ci_low", "ci_high"))
    assert lo < 50.0 < hi
    assert claim(t, "RAD(adam) has a lower error")["verdict"] == "holds"
    # a RAD trained on another adversary is another row, not this one
    assert cell(t, "radcg.fgs05")["measured"] is None


def test_attack_parameters_select_the_row(tmp_path, capsys):
    """004 Table 1's IFGSM rows differ only in the number of steps the eval cell ran."""
    store = Store.open(tmp_path / "s")
    for steps, acc in ((10, 20), (30, 5)):
        spec = {"kind": "eval", "attacks": {"ifgsm": {"name": "ifgsm",
                                                      "params": {"steps": steps}}}}
        plant(store, f"wb-{steps}", "none", "white-box",
              [accuracy_measurement("robust_accuracy", mask(acc), attack="ifgsm", eps=0.3)],
              architecture="cnn-004-mnist", suite="paper-004-t1-reduced", spec=spec)
    store.close()
    code, _, err = invoke(["papers", "--store", tmp_path / "s", "--out", tmp_path / "o",
                           "--format", "json"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "papers.json").read_text())
    t = table(res, "004-t1")
    assert cell(t, "ifgsm10.H.natural")["measured"]["value"] == pytest.approx(20 / N)
    assert cell(t, "ifgsm30.H.natural")["measured"]["value"] == pytest.approx(5 / N)
    assert {t["id"] for t in res["tables"]} == {"004-t1", "004-t2"}  # both run by that suite


@pytest.mark.parametrize("args, needle", [
    (["--table", "999-t9"], "unknown paper table '999-t9'"),
    (["--format", "pdf", "--out", "x"], "unknown papers format 'pdf'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, needle):
    mlp_store(tmp_path / "s", ours_acc=390, ref_acc=380, ours_rho=0.2).close()
    code, out, err = invoke(["papers", "--store", tmp_path / "s", *args], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_no_store_is_one_line(tmp_path, capsys):
    code, _, err = invoke(["papers", "--store", tmp_path / "absent"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def _write_mnist(folder, n_train=64, n_test=40):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        # class-dependent blobs so the tiny models learn something
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c:2 * c + 6, 4:24] = 230
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">HBB3I", 0, 8, 3, n, 28, 28) + x.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">HBBI", 0, 8, 1, n) + y.tobytes())


def test_a_real_run_of_a_paper_suite_is_compared(tmp_path, capsys):
    """A real (tiny) run of 002's suite: the table appears, its cells are measured, and every
    measured number lies in its interval's unit range."""
    _write_mnist(tmp_path / "data")
    suite = tmp_path / "paper-002-t1-reduced.toml"
    suite.write_text("""
name = "paper-002-t1-reduced"
datasets = ["mnist"]
architectures = ["mlp-002"]
defenses = ["none", "deep-defense"]
[train]
epochs = 1
batch_size = 32
[eval]
n_examples = 40
batch_size = 40
[defense_params.deep-defense]
steps = 2
[attacks.pgd]
steps = 2
[protocols.white-box]
attacks = ["pgd"]
eps = [0.1]
headline_eps = 0.1
[protocols.minimal-perturbation]
attacks = ["deepfool"]
""")
    code, out, err = invoke(["run", "--suite", suite, "--store", tmp_path / "s", "--data-dir",
                             tmp_path / "data", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err + out
    code, out, err = invoke(["papers", "--store", tmp_path / "s"], capsys)
    assert code == 0, err
    assert "## 002-t1: Table 1" in out and "## 004-t1" not in out
    row = re.search(r"\| MLP / Ours \| rho_2 \| 0\.225 ratio \| ([0-9.]+) \|", out)
    assert row and float(row.group(1)) > 0
    assert re.search(r"\| MLP / Reference \| Acc\.@0\.5 eps_ref \| 29\.08 % \| [0-9.]+ \|", out)
    assert "| LeNet / Ours | Acc. | 99.34 % | not run |" in out
    # The leaderboard gets a "published results" section and the table beside it.
    code, out, err = invoke(["leaderboard", "--store", tmp_path / "s", "--out", tmp_path / "lb",
                             "--plots", "none"], capsys)
    assert code == 0, err
    board = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "## Published results" in board and "| 002-t1 (Table 1): " in board
    assert "paper-002-t1-reduced" in board.split("## Published results")[1]
    assert "## 002-t1: Table 1" in (tmp_path / "lb" / "papers.md").read_text()
    assert "papers.html" in (tmp_path / "lb" / "leaderboard.html").read_text()


def test_records_of_another_papers_suite_are_not_matched(tmp_path, capsys):
    """002's suite trains a LeNet on MNIST too; 003's table must not read it as its LeNet-5."""
    store = Store.open(tmp_path / "s")
    plant(store, "wb-lenet", "none", "white-box", [accuracy_measurement("accuracy", mask(396))],
          architecture="lenet5", suite="paper-002-t1-reduced")
    store.close()
    code, _, err = invoke(["papers", "--store", tmp_path / "s", "--table", "003-t1",
                           "--table", "002-t1", "--out", tmp_path / "o", "--format", "json"],
                          capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "papers.json").read_text())
    assert table(res, "003-t1")["summary"]["measured"] == 0
    assert table(res, "003-t1")["suites_run"] == []
    assert cell(table(res, "002-t1"), "lenet.ref.acc")["measured"]["value"] == pytest.approx(99.0)


def test_the_latest_run_and_the_full_suite_win_not_the_most_examples(tmp_path):
    """A suite edited and run again replaces its numbers even where its mean counts fewer
    examples (fewer successful attacks); a run of the full suite wins over the reduced one."""
    store = Store.open(tmp_path / "s")
    g = torch.Generator().manual_seed(0)

    def rho(value: float, n: int):
        return [mean_measurement("rho_2", value + 0.001 * torch.randn(n, generator=g,
                                                                       dtype=torch.float64),
                                 attack="deepfool")]

    plant(store, "old", "none", "minimal-perturbation", rho(0.30, N))
    plant(store, "new", "none", "minimal-perturbation", rho(0.10, N - 7))
    t = table(build(store, ["002-t1"]), "002-t1")
    assert cell(t, "mlp.ref.rho2")["measured"]["value"] == pytest.approx(0.10, abs=1e-3)
    plant(store, "full", "none", "minimal-perturbation", rho(0.20, N - 50),
          suite="paper-002-t1")
    plant(store, "newer", "none", "minimal-perturbation", rho(0.40, N))  # reduced again
    t = table(build(store, ["002-t1"]), "002-t1")
    assert cell(t, "mlp.ref.rho2")["measured"]["value"] == pytest.approx(0.20, abs=1e-3)
    store.close()
