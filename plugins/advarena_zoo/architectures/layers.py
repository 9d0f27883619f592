"""Shared pieces of the architecture plugins: input-kind checks, sizing helpers, a base class."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from advarena.api.architecture import Architecture
from advarena.api.data import DatasetInfo
from advarena.errors import ParameterError
from advarena.models import ActivationFactory

# Input kinds an architecture can declare: "image" is (C, H, W), "vector" is (D,) (2-D toy data).
IMAGE, VECTOR = "image", "vector"


def input_kind(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return IMAGE
    if len(shape) == 1:
        return VECTOR
    raise ParameterError(f"unsupported input shape {tuple(shape)}: expected (C, H, W) or (D,)")


class ZooArchitecture(Architecture):
    """Base of the zoo's architectures: declares which input kinds ``build`` accepts."""

    inputs: ClassVar[tuple[str, ...]] = (IMAGE,)

    def check_input(self, info: DatasetInfo) -> tuple[int, ...]:
        kind = input_kind(info.input_shape)
        if kind not in self.inputs:
            raise ParameterError(
                f"architecture '{self.name}' takes {' or '.join(self.inputs)} inputs; dataset "
                f"'{info.name}' has shape {tuple(info.input_shape)}")
        return tuple(info.input_shape)


def flat_size(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Features per example after ``module``, found by a dummy forward (sizes the first dense
    layer for whatever input the dataset has)."""
    with torch.no_grad():
        return int(module(torch.zeros(1, *shape)).flatten(1).shape[1])


def min_input(ops: list[tuple[str, int]]) -> int:
    """Smallest side that survives ``ops`` (("conv", k) valid convs, ("pool", k) pools) with at
    least one pixel left."""
    size = 1
    for kind, k in reversed(ops):
        size = size + k - 1 if kind == "conv" else size * k
    return size


def auto_padding(size: int, ops: list[tuple[str, int]]) -> list[int]:
    """Padding per conv in ``ops``: 0 ('valid', as in the papers) unless a valid conv would leave
    too few pixels for the layers after it; then k // 2 ('same'). Inputs as large as the papers'
    get the papers' valid convs; small ones (digits 8x8) keep every layer by padding early."""
    pads = []
    for i, (kind, k) in enumerate(ops):
        if kind == "conv":
            pad = 0 if size - k + 1 >= min_input(ops[i + 1:]) else k // 2
            size = size - k + 1 + 2 * pad
            pads.append(pad)
        else:
            size //= k
    return pads


def tf_same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding (before, after): output ceil(size / stride), extra pixel
    after when the total is odd (the cleverhans models are Keras/TF)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv_out(size: int, k: int, stride: int = 1, pad: int = 0) -> int:
    return (size + 2 * pad - k) // stride + 1


def scaled_kernels(side: int, kernels: tuple[int, ...], ref: int = 28) -> tuple[int, ...]:
    """The papers' kernel sizes for inputs at least ``ref`` pixels wide; for smaller inputs each
    kernel is scaled by side / ref and rounded up (8x8 digits: 8, 6, 5 -> 3, 2, 2), so every
    layer is kept. Callers still clamp kernels to the map they see."""
    if side >= ref:
        return kernels
    return tuple(max(1, math.ceil(k * side / ref)) for k in kernels)


def mlp(in_features: int, widths: tuple[int, ...], num_classes: int,
        activation: ActivationFactory) -> nn.Sequential:
    """Flatten - (Linear - act) per hidden width - Linear to the logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers += [nn.Linear(in_features, width), activation()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))
