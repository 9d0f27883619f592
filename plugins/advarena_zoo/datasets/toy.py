"""The two-dimensional toy sets of 001 (Fig. 2): scikit-learn's ``make_moons`` and
``make_circles``, generated with a fixed seed and min-max scaled into [0,1]."""

from __future__ import annotations

from pathlib import Path
import numpy as np

from advarena.api import Dataset, DatasetInfo, Splits
from advarena.params import param

from ._common import SPLIT_SEED, stratified_split, tensors


class _Toy2D(Dataset):
    """Shared generation, split and scaling of the 2-D toy sets."""

    family = "toy"

    n_samples: int = param(1000, ge=10, help="points generated (train + test)")
    test_fraction: float = param(0.3, gt=0.0, lt=1.0, help="fraction of points held out for test")

    def _generate(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        x, y = self._generate()
        xtr, xte, ytr, yte = stratified_split(self.name, x, y, self.test_fraction)
        # Scale with the train split's range only (no test statistics leak into the inputs);
        # test points outside it are clipped so every input lies in the declared bounds.
        lo, hi = xtr.min(axis=0), xtr.max(axis=0)
        span = np.maximum(hi - lo, 1e-12)
        xtr, xte = (np.clip((v - lo) / span, 0.0, 1.0).astype(np.float32) for v in (xtr, xte))
        info = DatasetInfo(name=self.name, input_shape=(2,), num_classes=2, bounds=(0.0, 1.0),
                           family=self.family)
        return Splits(info=info, train=tensors(xtr, ytr), test=tensors(xte, yte))


class Moons(_Toy2D):
    """Two interleaving half-moons in 2-D (sklearn make_moons), scaled to [0,1].

    Generation and split seeds are fixed (not the run seed): the same points every run.
    """

    name = "moons"
    paper = "001 Fig. 2 (toy data); scikit-learn make_moons"

    noise: float = param(0.1, ge=0.0, help="std of the Gaussian noise added to the points")

    def _generate(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import make_moons

        return make_moons(n_samples=self.n_samples, noise=self.noise, random_state=SPLIT_SEED)


class Circles(_Toy2D):
    """A small circle inside a large one in 2-D (sklearn make_circles), scaled to [0,1].

    Generation and split seeds are fixed (not the run seed): the same points every run.
    """

    name = "circles"
    paper = "001 Fig. 2 (toy data); scikit-learn make_circles"

    noise: float = param(0.05, ge=0.0, help="std of the Gaussian noise added to the points")
    factor: float = param(0.5, gt=0.0, lt=1.0, help="inner/outer circle radius ratio")

    def _generate(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import make_circles

        return make_circles(n_samples=self.n_samples, noise=self.noise, factor=self.factor,
                            random_state=SPLIT_SEED)
