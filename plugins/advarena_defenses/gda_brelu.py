"""GDA + BReLU, the headline defense of Zantedeschi et al. 2017."""

from __future__ import annotations

from advarena.api import Defense
from advarena.params import param

from .brelu import BReLUDefense
from .gda import GDA


class GDABReLU(Defense):
    """Gaussian data augmentation on a network with bounded ReLUs.

    Paper: Zantedeschi, Nicolae, Rawat, "Efficient Defenses Against Adversarial Attacks"
    (001), sec. 3 and 4 ("when BRELU (t = 1) is used as activation function, we call this
    method GDA + BRELU"). The composition of ``gda`` and ``brelu``: their hooks, unchanged.

    Parameters:
        n (int, 10): noisy copies per example.
        sigma (float | None, None): noise std; None means 0.3 MNIST-like, 0.05 CIFAR-like.
        t (float, 1.0): BReLU saturation point.

    Example::

        advarena run --defense gda-brelu
    """

    name = "gda-brelu"
    paper = "Zantedeschi et al. 2017 (001) sec. 3-4"
    kind = "composition"

    n: int = param(10, ge=1, help="noisy copies per training example")
    sigma: float | None = param(None, gt=0, help="noise std (None: 0.3 MNIST-like, 0.05 CIFAR-like)")
    t: float = param(1.0, gt=0, help="saturation point of the bounded ReLU")

    def parts(self):
        return [GDA(n=self.n, sigma=self.sigma), BReLUDefense(t=self.t)]

    def activation(self, info):
        return self.parts()[1].activation(info)

    def augment(self, data, info, generator):
        return self.parts()[0].augment(data, info, generator)
