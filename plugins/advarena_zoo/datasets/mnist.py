"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017) read from the raw IDX files
in torchvision's on-disk layout, ``<data_dir>/MNIST/raw/`` and ``<data_dir>/FashionMNIST/raw/``
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``), through ``torchvision.datasets.MNIST`` / ``FashionMNIST``. The IDX
format is raw big-endian arrays (http://yann.lecun.com/exdb/mnist/), so reading it is safe."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from advarena.api import DatasetInfo, Splits, TensorData

from ._common import DiskDataset, missing, unreadable

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class MNIST(DiskDataset):
    """MNIST handwritten digits, 1x28x28 in [0,1], from torchvision's raw IDX files."""

    name = "mnist"
    paper = "LeCun, Bottou, Bengio & Haffner 1998, Gradient-based learning (Proc. IEEE)"
    family = "mnist"
    # torchvision's class; its name is also the folder under data_dir.
    _tv_class: ClassVar[str] = "MNIST"

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        import torchvision.datasets  # imported here: slow, and only needed to load

        folder = self._tv_class
        reader = getattr(torchvision.datasets, folder)
        raw = Path(data_dir) / folder / "raw" if data_dir is not None else None
        absent = [f for f in RAW_FILES if raw is None or not (raw / f).is_file()]
        if data_dir is None or (absent and not download):
            expected = f"{folder}/raw/{absent[0]}"
            raise missing(self.name, data_dir, f"{folder} files", expected)
        parts = []
        for train in (True, False):
            try:
                ds = reader(str(data_dir), train=train, download=download)
            except Exception as exc:  # torchvision reports bad/failed files with asserts too
                raise unreadable(self.name, raw, exc) from exc
            k = self.limit_train if train else self.limit_test
            x = self._first(ds.data, k).to(torch.float32).div_(255.0).unsqueeze(1)
            parts.append(TensorData(x, self._first(ds.targets, k).to(torch.int64)))
        info = DatasetInfo(name=self.name, input_shape=(1, 28, 28), num_classes=10,
                           bounds=(0.0, 1.0), family=self.family)
        return Splits(info=info, train=parts[0], test=parts[1])


class FashionMNIST(MNIST):
    """Fashion-MNIST clothing images, 1x28x28 in [0,1], from torchvision's raw IDX files."""

    name = "fashion-mnist"
    paper = "Xiao, Rasul & Vollgraf 2017, Fashion-MNIST (arXiv:1708.07747)"
    _tv_class = "FashionMNIST"
