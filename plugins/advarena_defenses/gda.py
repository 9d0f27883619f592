"""Gaussian data augmentation (Zantedeschi et al. 2017, sec. 3.2)."""

from __future__ import annotations

import torch

from advarena.api import Defense, TensorData
from advarena.params import param

# 001 sec. 4: sigma 0.3 on MNIST, 0.05 on CIFAR-10; the toy study (Fig. 2) uses 0.3.
SIGMA_BY_FAMILY = {"mnist": 0.3, "cifar": 0.05, "toy": 0.3}


def gaussian_copies(data: TensorData, n: int, sigma: float, bounds: tuple[float, float],
                    generator: torch.Generator) -> TensorData:
    """The originals followed by ``n`` noisy copies ``clip(x + N(0, sigma^2))`` of each."""
    reps = data.x.unsqueeze(0).expand(n, *data.x.shape)
    noise = torch.randn(reps.shape, generator=generator, device=data.x.device,
                        dtype=data.x.dtype)
    noisy = (reps + sigma * noise).clamp(*bounds).reshape(-1, *data.x.shape[1:])
    return TensorData(torch.cat([data.x, noisy]), data.y.repeat(n + 1))


class GDA(Defense):
    """Gaussian data augmentation: train on the data plus N noisy copies of every example.

    Paper: Zantedeschi, Nicolae, Rawat, "Efficient Defenses Against Adversarial Attacks"
    (001), sec. 3.2, a Monte Carlo approximation of
    ``min E_{(x,y)} E_{dx ~ N(0, sigma^2)} J(x + dx, y)``; sec. 4 draws "ten noisy samples for
    each original one" and clips them into the input domain.

    Kind: training data. The copies are drawn once before training (a fixed augmented set, as
    the paper describes), so an epoch visits N+1 copies of the data at 1 forward + 1 backward
    pass each.

    Parameters:
        n (int, 10): noisy copies per example.
        sigma (float | None, None): noise standard deviation; None means the paper's value for
            the dataset family (0.3 MNIST-like, 0.05 CIFAR-like).

    Example::

        advarena run --defense gda
    """

    name = "gda"
    aliases = ("gda-relu",)
    paper = "Zantedeschi et al. 2017 (001) sec. 3.2"
    kind = "training data"

    n: int = param(10, ge=1, help="noisy copies per training example")
    sigma: float | None = param(None, gt=0, help="noise std (None: 0.3 MNIST-like, 0.05 CIFAR-like)")

    def sigma_for(self, info) -> float:
        return self.sigma if self.sigma is not None else SIGMA_BY_FAMILY[info.family]

    def augment(self, data, info, generator):
        return gaussian_copies(data, self.n, self.sigma_for(info), info.bounds, generator)
