"""The Dataset contract: name, train/test tensors, input shape, classes, input bounds and the
eps-scale family that dataset-family defaults key on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

import torch

from ..params import Plugin

Family = Literal["mnist", "cifar", "toy"]


@dataclasses.dataclass
class TensorData:
    """Inputs (float, in the dataset's bounds, N x C x H x W or N x D) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor | slice) -> "TensorData":
        return TensorData(self.x[index], self.y[index])


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What models, defenses and attacks need to know about a dataset."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)
    family: Family = "mnist"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Splits:
    info: DatasetInfo
    train: TensorData
    test: TensorData


class Dataset(Plugin):
    """Base class of dataset plugins. Subclasses set ``family`` and implement :meth:`load`."""

    family: ClassVar[Family] = "mnist"
    # Whether the data comes from disk (``--data-dir``) rather than being embedded/generated.
    needs_data_dir: ClassVar[bool] = False

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        """Return the train and test splits; raise :class:`~advarena.errors.DataError` with a
        one-line fix when files are missing."""
        raise NotImplementedError
