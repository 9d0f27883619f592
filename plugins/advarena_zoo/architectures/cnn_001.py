"""Zantedeschi et al. 2017's CNN (the cleverhans basic CNN)."""

from __future__ import annotations

from torch import nn

from advarena.api.data import DatasetInfo
from advarena.models import ActivationFactory

from .layers import ZooArchitecture, conv_out, flat_size, scaled_kernels, tf_same_pad


def cleverhans_stem(shape: tuple[int, ...], activation: ActivationFactory, kernels: tuple[int, ...]
                    ) -> tuple[nn.Sequential, int]:
    """Conv(64, k1, stride 2, 'same') - act - Conv(128, k2, stride 2, 'valid') - act, as in
    cleverhans' ``ModelBasicCNN``. Returns the stack and the side of its output map."""
    c, h, w = shape
    k1, k2 = kernels
    pad_h, pad_w = tf_same_pad(h, k1, 2), tf_same_pad(w, k1, 2)
    side = -(-min(h, w) // 2)  # ceil: 'same' with stride 2
    k2 = min(k2, side)  # small inputs: never wider than the map
    stem = nn.Sequential(
        nn.ZeroPad2d((*pad_w, *pad_h)), nn.Conv2d(c, 64, k1, stride=2), activation(),
        nn.Conv2d(64, 128, k2, stride=2), activation())
    return stem, conv_out(side, k2, 2)


class CNN001(ZooArchitecture):
    """Zantedeschi, Nicolae & Rawat 2017, sec. 4 ("Datasets"): the simple CNN
    Conv2D(64, 8x8) - Conv2D(128, 6x6) - Conv2D(128, 5x5) - Softmax(10), ReLU.

    Layer details follow the cleverhans basic CNN the paper builds on: conv 64 8x8 stride 2
    'same' padding (TF-style, possibly asymmetric), conv 128 6x6 stride 2 'valid', conv 128 5x5
    stride 1 'valid', each followed by ``activation()``, then flatten and a linear layer to the
    logits (no softmax). MNIST 28x28 ends at 128x1x1, CIFAR 32x32 at 128x2x2.

    Small inputs (< 28 px, e.g. 8x8 digits): kernels are scaled by side/28 and rounded up
    (8, 6, 5 -> 3, 2, 2 for 8x8), each clamped to its input map, so the three convs and the
    64-128-128 widths are kept.
    """

    name = "cnn-001"
    paper = ("Zantedeschi, Nicolae, Rawat. Efficient Defenses Against Adversarial Attacks. "
             "AISec 2017, sec. 4")

    def build(self, info: DatasetInfo, activation: ActivationFactory = nn.ReLU) -> nn.Module:
        shape = self.check_input(info)
        k1, k2, k3 = scaled_kernels(min(shape[1:]), (8, 6, 5))
        stem, side = cleverhans_stem(shape, activation, (k1, k2))
        features = nn.Sequential(*stem, nn.Conv2d(128, 128, min(k3, side)), activation(),
                                 nn.Flatten())
        return nn.Sequential(*features, nn.Linear(flat_size(features, shape), info.num_classes))
