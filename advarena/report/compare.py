"""Compare two sets of results (``advarena compare BASE HEAD``): data only, nothing printed.

BASE and HEAD are exports written by ``advarena run --output`` or store directories. Records are
matched by ``(dataset, architecture, defense, params, seed, protocol, attack, eps, norm,
metric)`` (``norm`` from ``extra.norm``, since a white-box worst case is taken per norm; the
``accuracy_at_eps_ref`` records are matched by their fraction of ``eps_ref``, because their
absolute eps depends on the trained reference model). A key held twice on one side (an export
mixing runs of different suites) is refused rather than guessed.

Statistics, per matched pair (base ``b``, head ``h``), at level ``alpha``:

* **Paired accuracies** (both records carry per-example ``outcomes`` over the same number of
  examples, consistent with their values): the runs score the same examples (a fixed seed-0
  permutation of the test split, :func:`advarena.runner.eval_examples`), so the test is an
  **exact McNemar test**: under no change each discordant example (right on one side only) is
  equally likely to go either way, ``p = min(1, 2 P[X <= min(lost, gained)])`` with
  ``X ~ Binomial(lost + gained, 1/2)``. The change's interval is Newcombe's hybrid score interval
  for paired proportions (Newcombe 1998, method 10, from the two Wilson intervals and the phi
  correlation). The verdict follows the test. Protocols that score a model-dependent subset
  (``ensemble-transfer`` keeps the examples every ensemble member misclassifies, a set that moves
  when the members are retrained) are never paired on ``n`` alone: only when both records carry
  the same ``extra.examples`` fingerprint of that subset; otherwise they are compared unpaired.
* **Unpaired accuracies** (no outcomes, or different ``n``): two-sided score test of two
  independent proportions; Newcombe's hybrid score interval for the difference (method 10 of
  the unpaired paper).
* **Means with bootstrap intervals** (``rho_2``, ``empirical_robustness``, ``rho_inf``, ``cw_l2``,
  ``distortion``, ``training_set_distance``, ``loss_sensitivity``, ``fgsm_loss``; ``n >= 2``):
  their per-example values are not exported, so the standard error of each side is read off its
  95% interval (half-width / 1.96) and the difference gets a normal (Welch z) test and the
  interval ``change +- z(1 - alpha/2) sqrt(se_b^2 + se_h^2)``. This is chosen over "intervals do
  not overlap", which is far too conservative (two overlapping 95% intervals can still differ
  at p < 0.01) and ignores ``--alpha``.
* **Other metrics with intervals on both sides** (e.g. ``overhead``, whose interval is the range
  of the timing repeats, of unknown coverage): significant only if the intervals do not overlap;
  no p-value; the change's interval is ``[h_low - b_high, h_high - b_low]``. An interval resting
  on fewer than two observations is no interval.
* **Exact counters** (``passes_per_example``, ``forward_per_example``, ``backward_per_example``,
  ``data_copies``, sanity ``flag_*``, ``kept``, ``eps_ref``): measured without sampling noise, so
  any difference is a change.
* **Anything else** (timings such as ``median_epoch_seconds``, ``time_to_*``, ``total_overhead``,
  ``final_val_accuracy``, ``loss_landscape``: no interval): ``not tested`` when the values
  differ, ``no significant change`` when they are equal.

Verdicts: ``better`` / ``worse`` (direction-aware: accuracies and perturbation sizes are higher
is better; loss sensitivity, FGSM loss, loss landscape, attack success rate, training cost and
sanity flags are lower is better), ``changed`` (significant, but the metric has no better side:
``eps_ref``, ``kept`` and metrics this module does not know), ``no significant change``,
``not tested``.

The tests are conditional on the trained models: they say whether HEAD's models behave
differently from BASE's on these examples, not whether a method is better in expectation over
training seeds.

**Seeds.** Every seed is compared on its own. When both sides ran two or more of the same seeds
of a configuration, a pooled row (``seed`` ``None``, ``seeds`` listing them) is added per metric:
paired accuracies pool the discordant examples of all seeds into one exact McNemar test (a
stratified test, valid because every seed scores the same examples), unpaired accuracies pool the
counts, means average the per-seed means with their standard errors combined. For the gate the
pooled row replaces the per-seed rows, so more seeds make the gate more sensitive, not more
trigger-happy.

**Headline metrics** (the ones ``--fail-on worse`` gates on): white-box clean ``accuracy`` and
``worst_case_accuracy`` at the headline eps (records marked ``extra.headline``), black-box
``worst_transfer_accuracy`` (every eps), ensemble-transfer ``adv_accuracy`` (every ensemble size
and eps), ``rho_2``, ``empirical_robustness`` and ``loss_sensitivity``; and any record a plugin
marks ``extra.headline``. A headline verdict is decided on Holm-adjusted p-values across the gated
headline rows (``correction="holm"``, the default) so that gating on a dozen headline numbers
does not fail one CI run in two by chance; the intervals shown stay unadjusted. Rows that could
not reach ``p < alpha`` whatever the direction (an exact McNemar test on ``m`` discordant
examples has ``p >= 2^(1-m)``, Tarone 1990; e.g. an untouched reference model, ``m = 0``) are left
out of the family, so an unchanged model costs the gate no power.

A headline record that BASE has and HEAD lacks, for a model HEAD did evaluate (a protocol that
failed or vanished), is reported as missing and fails the gate too. Models that only one side
evaluated are listed, not compared.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from ..errors import AdvarenaError
from ..evaluation import record_outcomes
from ..stats import Z95, mcnemar_exact, wilson
from ..text import markdown

# -- what each metric means --------------------------------------------------------------------

PROPORTIONS = frozenset({
    "accuracy", "robust_accuracy", "worst_case_accuracy", "transfer_accuracy",
    "worst_transfer_accuracy", "adv_accuracy", "true_accuracy", "accuracy_at_eps_ref",
    "success_rate", "headline_accuracy", "white_box_only_accuracy", "score_only_accuracy",
    "transfer_only_accuracy"})
MEANS = frozenset({
    "rho_2", "empirical_robustness", "rho_inf", "cw_l2", "distortion", "training_set_distance",
    "loss_sensitivity", "fgsm_loss"})
EXACT = frozenset({
    "passes_per_example", "forward_per_example", "backward_per_example",
    "backward_sweeps_per_example", "data_copies", "kept",
    "eps_ref"})
HIGHER_IS_BETTER = frozenset(PROPORTIONS - {"success_rate"} | {
    "final_val_accuracy", "rho_2", "empirical_robustness", "rho_inf", "cw_l2", "distortion",
    "training_set_distance"})
LOWER_IS_BETTER = frozenset({
    "success_rate", "repeated_error_rate", "zero_gradient_share", "nonfinite_gradient_share",
    "loss_sensitivity", "fgsm_loss", "loss_landscape", "overhead",
    "total_overhead", "passes_per_example", "forward_per_example", "backward_per_example",
    "backward_sweeps_per_example",
    "data_copies", "median_epoch_seconds", "total_seconds"})
# Protocols whose accuracies are over a subset selected by trained models: equal n does not mean
# the same examples (pair them only on an equal ``extra.examples`` fingerprint).
SELECTED_SUBSETS = frozenset({"ensemble-transfer"})
# (protocol, metric) pairs that are headline numbers whatever their extra says.
HEADLINE = frozenset({
    ("white-box", "accuracy"), ("black-box", "worst_transfer_accuracy"),
    ("ensemble-transfer", "adv_accuracy"), ("minimal-perturbation", "rho_2"),
    ("minimal-perturbation", "empirical_robustness"), ("loss-sensitivity", "loss_sensitivity")})

VERDICTS = ("worse", "better", "changed", "no significant change", "not tested")
REQUIRED_KEYS = ("dataset", "architecture", "defense", "params", "seed", "protocol", "attack",
                 "eps", "metric", "value", "n", "ci_low", "ci_high")
FAIL_ON = ("worse", "never")
CORRECTIONS = ("holm", "none")


def direction(metric: str, protocol: str | None = None) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if neither (or unknown)."""
    if metric in HIGHER_IS_BETTER:
        return 1
    if metric in LOWER_IS_BETTER or metric.startswith(("time_to_", "flag_")):
        return -1
    if protocol == "minimal-perturbation" and metric.endswith("_l2"):
        return 1  # the mean L2 perturbation of a minimal attack a plugin added
    return 0


def is_headline(rec: dict[str, Any]) -> bool:
    extra = rec.get("extra") or {}
    if extra.get("headline") is True:
        return True
    return (rec.get("protocol"), rec.get("metric")) in HEADLINE


def _kind(rec: dict[str, Any]) -> str:
    metric, extra = rec["metric"], rec.get("extra") or {}
    if metric in PROPORTIONS or "outcomes" in extra:
        return "proportion"
    if metric in MEANS or (rec.get("protocol") == "minimal-perturbation"
                           and metric.endswith("_l2")):
        return "mean"
    if metric in EXACT or metric.startswith("flag_"):
        return "exact"
    return "other"


# -- statistics --------------------------------------------------------------------------------

def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def paired_interval(both: int, gained: int, lost: int, neither: int,
                    alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe (1998, method 10; Altman et al., *Statistics with Confidence*, p. 52) interval
    of ``p_head - p_base`` for paired proportions.
    ``gained``: right on head only; ``lost``: right on base only."""
    n = both + gained + lost + neither
    if n == 0:
        return -1.0, 1.0
    z = _z(alpha)
    k_h, k_b = both + gained, both + lost
    p_h, p_b = k_h / n, k_b / n
    l_h, u_h = wilson(k_h, n, z)
    l_b, u_b = wilson(k_b, n, z)
    # phi with Newcombe's continuity correction (positive association shrunk by n/2), which
    # keeps the interval from collapsing to a point when no example changed side.
    denom = k_h * (n - k_h) * k_b * (n - k_b)
    assoc = both * neither - gained * lost
    assoc = assoc - n / 2 if assoc > n / 2 else (assoc if assoc < 0 else 0.0)
    phi = assoc / math.sqrt(denom) if denom > 0 else 0.0
    d = p_h - p_b
    delta = math.sqrt(max(0.0, (p_h - l_h) ** 2 - 2 * phi * (p_h - l_h) * (u_b - p_b)
                          + (u_b - p_b) ** 2))
    eps = math.sqrt(max(0.0, (u_h - p_h) ** 2 - 2 * phi * (u_h - p_h) * (p_b - l_b)
                        + (p_b - l_b) ** 2))
    return max(-1.0, d - delta), min(1.0, d + eps)


def unpaired_interval(k_b: float, n_b: int, k_h: float, n_h: int,
                      alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p_head - p_base`` for independent proportions."""
    z = _z(alpha)
    p_b, p_h = k_b / n_b, k_h / n_h
    l_b, u_b = wilson(k_b, n_b, z)
    l_h, u_h = wilson(k_h, n_h, z)
    d = p_h - p_b
    return (max(-1.0, d - math.hypot(p_h - l_h, u_b - p_b)),
            min(1.0, d + math.hypot(u_h - p_h, p_b - l_b)))


def two_proportion_p(k_b: float, n_b: int, k_h: float, n_h: int) -> float:
    """Two-sided score (pooled z) test of two independent proportions."""
    pooled = (k_b + k_h) / (n_b + n_h)
    var = pooled * (1 - pooled) * (1 / n_b + 1 / n_h)
    d = k_h / n_h - k_b / n_b
    if var <= 0:
        return 1.0 if abs(d) < 1e-12 else 0.0
    return math.erfc(abs(d) / math.sqrt(var) / math.sqrt(2))


def normal_test(m_b: float, se_b: float, m_h: float, se_h: float,
                alpha: float = 0.05) -> tuple[float, float, float]:
    """(p, low, high) of ``m_h - m_b`` with independent normal errors."""
    d = m_h - m_b
    se = math.hypot(se_b, se_h)
    if se <= 0:
        return (1.0 if d == 0 else 0.0), d, d
    half = _z(alpha) * se
    return math.erfc(abs(d) / se / math.sqrt(2)), d - half, d + half


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


# -- loading -----------------------------------------------------------------------------------

@dataclass
class Side:
    """One side of a comparison: where it came from and its flat metric records."""

    label: str
    records: list[dict[str, Any]] = field(default_factory=list)


def load_side(path: str | Path, role: str = "input") -> Side:
    """An export file (``advarena run --output``) or a store directory, as records."""
    from .export import open_for_reading, read_records, records

    p = Path(path)
    if not p.exists():
        raise AdvarenaError(f"{role} {p} does not exist; pass an export written by 'advarena "
                            f"run --output FILE' or a store directory")
    if p.is_dir():
        if not (p / "results.sqlite").is_file():
            raise AdvarenaError(f"{role} {p} is a directory without results.sqlite; pass an "
                                f"export written by 'advarena run --output FILE' or a store "
                                f"directory")
        store = open_for_reading(p)
        try:
            recs = records(store)
        finally:
            store.close()
    else:
        recs = read_records(p)
    if not recs:
        raise AdvarenaError(f"{role} {p} holds no metric records; run 'advarena run' first")
    for i, r in enumerate(recs):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise AdvarenaError(f"{role} {p} is not an advarena export: record {i} lacks "
                                f"{', '.join(repr(k) for k in missing)}")
        v = r["value"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise AdvarenaError(f"{role} {p} is not an advarena export: record {i} has a "
                                f"non-numeric value {v!r}")
        if r.get("extra") is not None and not isinstance(r["extra"], dict):
            raise AdvarenaError(f"{role} {p} is not an advarena export: record {i} has a "
                                f"non-object 'extra'")
    return Side(str(path), recs)


# -- matching ----------------------------------------------------------------------------------

def _eps_key(v: Any) -> float | None:
    return None if v is None else float(f"{float(v):.10g}")


def _params_json(params: Any) -> str:
    if isinstance(params, str):  # a store row that was not decoded
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            return params
    return json.dumps(params or {}, sort_keys=True)


def _config(rec: dict[str, Any]) -> tuple:
    """The model a record belongs to: (dataset, architecture, defense, params)."""
    return (rec["dataset"], rec["architecture"], rec["defense"], _params_json(rec["params"]))


def record_key(rec: dict[str, Any]) -> tuple:
    extra = rec.get("extra") or {}
    if rec["metric"] == "accuracy_at_eps_ref" and isinstance(extra.get("fraction"),
                                                             (int, float)):
        eps = ("eps_ref", _eps_key(extra["fraction"]))
    else:
        eps = ("abs", _eps_key(rec["eps"]))
    return (*_config(rec), rec["seed"], rec["protocol"], rec["attack"], eps,
            extra.get("norm"), rec["metric"])


def _index(side: Side, role: str) -> dict[tuple, tuple[int, dict]]:
    out: dict[tuple, tuple[int, dict]] = {}
    for i, r in enumerate(side.records):
        k = record_key(r)
        if k in out:
            cells = (out[k][1].get("cell_key"), r.get("cell_key"))
            if cells[0] == cells[1]:
                raise AdvarenaError(f"{role} {side.label} holds the record {describe_key(k)} "
                                    f"twice; export it again with 'advarena run --output'")
            raise AdvarenaError(
                f"{role} {side.label} holds two records for {describe_key(k)} (cells "
                f"{str(cells[0])[:12]} and {str(cells[1])[:12]}): it "
                f"mixes runs of different suites; compare exports of one suite each (run with "
                f"a fresh --store)")
        out[k] = (i, r)
    return out


def _fmt_set(values) -> str:
    vals = sorted((str(v) for v in values), key=str)
    return ", ".join(vals[:6]) + (f", ... ({len(vals)} in all)" if len(vals) > 6 else "")


def _fmt_num_set(values) -> str:
    vals = sorted(values, key=lambda v: (isinstance(v, tuple), v))
    return ", ".join(f"{v[1]:g} eps_ref" if isinstance(v, tuple) else f"{v:g}" for v in vals)


def _mismatch(base: Side, head: Side) -> str:
    """Why two sides share no record: the first dimension whose values differ."""
    dims = [("datasets", lambda r: r["dataset"]),
            ("architectures", lambda r: r["architecture"]),
            ("defenses", lambda r: _setting_name(r["defense"], r["params"])),
            ("seeds", lambda r: r["seed"]),
            ("protocols", lambda r: r["protocol"]),
            ("metrics", lambda r: r["metric"])]
    differ = []
    for name, f in dims:
        b = {f(r) for r in base.records}
        h = {f(r) for r in head.records}
        if b.isdisjoint(h):
            return (f"base and head have no records in common: they ran different {name} "
                    f"(base: {_fmt_set(b)}; head: {_fmt_set(h)}); compare runs of the same suite")
        if b != h:
            differ.append(f"{name} (base: {_fmt_set(b)}; head: {_fmt_set(h)})")
    detail = "; ".join(differ) if differ else \
        "their parameters, attacks, eps values or norms differ"
    return (f"base and head have no records in common: {detail}; compare runs of the same "
            f"suite")


def _check_sweeps(base_ix: dict, head_ix: dict) -> None:
    """Refuse sides that ran a protocol on the same model but at no common eps."""
    def sweeps(ix):
        out: dict[tuple, set] = defaultdict(set)
        for k in ix:
            eps = k[7]
            if eps[1] is not None:
                out[k[:6]].add(eps[1] if eps[0] == "abs" else eps)
        return out

    b, h = sweeps(base_ix), sweeps(head_ix)
    for setting in sorted(set(b) & set(h), key=str):
        if b[setting].isdisjoint(h[setting]):
            dataset, arch, defense, params, seed, protocol = setting
            raise AdvarenaError(
                f"the eps sweeps of {protocol} differ on {dataset}/{arch}/"
                f"{_setting_name(defense, params)} seed {seed} (base: "
                f"{_fmt_num_set(b[setting])}; head: {_fmt_num_set(h[setting])}): nothing at a "
                f"common eps to compare; compare runs of the same suite")


# -- comparing ---------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _same_examples(b: dict[str, Any], h: dict[str, Any]) -> bool:
    """Whether two records of equal ``n`` score the same examples, as far as can be told."""
    fb = (b.get("extra") or {}).get("examples")
    fh = (h.get("extra") or {}).get("examples")
    if fb is not None or fh is not None:
        return fb == fh
    return b.get("protocol") not in SELECTED_SUBSETS


def _interval(rec: dict[str, Any]) -> tuple[float, float] | None:
    lo, hi = _num(rec.get("ci_low")), _num(rec.get("ci_high"))
    n = rec.get("n")
    if lo is None or hi is None or not isinstance(n, int) or n < 2 or hi < lo:
        return None
    return lo, hi


def _se(rec: dict[str, Any]) -> float | None:
    iv = _interval(rec)
    return None if iv is None else (iv[1] - iv[0]) / (2 * Z95)


def _test(b: dict, h: dict, alpha: float) -> dict[str, Any]:
    """The statistics of one matched pair: change, interval, p, method, significance, and the
    sufficient statistics a pooled row needs (``_stats``)."""
    vb, vh = _num(b.get("value")), _num(h.get("value"))
    out: dict[str, Any] = {"change": None, "change_low": None, "change_high": None, "p": None,
                           "method": "untested", "significant": False, "lost": None,
                           "gained": None, "_stats": None}
    if vb is None or vh is None:
        return out
    d = vh - vb
    out["change"] = d
    kind = _kind(b)
    if kind == "proportion":
        ob, oh = record_outcomes(b), record_outcomes(h)
        if ob and oh and len(ob) == len(oh) \
                and _same_examples(b, h):
            both = sum(1 for x, y in zip(ob, oh) if x and y)
            lost = sum(1 for x, y in zip(ob, oh) if x and not y)
            gained = sum(1 for x, y in zip(ob, oh) if y and not x)
            neither = len(ob) - both - lost - gained
            p = mcnemar_exact(lost, gained)
            lo, hi = paired_interval(both, gained, lost, neither, alpha)
            out.update(p=p, change_low=lo, change_high=hi, method="mcnemar-exact",
                       lost=lost, gained=gained, _stats=("paired", both, gained, lost, neither))
            out["significant"] = p < alpha
            return out
        nb, nh = b.get("n"), h.get("n")
        if isinstance(nb, int) and isinstance(nh, int) and nb > 0 and nh > 0 \
                and 0 <= vb <= 1 and 0 <= vh <= 1:
            kb, kh = round(vb * nb), round(vh * nh)
            p = two_proportion_p(kb, nb, kh, nh)
            lo, hi = unpaired_interval(kb, nb, kh, nh, alpha)
            out.update(p=p, change_low=lo, change_high=hi, method="two-proportion",
                       significant=p < alpha, _stats=("counts", kb, nb, kh, nh))
            return out
    if kind == "mean":
        se_b, se_h = _se(b), _se(h)
        if se_b is not None and se_h is not None:
            p, lo, hi = normal_test(vb, se_b, vh, se_h, alpha)
            out.update(p=p, change_low=lo, change_high=hi, method="normal-from-intervals",
                       significant=p < alpha, _stats=("normal", vb, se_b, vh, se_h))
            return out
    if kind == "exact":
        same = math.isclose(vb, vh, rel_tol=1e-9, abs_tol=1e-12)
        out.update(change_low=d, change_high=d, method="exact", significant=not same)
        return out
    ib, ih = _interval(b), _interval(h)
    if ib is not None and ih is not None:
        out.update(change_low=ih[0] - ib[1], change_high=ih[1] - ib[0],
                   method="interval-overlap", significant=ih[0] > ib[1] or ib[0] > ih[1])
        return out
    return out


def _pool(members: list[dict[str, Any]], alpha: float) -> dict[str, Any] | None:
    """Statistics of a pooled (all seeds) row from its per-seed rows' sufficient statistics."""
    stats = [m["_stats"] for m in members]
    if any(s is None for s in stats):
        return None
    kinds = {s[0] for s in stats}
    out: dict[str, Any] = {"lost": None, "gained": None}
    if kinds == {"paired"}:
        both, gained, lost, neither = (sum(s[i] for s in stats) for i in range(1, 5))
        n = both + gained + lost + neither
        kb, kh = both + lost, both + gained
        p = mcnemar_exact(lost, gained)
        lo, hi = paired_interval(both, gained, lost, neither, alpha)
        out.update(method="mcnemar-exact", lost=lost, gained=gained, p=p,
                   base=_prop_stat(kb, n), head=_prop_stat(kh, n))
    elif kinds <= {"paired", "counts"}:
        counts = [(s[1] + s[3], s[1] + s[2] + s[3] + s[4], s[1] + s[2],
                   s[1] + s[2] + s[3] + s[4]) if s[0] == "paired" else s[1:] for s in stats]
        kb, nb, kh, nh = (sum(c[i] for c in counts) for i in range(4))
        p = two_proportion_p(kb, nb, kh, nh)
        lo, hi = unpaired_interval(kb, nb, kh, nh, alpha)
        out.update(method="two-proportion", p=p, base=_prop_stat(kb, nb),
                   head=_prop_stat(kh, nh))
    elif kinds == {"normal"}:
        k = len(stats)
        mb, mh = sum(s[1] for s in stats) / k, sum(s[3] for s in stats) / k
        se_b = math.sqrt(sum(s[2] ** 2 for s in stats)) / k
        se_h = math.sqrt(sum(s[4] ** 2 for s in stats)) / k
        p, lo, hi = normal_test(mb, se_b, mh, se_h, alpha)
        n_b = sum(m["base_n"] or 0 for m in members)
        n_h = sum(m["head_n"] or 0 for m in members)
        out.update(method="normal-from-intervals", p=p,
                   base={"value": mb, "n": n_b, "ci_low": mb - Z95 * se_b,
                         "ci_high": mb + Z95 * se_b},
                   head={"value": mh, "n": n_h, "ci_low": mh - Z95 * se_h,
                         "ci_high": mh + Z95 * se_h})
    else:
        return None
    out.update(change=out["head"]["value"] - out["base"]["value"], change_low=lo,
               change_high=hi, significant=out["p"] < alpha)
    return out


def _sorted(values: list) -> list:
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _prop_stat(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"value": k / n if n else None, "n": n, "ci_low": lo, "ci_high": hi}


def _verdict(significant: bool, change: float | None, dirn: int, method: str) -> str:
    if change is None:
        return "not tested"
    if not significant:
        if method == "untested" and change != 0:
            return "not tested"
        return "no significant change"
    if dirn == 0:
        return "changed"
    return "better" if change * dirn > 0 else "worse"


def compare(base: Side, head: Side, *, alpha: float = 0.05,
            correction: str = "holm") -> dict[str, Any]:
    """Match and test every record both sides hold. Returns ``{"summary", "rows",
    "only_in_base", "only_in_head", "headline_missing"}``, JSON-ready (numbers as numbers)."""
    if not 0 < alpha < 1:
        raise AdvarenaError(f"--alpha must lie strictly between 0 and 1, got {alpha}")
    if correction not in CORRECTIONS:
        raise AdvarenaError(f"unknown correction '{correction}'; use holm or none")
    base_ix, head_ix = _index(base, "base"), _index(head, "head")
    common = [k for k in base_ix if k in head_ix]
    if not common:
        raise AdvarenaError(_mismatch(base, head))
    _check_sweeps(base_ix, head_ix)

    rows: list[dict[str, Any]] = []
    for k in common:
        i, b = base_ix[k]
        _, h = head_ix[k]
        t = _test(b, h, alpha)
        row = {
            "dataset": b["dataset"], "architecture": b["architecture"], "defense": b["defense"],
            "params": b["params"], "seed": b["seed"], "seeds": [b["seed"]],
            "protocol": b["protocol"], "attack": b["attack"], "eps": _num(b["eps"]),
            "eps_fraction": k[7][1] if k[7][0] == "eps_ref" else None, "norm": k[8],
            "metric": b["metric"], "headline": is_headline(b) or is_headline(h),
            "gating": False,
            "direction": {1: "higher", -1: "lower", 0: None}[direction(b["metric"],
                                                                        b["protocol"])],
            "base_value": _num(b["value"]), "base_n": b.get("n"),
            "base_ci_low": _num(b.get("ci_low")), "base_ci_high": _num(b.get("ci_high")),
            "head_value": _num(h["value"]), "head_n": h.get("n"),
            "head_ci_low": _num(h.get("ci_low")), "head_ci_high": _num(h.get("ci_high")),
            **t, "p_adjusted": None, "pooled": False, "_order": (i, 0),
            "_group": k[:4] + k[5:],
        }
        rows.append(row)

    # Pooled rows over the seeds both sides ran.
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["_group"]].append(r)
    pooled_keys = set()
    for g, members in groups.items():
        if len(members) < 2:
            continue
        s = _pool(members, alpha)
        if s is None:
            continue
        first = members[0]
        row = {**first, "seed": None, "seeds": _sorted([m["seed"] for m in members]),
               "base_value": s["base"]["value"], "base_n": s["base"]["n"],
               "base_ci_low": s["base"]["ci_low"], "base_ci_high": s["base"]["ci_high"],
               "head_value": s["head"]["value"], "head_n": s["head"]["n"],
               "head_ci_low": s["head"]["ci_low"], "head_ci_high": s["head"]["ci_high"],
               "change": s["change"], "change_low": s["change_low"],
               "change_high": s["change_high"], "p": s["p"], "method": s["method"],
               "significant": s["significant"], "lost": s["lost"], "gained": s["gained"],
               "pooled": True, "_stats": None,
               "_order": (max(m["_order"][0] for m in members), 1)}
        rows.append(row)
        pooled_keys.add(g)

    for r in rows:
        r["gating"] = r["headline"] and (r["pooled"] or r["_group"] not in pooled_keys)
    # The Holm family: gated rows with a p-value that could fall below alpha at all. An exact
    # McNemar test on m discordant examples cannot go below 2^(1-m) (Tarone 1990): a model no
    # example of which changed side (m = 0, e.g. the untouched reference) is no test to pay for.
    gated = [r for r in rows if r["gating"] and r["p"] is not None
             and not (r["method"] == "mcnemar-exact"
                      and 2.0 ** (1 - (r["lost"] + r["gained"])) >= alpha)]
    if correction == "holm" and gated:
        for r, adj in zip(gated, holm([r["p"] for r in gated])):
            r["p_adjusted"] = adj
            r["significant"] = adj < alpha
    for r in rows:
        dirn = {"higher": 1, "lower": -1}.get(r["direction"], 0)
        r["verdict"] = _verdict(r["significant"], r["change"], dirn, r["method"])

    # What only one side has; headline records HEAD lost on a model it did evaluate.
    head_models = {k[:5] for k in head_ix}
    only_base = [base_ix[k][1] for k in base_ix if k not in head_ix]
    only_head = [head_ix[k][1] for k in head_ix if k not in base_ix]
    missing = [r for r in only_base if is_headline(r) and record_key(r)[:5] in head_models]

    rows.sort(key=lambda r: (VERDICTS.index(r["verdict"]), not r["headline"], r["_order"]))
    for r in rows:
        for private in ("_stats", "_order", "_group"):
            r.pop(private, None)
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    summary = {
        "base": base.label, "head": head.label,
        "base_records": len(base.records), "head_records": len(head.records),
        "compared": sum(1 for r in rows if not r["pooled"]),
        "pooled_rows": sum(1 for r in rows if r["pooled"]),
        "verdicts": counts,
        "headline_rows": sum(1 for r in rows if r["gating"]),
        "headline_worse": sum(1 for r in rows if r["gating"] and r["verdict"] == "worse"),
        "headline_missing": len(missing),
        "holm_family": len(gated) if correction == "holm" else 0,
        "only_in_base": len(only_base), "only_in_head": len(only_head),
        "unpaired_accuracies": sum(1 for r in rows if r["method"] == "two-proportion"),
        "alpha": alpha, "correction": correction,
    }
    return {"summary": summary, "rows": rows,
            "only_in_base": [_brief(r) for r in only_base],
            "only_in_head": [_brief(r) for r in only_head],
            "headline_missing": [_brief(r) for r in missing]}


def _brief(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in ("dataset", "architecture", "defense", "params", "seed",
                                    "protocol", "attack", "eps", "metric", "value")}


def compare_paths(base: str | Path, head: str | Path, *, alpha: float = 0.05,
                  correction: str = "holm") -> dict[str, Any]:
    return compare(load_side(base, "base"), load_side(head, "head"), alpha=alpha,
                   correction=correction)


def failed(result: dict[str, Any], fail_on: str) -> bool:
    """Whether ``--fail-on`` trips: a gated headline row significantly worse, or a headline
    record missing from HEAD on a model it evaluated."""
    if fail_on not in FAIL_ON:
        raise AdvarenaError(f"unknown --fail-on '{fail_on}'; use worse or never")
    s = result["summary"]
    return fail_on == "worse" and (s["headline_worse"] > 0 or s["headline_missing"] > 0)


def to_json(result: dict[str, Any], fail_on: str = "never") -> dict[str, Any]:
    """The machine form: every row (``--all`` or not), a summary with the gate's outcome."""
    return {"summary": {**result["summary"], "fail_on": fail_on,
                        "failed": failed(result, fail_on)},
            "rows": result["rows"], "only_in_base": result["only_in_base"],
            "only_in_head": result["only_in_head"],
            "headline_missing": result["headline_missing"]}


# -- Markdown ----------------------------------------------------------------------------------

def md_escape(text: Any) -> str:
    """Plugin-supplied (or export-supplied) text neutralised for Markdown (control characters,
    table syntax, inline HTML): :func:`advarena.text.markdown`."""
    return markdown(text)


def _setting_name(defense: Any, params: Any) -> str:
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            params = {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted((params or {}).items()) if v is not None)
    return f"{defense} ({shown})" if shown else str(defense)


def describe_key(k: tuple) -> str:
    dataset, arch, defense, params, seed, protocol, attack, eps, norm, metric = k
    return " ".join(x for x in (
        f"{dataset}/{arch}/{_setting_name(defense, params)}", f"seed {seed}", protocol, metric,
        attack or "", _eps_text(eps[1], eps[0] == "eps_ref"), norm or "") if x)


def _eps_text(eps: float | None, relative: bool = False) -> str:
    if eps is None:
        return ""
    return f"eps {eps:g}" + (" x eps_ref" if relative else "")


def _g(v: Any, signed: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, int) and not signed:
        return str(v)
    return format(v, "+.4g" if signed else ".4g")


def _p(r: dict[str, Any]) -> str:
    if r["p"] is None:
        return "–"
    text = f"{r['p']:.2g}"
    if r["p_adjusted"] is not None:
        text += f" (adj. {r['p_adjusted']:.2g})"
    return text


_SHOWN = {"worse", "better", "changed"}


def render_markdown(result: dict[str, Any], *, show_all: bool = False,
                    fail_on: str = "never") -> str:
    """The comparison as Markdown: a summary, the table, what could not be compared."""
    s = result["summary"]
    alpha = s["alpha"]
    level = f"{100 * (1 - alpha):g}%"
    rows = [r for r in result["rows"]
            if show_all or r["verdict"] in _SHOWN or r["headline"]]
    lines = ["### advarena compare", "",
             f"**base** {md_escape(s['base'])} ({s['base_records']} records) → **head** "
             f"{md_escape(s['head'])} ({s['head_records']} records)", ""]
    v = s["verdicts"]
    parts = [f"{v[k]} {k}" for k in ("worse", "better", "changed", "no significant change",
                                     "not tested") if v.get(k)]
    fam = s["holm_family"]
    corr = f"Holm-adjusted over {fam} testable row{'s' if fam != 1 else ''}, " \
        if s["correction"] == "holm" else ""
    lines.append(f"{s['compared']} records compared"
                 + (f", {s['pooled_rows']} rows pooled over seeds" if s["pooled_rows"] else "")
                 + f"; verdicts: {', '.join(parts)}. Headline: {s['headline_rows']} gated rows, "
                 f"{s['headline_worse']} significantly worse ({corr}alpha {alpha:g})"
                 + (f", {s['headline_missing']} missing from head" if s["headline_missing"]
                    else "") + ".")
    if fail_on != "never":
        verdict = "**failed**" if failed(result, fail_on) else "passed"
        lines += ["", f"Gate `--fail-on {fail_on}`: {verdict}."]
    lines.append("")
    if rows:
        lines += [f"| | model | seed | protocol | metric | base | head | change | "
                  f"{level} interval | p | verdict |",
                  "|---|---|---|---|---|---:|---:|---:|---|---|---|"]
        for r in rows:
            mark = "★" if r["gating"] else ("☆" if r["headline"] else "")
            model = f"{r['dataset']} · {r['architecture']} · " \
                    f"{_setting_name(r['defense'], r['params'])}"
            seed = "all (" + ", ".join(str(x) for x in r["seeds"]) + ")" if r["pooled"] \
                else str(r["seed"])
            what = " · ".join(x for x in (
                r["metric"], r["attack"] or "",
                _eps_text(r["eps_fraction"], True) if r["eps_fraction"] is not None
                else _eps_text(r["eps"]), r["norm"] or "") if x)
            interval = "–" if r["change_low"] is None else \
                f"[{_g(r['change_low'], True)}, {_g(r['change_high'], True)}]"
            verdict = f"**{r['verdict']}**" if r["verdict"] in ("worse", "better") \
                else r["verdict"]
            lines.append("| " + " | ".join([
                mark, md_escape(model), md_escape(seed), md_escape(r["protocol"]),
                md_escape(what), _g(r["base_value"]), _g(r["head_value"]),
                _g(r["change"], True), interval, _p(r), verdict]) + " |")
        lines.append("")
    hidden = len(result["rows"]) - len(rows)
    if hidden:
        lines += [f"{hidden} rows with no significant change (or not tested) are not shown; "
                  f"pass --all to list them.", ""]
    if result["headline_missing"]:
        lines.append("**Headline records missing from head** (its model was evaluated):")
        lines += [f"- {md_escape(_brief_text(r))}" for r in result["headline_missing"][:20]]
        lines.append("")
    for side in ("base", "head"):
        only = result[f"only_in_{side}"]
        if only:
            models = sorted({f"{r['dataset']} · {r['architecture']} · "
                             f"{_setting_name(r['defense'], r['params'])} (seed {r['seed']})"
                             for r in only})
            lines.append(f"{len(only)} records only in {side}, not compared; models: "
                         f"{md_escape(_fmt_set(models))}.")
    if result["only_in_base"] or result["only_in_head"]:
        lines.append("")
    if s["unpaired_accuracies"]:
        lines += [f"{s['unpaired_accuracies']} accuracies were compared unpaired (no "
                  f"per-example outcomes on the same examples).", ""]
    lines.append("★ headline metric, gated by `--fail-on worse`"
                 + (" (☆: a headline metric's single seed, gated through its pooled row)"
                    if s["pooled_rows"] else "") + ". p: exact McNemar on the examples "
                 "both runs scored where records carry per-example outcomes, else a two-sample "
                 "test; (adj.): the Holm-adjusted p that decides a gated headline verdict. "
                 "Intervals are of head − base, unadjusted.")
    return "\n".join(lines) + "\n"


def _brief_text(r: dict[str, Any]) -> str:
    return " ".join(str(x) for x in (
        f"{r['dataset']}/{r['architecture']}/{_setting_name(r['defense'], r['params'])}",
        f"seed {r['seed']}", r["protocol"], r["metric"], r["attack"] or "",
        "" if r["eps"] is None else f"eps {r['eps']:g}") if x)
