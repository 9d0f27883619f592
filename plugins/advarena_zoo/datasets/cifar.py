"""CIFAR-10 (Krizhevsky 2009) read from the official "python version" batches in torchvision's
layout, ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
``test_batch``; https://www.cs.toronto.edu/~kriz/cifar.html).

The batches are pickles (Python 2, protocol 2) of ``{"data": uint8 N x 3072, "labels": [...]}``
where each row holds the red, green and blue 32x32 planes in turn. ``torchvision.datasets.
CIFAR10`` reads them with plain ``pickle.load``, which runs whatever a tampered file asks for, so
we read them ourselves with an unpickler that only reconstructs numpy arrays."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advarena.api import DatasetInfo, Splits, TensorData
from advarena.errors import DataError

from ._common import DiskDataset, missing, unreadable

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
# The official archive (same URL and md5 as torchvision.datasets.CIFAR10).
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch may name: what numpy's pickling of a uint8 array uses."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    import _codecs

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype,
                                           # Python 3's protocol <= 2 pickles spell bytes so.
                                           ("_codecs", "encode"): _codecs.encode}
    # The official files (numpy 1, protocol 2) name numpy.core; numpy 2 writes numpy._core, and
    # _frombuffer is what protocol 5 uses. Both module spellings resolve to the same functions.
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside :func:`_allowed_globals` with a DataError."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        # latin1 decodes the files' Python 2 str objects (keys and raw array bytes) losslessly.
        super().__init__(file, encoding="latin1")
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(f"cifar10: {self.path} refers to {module}.{name}, which a CIFAR-10 "
                            "batch never needs; refusing to unpickle it") from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 N x 3 x 32 x 32 images, int64 N labels)."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise unreadable("cifar10", path, exc) from exc
    if not isinstance(entry, dict):
        raise DataError(f"cifar10: {path} holds a {type(entry).__name__}, not a batch dict")
    # Python 2 str keys come back as str (latin1); files written by Python 3 have bytes keys.
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != len(data)):
        raise DataError(f"cifar10: {path} is not a CIFAR-10 batch (want 'data' uint8 N x 3072 "
                        "and N 'labels')")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


class CIFAR10(DiskDataset):
    """CIFAR-10 natural images, 3x32x32 in [0,1], from the official python batches."""

    name = "cifar10"
    paper = "Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images"
    family = "cifar"

    def _read(self, folder: Path, batches: tuple[str, ...], k: int | None) -> TensorData:
        xs, ys, n = [], [], 0
        for batch in batches:
            if k is not None and n >= k:
                break  # the limit is met: skip reading the remaining batches
            x, y = read_batch(folder / batch)
            xs.append(x)
            ys.append(y)
            n += len(y)
        x = self._first(np.concatenate(xs), k)
        y = self._first(np.concatenate(ys), k)
        return TensorData(torch.from_numpy(x).to(torch.float32).div_(255.0), torch.from_numpy(y))

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        folder = Path(data_dir) / FOLDER if data_dir is not None else None
        absent = [b for b in TRAIN_BATCHES + TEST_BATCHES
                  if folder is None or not (folder / b).is_file()]
        if absent and download and data_dir is not None:
            from torchvision.datasets.utils import download_and_extract_archive

            try:
                download_and_extract_archive(URL, str(data_dir), md5=ARCHIVE_MD5)
            except Exception as exc:
                raise unreadable(self.name, URL, exc, verb="download") from exc
            absent = [b for b in absent if not (folder / b).is_file()]
        if absent:
            raise missing(self.name, data_dir, "CIFAR-10 batches", f"{FOLDER}/{absent[0]}")
        info = DatasetInfo(name=self.name, input_shape=(3, 32, 32), num_classes=10,
                           bounds=(0.0, 1.0), family=self.family)
        return Splits(info=info, train=self._read(folder, TRAIN_BATCHES, self.limit_train),
                      test=self._read(folder, TEST_BATCHES, self.limit_test))
