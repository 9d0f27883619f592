"""Leaderboards as data first (one reviewable record a row, as in RobustBench), rendered by
jinja2 templates into Markdown and HTML, written as JSON with numbers as numbers, with one
detail page per row (parameters, provenance, every metric, plots).

Functions here return data (:func:`build_tables`, :func:`build_details`) or strings
(``render_*``); only :func:`write_leaderboards` writes, and only into the directory it is given.

Choices (documented in the pages too):

* One table per (dataset, threat model, headline eps): the threat model is the norm of the
  white-box worst case; rows whose suites name another headline eps get their own table, since
  their numbers are not comparable.
* A row is one (dataset, architecture, defense, parameters); its seeds are aggregated. With one
  seed a number is that seed's, with its own interval (Wilson for accuracies, percentile bootstrap
  for means). With several seeds the number is the mean over seeds, the spread is the sample
  standard deviation across seeds (shown with the count of seeds), and the interval is a 95 %
  interval for the mean over seeds: a t-interval over the seed values (``t_{0.975,k-1} sd /
  sqrt(k)``, the seeds' variation) and the seeds' mean own half-widths (the test sample's
  uncertainty, which seeds on the same examples do not reduce) added in quadrature on each side
  (:func:`aggregate`). Seeds that agree give one seed's interval, however many there are; the
  former envelope of the seeds' intervals widened with every seed added.
* Rank: by the headline, exact McNemar on the paired per-example outcomes (:func:`rank_rows`).
* Black-box and ensemble-transfer columns are taken at the eps closest to the table's headline
  eps (the larger on a tie, the more demanding), and only where the transfer attacks have the
  table's norm; the eps used is shown in the header and in each number's title.
* Ensemble-transfer "Adv." columns use members of the row's own architecture where stored
  (000 Table II), otherwise any member architecture.
* "acc. @ eps_ref" is the accuracy under FGSM at 1.0 eps_ref (002 sec. 4).
* A store may hold a protocol's records for one model from several runs (suites edited between
  runs): the cell of the latest run is used.
* Columns without a number in any row of a table are left out of that table (JSON keeps every
  field, ``null`` where absent).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from ..errors import AdvarenaError
from ..evaluation import record_outcomes
from ..plugins import Registry
from ..store import Store
from ..trainer import PASS_UNIT
from ..text import markdown as _md
from ..text import printable
from ..stats import mcnemar_exact

ACCURACY_METRICS = {"accuracy", "robust_accuracy", "worst_case_accuracy", "transfer_accuracy",
                    "worst_transfer_accuracy", "adv_accuracy", "true_accuracy",
                    "accuracy_at_eps_ref", "success_rate", "final_val_accuracy",
                    "repeated_error_rate"}
# Keys of a record's ``extra`` that are data for plots or paired tests, not for a table.
_BULKY_EXTRA = {"outcomes", "curve", "loss", "steps", "axes", "seconds", "detail"}
PLOT_FORMATS = ("png", "svg")
DETAILS_DIR = "details"
_SLUG_TAIL = re.compile(r"-[0-9a-f]{10}$")


# -- reading the store -----------------------------------------------------------------------------

def _key(m: dict) -> tuple:
    """A trained model: (dataset, architecture, defense, params JSON, seed)."""
    return (m["dataset"], m["architecture"], m["defense"],
            json.dumps(m["params"], sort_keys=True), m["seed"])


@dataclass
class _Model:
    key: tuple
    records: list[dict] = field(default_factory=list)
    cells: dict[str, str] = field(default_factory=dict)  # protocol -> cell key
    train_key: str | None = None
    reference_train_key: str | None = None
    reference: tuple | None = None  # model key of the reference


@dataclass
class _Collected:
    store: Store
    models: dict[tuple, _Model]
    cells: dict[str, dict]


def _collect(store: Store) -> _Collected:
    cells = {c["key"]: c for c in store.cells()}
    started = {r["id"]: r["started"] or 0.0 for r in store.runs()}

    def recency(cell_key: str) -> float:
        c = cells.get(cell_key) or {}
        return started.get(c.get("run_id"), 0.0)

    by: dict[tuple, dict[str, dict[str, list[dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for m in store.metrics():
        by[_key(m)][m["protocol"]][m["cell_key"]].append(m)
    models: dict[tuple, _Model] = {}
    for key, protocols in by.items():
        model = models[key] = _Model(key)
        for protocol, per_cell in protocols.items():
            # the latest run's cell wins (stable: later stored wins a tie)
            chosen = max(enumerate(per_cell), key=lambda e: (recency(e[1]), e[0]))[1]
            model.cells[protocol] = chosen
            model.records.extend(per_cell[chosen])
    # train cells: through the eval cells' dependencies, else through the planner's labels
    train_by_label: dict[tuple, list[str]] = defaultdict(list)
    for c in cells.values():
        if c["kind"] == "train" and c["status"] == "done":
            lab = c["labels"]
            if lab.get("role", "defense") in ("defense", "reference"):
                train_by_label[_key({**lab, "params": lab.get("params", {})})].append(c["key"])
    train_to_model = {}
    for key, model in models.items():
        for protocol in sorted(model.cells, key=lambda p: p != "white-box"):
            deps = (cells.get(model.cells[protocol]) or {}).get("spec", {}).get("deps", {})
            if isinstance(deps, dict) and "model" in deps:
                model.train_key = deps["model"]
                model.reference_train_key = deps.get("reference")
                break
        if model.train_key is None and train_by_label.get(key):
            model.train_key = max(train_by_label[key], key=recency)
        if model.train_key:
            train_to_model[model.train_key] = key
    for key, model in models.items():
        if model.reference_train_key is None:
            dataset, arch, _, _, seed = key
            refs = [c["key"] for c in cells.values() if c["kind"] == "train"
                    and c["labels"].get("role") == "reference"
                    and (c["labels"].get("dataset"), c["labels"].get("architecture"),
                         c["labels"].get("seed")) == (dataset, arch, seed)]
            if refs:
                model.reference_train_key = max(refs, key=recency)
        ref = train_to_model.get(model.reference_train_key)
        model.reference = ref if ref != key else None
    return _Collected(store, models, cells)


# -- statistics ------------------------------------------------------------------------------------

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stat(m: dict | None, **extra: Any) -> dict | None:
    if m is None or not _finite(m.get("value")):
        return None
    out = {"value": float(m["value"]),
           "ci_low": float(m["ci_low"]) if _finite(m.get("ci_low")) else None,
           "ci_high": float(m["ci_high"]) if _finite(m.get("ci_high")) else None,
           "n": int(m["n"]) if m.get("n") is not None else None}
    out.update(extra)
    return out


# Two-sided 95 % Student t quantiles by degrees of freedom (beyond the table: the normal's).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a tabulated df at or
    below ``df``: conservative between table entries)."""
    if df > 30:
        return 1.96
    return _T975[max(d for d in _T975 if d <= df)]


def aggregate(stats: list[dict | None], unit: bool = False) -> dict | None:
    """Aggregate one number over seeds (see the module docstring): the mean over seeds, its
    interval, the standard deviation across seeds, and how many seeds it rests on.

    The interval combines the two sources of uncertainty of a mean over k seeds scored on the
    same test examples: the seeds' variation, ``t_{0.975, k-1} * sd / sqrt(k)`` (a t-interval
    over the seed means, which narrows as seeds are added), and the test sample's, the mean
    over seeds of each seed's own lower and upper half-width (Wilson or bootstrap; it does not
    narrow with seeds, which reuse the same examples). The two add in quadrature on each side.
    Seeds that agree therefore give one seed's interval, however many of them there are.
    ``unit``: the number is a proportion, and the interval is kept within [0, 1]; where every
    seed's interval is non-negative (norms, ratios), so is the combined one."""
    present = [s for s in stats if s is not None]
    if not present:
        return None
    values = [s["value"] for s in present]
    k = len(values)
    mean = sum(values) / k
    sd = statistics.stdev(values) if k > 1 else None
    ns = [s["n"] for s in present if s.get("n") is not None]
    have_ci = all(s.get("ci_low") is not None and s.get("ci_high") is not None
                  for s in present)
    lo = hi = None
    if have_ci and k == 1:
        lo, hi = present[0]["ci_low"], present[0]["ci_high"]
    elif have_ci:
        seed_hw = _t975(k - 1) * sd / math.sqrt(k)
        down = sum(s["value"] - s["ci_low"] for s in present) / k
        up = sum(s["ci_high"] - s["value"] for s in present) / k
        lo, hi = mean - math.hypot(seed_hw, down), mean + math.hypot(seed_hw, up)
        if unit:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        elif all(s["ci_low"] >= 0 for s in present):
            lo = max(lo, 0.0)  # a norm, ratio or count: no seed's interval reaches below 0
    out = {"value": mean, "ci_low": lo, "ci_high": hi,
           "n": min(ns) if ns else None, "seeds": k, "sd": sd}
    if k > 1:
        out["seed_values"] = values
    for key in present[0]:
        if key not in out and key not in ("seed_values",):
            vals = [s.get(key) for s in present]
            if all(v == vals[0] for v in vals):
                out[key] = vals[0]
    return out


def _mean_or_none(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else None


def _closest(records: list[dict], eps: float) -> list[dict]:
    """The records at the eps closest to ``eps`` (the larger eps on a tie)."""
    with_eps = [r for r in records if _finite(r.get("eps"))]
    if not with_eps:
        return []
    best = min(with_eps, key=lambda r: (abs(r["eps"] - eps), -r["eps"]))["eps"]
    return [r for r in with_eps if r["eps"] == best]


# -- plugin metadata -------------------------------------------------------------------------------

def _paper(registry: Registry | None, defense: str) -> str:
    if registry is None:
        return ""
    papers = []
    for part in defense.split("+"):
        try:
            p = getattr(registry.entry("defenses", part.strip()).cls, "paper", "") or ""
        except Exception:
            p = ""
        if p and p not in papers:
            papers.append(str(p))
    return "; ".join(papers)


def _attack_norm(registry: Registry | None, name: str | None) -> str:
    if registry is None or not name:
        return "linf"
    try:
        return registry.entry("attacks", name).cls.threat_model.norm
    except Exception:
        return "linf"


def _slug(dataset: str, arch: str, defense: str, params: str) -> str:
    """A file name for a row's detail page: readable, and safe whatever plugins call things."""
    text = re.sub(r"[^a-z0-9]+", "-", f"{dataset}-{arch}-{defense}".lower()).strip("-")[:60]
    digest = hashlib.sha256(json.dumps([dataset, arch, defense, params]).encode()).hexdigest()
    return f"{text or 'model'}-{digest[:10]}"


# -- tables ----------------------------------------------------------------------------------------

def _seed_entry(model: _Model, head: dict, registry: Registry | None) -> dict[str, Any]:
    """One seed's numbers for one table (the headline record ``head`` fixes norm and eps)."""
    rs = model.records
    arch = model.key[1]
    norm, eps = head["extra"].get("norm", "linf"), head["eps"]
    wb = [r for r in rs if r["protocol"] == "white-box"]

    def one(protocol: str, metric: str, pred=lambda r: True) -> dict | None:
        return next((r for r in rs if r["protocol"] == protocol and r["metric"] == metric
                     and pred(r)), None)

    clean = one("white-box", "accuracy")
    near_eps = lambda r: _finite(r.get("eps")) and abs(r["eps"] - eps) < 1e-12  # noqa: E731
    headline_rs = {r["metric"]: r for r in rs if r["protocol"] == "headline" and near_eps(r)
                   and (r["extra"] or {}).get("norm", "linf") == norm}
    headline = headline_rs.get("headline_accuracy")
    per_attack = {m["attack"]: _stat(m) for m in wb if m["metric"] == "robust_accuracy"
                  and m["eps"] == eps and m["extra"].get("norm", norm) == norm}
    # black-box: worst case over substitutes and attacks, if those attacks have this norm
    bb = [r for r in rs if r["protocol"] == "black-box"]
    sources = {r["extra"].get("source_attack") or str(r["attack"]).split("@")[0]
               for r in bb if r["metric"] == "transfer_accuracy"}
    black_box = None
    if all(_attack_norm(registry, a) == norm for a in sources):
        near = _closest([r for r in bb if r["metric"] == "worst_transfer_accuracy"], eps)
        if near:
            black_box = _stat(near[0], eps=near[0]["eps"])
    # ensemble transfer: "Adv." per ensemble size at the eps closest to the headline
    et = [r for r in rs if r["protocol"] == "ensemble-transfer"]
    ensemble: dict[str, dict | None] = {}
    kept: dict[str, float] = {}
    by_size: dict[int, list[dict]] = defaultdict(list)
    for r in et:
        if r["metric"] in ("adv_accuracy", "kept") and \
                _attack_norm(registry, str(r["attack"]).split("@")[0]) == norm:
            try:
                by_size[int(r["extra"].get("members", 0))].append(r)
            except (TypeError, ValueError):
                continue
    for size, recs in sorted(by_size.items()):
        own = [r for r in recs if _member_arch(r) == arch]
        near = _closest(own or recs, eps)
        adv = next((r for r in near if r["metric"] == "adv_accuracy"), None)
        k = next((r for r in near if r["metric"] == "kept"), None)
        at = near[0]["eps"] if near else None
        ensemble[str(size)] = _stat(adv, eps=at, kept=k["value"] if k else None)
        if k is not None:
            kept[str(size)] = float(k["value"])
    ref_acc = [r for r in rs if r["protocol"] == "minimal-perturbation"
               and r["metric"] == "accuracy_at_eps_ref"]
    at_ref = next((r for r in ref_acc if _finite(r["extra"].get("fraction"))
                   and abs(r["extra"]["fraction"] - 1.0) < 1e-9), None)
    cost = {r["metric"]: r for r in rs if r["protocol"] == "training-cost"}
    flags = [{"name": r["metric"].removeprefix("flag_"), "raised": r["value"] >= 0.5,
              "detail": str(r["extra"].get("detail", "")),
              "summary": str(r["extra"].get("summary") or r["metric"].removeprefix("flag_"))}
             for r in rs if _is_sanity(r) and r["metric"].startswith("flag_")]
    groups = (headline or {}).get("extra", {}).get("attacks") or {}
    return {
        "clean_accuracy": _stat(clean), "robust_accuracy": _stat(head),
        "headline": _stat(headline, attacks=groups) if headline else None,
        "white_box": _stat(headline_rs.get("white_box_only_accuracy")),
        "score_based": _stat(headline_rs.get("score_only_accuracy")),
        "transfer": _stat(headline_rs.get("transfer_only_accuracy")),
        "_bits": record_outcomes(headline),
        "per_attack": per_attack, "black_box": black_box, "ensemble": ensemble,
        "ensemble_kept": kept,
        "rho_2": _stat(one("minimal-perturbation", "rho_2")),
        "empirical_robustness": _stat(one("minimal-perturbation", "empirical_robustness")),
        "accuracy_at_eps_ref": _stat(at_ref, eps=at_ref["eps"]) if at_ref else None,
        "loss_sensitivity": _stat(one("loss-sensitivity", "loss_sensitivity")),
        "overhead_interval": _stat(cost.get("overhead")),
        **{k: (float(cost[k]["value"]) if k in cost and _finite(cost[k]["value"]) else None)
           for k in ("median_epoch_seconds", "overhead", "passes_per_example", "data_copies")},
        "flags": flags,
    }


def _is_sanity(r: dict) -> bool:
    """Records of the sanity-flag cells (``sanity``, ``sanity-minimal``)."""
    return r["protocol"] == "sanity" or str(r["protocol"]).startswith("sanity-")


def _member_arch(r: dict) -> str | None:
    """The ensemble members' architecture of an ensemble-transfer record (``extra``, else the
    ``<attack>@<arch>x<size>`` label)."""
    if r["extra"].get("member_architecture"):
        return str(r["extra"]["member_architecture"])
    label = str(r["attack"] or "")
    return label.split("@", 1)[1].rsplit("x", 1)[0] if "@" in label else None


def _aggregate_row(entries: list[tuple[int, dict]]) -> dict[str, Any]:
    """Aggregate the seeds' entries of one row."""
    es = [e for _, e in entries]
    out: dict[str, Any] = {}
    for k in ("clean_accuracy", "robust_accuracy", "headline", "white_box", "score_based",
              "transfer", "black_box", "accuracy_at_eps_ref"):
        out[k] = aggregate([e[k] for e in es], unit=True)
    for k in ("rho_2", "empirical_robustness", "loss_sensitivity", "overhead_interval"):
        out[k] = aggregate([e[k] for e in es])
    out["per_attack"] = {a: aggregate([e["per_attack"].get(a) for e in es], unit=True)
                         for a in sorted({a for e in es for a in e["per_attack"]})}
    sizes = sorted({s for e in es for s in e["ensemble"]}, key=int)
    out["ensemble"] = {s: aggregate([e["ensemble"].get(s) for e in es], unit=True)
                       for s in sizes}
    out["ensemble_kept"] = {s: _mean_or_none([e["ensemble_kept"].get(s) for e in es])
                            for s in sizes}
    for k in ("median_epoch_seconds", "overhead", "passes_per_example", "data_copies"):
        out[k] = _mean_or_none([e[k] for e in es])
    raised: dict[str, list[str]] = defaultdict(list)
    for seed, e in entries:
        for f in e["flags"]:
            if f["raised"]:
                prefix = f"seed {seed}: " if len(entries) > 1 else ""
                raised[f["name"]].append(prefix + f["detail"])
    summaries = {f["name"]: f["summary"] for _, e in entries for f in e["flags"]}
    out["flags"] = [{"name": n, "detail": "; ".join(d), "summary": summaries.get(n, n)}
                    for n, d in sorted(raised.items())]
    # per seed, the headline's per-example outcomes (the paired comparison of the ranking)
    out["_bits"] = {seed: e["_bits"] for seed, e in entries if e["_bits"] is not None}
    out["sanity_checked"] = any(e["flags"] for e in es)
    return out


def _build_tables(col: _Collected, registry: Registry | None) -> list[dict[str, Any]]:
    grouped: dict[tuple, dict[tuple, list[tuple[int, dict]]]] = defaultdict(
        lambda: defaultdict(list))
    references = {m.reference for m in col.models.values() if m.reference}
    is_reference: set[tuple] = set()
    for key, model in col.models.items():
        heads = [m for m in model.records if m["protocol"] == "white-box"
                 and m["metric"] == "worst_case_accuracy" and m["extra"].get("headline")]
        dataset, arch, defense, params, seed = key
        for head in heads:
            tkey = (dataset, head["extra"].get("norm", "linf"), head["eps"])
            grouped[tkey][(dataset, arch, defense, params)].append(
                (seed, _seed_entry(model, head, registry)))
        if key in references:
            is_reference.add((dataset, arch, defense, params))
    out = []
    for (dataset, norm, eps), rows_by in sorted(grouped.items(),
                                                 key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        rows = []
        for (dataset_, arch, defense, params), entries in rows_by.items():
            entries.sort(key=lambda e: e[0])
            slug = _slug(dataset_, arch, defense, params)
            row = {"id": slug, "defense": defense, "params": json.loads(params),
                   "paper": _paper(registry, defense), "architecture": arch,
                   "seeds": [s for s, _ in entries], "n_seeds": len(entries),
                   "reference": (dataset_, arch, defense, params) in is_reference,
                   **_aggregate_row(entries),
                   "detail": {"html": f"{DETAILS_DIR}/{slug}.html",
                              "md": f"{DETAILS_DIR}/{slug}.md"}}
            rows.append(row)
        rank_rows(rows)
        out.append({"dataset": dataset, "threat_model": norm, "eps": eps, "rows": rows,
                    "attacks": sorted({a for r in rows for a in r["per_attack"]})})
    return out


def _above(a: dict | None, b: dict | None) -> bool:
    """a's interval lies entirely above b's."""
    return bool(a and b and a.get("ci_low") is not None and b.get("ci_high") is not None
                and a["ci_low"] > b["ci_high"])


RANK_ALPHA = 0.05


def ranking_stat(row: dict) -> dict:
    """The number a row is ranked by: its headline, else (a store without headline cells) the
    white-box worst case."""
    return row.get("headline") or row["robust_accuracy"]


def _significantly_better(a: dict, b: dict) -> bool:
    """Row ``a`` beats row ``b`` on the ranking number: by the exact McNemar test of
    :func:`advarena.stats.mcnemar_exact` on the per-example outcomes (pooled over
    the seeds both rows have, which are the same examples), two-sided, at ``RANK_ALPHA``;
    where the outcomes cannot be paired, by interval separation."""
    bits_a, bits_b = a.get("_bits") or {}, b.get("_bits") or {}
    seeds = sorted(set(bits_a) & set(bits_b))
    sa, sb = ranking_stat(a), ranking_stat(b)
    if seeds and len(seeds) == len(a.get("seeds") or seeds) == len(b.get("seeds") or seeds) \
            and all(len(bits_a[s]) == len(bits_b[s]) for s in seeds):
        only_a = sum(x and not y for s in seeds for x, y in zip(bits_a[s], bits_b[s]))
        only_b = sum(y and not x for s in seeds for x, y in zip(bits_a[s], bits_b[s]))
        return only_a > only_b and mcnemar_exact(only_b, only_a) < RANK_ALPHA
    return _above(sa, sb)


def _beats(a: dict, b: dict) -> bool:
    """Whether row ``a`` ranks above row ``b`` (the rule in :func:`rank_rows`)."""
    fa, fb = bool(a.get("flags")), bool(b.get("flags"))
    if fa and not fb:
        return _above(ranking_stat(a), ranking_stat(b))  # a flagged row must clear b
    if fb and not fa:
        return not _above(ranking_stat(b), ranking_stat(a))
    return _significantly_better(a, b)


def rank_rows(rows: list[dict]) -> None:
    """Rank and order the rows of one table, in place.

    The rule (stated on the leaderboards too): every row is ranked by its headline accuracy.
    Row A is above row B when A is significantly better by the exact McNemar test on the
    per-example headline outcomes (every row is scored on the same examples; two-sided, alpha
    0.05 per pair, as ``advarena compare``); rows neither of which is significantly better
    share a rank. A row with a raised sanity flag (an unreliable evaluation) is above an
    unflagged row only if its headline interval lies entirely above the unflagged row's
    (it "clears" it); otherwise it is below it. A row's rank is 1 + the number of rows above
    it, raised where needed so that it is ranked below every row above it (the paired test is
    not transitive). Rows are listed by rank, then by headline accuracy.
    """
    above = {id(r): [o for o in rows if o is not r and _beats(o, r)] for r in rows}
    for r in rows:
        r["rank"] = 1 + len(above[id(r)])
    for _ in range(len(rows)):  # longest path; the relation has no cycle on equal n
        changed = False
        for r in rows:
            need = max([r["rank"], *(o["rank"] + 1 for o in above[id(r)])])
            if need != r["rank"]:
                r["rank"], changed = need, True
        if not changed:
            break
    rows.sort(key=lambda r: (r["rank"], -ranking_stat(r)["value"], r["defense"],
                             json.dumps(r["params"], sort_keys=True), r["architecture"]))


def build_tables(store: Store, registry: Registry | None = None) -> list[dict[str, Any]]:
    """One table per (dataset, threat model, headline eps): rows of defenses (seeds
    aggregated) with their numbers, ranked by worst-case white-box accuracy at the headline eps.

    A rank is 1 + the number of rows whose interval lies entirely above this row's, so rows whose
    intervals overlap share a rank instead of being shown in an order the data do not support.
    """
    return _build_tables(_collect(store), registry)


# -- detail pages ----------------------------------------------------------------------------------

def _extra_text(extra: dict) -> str:
    parts = []
    for k, v in sorted(extra.items()):
        if k in _BULKY_EXTRA:
            continue
        if isinstance(v, bool):
            if v:
                parts.append(k)
        elif isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (str, int)):
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _build_details(col: _Collected, tables: list[dict],
                   registry: Registry | None) -> list[dict[str, Any]]:
    rows_by_id: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for t in tables:
        for r in t["rows"]:
            rows_by_id[r["id"]].append((t, r))
    models_by_row: dict[tuple, list[_Model]] = defaultdict(list)
    for key, m in col.models.items():
        models_by_row[key[:4]].append(m)
    slug_of = {k: _slug(*k) for k in models_by_row}
    details = []
    for row_key, models in sorted(models_by_row.items()):
        slug = slug_of[row_key]
        if slug not in rows_by_id:
            continue  # no white-box headline: not on a leaderboard
        models.sort(key=lambda m: m.key[4])
        first = rows_by_id[slug][0][1]
        dataset, arch, defense, params = row_key
        ref_keys = {m.reference for m in models if m.reference}
        ref_rows = {k[:4] for k in ref_keys}
        reference = None
        if ref_rows:
            rk = sorted(ref_rows)[0]
            reference = {"defense": rk[2], "params": json.loads(rk[3]), "id": slug_of.get(rk)}
        provenance = []
        plugins: dict[tuple, None] = {}
        versions: dict[str, set] = defaultdict(set)
        for m in models:
            cell_rows = []
            train = col.cells.get(m.train_key or "") or {}
            weights = col.store.artifacts(m.train_key) if m.train_key else {}
            for role, ck in [("train", m.train_key)] + sorted(m.cells.items()):
                c = col.cells.get(ck or "")
                if not c:
                    continue
                prov = c.get("provenance") or {}
                cell_rows.append({"role": role, "key": ck, "device": c.get("device") or "",
                                  "device_name": str(prov.get("device_name", "")),
                                  "run_id": c.get("run_id") or "",
                                  "seconds": c.get("seconds")})
                for v_name, v in (prov.get("versions") or {}).items():
                    versions[str(v_name)].add(str(v))
                for kind, entries in sorted((prov.get("plugins") or {}).items()):
                    for e in entries if isinstance(entries, list) else []:
                        plugins[(str(kind), str(e.get("name", "")),
                                 str(e.get("distribution", "")), str(e.get("version", "")))] \
                            = None
            provenance.append({"seed": m.key[4], "train_key": m.train_key,
                               "weights": dict(sorted(weights.items())),
                               "device": train.get("device") or "", "cells": cell_rows})
        metrics = []
        for m in models:
            for r in sorted(m.records, key=lambda r: (r["protocol"], r["metric"],
                                                      str(r["attack"] or ""),
                                                      r["eps"] if _finite(r["eps"]) else -1)):
                metrics.append({
                    "seed": r["seed"], "protocol": r["protocol"], "metric": r["metric"],
                    "attack": r["attack"] or "", "eps": r["eps"] if _finite(r["eps"]) else None,
                    "value": r["value"] if _finite(r["value"]) else None,
                    "ci_low": r["ci_low"] if _finite(r["ci_low"]) else None,
                    "ci_high": r["ci_high"] if _finite(r["ci_high"]) else None,
                    "n": r["n"], "accuracy": r["metric"] in ACCURACY_METRICS,
                    "unit": printable(str(r["extra"]["unit"])) if r["extra"].get("unit")
                    else "",
                    "note": r["extra"].get("detail", "") if _is_sanity(r)
                    else _extra_text({k: v for k, v in r["extra"].items() if k != "unit"})})
        flags = []
        for m in models:
            for r in m.records:
                if _is_sanity(r) and r["metric"].startswith("flag_"):
                    flags.append({"seed": m.key[4], "name": r["metric"].removeprefix("flag_"),
                                  "raised": r["value"] >= 0.5,
                                  "detail": str(r["extra"].get("detail", ""))})
        flags.sort(key=lambda f: (not f["raised"], f["name"], f["seed"]))
        details.append({
            "id": slug, "defense": defense, "params": json.loads(params),
            "params_list": _params_list(json.loads(params),
                                        defaults=_resolved_defaults(registry, dataset, defense,
                                                                    json.loads(params))),
            "paper": first["paper"],
            "dataset": dataset, "architecture": arch,
            "seeds": [m.key[4] for m in models], "reference": reference,
            "is_reference": first.get("reference", False),
            "ranks": [{"dataset": t["dataset"], "threat_model": t["threat_model"],
                       "eps": t["eps"], "rank": r["rank"], "of": len(t["rows"]),
                       "robust_accuracy": r["robust_accuracy"],
                       "headline": ranking_stat(r), "flagged": bool(r.get("flags")),
                       "clean_accuracy": r["clean_accuracy"]} for t, r in rows_by_id[slug]],
            "flags": flags,
            "provenance": provenance,
            "plugins": [dict(zip(("kind", "name", "distribution", "version"), p))
                        for p in sorted(plugins)],
            "versions": {k: sorted(v) for k, v in sorted(versions.items())},
            "metrics": metrics, "plots": [], "plot_notes": [],
        })
    return details


def build_details(store: Store, tables: list[dict] | None = None,
                  registry: Registry | None = None) -> list[dict[str, Any]]:
    """One detail record per leaderboard row: parameters, provenance (cells, devices, package
    and plugin versions, weight hashes), sanity flags and every metric of every seed. Plots are
    added by :func:`write_leaderboards`, which draws them."""
    col = _collect(store)
    return _build_details(col, tables if tables is not None else _build_tables(col, registry),
                          registry)


# -- plots -----------------------------------------------------------------------------------------

def _draw_plots(col: _Collected, detail: dict, plot_dir: Path, fmt: str,
                registry: Registry | None) -> None:
    """Draw a detail page's plots into ``plot_dir``; record them (relative to the details
    directory) in ``detail["plots"]``, and why a plot is missing in ``plot_notes``."""
    from . import plots

    models = sorted((m for k, m in col.models.items()
                     if k[:4] == (detail["dataset"], detail["architecture"], detail["defense"],
                                  json.dumps(detail["params"], sort_keys=True))),
                    key=lambda m: m.key[4])
    records = [r for m in models for r in m.records]
    reference = [r for m in models if m.reference for r in col.models[m.reference].records]
    if detail.get("is_reference"):
        reference = []
    plot_dir.mkdir(parents=True, exist_ok=True)
    title = f"white-box accuracy, {detail['dataset']}"
    jobs = [
        ("accuracy-eps", "Accuracy against eps per white-box attack (001 Fig. 3-5)",
         lambda p: plots.accuracy_against_eps(records, reference, p, title)),
        ("transfer", "Transfer: black-box accuracy under each attack crafted on a substitute "
                     "model (\"fgsm from fgsm-at substitute\": FGSM run on a substitute trained "
                     "with fgsm-at, its outputs fed to this model), and ensemble transfer "
                     "(\"Adv.\" accuracy per ensemble size); black ticks: the reference",
         lambda p: plots.transfer_bars(records, reference, p)),
        ("loss-eps", "Loss against FGSM eps (000 Fig. 6)",
         lambda p: plots.loss_against_eps(records, reference, p)),
        ("loss-landscape", "Loss landscape (000 Fig. 5)",
         lambda p: plots.loss_landscape(records, reference, p)),
        ("training-curve", "Validation accuracy per epoch and against wall-clock training "
                           "time (000 Fig. 4)",
         lambda p: plots.training_curve(records, reference, p)),
    ]
    for name, caption, draw in jobs:
        path = plot_dir / f"{name}.{fmt}"
        if draw(path) is not None:
            detail["plots"].append({"file": f"{plot_dir.name}/{path.name}", "caption": caption})
    boundary = _decision_boundary(col, models, detail, plot_dir / f"decision-boundary.{fmt}",
                                  registry)
    if isinstance(boundary, Path):
        detail["plots"].append({"file": f"{plot_dir.name}/{boundary.name}",
                                "caption": "Decision boundary and confidence contours, "
                                           "training points (001 Fig. 2)"})
    elif boundary:
        detail["plot_notes"].append(boundary)


def _decision_boundary(col: _Collected, models: list[_Model], detail: dict, path: Path,
                       registry: Registry | None) -> Path | str | None:
    """The decision-boundary plot of a 2-D dataset's model (first seed) beside the reference;
    a sentence saying why not, where it should exist but cannot be drawn; ``None`` for datasets
    that are not two-dimensional."""
    if registry is None or not models or models[0].train_key is None:
        return None
    try:
        cls = registry.get("datasets", detail["dataset"])
    except Exception:
        return None
    if getattr(cls, "family", "") != "toy" or getattr(cls, "needs_data_dir", False):
        return None
    import torch

    from ..runner import Environment
    from . import plots

    model = models[0]
    try:
        # Building a network draws its initial weights: keep the caller's RNG state as it was.
        with torch.random.fork_rng(devices=[]):
            env = Environment(registry, col.store, torch.device("cpu"))
            spec = env.train_spec(model.train_key)
            splits = env.splits(spec["dataset"])
            if tuple(splits.info.input_shape) != (2,):
                return None
            panels = [(f"{detail['defense']} (seed {model.key[4]})",
                       env.load_classifier(model.train_key))]
            if model.reference_train_key and model.reference_train_key != model.train_key \
                    and not detail.get("is_reference"):
                ref = col.models.get(model.reference)
                panels.append((f"reference: {ref.key[2] if ref else 'reference'}",
                               env.load_classifier(model.reference_train_key)))
            return plots.decision_boundary(panels, splits.train.x, splits.train.y,
                                           splits.info.bounds, path)
    except Exception as exc:  # a missing plugin or weight file must not stop the leaderboard
        return f"decision boundary not drawn: {type(exc).__name__}: {exc}"


# -- rendering -------------------------------------------------------------------------------------

# (id, header, explanation, kind): kind "acc" is an accuracy in %, "mean" a mean with a
# bootstrap interval, "ratio" the overhead, "plain" a bare number.
_COLUMNS = [
    ("clean_accuracy", "clean", "clean accuracy (%)", "acc"),
    ("headline", "headline", "worst case over every bounded attack at the headline eps (%): "
     "the white-box gradient attacks (every loss), the score-based attacks and the black-box "
     "transfer attacks; an example counts only if every attack failed on it; the ranking "
     "column (without a headline cell: the white-box worst case)", "head"),
    ("white_box", "white-box", "worst case over the white-box gradient attacks alone at the "
     "headline eps (%)", "acc"),
    ("score_based", "score-based", "worst case over the score-based attacks alone (no "
     "gradients, e.g. Square) at the headline eps (%)", "acc"),
    ("black_box", "transfer", "worst case over the black-box transfer attacks alone (%), "
     "crafted on substitutes, at the headline eps (else at the eps closest to it)", "acc"),
    ("ensemble", "Adv. ×", 'ensemble transfer "Adv." accuracy (%) on the examples every '
     "member misclassifies, at the eps closest to the headline (000 Table II)", "acc"),
    ("rho_2", "ρ₂", "mean ||Δ||₂/||x||₂ under DeepFool (002 eq. 7)", "mean"),
    ("empirical_robustness", "emp. rob.", "mean ||Δ||₂/||x||₂ under minimal FGSM (001 eq. 2)",
     "mean"),
    ("accuracy_at_eps_ref", "acc. @ eps_ref", "accuracy (%) under FGSM at 1.0 eps_ref, the eps "
     "that fools the reference on half the examples (002 sec. 4)", "acc"),
    ("loss_sensitivity", "loss sens.", "mean input-gradient norm of the loss (001 sec. 4.1)",
     "mean"),
    ("overhead_interval", "overhead", "median epoch time against the undefended reference, "
     "same cell and device (range over repeats)", "ratio"),
    ("passes_per_example", "passes", "forward + backward passes per original training example "
     f"and epoch; unit: {PASS_UNIT} (a forward pass is one example pushed through the network, "
     "a backward pass one example's gradient flowing back)", "plain"),
]


# column -> (its field, the field shown where the row has no headline cell)
_FALLBACK = {"headline": ("headline", "robust_accuracy"),
             "white_box": ("white_box", "robust_accuracy"),
             "black_box": ("transfer", "black_box")}


def _fmt_num(v: float | None, spec: str = ".3g") -> str:
    return "–" if v is None or not _finite(v) else format(v, spec)


def _cell(stat: dict | None, kind: str, n_seeds: int = 1) -> dict[str, Any]:
    """What a table cell shows: ``text``, ``ci``, ``spread`` strings, ``sort`` number, ``title``.
    ``n_seeds``: the row's seeds (a number resting on fewer says so)."""
    if kind == "plain":
        v = stat if _finite(stat) else None
        return {"text": _fmt_num(v, ".1f"), "ci": "", "spread": "", "sort": v, "title": ""}
    if not stat:
        return {"text": "–", "ci": "", "spread": "", "sort": None, "title": ""}
    acc = kind in ("acc", "head")
    scale = 100.0 if acc else 1.0
    fmt = ".1f" if acc else (".2f" if kind == "ratio" else ".3g")
    text = format(scale * stat["value"], fmt) + ("×" if kind == "ratio" else "")
    ci = ""
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        ci = f"[{format(scale * stat['ci_low'], fmt)}, {format(scale * stat['ci_high'], fmt)}]"
    spread = ""
    seeds = stat.get("seeds", 1)
    if seeds > 1 and stat.get("sd") is not None:
        spread = f"±{format(scale * stat['sd'], fmt)}"
    if seeds < n_seeds:
        spread += f"{', ' if spread else ''}{seeds} of {n_seeds} seeds"
    title = []
    if seeds > 1:
        title.append(f"mean of {seeds} seeds ± standard deviation across seeds")
    if _finite(stat.get("eps")):
        title.append(f"eps {stat['eps']:.4g}")
    if stat.get("kept") is not None:
        title.append(f"{stat['kept']:g} examples kept")
    if stat.get("n") is not None:
        title.append(f"n = {stat['n']}")
    return {"text": text, "ci": ci, "spread": spread, "sort": stat["value"],
            "title": ", ".join(title)}


def _params_text(p: Any) -> str:
    if not isinstance(p, dict) or not p:
        return "defaults"

    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict):
                out += flat(v, f"{prefix}{k}.")
            elif v is not None:
                out.append(f"{prefix}{k}={_short(v)}")
        return out

    return ", ".join(flat(p)) or "defaults"


def _params_list(p: Any, prefix: str = "", defaults: dict[str, str] | None = None
                 ) -> list[list[str]]:
    """Parameters as ``[name, value]`` pairs, nested ones (compositions) as ``part.name``. A
    ``None`` value is a plugin's "the paper's value for this dataset family": ``defaults``
    (from :func:`_resolved_defaults`) says which value that was, or what the rule is."""
    if not isinstance(p, dict):
        return []
    defaults = defaults or {}
    out = []
    for k, v in p.items():
        if isinstance(v, dict):
            out += _params_list(v, f"{prefix}{k}.", defaults)
        else:
            name = f"{prefix}{k}"
            out.append([name, defaults.get(name, "default") if v is None else _short(v)])
    return out


def _resolved_defaults(registry: Registry | None, dataset: str, defense: str,
                       params: Any) -> dict[str, str]:
    """For each ``None`` parameter of a defense, the value it stood for on ``dataset``: the
    plugin's ``<name>_for(info)`` (advarena's convention for dataset-family defaults, also on a
    composition's parts), else its help text. Nothing is trained or loaded; any failure of a
    plugin here leaves the plain "default"."""
    import types

    if registry is None or not isinstance(params, dict):
        return {}
    try:
        family = getattr(registry.get("datasets", dataset), "family", None)
    except Exception:
        family = None
    info = types.SimpleNamespace(family=family, name=dataset)
    parts = defense.split("+")
    out: dict[str, str] = {}
    for part in parts:
        own = params.get(part) if len(parts) > 1 else params
        prefix = f"{part}." if len(parts) > 1 else ""
        if not isinstance(own, dict):
            continue
        try:
            cls = registry.get("defenses", part.strip())
            plugin = cls(**own)
        except Exception:
            continue
        helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
        pieces = [plugin]
        try:
            pieces += list(plugin.parts()) if hasattr(plugin, "parts") else []
        except Exception:
            pass
        for name, value in own.items():
            if value is not None:
                continue
            text = None
            for piece in pieces:
                rule = getattr(piece, f"{name}_for", None)
                if callable(rule) and family is not None:
                    try:
                        text = f"{_short(rule(info))} ({family}-family default)"
                        break
                    except Exception:
                        continue
            if text is None:
                text = f"default ({printable(helps.get(name) or 'the plugin decides')})"
            out[prefix + name] = text
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    return str(v)


def _eps_list(values: set) -> str:
    return ", ".join(f"{v:.4g}" for v in sorted(v for v in values if _finite(v)))


def _table_view(t: dict) -> dict[str, Any]:
    """A table as the templates show it: the columns that hold a number in some row, and per
    row the cells in that order. Accepts hand-made table dicts with only the older fields."""
    rows = t.get("rows", [])
    sizes = sorted({s for r in rows for s in (r.get("ensemble") or {})}, key=int)
    columns, getters = [], []
    for cid, header, help_, kind in _COLUMNS:
        if cid == "ensemble":
            for s in sizes:
                eps = {(r.get("ensemble") or {}).get(s, {}).get("eps") for r in rows
                       if (r.get("ensemble") or {}).get(s)}
                columns.append({"id": f"ensemble_{s}", "header": f"{header}{s}",
                                "help": f"{help_}; {s} member(s)", "kind": "acc",
                                "eps": _eps_list(eps)})
                getters.append((lambda r, s=s: (r.get("ensemble") or {}).get(s), "acc"))
            continue
        if cid in _FALLBACK:
            # a row without a headline cell (an older store): the white-box worst case and the
            # black-box worst transfer at the eps closest to the headline stand in
            def get(r, cid=cid):
                own, fallback = _FALLBACK[cid]
                st = r.get(own)
                if st is None and (own == "transfer" or r.get("headline") is None):
                    st = r.get(fallback)
                return st
        elif cid == "overhead_interval":
            def get(r):
                st = r.get("overhead_interval")
                if st is None and _finite(r.get("overhead")):
                    st = {"value": r["overhead"], "ci_low": None, "ci_high": None}
                return st
        else:
            def get(r, cid=cid):
                return r.get(cid)
        eps = {(get(r) or {}).get("eps") for r in rows if isinstance(get(r), dict)}
        columns.append({"id": cid, "header": header, "help": help_, "kind": kind,
                        "eps": _eps_list(eps) if cid == "black_box" else ""})
        getters.append((get, kind))
    keep = [i for i, (get, _) in enumerate(getters)
            if columns[i]["id"] in ("clean_accuracy", "headline")
            or any(get(r) is not None for r in rows)]
    view_rows = []
    for r in rows:
        view_rows.append({
            "row": r, "params_text": _params_text(r.get("params")),
            "cells": [_cell(getters[i][0](r), getters[i][1],
                            len(r.get("seeds") or [0])) for i in keep],
            "flags": r.get("flags") or [], "checked": r.get("sanity_checked"),
            "reasons": "; ".join(f.get("summary") or f.get("name", "")
                                 for f in r.get("flags") or []),
            "seeds": r.get("seeds") or ([r["seed"]] if "seed" in r else []),
            "tie": sum(1 for o in rows if o.get("rank") == r.get("rank")) > 1,
            "detail_html": (r.get("detail") or {}).get("html"),
            "detail_md": (r.get("detail") or {}).get("md"),
            "is_reference": bool(r.get("reference")), "paper": r.get("paper") or "",
        })
    return {"table": t, "columns": [columns[i] for i in keep], "rows": view_rows,
            "headline_note": _headline_note(rows)}


# The headline's attack groups (advarena.headline's ``extra["attacks"]``), as the page names them.
_GROUP_NAMES = (("white-box", "white-box gradient"), ("score", "score-based"),
                ("transfer", "black-box transfer"))


def _attack_label(group: str, name: str) -> str:
    """A transfer attack's ``fgsm@fgsm-at`` as "fgsm from the fgsm-at substitute"."""
    if group == "transfer" and "@" in name:
        attack, sub = name.split("@", 1)
        return f"{attack} from the {sub} substitute"
    return name


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _attack_labels(group: str, names: list[str]) -> list[str]:
    """The group's attacks as the page lists them; transfer attacks run from every substitute
    read "fgsm and ifgsm, each from the none and fgsm-at substitutes"."""
    if group != "transfer" or not all("@" in n for n in names):
        return [_attack_label(group, n) for n in names]
    subs: dict[str, list[str]] = {}
    for n in names:
        attack, sub = n.split("@", 1)
        subs.setdefault(attack, []).append(sub)
    common = next(iter(subs.values()))
    if len(subs) > 1 and all(sorted(v) == sorted(common) for v in subs.values()):
        return [f"{_and(list(subs))}, each from the {_and(common)} substitutes"]
    return [_attack_label(group, n) for n in names]


def _headline_note(rows: list[dict]) -> dict[str, Any] | None:
    """Which attacks and how many examples stand behind a table's headline column: per group,
    the attacks of every row's headline record (the union, and which rows lack some), and the
    examples' count(s)."""
    if not rows:
        return None
    heads = [(r.get("defense", ""), r.get("headline")) for r in rows]
    heads = [(d, h) for d, h in heads if isinstance(h, dict)]
    groups = []
    for key, title in _GROUP_NAMES:
        names: dict[str, int] = {}
        for _, h in heads:
            for a in (h.get("attacks") or {}).get(key) or []:
                names[str(a)] = names.get(str(a), 0) + 1
        if names:
            partial = [a for a, c in names.items() if c < len(heads)]
            groups.append({"name": title, "attacks": _attack_labels(key, list(names)),
                           "partial": len(partial)})
    lacking = sorted({d for d, h in heads for key, _ in _GROUP_NAMES
                      if not (h.get("attacks") or {}).get(key)
                      and any((o.get("attacks") or {}).get(key) for _, o in heads)})
    stand_in = [r.get("robust_accuracy") for r in rows if not isinstance(r.get("headline"), dict)]
    ns = sorted({h["n"] for h in [h for _, h in heads] + stand_in
                 if isinstance(h, dict) and isinstance(h.get("n"), int)})
    return {"n": ", ".join(str(n) for n in ns), "groups": groups, "lacking": lacking,
            "without": [r.get("defense", "") for r in rows if not isinstance(r.get("headline"),
                                                                               dict)]}


def _printable_value(value: Any) -> Any:
    if isinstance(value, markupsafe.Markup):  # already escaped HTML: stays markup
        return markupsafe.Markup(printable(value))
    return printable(value) if isinstance(value, str) else value


def _env() -> jinja2.Environment:
    # finalize: every value a template prints has its control characters escaped (HTML gets
    # jinja's autoescape on top; Markdown the |md filter).
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("advarena", "report/templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=True),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
        finalize=_printable_value)

    def pct(stat: dict | None) -> str:
        return "–" if not stat else f"{100 * stat['value']:.1f}"

    def ci(stat: dict | None) -> str:
        if not stat or stat.get("ci_low") is None:
            return ""
        return f"[{100 * stat['ci_low']:.1f}, {100 * stat['ci_high']:.1f}]"

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "–" if v is None else format(v, fmt)

    def eps(v: float | None) -> str:
        return "–" if v is None or not _finite(v) else f"{v:.4g}"

    def sortkey(v: Any) -> str:
        return "" if v is None or not _finite(v) else repr(float(v))

    def value(m: dict, which: str = "value") -> str:
        v = m.get(which)
        if v is None:
            return "–" if which == "value" else ""
        return f"{100 * v:.1f}" if m.get("accuracy") else f"{v:.4g}"

    def code(text: Any) -> str:
        # a code span for keys and hashes (nothing in it is interpreted); anything else as text
        s = str(text)
        return f"`{s}`" if re.fullmatch(r"[A-Za-z0-9._:+-]+", s) else _md(s)

    env.filters.update(pct=pct, ci=ci, num=num, params=_params_text, md=_md, eps=eps,
                       sortkey=sortkey, value=value, code=code)
    return env


def render_markdown(tables: list[dict], failures: list[dict] = (),
                    papers: list[dict] = ()) -> str:
    return _env().get_template("leaderboard.md.j2").render(
        tables=[_table_view(t) for t in tables], failures=list(failures), papers=list(papers))


def render_html(tables: list[dict], failures: list[dict] = (), papers: list[dict] = ()) -> str:
    return _env().get_template("leaderboard.html.j2").render(
        tables=[_table_view(t) for t in tables], failures=list(failures), papers=list(papers))


def papers_summary(store: Store) -> tuple[dict, list[dict]]:
    """The published tables whose suites ran in ``store`` (:mod:`advarena.report.papers`) and
    one summary line each for the leaderboard's "published results" section."""
    from .papers import build

    result = build(store)
    rows = [{"id": t["id"], "table": t["table"], "title": t["title"],
             "summary": t["summary"], "suites": t["suites_run"]} for t in result["tables"]]
    return result, rows


def render_detail_markdown(detail: dict) -> str:
    return _env().get_template("detail.md.j2").render(d=detail)


def render_detail_html(detail: dict) -> str:
    return _env().get_template("detail.html.j2").render(d=detail)


def _clean(v: Any) -> Any:
    """JSON-ready: non-finite floats become ``null``, tuples lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def render_json(tables: list[dict]) -> str:
    """One record per leaderboard row, with its table's dataset, threat model and eps."""
    rows = [{**{k: v for k, v in row.items() if not k.startswith("_")},
             "dataset": t["dataset"], "threat_model": t["threat_model"], "eps": t["eps"],
             "flagged": bool(row.get("flags"))}
            for t in tables for row in t["rows"]]
    return json.dumps(_clean(rows), indent=1, allow_nan=False)


# -- writing ---------------------------------------------------------------------------------------

def _remove_stale(details_dir: Path, keep: set[str]) -> None:
    """Remove detail pages and plot folders of rows no longer on the board (only names this
    module writes: ``<slug>-<10 hex>`` with ``.md``/``.html`` or as a folder)."""
    if not details_dir.is_dir():
        return
    for p in details_dir.iterdir():
        stem = p.name.rsplit(".", 1)[0] if p.is_file() else p.name
        if stem in keep or not _SLUG_TAIL.search(stem):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.is_file() and p.suffix in (".md", ".html"):
            p.unlink()


def write_leaderboards(store: Store, out_dir: str | Path, formats: tuple[str, ...] = (
        "md", "html", "json"), registry: Registry | None = None,
        plots: str | None = "png") -> dict[str, Path]:
    """Render the store's leaderboards into ``out_dir``; return the written paths by format
    (and ``details``: the folder of detail pages and plots, when md or html is written).

    ``plots``: ``png``, ``svg`` or ``None`` (no plots)."""
    for fmt in formats:
        if fmt not in ("md", "html", "json"):
            raise AdvarenaError(f"unknown leaderboard format '{fmt}'; use md, html or json")
    if plots not in (None, "none", *PLOT_FORMATS):
        raise AdvarenaError(f"unknown plot format '{plots}'; use png, svg or none")
    col = _collect(store)
    tables = _build_tables(col, registry)
    if not tables:
        raise AdvarenaError(f"the store at {store.root} holds no white-box results yet; run "
                            f"'advarena run' first")
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Failed cells (a plugin that raised, hung or broke its threat model) are listed, so a
        # run that was incomplete says so on the leaderboard.
        failures = store.failures()
        # Where a paper's suite ran in this store, its table (published beside measured) is
        # written next to the leaderboard and summarised in a section of it.
        papers, paper_rows = papers_summary(store)
        for fmt in formats:
            text = (render_json(tables) if fmt == "json" else
                    {"md": render_markdown, "html": render_html}[fmt](tables, failures,
                                                                      paper_rows))
            path = out_dir / f"leaderboard.{fmt}"
            path.write_text(text, encoding="utf-8")
            written[fmt] = path
            if paper_rows and fmt in ("md", "html"):
                from .papers import render_html as papers_html, render_markdown as papers_md

                page = out_dir / f"papers.{fmt}"
                page.write_text((papers_md if fmt == "md" else papers_html)(papers),
                                encoding="utf-8")
                written[f"papers-{fmt}"] = page
        page_formats = [f for f in formats if f in ("md", "html")]
        if page_formats:
            details_dir = out_dir / DETAILS_DIR
            details_dir.mkdir(exist_ok=True)
            details = _build_details(col, tables, registry)
            _remove_stale(details_dir, {d["id"] for d in details})
            for d in details:
                if plots in PLOT_FORMATS:
                    _draw_plots(col, d, details_dir / d["id"], plots, registry)
                for fmt in page_formats:
                    render = render_detail_markdown if fmt == "md" else render_detail_html
                    (details_dir / f"{d['id']}.{fmt}").write_text(render(d), encoding="utf-8")
            written["details"] = details_dir
    except OSError as exc:
        raise AdvarenaError(f"cannot write leaderboards to {out_dir} ({exc.strerror}); pass "
                            f"--out DIR naming a writable directory") from None
    return written
