"""Training-time cost protocol (000 Table I)."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import torch

from ..api import Measurement, Protocol
from ..api.data import TensorData
from ..evaluation import EvalContext
from ..params import param
from ..trainer import PASS_UNIT, SWEEP_UNIT, TrainConfig, TrainingSession


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(low, high, coverage)``: the distribution-free interval ``[v_(j), v_(n+1-j)]`` of order
    statistics for the median of ``values`` (the coverage of ``[v_(j), v_(n+1-j)]`` is
    ``1 - 2 P(Binomial(n, 1/2) < j)``), with the largest ``j`` whose coverage is at least
    ``level``; with too few values for ``level`` (fewer than 6 for 95%), the range
    ``[min, max]`` and its lower coverage."""
    v = sorted(values)
    n = len(v)

    def coverage(j: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j)) / 2.0 ** n

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= level:
        j += 1
    return v[j - 1], v[n - j], coverage(j)


class TrainingCost(Protocol):
    """What a defense adds to training: median epoch time, time until validation-accuracy
    thresholds, passes per example, and the overhead against the undefended reference.

    Paper: Seiler et al. (000) Table I ("median time p. epoch", "time until 50/60/70% acc.") and
    sec. IV (extra forward and backward passes). The pass counts and the training curve come from
    the defended model's train cell (measured by the shared trainer's hooks).

    The overhead is measured inside this cell, so it is always "the same run, the same device",
    even when the trained models were reused from the store: the reference's and the defense's
    full ``fit`` (every stage) run for one epoch on the same ``timing_examples`` training
    examples, interleaved ``timing_repeats`` times in alternating order (reference first in
    even repeats, the defense first in odd ones, so a drift of the machine's speed falls on
    both alike), after one untimed warm-up of each. ``overhead`` is the median of the
    per-repeat ratios (defense / reference of the same repeat: a slow moment spoils one ratio,
    not the statistic), with the distribution-free order-statistic interval for a median
    (:func:`median_interval`; its coverage, at least 95% from 9 repeats, is in ``extra``).
    ``total_overhead`` compares the stored train cells' total training time and says in
    ``extra`` whether they ran on one device.

    Pass counts are stored in two units (``extra["unit"]``): ``forward_per_example`` and
    ``backward_per_example`` in example-passes through the network, and
    ``backward_sweeps_per_example`` in 000 Table I's sweeps (see :mod:`advarena.trainer`).

    Thresholds are fractions of the reachable accuracy, taken as the reference model's best
    validation accuracy (000 uses 50/60/70% on a 100-class problem); a threshold never reached
    gets no record.
    """

    name = "training-cost"
    paper = "000 Table I and sec. IV"
    needs_training = True

    thresholds: tuple[float, ...] = param((0.5, 0.6, 0.7), gt=0, le=1,
                                          help="fractions of the reference's best val. accuracy")
    timing_examples: int = param(512, ge=1, help="training examples timed per repeat")
    timing_repeats: int = param(5, ge=1, help="interleaved timing repeats")

    def evaluate(self, ctx: EvalContext) -> list[Measurement]:
        cost = ctx.train_records["model"]["result"]["cost"]
        ref_record = ctx.train_records["reference"]["result"]
        n_epochs = cost["epochs"]
        out = [Measurement(m, cost[m], n_epochs) for m in (
            "median_epoch_seconds", "total_seconds", "data_copies")]
        pass_unit = cost.get("pass_unit", PASS_UNIT)
        for m in ("forward_per_example", "backward_per_example", "passes_per_example"):
            out.append(Measurement(m, cost[m], n_epochs, extra={"unit": pass_unit}))
        if "backward_sweeps_per_example" in cost:  # records trained before the unit existed
            out.append(Measurement("backward_sweeps_per_example",
                                   cost["backward_sweeps_per_example"], n_epochs,
                                   extra={"unit": cost.get("sweep_unit", SWEEP_UNIT)}))
        curve = cost["val_accuracy_curve"]
        out.append(Measurement("final_val_accuracy", cost["final_val_accuracy"], n_epochs,
                               extra={"curve": curve}))
        reachable = max((a for _, a in ref_record["cost"]["val_accuracy_curve"]), default=0.0)
        for t in self.thresholds:
            target = t * reachable
            reached = next((sec for sec, acc in curve if acc >= target), None)
            if reached is not None:
                out.append(Measurement(f"time_to_{round(100 * t)}pct", reached, n_epochs,
                                       extra={"threshold": t, "target_accuracy": target}))
        out.append(self._same_cell_overhead(ctx))
        ref_total = ref_record["cost"]["total_seconds"]
        if ref_total > 0:
            out.append(Measurement("total_overhead", cost["total_seconds"] / ref_total, 1,
                                   extra={"same_device": ctx.train_records["model"].get(
                                       "device") == ctx.train_records["reference"].get(
                                       "device")}))
        return out

    def _same_cell_overhead(self, ctx: EvalContext) -> Measurement:
        spec = ctx.train_records["model"]["spec"]
        config = dataclasses.replace(TrainConfig(**spec["train"]), epochs=1)
        train = ctx.splits.train
        gen = torch.Generator().manual_seed(ctx.seed)
        idx = torch.randperm(len(train), generator=gen)[:self.timing_examples]
        subset = train.subset(idx)
        empty = TensorData(subset.x[:0], subset.y[:0])
        times: dict[str, list[float]] = {"reference": [], "model": []}
        # Repeat -1 is a warm-up (allocator, kernel selection, lazy imports), not timed; the
        # order alternates so that a drift in the machine's speed does not favour one role.
        for repeat in range(-1, self.timing_repeats):
            order = ("reference", "model") if repeat % 2 == 0 else ("model", "reference")
            for role in order:
                model = ctx.fresh_model(role)
                defense = ctx.defense_of(role)
                session = TrainingSession(
                    model.net, ctx.info, subset, empty, config, defense, device=ctx.device,
                    seed=ctx.seed + repeat + 1, transform=model.transform,
                    reference=ctx.reference if defense.needs_reference else None)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                start = time.perf_counter()
                defense.fit(session)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                if repeat >= 0:
                    times[role].append(time.perf_counter() - start)
            ctx.progress("timing", repeat + 1, self.timing_repeats)
        ratios = [m / r for m, r in zip(times["model"], times["reference"])]
        low, high, covered = median_interval(ratios)
        return Measurement("overhead", statistics.median(ratios), self.timing_repeats, low, high,
                           extra={"seconds": times, "ratios": ratios, "examples": len(subset),
                                  "statistic": "median of per-repeat ratios",
                                  "interval": "order statistics of the median",
                                  "coverage": covered, "device": str(ctx.device)})
