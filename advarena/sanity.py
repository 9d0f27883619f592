"""Sanity flags for one defended model, after Carlini et al., "On Evaluating Adversarial
Robustness" (2019), sec. 5-7: checks that an evaluation is not fooling itself. A flagged defense
keeps its leaderboard row, marked.

Each flag is a metric record of protocol ``sanity`` with value 1 (raised) or 0 (checked and
fine) and a ``detail`` sentence; a check whose inputs were not measured is not recorded.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .api.records import Measurement

# Thresholds, with why.
LARGE_EPS_MAX_ACCURACY = 0.10  # at the sweep's largest eps an honest attack should win
MINIMAL_MIN_SUCCESS = 0.95  # minimal attacks are unbounded: they should (almost) always succeed
VANISHING_GRADIENT_RATIO = 0.01  # input gradients 100x smaller than the reference's


def _above(a: dict, b: dict) -> bool:
    """a's interval lies entirely above b's (a significant difference)."""
    return (a.get("ci_low") is not None and b.get("ci_high") is not None
            and a["ci_low"] > b["ci_high"])


def compute_flags(records: list[dict[str, Any]], reference: list[dict[str, Any]],
                  single_step: set[str]) -> list[Measurement]:
    """Flags from one model's metric records (``reference``: the reference model's records,
    ``single_step``: names of single-step attacks)."""
    flags: list[Measurement] = []

    def flag(name: str, raised: bool, detail: str) -> None:
        flags.append(Measurement(f"flag_{name}", 1.0 if raised else 0.0, 1,
                                 extra={"detail": detail}))

    wb = [r for r in records if r["protocol"] == "white-box"]
    worst_by_norm: dict[str, list[dict]] = defaultdict(list)
    for r in sorted((r for r in wb if r["metric"] == "worst_case_accuracy"),
                    key=lambda r: r["eps"]):
        worst_by_norm[r["extra"].get("norm", "linf")].append(r)
    if worst_by_norm:
        tops = [w[-1] for w in worst_by_norm.values()]
        unbroken = [t for t in tops if t["value"] > LARGE_EPS_MAX_ACCURACY]
        flag("large_eps_not_broken", bool(unbroken), "; ".join(
            f"worst-case accuracy {t['value']:.3f} at the largest {t['extra'].get('norm')} eps "
            f"{t['eps']:g} (expected <= {LARGE_EPS_MAX_ACCURACY})" for t in (unbroken or tops)))
        rising = [(a, b) for w in worst_by_norm.values() for a, b in zip(w, w[1:])
                  if _above(b, a)]
        flag("accuracy_rises_with_eps", bool(rising),
             "worst-case accuracy rises significantly from eps " + ", ".join(
                 f"{a['eps']:g} to {b['eps']:g}" for a, b in rising) if rising else
             "worst-case accuracy never rises significantly with eps")
    # Compared within one norm: eps means different things across norms.
    per_eps: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in wb:
        if r["metric"] == "robust_accuracy":
            per_eps[(r["extra"].get("norm"), r["eps"])][r["attack"]] = r
    if per_eps and single_step:
        bad = []
        for (_, eps), by_attack in per_eps.items():
            singles = [r for a, r in by_attack.items() if a in single_step]
            iters = [r for a, r in by_attack.items() if a not in single_step]
            bad += [f"{i['attack']} > {s['attack']} at eps {eps:g}"
                    for i in iters for s in singles if _above(i, s)]
        if any(per_eps[e] for e in per_eps):
            flag("iterative_weaker_than_single_step", bool(bad),
                 "; ".join(bad) if bad else "iterative attacks are at least as strong as "
                 "single-step ones")
    transfer = {r["eps"]: r for r in records if r["protocol"] == "black-box"
                and r["metric"] == "worst_transfer_accuracy"}
    wb_by_eps = {r["eps"]: r for r in worst_by_norm.get("linf", [])}
    shared = sorted(set(transfer) & set(wb_by_eps))
    if shared:
        bad = [f"eps {e:g}" for e in shared if _above(wb_by_eps[e], transfer[e])]
        flag("transfer_stronger_than_white_box", bool(bad),
             "black-box transfer beats white-box at " + ", ".join(bad) if bad else
             "white-box is at least as strong as transfer")
    succ = [r for r in records if r["protocol"] == "minimal-perturbation"
            and r["metric"] == "success_rate"]
    if succ:
        bad = [f"{r['attack']} {r['value']:.3f}" for r in succ
               if r["value"] < MINIMAL_MIN_SUCCESS * _clean_accuracy(records, r)]
        flag("minimal_attacks_fail", bool(bad),
             "minimal attacks succeed on too few examples: " + ", ".join(bad) if bad else
             "minimal attacks succeed on (almost) every correctly classified example")
    own = _metric(records, "loss-sensitivity", "loss_sensitivity")
    ref = _metric(reference, "loss-sensitivity", "loss_sensitivity")
    if own is not None and ref is not None and ref["value"] > 0:
        ratio = own["value"] / ref["value"]
        flag("vanishing_gradients", ratio < VANISHING_GRADIENT_RATIO,
             f"input-gradient norm is {ratio:.3g} x the undefended reference's")
    return flags


def _metric(records, protocol, metric):
    return next((r for r in records if r["protocol"] == protocol and r["metric"] == metric),
                None)


def _clean_accuracy(records, like) -> float:
    """Minimal attacks are scored on correctly classified examples only."""
    clean = _metric(records, "white-box", "accuracy")
    return clean["value"] if clean else 1.0
