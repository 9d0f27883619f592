"""Sanity flags for one defended model, after Carlini et al., "On Evaluating Adversarial
Robustness" (2019), sec. 4-5 and its checklist, and the flags of AutoAttack (Croce and Hein
2020): checks that an evaluation is not fooling itself. A flagged defense keeps its leaderboard
row, marked, and is not ranked above an unflagged row it does not clear (see
:mod:`advarena.report.leaderboard`).

Each flag is a metric record of protocol ``sanity`` with value 1 (raised) or 0 (checked and
fine), a ``detail`` sentence saying what was seen and a short ``summary`` for the badge. A check
whose inputs were not measured is not recorded (neither raised nor passed).

The thresholds were calibrated on the quick suite (digits, cnn-001, 300 examples, seed 0); the
numbers seen are in the comment of each threshold. Honest models there: ``none``, ``brelu``,
``gda-brelu``, ``fgsm-at``, ``pgd-at``, ``e2sad`` (no flag may fire); masked ones:
``distillation`` (T = 100), ``none`` with its logits scaled by 100 and an identity transform with
NaN gradients (each must raise one).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .api.records import Measurement
from .evaluation import record_outcomes as _bits
from .stats import mcnemar_exact

# Thresholds, with why (calibration numbers: quick suite, see the module docstring).
# Zero-or-non-finite input gradients among correctly classified examples. A float32 softmax
# makes the cross-entropy gradient exactly zero only when every other logit is ~100 below the
# true one, which honest training does not reach. Quick suite: 0.0% on none, brelu, fgsm-at,
# ifgsm-at, pgd-at, e2sad, 0.7% on gda-brelu; distillation (T = 100) 93.2%, none with logits
# x100 99.3%, the NaN-gradient transform 100% (non-finite).
ZERO_GRADIENT_MAX_SHARE = 0.05
# At the sweep's largest eps (0.3 on digits, three times the headline eps) the worst case over
# the white-box attacks should be ~0 (Carlini et al. sec. 5.2: "unbounded attacks should reach
# 100% success"; eps 0.3 on 8x8 digits changes a digit's class for a human). Quick suite with
# Square in the set: at most 1.3% (ifgsm-at) on honest models; the gradient attacks alone leave
# distillation at 73% and the x100 copy at 90%, which Square then breaks (so with a score-based
# attack in the set this flag rarely fires: the gradient-free check does the work).
LARGE_EPS_MAX_ACCURACY = 0.10
# Unbounded minimal attacks, together (per example), should fool (almost) every correctly
# classified example. Quick suite: DeepFool alone 99.3-100% on every model (C&W 5x100 alone
# 67-95%: a weak configuration, not masking), so the union is >= 99.3% everywhere.
MINIMAL_MIN_SUCCESS = 0.95
# Minimal attacks that are unbounded by design (no eps cap, enough steps to always succeed on
# a differentiable model): only their failure says something about the model. The budgeted
# searches (fgsm-minimal up to its largest eps, coordinate greedy and Adam within their
# iteration budget) may fail honestly on a robust model.
UNBOUNDED_MINIMAL = ("deepfool", "cw-l2")
# A gradient-free attack (score-based or transfer) "beats white-box" when the examples it breaks
# that survive every gradient attack outnumber the converse significantly (exact McNemar, as
# ``advarena compare``) and by at least this share of the examples. Quick suite at eps 0.1 and
# 0.3 (lost - gained over 300 examples): honest models at most +1 (0.3%, pgd-at, p = 1), the
# transfer attacks never above the gradient worst case; distillation +12 (4.0%, p = 0.002),
# logit-scale +10 (3.3%, p = 0.02), nan-grad +126 (42%). Square's random search alone finds a
# few examples the gradient attacks miss (e2sad: 3 either way), which the gap absorbs.
GRADIENT_FREE_MIN_GAP = 0.02
ALPHA = 0.05


def _above(a: dict, b: dict) -> bool:
    """a's interval lies entirely above b's (a significant difference)."""
    return (a.get("ci_low") is not None and b.get("ci_high") is not None
            and a["ci_low"] > b["ci_high"])


def _and(rows: list[list[bool]]) -> list[bool]:
    return [all(col) for col in zip(*rows)]


def compute_flags(records: list[dict[str, Any]], reference: list[dict[str, Any]],
                  single_step: set[str], checks: str | None = None) -> list[Measurement]:
    """Flags from one model's metric records (``reference``: the reference model's records,
    unused by the current checks; ``single_step``: names of single-step attacks; ``checks``:
    ``"main"`` (all but the minimal attacks), ``"minimal"`` (those only) or None (all))."""
    flags: list[Measurement] = []

    def flag(name: str, raised: bool, detail: str, summary: str) -> None:
        flags.append(Measurement(f"flag_{name}", 1.0 if raised else 0.0, 1,
                                 extra={"detail": detail, "summary": summary}))

    if checks == "minimal":
        _minimal_flag(records, flag)
        return flags

    wb = [r for r in records if r["protocol"] == "white-box"]
    _gradient_flags(wb, flag)
    worst_by_norm: dict[str, list[dict]] = defaultdict(list)
    for r in sorted((r for r in wb if r["metric"] == "worst_case_accuracy"),
                    key=lambda r: r["eps"]):
        worst_by_norm[r["extra"].get("norm", "linf")].append(r)
    if worst_by_norm:
        tops = [w[-1] for w in worst_by_norm.values()]
        unbroken = [t for t in tops if t["value"] > LARGE_EPS_MAX_ACCURACY]
        flag("large_eps_not_broken", bool(unbroken), "; ".join(
            f"worst-case white-box accuracy {t['value']:.3f} at the largest "
            f"{t['extra'].get('norm')} eps {t['eps']:g} (expected <= {LARGE_EPS_MAX_ACCURACY})"
            for t in (unbroken or tops)), "not broken at a large eps")
        rising = [(a, b) for w in _common_worst(wb, worst_by_norm).values()
                  for a, b in zip(w, w[1:]) if _above(b, a)]
        flag("accuracy_rises_with_eps", bool(rising),
             "worst-case accuracy rises significantly from eps " + ", ".join(
                 f"{a['eps']:g} to {b['eps']:g}" for a, b in rising) if rising else
             "worst-case accuracy never rises significantly with eps",
             "accuracy rises with eps")
    # Compared within one norm: eps means different things across norms.
    per_eps: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in wb:
        if r["metric"] == "robust_accuracy":
            per_eps[(r["extra"].get("norm"), r["eps"])][r["attack"]] = r
    if per_eps and single_step:
        bad = []
        for (_, eps), by_attack in per_eps.items():
            gradient = {a: r for a, r in by_attack.items()
                        if r["extra"].get("access", "gradient") == "gradient"}
            singles = [r for a, r in gradient.items() if a in single_step]
            iters = [r for a, r in gradient.items() if a not in single_step]
            bad += [f"{i['attack']} > {s['attack']} at eps {eps:g}"
                    for i in iters for s in singles if _above(i, s)]
        if any(per_eps[e] for e in per_eps):
            flag("iterative_weaker_than_single_step", bool(bad),
                 "; ".join(bad) if bad else "iterative attacks are at least as strong as "
                 "single-step ones", "iterative weaker than single-step")
    _gradient_free_flag(records, per_eps, flag)
    if checks is None:
        _minimal_flag(records, flag)
    return flags


def _common_worst(wb: list[dict], worst_by_norm: dict[str, list[dict]]
                  ) -> dict[str, list[dict]]:
    """Per norm and eps (ascending), the worst case over the attacks that ran at *every* eps of
    the sweep (score-based attacks may run at some eps only, and a worst case over more attacks
    at one eps must not look like a rise at the next); the protocol's own worst-case records
    where the per-example outcomes are missing."""
    from .stats import wilson

    out = {}
    for norm, worst in worst_by_norm.items():
        eps = [w["eps"] for w in worst]
        by_eps: dict[float, dict[str, list[bool] | None]] = defaultdict(dict)
        for r in wb:
            if r["metric"] == "robust_accuracy" and r["extra"].get("norm", "linf") == norm:
                by_eps[r["eps"]][r["attack"]] = _bits(r)
        common = set.intersection(*(set(by_eps[e]) for e in eps)) if eps else set()
        rows = [[by_eps[e][a] for a in sorted(common)] for e in eps]
        if not common or any(b is None for row in rows for b in row):
            out[norm] = worst
            continue
        out[norm] = []
        for e, row in zip(eps, rows):
            mask = _and(row)
            k, n = sum(mask), len(mask)
            lo, hi = wilson(k, n)
            out[norm].append({"eps": e, "value": k / n if n else 0.0, "ci_low": lo,
                              "ci_high": hi})
    return out


def _gradient_flags(wb: list[dict], flag) -> None:
    """Zero and non-finite input gradients (white-box protocol), non-finite logits under
    attack."""
    zero = _metric(wb, "white-box", "zero_gradient_share")
    nonfinite = _metric(wb, "white-box", "nonfinite_gradient_share")
    if zero is not None and nonfinite is not None:
        share = zero["value"] + nonfinite["value"]
        flag("zero_gradients", share > ZERO_GRADIENT_MAX_SHARE,
             f"the input gradient of the cross-entropy is exactly zero on "
             f"{100 * zero['value']:.1f}% and non-finite on {100 * nonfinite['value']:.1f}% of "
             f"the {zero['n']} correctly classified examples (expected <= "
             f"{100 * ZERO_GRADIENT_MAX_SHARE:g}% together): gradient attacks are blind there",
             "zero input gradients")
    bad_logits = [r for r in wb if r["metric"] == "robust_accuracy"
                  and (r["extra"] or {}).get("nonfinite_logits")]
    if nonfinite is not None:
        parts = []
        if nonfinite["value"] > 0:
            parts.append(f"the input gradient has NaN/inf entries on "
                         f"{100 * nonfinite['value']:.1f}% of the {nonfinite['n']} correctly "
                         f"classified examples")
        if bad_logits:
            parts.append("the logits are NaN/inf on adversarial inputs of " + ", ".join(
                sorted({f"{r['attack']}" for r in bad_logits})) + " (counted as broken)")
        flag("non_finite", bool(parts), "; ".join(parts) if parts else
             "input gradients and logits are finite", "NaN/inf gradients or logits")


def _gradient_free_flag(records: list[dict], per_eps: dict[tuple, dict[str, dict]],
                        flag) -> None:
    """Score-based or transfer attacks breaking significantly more than the gradient attacks
    at the same eps (per example, paired): the gradients mislead (Carlini et al. sec. 4.4)."""
    transfer: dict[float, list[dict]] = defaultdict(list)
    for r in records:
        if r["protocol"] == "black-box" and r["metric"] == "transfer_accuracy":
            transfer[r["eps"]].append(r)
    checked, bad = False, []
    for (norm, eps), by_attack in sorted(per_eps.items(), key=lambda kv: (str(kv[0][0]),
                                                                          kv[0][1])):
        gradient = [_bits(r) for r in by_attack.values()
                    if r["extra"].get("access", "gradient") == "gradient"]
        if not gradient or any(b is None for b in gradient):
            continue
        groups = {"score-based " + a: [_bits(r)] for a, r in by_attack.items()
                  if r["extra"].get("access") == "score"}
        if norm in (None, "linf") and transfer.get(eps):
            groups["transfer"] = [_bits(r) for r in transfer[eps]]
        wbits = _and(gradient)
        for label, rows in groups.items():
            if any(b is None or len(b) != len(wbits) for b in rows):
                continue
            checked = True
            obits = _and(rows)
            lost = sum(1 for w, o in zip(wbits, obits) if w and not o)
            gained = sum(1 for w, o in zip(wbits, obits) if o and not w)
            gap = (lost - gained) / len(wbits)
            if gap >= GRADIENT_FREE_MIN_GAP and mcnemar_exact(lost, gained) < ALPHA:
                bad.append(f"{label} at eps {eps:g}: {100 * sum(obits) / len(obits):.1f}% "
                           f"against {100 * sum(wbits) / len(wbits):.1f}% for the gradient "
                           f"attacks ({lost} examples survive every gradient attack but not it)")
    if checked:
        flag("gradient_free_beats_white_box", bool(bad),
             "; ".join(bad) if bad else "the gradient attacks are at least as strong as the "
             "score-based and transfer attacks", "gradient-free attack beats white-box")


def _minimal_flag(records: list[dict], flag) -> None:
    """Correctly classified examples that no unbounded minimal attack could fool: an
    unbounded attack must always succeed on a differentiable model (Carlini et al. sec. 5.2),
    so such examples mean the gradients mislead. Per example, the union over the attacks: one
    weakly configured attack (a C&W with too few search steps) does not flag a model that
    DeepFool fools everywhere; each attack's own rate is in the detail."""
    succ = [r for r in records if r["protocol"] == "minimal-perturbation"
            and r["metric"] == "success_rate" and r["attack"] in UNBOUNDED_MINIMAL]
    clean = _metric(records, "minimal-perturbation", "accuracy") or \
        _metric(records, "white-box", "accuracy")
    bits, rates = [], {}
    for r in succ:
        b = _bits(r)
        if (r["extra"] or {}).get("denominator") == "correctly classified":
            correct = r["n"]
        elif clean is not None and clean["n"] == r["n"]:
            correct = round(clean["value"] * clean["n"])  # a share of all -> of the correct
        else:
            continue  # the denominator was not measured
        if correct <= 0 or b is None:
            continue
        rates[r["attack"]] = sum(b) / correct
        bits.append((b, correct))
    if not bits or len({len(b) for b, _ in bits}) != 1 or len({c for _, c in bits}) != 1:
        return
    union = sum(any(col) for col in zip(*(b for b, _ in bits))) / bits[0][1]
    each = ", ".join(f"{a} {100 * v:.1f}%" for a, v in sorted(rates.items()))
    flag("minimal_attacks_fail", union < MINIMAL_MIN_SUCCESS,
         f"the unbounded minimal attacks together fool {100 * union:.1f}% of the correctly "
         f"classified examples (expected >= {100 * MINIMAL_MIN_SUCCESS:g}%; {each})",
         "minimal attacks fail")


def _metric(records, protocol, metric):
    return next((r for r in records if r["protocol"] == protocol and r["metric"] == metric),
                None)
