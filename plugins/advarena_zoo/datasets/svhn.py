"""SVHN, the Street View House Numbers cropped-digit format (Netzer et al. 2011), read from the
official MATLAB files in torchvision's layout: ``<data_dir>/train_32x32.mat`` and
``<data_dir>/test_32x32.mat`` (http://ufldl.stanford.edu/housenumbers/), each with ``X``
(32 x 32 x 3 x N uint8) and ``y`` (N x 1, digit 0 stored as 10).

We read the files with ``scipy.io.loadmat`` exactly as ``torchvision.datasets.SVHN`` does (same
transpose, same 10 -> 0 relabelling) rather than through that class, because it refuses any
file whose md5 differs from the official one, e.g. a re-saved subset. ``loadmat`` only parses
arrays; it runs no code from the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advarena.api import DatasetInfo, Splits, TensorData
from advarena.errors import DataError

from ._common import DiskDataset, missing, unreadable

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


class SVHN(DiskDataset):
    """SVHN house-number digits, 3x32x32 in [0,1], from the official .mat files."""

    name = "svhn"
    paper = "Netzer et al. 2011, Reading Digits in Natural Images with Unsupervised Feature " \
            "Learning"
    family = "cifar"

    def _read(self, path: Path, k: int | None) -> TensorData:
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(path))
            x, y = mat["X"], mat["y"]
        except Exception as exc:  # not a v5 .mat file, or no X / y in it
            raise unreadable(self.name, path, exc) from exc
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
            raise DataError(f"{self.name}: {path} is not an SVHN file (want X 32x32x3xN, y Nx1)")
        # Keep the first k before the transpose/convert so a limit also saves the copy.
        x = self._first(np.transpose(x, (3, 2, 0, 1)), k)  # H W C N -> N C H W, as torchvision
        y = self._first(y.astype(np.int64).reshape(-1), k)
        y[y == 10] = 0  # SVHN stores digit 0 as class 10; torchvision maps it back to 0
        x = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
        return TensorData(x, torch.from_numpy(y))

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        if download and data_dir is not None:
            from torchvision.datasets import SVHN as TV_SVHN
            from torchvision.datasets.utils import download_url

            for split, fname in FILES.items():
                if not (Path(data_dir) / fname).is_file():
                    url, _, md5 = TV_SVHN.split_list[split]
                    try:
                        download_url(url, str(data_dir), fname, md5)
                    except Exception as exc:
                        raise unreadable(self.name, url, exc, verb="download") from exc
        absent = [f for f in FILES.values()
                  if data_dir is None or not (Path(data_dir) / f).is_file()]
        if absent:
            raise missing(self.name, data_dir, "SVHN files", absent[0])
        info = DatasetInfo(name=self.name, input_shape=(3, 32, 32), num_classes=10,
                           bounds=(0.0, 1.0), family=self.family)
        root = Path(data_dir)
        return Splits(info=info, train=self._read(root / FILES["train"], self.limit_train),
                      test=self._read(root / FILES["test"], self.limit_test))
