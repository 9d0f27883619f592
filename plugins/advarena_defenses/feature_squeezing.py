"""Feature squeezing (Xu, Evans, Qi 2018), as evaluated by Zantedeschi et al. 2017 (001)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advarena.api import Defense
from advarena.errors import ParameterError
from advarena.models import Classifier, InputTransform
from advarena.params import param

# 001 sec. 4: "reducing the color depth to 1 bit for MNIST and 3 bits for CIFAR10, as the
# authors suggested in Xu et al." (Xu et al. themselves settle on 5 bits for CIFAR-10; advarena
# follows 001 / METHODS.md). No paper squeezes the 2-D toy sets; 3 bits is our choice there.
BITS_BY_FAMILY = {"mnist": 1, "cifar": 3, "toy": 3}


class Squeezer(InputTransform):
    """Median filter (optional) then bit-depth reduction to ``bits`` bits.

    Bit depth: ``u = (x - lo) / (hi - lo)``, ``round(u * (2^bits - 1)) / (2^bits - 1)``, mapped
    back into the box, so the output takes at most ``2^bits`` values (all of them on varied
    inputs). The median filter (Xu et al.'s "local smoothing") slides a ``median x median``
    window over each channel with reflect padding (for even windows the extra row/column of
    padding is on the bottom/right) and takes the lower middle value for even windows, so its
    outputs are input values. Bit-depth reduction comes last, so the output has at most
    ``2^bits`` levels with or without the filter.

    Not differentiable (rounding): the classifier attacks it through BPDA.
    """

    differentiable = False

    def __init__(self, bits: int, median: int, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.bits = int(bits)
        self.median = int(median)
        self.lo, self.hi = float(bounds[0]), float(bounds[1])

    def extra_repr(self) -> str:
        return f"bits={self.bits}, median={self.median}, bounds=({self.lo}, {self.hi})"

    def levels(self) -> int:
        return 2 ** self.bits

    def median_filter(self, x: torch.Tensor) -> torch.Tensor:
        k = self.median
        if k <= 1:
            return x
        n, c, h, w = x.shape
        pads = ((k - 1) // 2, k // 2)
        mode = "reflect" if max(pads) < min(h, w) else "replicate"
        padded = F.pad(x, (pads[0], pads[1], pads[0], pads[1]), mode=mode)
        patches = F.unfold(padded, k)  # n x (c*k*k) x (h*w)
        patches = patches.view(n, c, k * k, h * w)
        return patches.median(dim=2).values.view(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.median > 1:
            x = self.median_filter(x)
        span = self.hi - self.lo
        top = self.levels() - 1
        u = ((x - self.lo) / span).clamp(0.0, 1.0)
        return torch.round(u * top) / top * span + self.lo


class FeatureSqueezing(Defense):
    """Feature squeezing: reduce the colour depth (and optionally median-smooth) every input
    before the classifier sees it.

    Paper: Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
    Networks" (NDSS 2018; arXiv 1704.01155), evaluated as a defense by Zantedeschi, Nicolae,
    Rawat (001) sec. 4: "reducing the color depth to 1 bit for MNIST and 3 bits for CIFAR10".
    Note: Xu et al. recommend 5 bits for CIFAR-10; advarena follows 001 and METHODS.md (3 bits).
    Xu et al. use the squeezers for detection (comparing predictions); here, as in 001, the
    squeezed input is simply classified.

    Kind: input transform (:class:`Squeezer`, no parameters) inside the classifier. It is not
    differentiable, so white-box attacks go through it with BPDA (forward through the squeezer,
    backward as the identity; see :class:`advarena.models.Classifier`).

    Training (a choice, 001 does not say): by default the network is trained on squeezed inputs
    (the deployed classifier, squeezer included, is what the trainer optimises and validates), so
    the network is not asked to classify 1-bit digits it never saw; ``train_squeezed=False`` is
    Xu et al.'s setting (plain training, the squeezer added only at test time). The loss is
    whatever the (composed) defense says, plain cross-entropy alone.

    Cost: as ``none``, 1 forward + 1 backward pass per example, plus the squeezer's elementwise
    work (and the median filter's window sort) on every forward pass, training and inference.

    Parameters:
        bits (int | None, None): colour depth in bits; None means 1 MNIST-like, 3 CIFAR-like
            (3 for the toy sets, our choice).
        median (int, 0): median-filter window side (0 or 1: off); Xu et al. use 2 (MNIST) and
            2 or 3 (CIFAR-10). Image inputs only.
        train_squeezed (bool, True): train the network on squeezed inputs.

    Example::

        advarena run --defense feature-squeezing
    """

    name = "feature-squeezing"
    paper = "Xu, Evans, Qi 2018 (arXiv 1704.01155); evaluated in 001 sec. 4"
    kind = "input transform"

    bits: int | None = param(None, ge=1, le=16,
                             help="colour depth in bits (None: 1 MNIST-like, 3 CIFAR-like)")
    median: int = param(0, ge=0, help="median filter window side (0: off)")
    train_squeezed: bool = param(True, help="train the network on squeezed inputs")

    def bits_for(self, info) -> int:
        return self.bits if self.bits is not None else BITS_BY_FAMILY[info.family]

    def input_transform(self, info):
        if self.median > 1 and len(info.input_shape) != 3:
            raise ParameterError(f"{self.name}: median filtering needs image inputs (C x H x W), "
                                 f"dataset {info.name} has shape {info.input_shape}")
        return Squeezer(self.bits_for(info), self.median, info.bounds)

    def fit(self, session) -> None:
        if session.transform is None:
            session.transform = self.input_transform(session.info).to(session.device)
        if not self.train_squeezed:
            session.train()
            return
        # The deployed classifier (squeezer in front of the network) is what gets trained; the
        # squeezer has no parameters, so only the network's weights change.
        deployed = Classifier(session.model, session.info.bounds, session.transform)
        session.train(model=deployed)
