"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017) read from their four IDX files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``), each gzip-compressed as distributed (``.gz``) or not.

Where the files are looked for, first match wins (all four from one folder):

1. ``<data_dir>/`` itself, as distributed (``--data-dir ~/mnist``; Debian's
   ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``);
2. ``<data_dir>/<name>/`` (``mnist``, ``fashion-mnist``: ``--data-dir /usr/share/datasets``);
3. torchvision's layout, ``<data_dir>/MNIST/raw/`` and ``<data_dir>/FashionMNIST/raw/``.

IDX is a 4-byte magic (two zero bytes, type 0x08 = unsigned byte, number of dimensions), the
big-endian 32-bit dimensions, then the raw bytes (http://yann.lecun.com/exdb/mnist/). The reader
here checks the magic, the shapes (N x 28 x 28 images, N labels, equal N, labels < 10) and the
length, and turns anything else into one line naming the file: nothing is unpickled and no
reader of ours trusts a size it has not checked. ``--download`` fetches through torchvision
into layout 3."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from advarena.api import DatasetInfo, Splits, TensorData
from advarena.errors import DataError

from ._common import DiskDataset, missing, unreadable

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # ubyte, 3 dims / ubyte, 1 dim
SIDE = 28


def _find(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path, magic: int, shape_tail: tuple[int, ...], limit: int | None = None
             ) -> tuple[np.ndarray, int]:
    """The uint8 array of one IDX file (gzip or raw), its magic and trailing dimensions
    checked, and the item count its header declares; only the first ``limit`` items are read
    when given."""
    opener = gzip.open if path.suffix == ".gz" else open
    ndim = 1 + len(shape_tail)
    try:
        with opener(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            if len(head) < 4 or struct.unpack(">I", head[:4])[0] != magic:
                found = f"0x{struct.unpack('>I', head[:4])[0]:08x}" if len(head) >= 4 else \
                    "a file shorter than its header"
                raise DataError(f"{path} is not an IDX file of this kind (magic 0x{magic:08x} "
                                f"expected, found {found})")
            if len(head) < 4 + 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", head[4:])
            if tuple(dims[1:]) != shape_tail:
                raise DataError(f"{path}: IDX shape {'x'.join(map(str, dims))}, expected "
                                f"Nx{'x'.join(map(str, shape_tail))}")
            n = dims[0] if limit is None else min(dims[0], limit)
            size = n * int(np.prod(shape_tail, dtype=np.int64))
            data = f.read(size)
            if len(data) != size:
                raise DataError(f"{path}: truncated, {len(data)} of the {size} bytes its "
                                f"header announces")
            if limit is None and f.read(1):
                raise DataError(f"{path}: more bytes than its header announces")
    except DataError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile, struct.error) as exc:
        raise unreadable("idx", path, exc) from None
    return np.frombuffer(data, dtype=np.uint8).reshape((n, *shape_tail)), dims[0]


class MNIST(DiskDataset):
    """MNIST handwritten digits, 1x28x28 in [0,1], from the official IDX files (gzip or raw;
    as distributed, under ``<name>/`` or in torchvision's ``MNIST/raw/``)."""

    name = "mnist"
    paper = "LeCun, Bottou, Bengio & Haffner 1998, Gradient-based learning (Proc. IEEE)"
    family = "mnist"
    # torchvision's class; its name is also the folder under data_dir.
    _tv_class: ClassVar[str] = "MNIST"

    def _folders(self, data_dir: Path) -> list[Path]:
        return [data_dir, data_dir / self.name, data_dir / self._tv_class / "raw"]

    def _locate(self, data_dir: Path) -> dict[str, Path] | None:
        for folder in self._folders(data_dir):
            found = {stem: _find(folder, stem) for stem in RAW_FILES}
            if all(found.values()):
                return found  # type: ignore[return-value]
        return None

    def _download(self, data_dir: Path) -> None:
        import torchvision.datasets  # imported here: slow, and only needed to download

        reader = getattr(torchvision.datasets, self._tv_class)
        for train in (True, False):
            try:
                reader(str(data_dir), train=train, download=True)
            except Exception as exc:  # torchvision reports failed downloads in many ways
                raise unreadable(self.name, data_dir, exc, verb="download into") from exc

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        found = self._locate(Path(data_dir)) if data_dir is not None else None
        if found is None and data_dir is not None and download:
            self._download(Path(data_dir))
            found = self._locate(Path(data_dir))
        if found is None:
            expected = (f"{RAW_FILES[0]}[.gz] and the other three IDX files in DIR, "
                        f"DIR/{self.name}/ or DIR/{self._tv_class}/raw/")
            raise missing(self.name, Path(data_dir) if data_dir is not None else None,
                          f"{self._tv_class} files", expected)
        parts = []
        for prefix, k in (("train", self.limit_train), ("t10k", self.limit_test)):
            try:
                x, n_x = read_idx(found[f"{prefix}-images-idx3-ubyte"], IMAGE_MAGIC,
                                  (SIDE, SIDE), k)
                y, n_y = read_idx(found[f"{prefix}-labels-idx1-ubyte"], LABEL_MAGIC, (), k)
            except DataError as exc:
                raise DataError(f"{self.name}: {exc}") from None
            if n_x != n_y:
                where = found[f"{prefix}-images-idx3-ubyte"].parent
                raise DataError(f"{self.name}: {prefix} images and labels disagree in number "
                                f"({n_x} and {n_y}) under {where}")
            if y.size and int(y.max()) >= 10:
                raise DataError(f"{self.name}: label {int(y.max())} in "
                                f"{found[f'{prefix}-labels-idx1-ubyte']} (classes are 0-9)")
            xt = torch.from_numpy(x.copy()).to(torch.float32).div_(255.0).unsqueeze(1)
            parts.append(TensorData(xt, torch.from_numpy(y.astype(np.int64))))
        info = DatasetInfo(name=self.name, input_shape=(1, SIDE, SIDE), num_classes=10,
                           bounds=(0.0, 1.0), family=self.family)
        return Splits(info=info, train=parts[0], test=parts[1])


class FashionMNIST(MNIST):
    """Fashion-MNIST clothing images, 1x28x28 in [0,1], from the official IDX files (gzip or
    raw; as distributed, e.g. Debian's ``dataset-fashion-mnist`` in
    ``/usr/share/datasets/fashion-mnist``, under ``fashion-mnist/`` or in torchvision's
    ``FashionMNIST/raw/``)."""

    name = "fashion-mnist"
    paper = "Xiao, Rasul & Vollgraf 2017, Fashion-MNIST (arXiv:1708.07747)"
    _tv_class = "FashionMNIST"
