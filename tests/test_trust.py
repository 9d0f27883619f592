"""Trust: weights are read only from safetensors files whose hash matches the store; a tampered or
truncated file is detected and rebuilt, never loaded; nothing is unpickled; HTML output escapes
what plugins supply (names, parameters, papers, descriptions)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import advarena.store as store_module
from advarena.errors import StoreError
from advarena.plan import make_plan
from advarena.plugins import Registry, default_registry, make_plugin_manager
from advarena.store import Store, sha256_bytes
from advarena.suite import load_suite

TINY = Path(__file__).parent / "suites" / "tiny.toml"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def cells(root: Path) -> dict[str, dict]:
    s = Store.open(root, create=False)
    try:
        return {c["key"]: c for c in s.cells()}
    finally:
        s.close()


@pytest.fixture
def loaded(monkeypatch) -> list[str]:
    """The SHA-256 of every byte string deserialised as weights."""
    seen: list[str] = []
    real = store_module.st_load

    def recording(data: bytes):
        seen.append(sha256_bytes(data))
        return real(data)

    monkeypatch.setattr(store_module, "st_load", recording)
    return seen


# -- tampered and truncated weights --------------------------------------------------------

@pytest.mark.parametrize("damage", ["flip-byte", "truncate"])
def test_damaged_weights_are_detected_rebuilt_and_never_loaded(damage, tmp_path, capsys,
                                                              loaded):
    root = tmp_path / "S"
    base = ["run", "--suite", TINY, "--store", root, "--defense", "none", "--quiet"]
    code, out, err = invoke(base + ["--protocol", "white-box"], capsys)
    assert code == 0, (out, err)
    first = cells(root)
    (train_key,) = [k for k, c in first.items() if c["kind"] == "train"]
    run1 = first[train_key]["run_id"]
    s = Store.open(root, create=False)
    try:
        digest = s.artifacts(train_key)["model"]
    finally:
        s.close()
    path = root / "weights" / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip-byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) - 100]
    path.write_bytes(bytes(data))
    bad = sha256_bytes(bytes(data))

    s = Store.open(root, create=False)
    try:
        with pytest.raises(StoreError, match="does not match its hash"):
            s.get_tensors(digest)
        assert s.done_cell(train_key) is None  # so the next run rebuilds it
    finally:
        s.close()

    loaded.clear()
    # All protocols now: the training-cost evaluation is new and loads the (rebuilt) model.
    code, out, err = invoke(base, capsys)
    assert code == 0, (out, err)
    plan = make_plan(load_suite(str(TINY)), default_registry(), ["none"])
    new = {c.key for c in plan.cells} - set(first)
    kept = {c.key for c in plan.cells} & set(first) - {train_key}
    assert kept  # the white-box evaluation
    # exactly the damaged train cell is run again, plus the cells that did not exist yet
    assert f"{1 + len(new)} cells run, {len(kept)} reused" in out, out
    after = cells(root)
    assert after[train_key]["run_id"] != run1 and after[train_key]["status"] == "done"
    assert all(after[k]["run_id"] == run1 for k in first if k != train_key)
    s = Store.open(root, create=False)
    try:
        rebuilt = s.artifacts(train_key)["model"]
        assert s.artifact_ok(rebuilt)
    finally:
        s.close()
    # deterministic training on the CPU: the same weights, so the same file, now repaired
    assert rebuilt == digest and sha256_bytes(path.read_bytes()) == digest
    assert bad not in loaded  # the damaged bytes were never deserialised
    assert digest in loaded  # the evaluation that ran afterwards read the rebuilt file
    assert set(loaded) <= {digest}


# -- nothing is unpickled ---------------------------------------------------------------------

def _refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")


class _NoUnpickler:
    def __init__(self, *args, **kwargs):
        _refuse()


def test_a_full_run_a_reload_and_the_leaderboard_unpickle_nothing(tmp_path, capsys,
                                                                 monkeypatch):
    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"),
                         (torch.serialization, "load")):
        monkeypatch.setattr(module, name, _refuse)
    monkeypatch.setattr(pickle, "Unpickler", _NoUnpickler)
    root = tmp_path / "S"
    code, out, err = invoke(["run", "--suite", TINY, "--store", root, "--quiet"], capsys)
    assert code == 0, (out, err)
    # a reload: every evaluation is dropped, so the next run reads every model from disk
    s = Store.open(root, create=False)
    try:
        with s._transaction():
            s.conn.execute("DELETE FROM metrics WHERE cell_key IN "
                           "(SELECT key FROM cells WHERE kind != 'train')")
            s.conn.execute("DELETE FROM cells WHERE kind != 'train'")
    finally:
        s.close()
    code, out, err = invoke(["run", "--suite", TINY, "--store", root, "--quiet",
                             "--output", tmp_path / "r.json"], capsys)
    assert code == 0, (out, err)
    assert " 2 reused from the store (2 train)" in " " + out, out
    code, out, err = invoke(["leaderboard", "--store", root, "--out", tmp_path / "lb"], capsys)
    assert code == 0, (out, err)


# -- script injection through plugin-supplied text --------------------------------------------

def test_plugin_supplied_text_is_escaped_in_html(tmp_path, capsys, monkeypatch,
                                                 fixture_plugin):
    import advarena.cli.run_command as run_command
    import advarena.plugins as plugins

    xss = fixture_plugin("xss_plugin")
    registry = Registry(make_plugin_manager([xss]))
    monkeypatch.setattr(run_command, "default_registry", lambda: registry)
    monkeypatch.setattr(plugins, "default_registry", lambda: registry)
    root, out_dir = tmp_path / "S", tmp_path / "lb"
    code, out, err = invoke(["run", "--suite", TINY, "--store", root, "--quiet", "--defense",
                             xss.NAME, "--protocol", "white-box"], capsys)
    assert code == 0, (out, err)
    code, out, err = invoke(["leaderboard", "--store", root, "--out", out_dir], capsys)
    assert code == 0, (out, err)

    pages = sorted(out_dir.rglob("*.html"))
    assert pages
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    for payload in xss.PAYLOADS:
        assert payload not in text, payload
    for fragment in ("<script>alert(", "<img src=x", "<svg onload", "<b onmouseover"):
        assert fragment not in text, fragment
    # shown, as text
    assert "&lt;script&gt;alert(" in text
    for md in out_dir.rglob("*.md"):
        assert "<script>" not in md.read_text(encoding="utf-8"), md
    # every file stayed inside the output directory (the name holds '/../')
    assert all(out_dir in p.parents for p in tmp_path.rglob("*")
               if p.is_file() and root not in p.parents and p.suffix in (".html", ".md"))
