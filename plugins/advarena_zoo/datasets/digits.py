"""scikit-learn's embedded 8x8 handwritten digits (the UCI "Optical Recognition of Handwritten
Digits" test set, 1797 images, 16 grey levels), loaded with ``sklearn.datasets.load_digits``:
no files and no network needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advarena.api import Dataset, DatasetInfo, Splits
from advarena.params import param

from ._common import stratified_split, tensors


class Digits(Dataset):
    """8x8 handwritten digits from scikit-learn, scaled to [0,1]; a fixed stratified split.

    The split seed is fixed (not the run seed), so every run sees the same train/test examples.
    """

    name = "digits"
    paper = "Alpaydin & Kaynak 1998, UCI Optical Recognition of Handwritten Digits"
    family = "mnist"

    test_fraction: float = param(0.3, gt=0.0, lt=1.0, help="fraction of examples held out for test")

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        from sklearn.datasets import load_digits  # slow import; only needed to load

        bunch = load_digits()
        # Pixels are counts 0..16 of set bits in 4x4 blocks; /16 maps them onto [0,1].
        x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        xtr, xte, ytr, yte = stratified_split(self.name, x, bunch.target, self.test_fraction)
        info = DatasetInfo(name=self.name, input_shape=(1, 8, 8), num_classes=10,
                           bounds=(0.0, 1.0), family=self.family)
        return Splits(info=info, train=tensors(xtr, ytr), test=tensors(xte, yte))
