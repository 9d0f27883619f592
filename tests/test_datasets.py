"""Dataset plugins: each on-disk reader is fed tiny files written here in the real formats
(IDX, CIFAR python batches, SVHN .mat, PNG folders); nothing is downloaded."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

import advarena
from advarena.errors import DataError

RNG = np.random.default_rng(0)


def write_idx(path, array: np.ndarray) -> None:
    """IDX file: 0x0000, type byte 0x08 (uint8), ndim, then big-endian int32 dims and the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_raw(root, folder: str, n_train: int = 20, n_test: int = 10):
    raw = root / folder / "raw"
    made = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        made[prefix] = (x, y)
    return made


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_formats_read_from_idx(tmp_path, name, folder):
    made = write_mnist_raw(tmp_path, folder)
    splits = advarena.dataset(name).load(tmp_path)
    assert splits.info.input_shape == (1, 28, 28) and splits.info.num_classes == 10
    assert splits.info.family == "mnist" and splits.info.bounds == (0.0, 1.0)
    for part, prefix in ((splits.train, "train"), (splits.test, "t10k")):
        x, y = made[prefix]
        assert part.x.dtype == torch.float32 and part.x.shape == (len(x), 1, 28, 28)
        assert part.y.dtype == torch.int64
        torch.testing.assert_close(part.x, torch.from_numpy(x).float().unsqueeze(1) / 255)
        assert part.y.tolist() == y.tolist()
        assert 0.0 <= part.x.min() and part.x.max() <= 1.0


def test_mnist_limits_take_the_first_examples(tmp_path):
    made = write_mnist_raw(tmp_path, "MNIST")
    splits = advarena.dataset("mnist", limit_train=5, limit_test=3).load(tmp_path)
    assert len(splits.train) == 5 and len(splits.test) == 3
    assert splits.train.y.tolist() == made["train"][1][:5].tolist()


def write_mnist_files(folder, gz: bool, n_train: int = 20, n_test: int = 10):
    """The four files as distributed: ``<folder>/train-images-idx3-ubyte[.gz]`` etc."""
    made = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, size=n, dtype=np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            write_idx(folder / stem, arr)
            if gz:
                raw = (folder / stem).read_bytes()
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
                (folder / stem).unlink()
        made[prefix] = (x, y)
    return made


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("layout", ["flat", "named", "torchvision"])
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_reads_the_official_files_in_every_layout(tmp_path, name, folder, layout, gz):
    where = {"flat": tmp_path, "named": tmp_path / name,
             "torchvision": tmp_path / folder / "raw"}[layout]
    made = write_mnist_files(where, gz)
    splits = advarena.dataset(name).load(tmp_path)
    x, y = made["t10k"]
    torch.testing.assert_close(splits.test.x, torch.from_numpy(x).float().unsqueeze(1) / 255)
    assert splits.test.y.tolist() == y.tolist() and len(splits.train) == 20
    limited = advarena.dataset(name, limit_train=3, limit_test=2).load(tmp_path)
    assert limited.train.y.tolist() == made["train"][1][:3].tolist() and len(limited.test) == 2


def _corrupt(path, gz: bool, data: bytes) -> None:
    (path.with_name(path.name + ".gz") if gz else path).write_bytes(
        gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("fault, match", [
    ("swapped", "magic 0x00000803 expected, found 0x00000801"),
    ("shape", "IDX shape 10x28x27"),
    ("truncated", "truncated"),
    ("trailing", "more bytes than its header"),
    ("count", "disagree in number"),
    ("label", "classes are 0-9"),
    ("pickle", "not an IDX file"),
])
def test_mnist_rejects_bad_idx_with_one_line(tmp_path, gz, fault, match):
    made = write_mnist_files(tmp_path, gz=False)
    images, labels = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    x, y = made["t10k"]
    target, header = images, struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 10, 28, 28)
    data = {"swapped": labels.read_bytes(),
            "shape": struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 10, 28, 27)
            + x[:, :, :27].tobytes(),
            "truncated": header + x.tobytes()[:-5],
            "trailing": header + x.tobytes() + b"\0",
            "count": struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 9, 28, 28)
            + x[:9].tobytes(),
            "label": None,
            "pickle": pickle.dumps({"x": 1})}[fault]
    if fault == "label":
        target, data = labels, struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + bytes(
            [1] * 9 + [10])
    if gz:
        target.unlink()
    _corrupt(target, gz, data)
    with pytest.raises(DataError, match=match) as err:
        advarena.dataset("mnist").load(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("mnist:") and "t10k" in msg


def test_mnist_needs_all_four_files_in_one_folder(tmp_path):
    write_mnist_files(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    write_mnist_files(tmp_path / "mnist", gz=False)  # the complete set one level down wins
    assert len(advarena.dataset("mnist").load(tmp_path).test) == 10
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no MNIST files under") as err:
        advarena.dataset("mnist").load(tmp_path)
    assert "--data-dir" in str(err.value)


def write_cifar(root, sizes=(4, 4, 4, 4, 4), n_test=6, protocol=pickle.DEFAULT_PROTOCOL):
    """The python version's layout: pickled dicts with bytes keys, data N x 3072 (R,G,B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    made = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for fname, n in zip(names, (*sizes, n_test)):
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, size=n)]
        entry = {b"batch_label": fname.encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"x.png"] * n}
        with open(folder / fname, "wb") as f:
            pickle.dump(entry, f, protocol=protocol)
        made[fname] = (data, labels)
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                             b"frog", b"horse", b"ship", b"truck"],
            b"num_cases_per_batch": sizes[0], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return made


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_python_batches(tmp_path, protocol):
    made = write_cifar(tmp_path, protocol=protocol)
    splits = advarena.dataset("cifar10").load(tmp_path)
    assert splits.info.input_shape == (3, 32, 32) and splits.info.family == "cifar"
    train_data = np.concatenate([made[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((made[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert splits.train.x.shape == (20, 3, 32, 32) and splits.train.x.dtype == torch.float32
    assert splits.train.y.tolist() == train_labels and splits.train.y.dtype == torch.int64
    # Row layout: 1024 red values, then green, then blue, each 32x32 row-major.
    expect = torch.from_numpy(train_data).float().div(255).view(-1, 3, 32, 32)
    torch.testing.assert_close(splits.train.x, expect)
    assert splits.train.x[0, 1, 0, 0] == float(train_data[0, 1024]) / 255
    assert splits.test.y.tolist() == made["test_batch"][1] and len(splits.test) == 6


def test_cifar10_limit_reads_only_needed_batches(tmp_path):
    made = write_cifar(tmp_path)
    # A broken later batch is never opened when the limit is met by the first one.
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    splits = advarena.dataset("cifar10", limit_train=3, limit_test=2).load(tmp_path)
    assert splits.train.y.tolist() == made["data_batch_1"][1][:3] and len(splits.test) == 2


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as in the official batches (made by Python 2)."""

    def save_py2_str(self, obj):
        n = len(obj)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else (
            pickle.BINSTRING + struct.pack("<i", n))
        self.write(op + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_py2_str}


def test_cifar10_reads_python2_style_batches(tmp_path):
    made = write_cifar(tmp_path)
    data = RNG.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({b"batch_label": b"testing batch 1 of 1",
                                      b"labels": [4, 0, 9], b"data": data})
    # numpy 1 (which made the official files) names the array rebuilder numpy.core.multiarray.
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    splits = advarena.dataset("cifar10").load(tmp_path)
    assert splits.test.y.tolist() == [4, 0, 9] and len(splits.train) == 20
    expect = torch.from_numpy(data).float().div(255).view(-1, 3, 32, 32)
    torch.testing.assert_close(splits.test.x, expect)
    assert splits.train.y.tolist()[:4] == made["data_batch_1"][1]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Custom:
    pass


@pytest.mark.parametrize("payload", [Evil(), Custom()], ids=["os.system", "custom-class"])
def test_cifar10_refuses_foreign_globals(tmp_path, payload):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": payload, b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        advarena.dataset("cifar10").load(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "data_batch_1" in msg
    assert type(payload).__name__ in msg or "system" in msg  # names the refused global


def test_cifar10_rejects_a_batch_of_the_wrong_shape(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        advarena.dataset("cifar10").load(tmp_path)


def test_svhn_reads_mat_files_and_maps_10_to_0(tmp_path):
    from scipy.io import savemat

    made = {}
    for fname, n in (("train_32x32.mat", 7), ("test_32x32.mat", 5)):
        x = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9], [3], [4]][:n], dtype=np.uint8)
        savemat(tmp_path / fname, {"X": x, "y": y})
        made[fname] = (x, y)
    splits = advarena.dataset("svhn").load(tmp_path)
    assert splits.info.input_shape == (3, 32, 32) and splits.info.family == "cifar"
    x, y = made["train_32x32.mat"]
    assert splits.train.x.shape == (7, 3, 32, 32) and splits.train.x.dtype == torch.float32
    assert splits.train.y.tolist() == [0, 1, 2, 0, 9, 3, 4]
    # X is H x W x C x N: example 2, channel 1 (green) at row 3, column 4.
    assert splits.train.x[2, 1, 3, 4] == float(x[3, 4, 1, 2]) / 255
    assert splits.test.y.tolist() == [0, 1, 2, 0, 9]
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0


def test_imagefolder_reads_pngs(tmp_path):
    from PIL import Image

    for split, per_class in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog", "eel"):
            if split == "test" and cls == "cat":
                continue  # test lacks a class: labels must still follow train's numbering
            d = tmp_path / "crops" / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                mode = "L" if cls == "eel" else "RGB"  # greyscale is converted to RGB
                size = (20, 12) if i else (12, 12)
                Image.new(mode, size, 200 if mode == "L" else (255, 0, 0)).save(d / f"{i}.png")
    splits = advarena.dataset("imagefolder", root="crops", size=8).load(tmp_path)
    assert splits.info.input_shape == (3, 8, 8) and splits.info.num_classes == 3
    assert splits.train.x.shape == (6, 3, 8, 8) and splits.train.x.dtype == torch.float32
    assert sorted(splits.train.y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert splits.test.y.tolist() == [1, 2]  # dog, eel in train's numbering
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0
    red = splits.train.x[splits.train.y == 0]
    assert torch.allclose(red[:, 0], torch.ones(1)) and torch.allclose(red[:, 1], torch.zeros(1))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn", "imagefolder"])
@pytest.mark.parametrize("where", ["none", "empty"])
def test_missing_data_is_a_one_line_error(tmp_path, name, where):
    ds = advarena.dataset(name)
    assert ds.needs_data_dir
    with pytest.raises(DataError) as err:
        ds.load(None if where == "none" else tmp_path, download=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{name}:") and "--data-dir" in msg
    if where == "empty":
        assert str(tmp_path) in msg


def test_digits_split_is_fixed_and_stratified():
    a = advarena.dataset("digits").load()
    b = advarena.dataset("digits").load()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.info.num_classes == 10 and a.info.input_shape == (1, 8, 8)
    assert a.train.x.shape[1:] == (1, 8, 8) and a.train.x.dtype == torch.float32
    assert a.train.y.dtype == torch.int64 and set(a.test.y.tolist()) == set(range(10))
    for part in (a.train, a.test):
        assert 0.0 <= part.x.min() and part.x.max() <= 1.0
    n = len(a.train) + len(a.test)
    assert abs(len(a.test) / n - 0.3) < 0.01
    # Stratified: each class's share of the test split matches its share overall.
    ally = torch.cat([a.train.y, a.test.y])
    for c in range(10):
        share = (ally == c).sum().item() * len(a.test) / n
        assert abs((a.test.y == c).sum().item() - share) <= 1
    # The split seed is fixed, not a parameter a run could change.
    assert not any("seed" in p.name for p in advarena.dataset("digits").describe_params())


@pytest.mark.parametrize("name", ["moons", "circles"])
def test_toy_sets_in_unit_square(name):
    splits = advarena.dataset(name, n_samples=200).load()
    assert splits.info.family == "toy" and splits.info.num_classes == 2
    assert splits.info.input_shape == (2,)
    for part in (splits.train, splits.test):
        assert part.x.shape[1:] == (2,) and part.x.dtype == torch.float32
        assert 0.0 <= part.x.min() and part.x.max() <= 1.0
        assert set(part.y.tolist()) == {0, 1}
    assert len(splits.train) + len(splits.test) == 200
    # Train min-max scaling: the train split spans exactly [0, 1] on both features.
    assert torch.allclose(splits.train.x.min(0).values, torch.zeros(2))
    assert torch.allclose(splits.train.x.max(0).values, torch.ones(2))
    again = advarena.dataset(name, n_samples=200).load()
    assert torch.equal(splits.test.x, again.test.x)
