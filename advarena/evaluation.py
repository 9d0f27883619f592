"""What a protocol sees: the defended model, the fixed evaluation examples, shared models,
prepared data, and attacks that are always run through the harness's threat-model check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .api.attack import Attack
from .api.data import DatasetInfo, TensorData
from .api.records import Measurement
from .models import predict
from .stats import bootstrap_mean, wilson
from .threat import run_checked


class EvalContext:
    """Everything one evaluate (or prepare) call needs.

    Attributes:
        model: the defended classifier (None in ``prepare``), in eval mode.
        reference: the undefended reference classifier of the same dataset, architecture, seed.
        data: the evaluation examples (the same for every defense), on ``device``.
        train: the dataset's whole training split on ``device``, the validation hold-out
            included (a protocol that needs exactly the examples a model was fitted on rebuilds
            the cut from ``splits`` and the train settings, as minimal-perturbation does).
        shared: models named by the protocol's ``shared_models``.
        prepared: what the protocol's ``prepare`` returned.
        train_records: ``{role: {"spec", "result"}}`` of the train cells read (``model``,
            ``reference``, ``shared:<name>``): training cost and history.
        splits: the dataset's full train/test splits (on the CPU).

    ``train`` and ``splits`` are the harness's cached dataset itself, not copies (a copy of a
    60,000-image training split would be the largest allocation of most cells): read them,
    never write into them. The harness fingerprints the cached dataset when it loads it and
    checks the fingerprint after every cell that was handed it; a change fails the cell and
    drops the cached copy (see :meth:`advarena.runner.Environment.check_datasets`). ``train``
    on another device than the cache's is one copy on that device.
    """

    def __init__(self, *, info: DatasetInfo, data: TensorData, train: TensorData,
                 device: torch.device, seed: int, attacks: dict[str, Attack],
                 batch_size: int, model: nn.Module | None = None,
                 reference: nn.Module | None = None, shared: dict[str, nn.Module] | None = None,
                 prepared: dict[str, Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 train_records: dict[str, dict] | None = None,
                 fresh_model: Callable[[str], nn.Module] | None = None,
                 defense_of: Callable[[str], Any] | None = None,
                 splits: Any = None) -> None:
        self.info = info
        self.data = data
        self._train_source = train
        self._train: TensorData | None = None
        self.device = device
        self.seed = seed
        self.attacks = attacks
        self.batch_size = batch_size
        self.model = model
        self.reference = reference
        self.shared = shared or {}
        self.prepared = prepared or {}
        self.progress = progress or (lambda stage, done, total: None)
        self.train_records = train_records or {}
        self._fresh_model = fresh_model
        self._defense_of = defense_of
        self._splits_source = splits

    @property
    def train(self) -> TensorData:
        if self._train is None:
            self._train = self._train_source.to(self.device)   # no copy on the same device
        return self._train

    @property
    def splits(self) -> Any:
        return self._splits_source

    def fresh_model(self, role: str = "model") -> nn.Module:
        """An untrained classifier built like the trained one of ``role`` (``model``,
        ``reference``, ``shared:<name>``): same architecture, activation and transform."""
        if self._fresh_model is None:
            raise RuntimeError("this context cannot build models")
        return self._fresh_model(role)

    def defense_of(self, role: str = "model") -> Any:
        """The configured defense plugin the model of ``role`` was trained with."""
        if self._defense_of is None:
            raise RuntimeError("this context knows no defenses")
        return self._defense_of(role)

    def attack(self, name: str) -> Attack:
        """The suite-configured instance of attack ``name``."""
        return self.attacks[name]

    def run_attack(self, attack: Attack, model: nn.Module | list[nn.Module],
                   x: torch.Tensor, y: torch.Tensor, eps: float | None = None,
                   seed: int | None = None) -> torch.Tensor:
        """Adversarial examples in batches, every batch checked against the threat model."""
        seed = self.seed if seed is None else seed
        outs = [run_checked(attack, model, x[i:i + self.batch_size], y[i:i + self.batch_size],
                            eps=eps, seed=seed + i)
                for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs) if outs else x.clone()

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask of examples ``model`` classifies correctly."""
        return predict(model, x, self.batch_size) == y


def accuracy_measurement(metric: str, mask: torch.Tensor, *, attack: str | None = None,
                         eps: float | None = None, **extra: Any) -> Measurement:
    """An accuracy with its Wilson interval; the per-example outcomes go along as a bit string
    so two records on the same examples can be compared pairwise."""
    k, n = int(mask.sum()), int(mask.numel())
    lo, hi = wilson(k, n)
    bits = "".join("1" if b else "0" for b in mask.tolist())
    return Measurement(metric, k / n if n else float("nan"), n, lo, hi, attack, eps,
                       {"outcomes": _pack(bits), **extra})


def mean_measurement(metric: str, values: torch.Tensor, *, attack: str | None = None,
                     eps: float | None = None, seed: int = 0, **extra: Any) -> Measurement:
    """A mean with its percentile-bootstrap interval."""
    v = values.detach().double().cpu().numpy()
    lo, hi = bootstrap_mean(v, seed=seed)
    return Measurement(metric, float(v.mean()), int(v.size), lo, hi, attack, eps, extra)


def _pack(bits: str) -> str:
    """Bit string -> hex (with the length, since leading zeros matter)."""
    if not bits:
        return "0:"
    return f"{len(bits)}:{int(bits, 2):x}"


def unpack_outcomes(packed: str) -> list[bool]:
    """The bits :func:`accuracy_measurement` packed; ValueError when ``packed`` is not such a
    string (no length, a negative one, not hex, or more bits than examples)."""
    if not isinstance(packed, str) or ":" not in packed:
        raise ValueError(f"not packed outcomes: {packed!r:.40}")
    n_str, hexpart = packed.split(":", 1)
    n = int(n_str)
    if n < 0:
        raise ValueError(f"negative example count in packed outcomes: {n}")
    if n == 0:
        return []
    bits = bin(int(hexpart, 16))[2:]
    if len(bits) > n:
        raise ValueError(f"packed outcomes hold more than their {n} examples")
    return [c == "1" for c in bits.zfill(n)]


def record_outcomes(record: dict[str, Any] | None) -> list[bool] | None:
    """A stored record's per-example outcomes: None when it has none, or when they cannot be
    read or disagree with its own ``n`` and ``value`` (the one reader the harness's headline
    and flags and the reports' pairing share, so that all of them refuse the same records)."""
    packed = ((record or {}).get("extra") or {}).get("outcomes")
    if packed is None:
        return None
    try:
        bits = unpack_outcomes(packed)
    except ValueError:
        return None
    value = record.get("value")
    if (len(bits) != record.get("n") or not isinstance(value, (int, float))
            or isinstance(value, bool) or (bits and abs(sum(bits) / len(bits) - value) > 1e-9)):
        return None
    return bits
