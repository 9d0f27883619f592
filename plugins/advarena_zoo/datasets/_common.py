"""Helpers shared by the dataset plugins: the one-line "data missing" error, the fixed
stratified split of the embedded/generated sets, and the ``limit_*`` parameters of the on-disk
sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from advarena.api import Dataset, TensorData
from advarena.errors import DataError, ParameterError
from advarena.params import param

# The split (and the toy sets' generation) use this seed, never the run seed: every run, seed
# and machine then sees the very same train and test examples, so results stay comparable.
SPLIT_SEED = 0


def missing(name: str, data_dir: Path | None, what: str, expected: str, *,
            can_download: bool = True) -> DataError:
    """The one-line error for absent files: which dataset, where we looked, what to pass."""
    if data_dir is None:
        fix = "pass --data-dir DIR pointing at them"
        if can_download:
            fix += ", or --data-dir DIR --download to fetch them there"
        return DataError(f"{name}: no data directory given (it reads {what} from "
                         f"DIR/{expected}); {fix}")
    fix = "pass --data-dir DIR pointing at them" + (
        ", or add --download to fetch them" if can_download else "")
    return DataError(f"{name}: no {what} under {data_dir} (expected {expected}); {fix}")


def unreadable(name: str, what: object, exc: BaseException, *, verb: str = "read") -> DataError:
    """Wrap a reader's exception (often multi-line, sometimes a bare assert) into one line."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(f"{name}: cannot {verb} {what}: {detail}")


def stratified_split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified split (same every call; see :data:`SPLIT_SEED`)."""
    from sklearn.model_selection import train_test_split  # slow import; only needed to load

    try:
        return train_test_split(x, y, test_size=test_fraction, stratify=y,
                                random_state=SPLIT_SEED)
    except ValueError as exc:  # e.g. too few examples for every class on both sides
        raise ParameterError(f"{name}: cannot split {len(y)} examples with test_fraction="
                             f"{test_fraction}: {exc}") from None


def tensors(x: np.ndarray | torch.Tensor, y: Any) -> TensorData:
    """float32 inputs and int64 labels, the contract's dtypes."""
    return TensorData(torch.as_tensor(x, dtype=torch.float32),
                      torch.as_tensor(np.asarray(y), dtype=torch.int64))


class DiskDataset(Dataset):
    """Base of the datasets read from ``--data-dir``: adds the ``limit_*`` parameters."""

    needs_data_dir = True

    limit_train: int | None = param(None, ge=1, help="keep only the first k training examples")
    limit_test: int | None = param(None, ge=1, help="keep only the first k test examples")

    @staticmethod
    def _first(seq: Any, k: int | None) -> Any:
        return seq if k is None else seq[:k]
