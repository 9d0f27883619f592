"""Metric records: one number with what it rests on and where it came from."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# The flat keys every exported record has (``advarena run --output``), in order.
EXPORT_KEYS = ("dataset", "architecture", "defense", "params", "seed", "protocol", "attack",
               "eps", "metric", "value", "n", "ci_low", "ci_high")


@dataclasses.dataclass
class Measurement:
    """What a protocol returns: the harness adds dataset, model, defense, seed and provenance.

    ``ci_low``/``ci_high`` bound ``value`` (Wilson for accuracies, bootstrap for means); ``n`` is
    the number of examples (or runs) it rests on. ``extra`` holds JSON-ready detail such as
    per-example outcomes for paired comparisons.
    """

    metric: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    attack: str | None = None
    eps: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.value = float(self.value)
        self.n = int(self.n)
        for name in ("ci_low", "ci_high", "eps"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, float(v))
        if math.isnan(self.value):
            raise ValueError(f"metric {self.metric} is NaN")
