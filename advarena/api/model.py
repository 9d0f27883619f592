"""The Model contract: a ready-trained classifier that a plugin package publishes by name (a
model zoo entry), evaluated with ``advarena evaluate --model NAME`` like any external model:
through every protocol of the suite, never trained by advarena."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn

from ..params import Plugin
from .data import DatasetInfo


class Model(Plugin):
    """Base class of published models.

    Class attributes: ``name``, ``paper``, ``dataset`` (the dataset name it was trained on),
    ``architecture`` (a short description shown on the leaderboard) and optionally ``sha256``,
    the expected SHA-256 of the weights, checked before they are loaded.

    ``build(info)`` returns the untrained network (an ``nn.Module`` mapping inputs in
    ``info.bounds`` to logits, or an :class:`advarena.models.Classifier`); ``weights()`` returns
    its state dict as a safetensors file (a path or the bytes). Weights are never unpickled.
    """

    dataset: ClassVar[str] = ""
    architecture: ClassVar[str] = "external"
    sha256: ClassVar[str] = ""

    def build(self, info: DatasetInfo) -> nn.Module:
        raise NotImplementedError

    def weights(self) -> str | Path | bytes:
        raise NotImplementedError
