"""Seiler et al.'s base model: VGG13 with batch norm and global average pooling."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory
from advarena.params import param

from .layers import ZooArchitecture


class VGG13BNGAP(ZooArchitecture):
    """Seiler, Trautmann & Kerschke, sec. V-B ("Models"): a VGGNet (Simonyan & Zisserman 2015)
    "modified ... by using a Global-Average-Pooling layer and extended each CNN layer with a
    Batch Normalization layer"; VGG13 per Tables II-III.

    Layers: VGG13's five stages of two 3x3 convs (pad 1) with w, 2w, 4w, 8w, 8w channels
    (w = ``width``, 64 in VGG13), each conv followed by BatchNorm and ``activation()``, a 2x2
    max-pool after each stage, then global average pooling and one linear layer to the logits.
    Guess: the paper does not say whether dense layers remain after the pooling; we read "GAP
    instead of the dense head" and keep only the final classifier.

    Sizing: 32x32 (CIFAR) ends at 1x1 after the fifth pool, 128x128 (000's ILSVRC crops) at
    4x4. For smaller inputs a pool is skipped once the map is 1x1 (digits 8x8: the last two),
    so all ten convs are kept.
    """

    name = "vgg13-bn-gap"
    paper = ("Seiler, Trautmann, Kerschke. Enhancing Resilience of Deep Learning Networks by "
             "Means of Transferable Adversaries. Sec. V-B")

    width: int = param(64, help="channels of the first stage (VGG13: 64); later stages 2x, 4x, "
                               "8x, 8x", ge=1)

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        c, h, w = self.check_input(info)
        side = min(h, w)
        layers: list[nn.Module] = []
        for mult in (1, 2, 4, 8, 8):
            for _ in range(2):
                out = self.width * mult
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           activation()]
                c = out
            if side >= 2:  # small inputs: no pooling below 1x1
                layers.append(nn.MaxPool2d(2))
                side //= 2
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(c, info.num_classes))
