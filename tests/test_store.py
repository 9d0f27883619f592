"""The result store: content-addressed safetensors weights verified on read, one SQLite
transaction per cell, WAL, and a refusal of stores written by a newer schema."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from advarena.api.records import Measurement
from advarena.errors import StoreError
from advarena.store import SCHEMA_VERSION, Store, sha256_bytes


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(7, 5, generator=gen)
    return {
        "w": w,
        "w_t": w.t(),  # a non-contiguous view of the same storage (tied weights)
        "b": torch.randn(5, generator=gen, dtype=torch.float64),
        "idx": torch.arange(11, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(3, 2, generator=gen).to(torch.float16),
        # values whose bit patterns a lossy round trip would change
        "special": torch.tensor([float("nan"), float("inf"), -0.0, 1e-45, -float("inf")]),
    }


def _cell(store: Store, key: str, *, artifacts=None, value: float = 0.5,
          metric: str = "accuracy") -> None:
    store.record_cell(key=key, kind="train", spec={"k": key}, labels={"defense": "none",
                                                                       "params": {}},
                      run_id="r1", started=0.0, seconds=1.0, device="cpu", provenance={},
                      result={"ok": True, "key": key},
                      measurements=[Measurement(metric, value, 10, 0.1, 0.9)],
                      artifacts=artifacts or {})


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


def test_put_get_round_trip_is_bit_identical(store):
    tensors = _tensors()
    digest, nbytes = store.put_tensors(tensors)
    path = store.weights / f"{digest}.safetensors"
    assert path.is_file() and path.stat().st_size == nbytes
    assert sha256_bytes(path.read_bytes()) == digest
    back = store.get_tensors(digest)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        got = back[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        # compare raw bytes: NaN != NaN and -0.0 == 0.0 would fool torch.equal
        assert got.contiguous().view(torch.uint8).tolist() == \
            t.contiguous().view(torch.uint8).tolist(), name


def test_put_is_content_addressed_and_idempotent(store):
    d1, _ = store.put_tensors({"a": torch.ones(3)})
    d2, _ = store.put_tensors({"a": torch.ones(3)})
    d3, _ = store.put_tensors({"a": torch.zeros(3)})
    assert d1 == d2 != d3
    assert sorted(p.name for p in store.weights.iterdir()) == sorted(
        f"{d}.safetensors" for d in {d1, d3})  # no temp files left behind


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_damaged_weight_file_is_detected(store, damage):
    digest, nbytes = store.put_tensors(_tensors())
    _cell(store, "k1", artifacts={"model": (digest, nbytes)})
    assert store.done_cell("k1") == {"ok": True, "key": "k1"}

    path = store.weights / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[-1] ^= 0x01  # a tensor byte: safetensors would still parse it
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()

    with pytest.raises(StoreError) as info:
        store.get_tensors(digest)
    assert digest in str(info.value) and "\n" not in str(info.value)
    # the cell counts as not done, so the executor runs it again
    assert store.done_cell("k1") is None


def test_cell_without_artifacts_is_done(store):
    _cell(store, "k2")
    assert store.done_cell("k2") == {"ok": True, "key": "k2"}
    assert store.done_cell("missing") is None


def test_newer_schema_is_refused_with_one_line(tmp_path):
    root = tmp_path / "store"
    Store.open(root).close()
    conn = sqlite3.connect(root / "results.sqlite")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        Store.open(root)
    msg = str(info.value)
    assert "\n" not in msg
    assert "newer" in msg and str(SCHEMA_VERSION + 1) in msg


def test_same_schema_reopens(tmp_path):
    root = tmp_path / "store"
    s = Store.open(root)
    _cell(s, "k")
    s.close()
    s = Store.open(root)
    try:
        assert s.done_cell("k") is not None
        row = s.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert int(row[0]) == SCHEMA_VERSION
    finally:
        s.close()


def test_refusing_a_newer_store_leaves_it_untouched(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    conn = sqlite3.connect(root / "results.sqlite")
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "CREATE TABLE results_v9 (x INTEGER);")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 8),))
    conn.commit()
    before = conn.execute("SELECT type, name FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    with pytest.raises(StoreError):
        Store.open(root)
    conn = sqlite3.connect(root / "results.sqlite")
    after = conn.execute("SELECT type, name FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    assert after == before


def test_open_without_create_refuses_missing_store(tmp_path):
    with pytest.raises(StoreError) as info:
        Store.open(tmp_path / "nothing", create=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "nothing").exists()


def test_store_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError):
        Store.open(f)


def test_record_cell_replaces_failed_row(store):
    store.record_failure(key="k", kind="train", spec={}, labels={}, run_id="r0", started=0.0,
                         seconds=0.1, device="cpu", error="RuntimeError: boom")
    rows = store.cells()
    assert [(c["key"], c["status"]) for c in rows] == [("k", "failed")]
    assert store.done_cell("k") is None
    assert store.metrics() == []

    digest, nbytes = store.put_tensors({"a": torch.ones(2)})
    _cell(store, "k", artifacts={"model": (digest, nbytes)}, value=0.75)
    rows = store.cells()
    assert [(c["key"], c["status"], c["error"]) for c in rows] == [("k", "done", None)]
    assert store.done_cell("k") is not None
    assert [m["value"] for m in store.metrics()] == [0.75]
    assert store.artifacts("k") == {"model": digest}


def test_record_cell_replaces_metrics_of_same_key(store):
    _cell(store, "k", value=0.25, metric="a")
    _cell(store, "k", value=0.5, metric="b")
    assert [(m["metric"], m["value"]) for m in store.metrics()] == [("b", 0.5)]
    n = store.conn.execute("SELECT COUNT(*) FROM cells WHERE key='k'").fetchone()[0]
    assert n == 1


def test_failed_record_cell_rolls_back(store):
    _cell(store, "k", value=0.25)
    with pytest.raises(sqlite3.Error):
        # the artifact row cannot be bound, after the old rows were deleted and the new cell
        # and metric rows inserted: all of it must be rolled back
        store.record_cell(key="k", kind="train", spec={}, labels={}, run_id="r2", started=0.0,
                          seconds=1.0, device="cpu", provenance={}, result={},
                          measurements=[Measurement("other", 0.9, 1)],
                          artifacts={"model": (object(), 1)})
    assert [(m["metric"], m["value"]) for m in store.metrics()] == [("accuracy", 0.25)]
    assert [c["run_id"] for c in store.cells()] == ["r1"]
    assert store.done_cell("k") is not None


def test_wal_mode_is_on(store, tmp_path):
    mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    # persistent: a fresh connection to the file sees WAL too
    conn = sqlite3.connect(store.root / "results.sqlite")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        conn.close()


def test_reader_sees_committed_cells_while_writer_is_open(tmp_path):
    root = tmp_path / "store"
    writer = Store.open(root)
    reader = Store.open(root)
    try:
        _cell(writer, "k")
        assert reader.done_cell("k") is not None
    finally:
        writer.close()
        reader.close()
