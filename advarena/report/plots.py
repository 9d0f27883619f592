"""Plots of a leaderboard row's detail page, drawn with matplotlib's object API on the Agg canvas
(no pyplot, no global backend switch, nothing shown): each function takes metric records (as
:meth:`advarena.store.Store.metrics` returns them) and a path, writes one PNG or SVG file, and
returns the path, or ``None`` when the records hold nothing to draw.

Records of several seeds are averaged per point; the band is the envelope of the seeds'
intervals, as in the tables. The reference (undefended) model is drawn dashed for comparison.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Record = dict[str, Any]

# Deterministic output: no timestamps in the files, stable SVG ids, so re-rendering an unchanged
# store gives the same bytes (the committed leaderboards diff cleanly).
_RC = {"svg.hashsalt": "advarena", "font.size": 9, "axes.titlesize": 10,
       "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8,
       "legend.frameon": False}
_META = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22"]


def label(text: Any) -> str:
    """A plugin-supplied string as plain text for matplotlib: ``$`` would start mathtext (and a
    malformed formula would abort the plot)."""
    return str(text).replace("\\", "/").replace("$", r"\$").replace("\n", " ")[:80]


def _styled(fn):
    """Run a plot function under the module's style (restored afterwards: no global state is
    left changed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


def _save(fig: Figure, path: Path, tight: bool = False) -> Path:
    """Write ``fig``; ``tight`` for 3-D axes, which constrained layout does not fit (it costs
    one more draw)."""
    fmt = path.suffix.lstrip(".")
    FigureCanvasAgg(fig)
    fig.savefig(path, format=fmt, dpi=110, metadata=_META.get(fmt),
                bbox_inches="tight" if tight else None, pad_inches=0.15)
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _points(records: Iterable[Record], key) -> dict[Any, dict[float, tuple[float, float,
                                                                              float]]]:
    """Group records by ``key(record)`` then eps; per point the mean value over seeds and the
    envelope of their intervals."""
    acc: dict[Any, dict[float, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        k = key(r)
        if k is not None and _finite(r.get("eps")) and _finite(r.get("value")):
            acc[k][r["eps"]].append(r)
    out: dict[Any, dict[float, tuple[float, float, float]]] = {}
    for k, by_eps in acc.items():
        out[k] = {}
        for eps, rs in sorted(by_eps.items()):
            v = sum(r["value"] for r in rs) / len(rs)
            lows = [r["ci_low"] for r in rs if _finite(r.get("ci_low"))]
            highs = [r["ci_high"] for r in rs if _finite(r.get("ci_high"))]
            out[k][eps] = (v, min(lows) if lows else v, max(highs) if highs else v)
    return out


def _mean(records: Iterable[Record]) -> float | None:
    vals = [r["value"] for r in records if _finite(r.get("value"))]
    return sum(vals) / len(vals) if vals else None


def _line(ax, pts: dict[float, tuple[float, float, float]], colour: str, name: str,
          dashed: bool = False, scale: float = 1.0) -> None:
    xs = sorted(pts)
    ys = [scale * pts[x][0] for x in xs]
    if dashed:
        ax.plot(xs, ys, "--", color=colour, alpha=0.75, linewidth=1.2, label=name)
        return
    ax.plot(xs, ys, "-o", color=colour, markersize=3.5, linewidth=1.6, label=name)
    if len(xs) > 1:
        ax.fill_between(xs, [scale * pts[x][1] for x in xs], [scale * pts[x][2] for x in xs],
                        color=colour, alpha=0.15, linewidth=0)


@_styled
def accuracy_against_eps(records: list[Record], reference: list[Record], path: Path,
                         title: str = "") -> Path | None:
    """White-box accuracy against eps per attack and the worst case over attacks (001 Fig.
    3-5), one panel per norm; eps 0 is the clean accuracy. The reference is dashed."""

    def wb(rs):
        return [r for r in rs if r["protocol"] == "white-box"]

    def key(r):
        if r["metric"] in ("robust_accuracy", "worst_case_accuracy"):
            return (r["extra"].get("norm", "linf"), r["attack"])
        return None

    own, ref = _points(wb(records), key), _points(wb(reference), key)
    if not own:
        return None
    clean = _mean(r for r in wb(records) if r["metric"] == "accuracy")
    ref_clean = _mean(r for r in wb(reference) if r["metric"] == "accuracy")
    norms = sorted({n for n, _ in own})
    attacks = sorted({a for _, a in own if a != "worst-case"})
    colour = {a: COLOURS[i % len(COLOURS)] for i, a in enumerate(attacks)}
    colour["worst-case"] = "#111111"
    fig = _figure(4.6 * len(norms) + 1.6, 3.4)
    axes = fig.subplots(1, len(norms), squeeze=False)[0]
    for ax, norm in zip(axes, norms):
        for a in [*attacks, "worst-case"]:
            for pts, base, dashed in ((own.get((norm, a)), clean, False),
                                      (ref.get((norm, a)), ref_clean, True)):
                if not pts:
                    continue
                pts = dict(pts)
                if base is not None and 0.0 not in pts:
                    pts[0.0] = (base, base, base)
                name = ("worst case" if a == "worst-case" else label(a)) + (
                    " (reference)" if dashed else "")
                _line(ax, pts, colour[a], name, dashed=dashed, scale=100)
        ax.set_xlabel(f"eps ({label(norm)})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(label(title or "white-box accuracy against eps"))
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def transfer_label(r: Record) -> str:
    """``fgsm@fgsm-at`` (the black-box protocol's label: attack @ substitute's defense) as
    "fgsm\nfrom fgsm-at" (the panel title says what "from" means)."""
    attack = str(r["extra"].get("source_attack") or str(r["attack"]).split("@")[0])
    sub = (str(r["attack"]).split("@", 1)[1] if "@" in str(r["attack"])
           else str(r["extra"].get("substitute") or "").removeprefix("substitute-"))
    return f"{attack}\nfrom {sub}" if sub else attack


@_styled
def transfer_bars(records: list[Record], reference: list[Record], path: Path) -> Path | None:
    """Black-box transfer accuracy per substitute attack, and ensemble-transfer "Adv."
    accuracy per ensemble size, as grouped bars per eps; the reference as black ticks."""
    panels = []
    bb = ("black-box", "transfer_accuracy", transfer_label)
    def members(r):
        k = r["extra"].get("members", "?")
        arch = r["extra"].get("member_architecture")
        return f"{k} member{'' if k == 1 else 's'}" + (f"\n{arch}" if arch else "")

    ens = ("ensemble-transfer", "adv_accuracy", members)
    for protocol, metric, name in (bb, ens):
        def key(r, protocol=protocol, metric=metric, name=name):
            return name(r) if r["protocol"] == protocol and r["metric"] == metric else None
        own, ref = _points(records, key), _points(reference, key)
        if own:
            panels.append((protocol, own, ref))
    if not panels:
        return None
    fig = _figure(6.2, 3.0 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (protocol, own, ref) in zip(axes, panels):
        groups = sorted(own)
        eps_values = sorted({e for pts in own.values() for e in pts})
        width = 0.8 / max(1, len(eps_values))
        for j, eps in enumerate(eps_values):
            xs, ys, lo, hi = [], [], [], []
            for i, g in enumerate(groups):
                if eps in own[g]:
                    v, low, high = own[g][eps]
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(100 * v)
                    lo.append(100 * (v - low))
                    hi.append(100 * (high - v))
            ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=2, label=f"eps {eps:g}",
                   color=COLOURS[j % len(COLOURS)], alpha=0.85, error_kw={"linewidth": 0.8})
            rx = [i - 0.4 + width * (j + 0.5) for i, g in enumerate(groups)
                  if eps in ref.get(g, {})]
            ry = [100 * ref[g][eps][0] for g in groups if eps in ref.get(g, {})]
            if rx:
                ax.plot(rx, ry, linestyle="none", marker="_", markersize=12, color="#111111",
                        markeredgewidth=2, label="reference" if j == 0 else None)
        long = max(len(line) for g in groups for line in str(g).split("\n")) \
            * len(groups) > 60
        ax.set_xticks(range(len(groups)), [label(g) if "\n" not in str(g) else "\n".join(
            label(p) for p in str(g).split("\n")) for g in groups],
            rotation=20 if long else 0, ha="right" if long else "center")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title('black-box transfer: "fgsm from X" = FGSM crafted on a substitute '
                     "trained with defense X" if protocol == "black-box"
                     else 'ensemble transfer, "Adv." accuracy', fontsize=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


@_styled
def loss_against_eps(records: list[Record], reference: list[Record], path: Path) -> Path | None:
    """Mean loss on FGSM examples against eps (000 Fig. 6), reference dashed."""

    def key(r):
        return "loss" if r["protocol"] == "loss-sensitivity" and r["metric"] == "fgsm_loss" \
            else None

    own, ref = _points(records, key), _points(reference, key)
    if not own:
        return None
    fig = _figure(4.8, 3.2)
    ax = fig.subplots()
    _line(ax, own["loss"], COLOURS[0], "this model")
    if ref.get("loss"):
        _line(ax, ref["loss"], "#111111", "reference", dashed=True)
    ax.set_xlabel("FGSM eps")
    ax.set_ylabel("mean cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.set_title("loss against FGSM eps")
    ax.legend()
    return _save(fig, path)


def _landscape(records: list[Record]) -> tuple[list[float], list[list[float]]] | None:
    """The loss-landscape grid, averaged over seeds whose grids agree."""
    grids = [r["extra"] for r in records if r["protocol"] == "loss-sensitivity"
             and r["metric"] == "loss_landscape" and r["extra"].get("loss")]
    if not grids:
        return None
    steps = grids[0]["steps"]
    same = [g for g in grids if g.get("steps") == steps
            and len(g["loss"]) == len(grids[0]["loss"])]
    loss = [[sum(g["loss"][i][j] for g in same) / len(same) for j in range(len(steps))]
            for i in range(len(steps))]
    return steps, loss


@_styled
def loss_landscape(records: list[Record], reference: list[Record], path: Path) -> Path | None:
    """The loss surface along the model's own sign gradient and the reference's (000 Fig. 5),
    this model beside the reference on one z scale."""
    import numpy as np

    own = _landscape(records)
    if own is None:
        return None
    ref = _landscape(reference)
    surfaces = [("this model", own)] + ([("reference", ref)] if ref else [])
    zmax = max(max(max(row) for row in s[1]) for _, s in surfaces)
    fig = _figure(4.2 * len(surfaces), 3.8)
    for i, (name, (steps, loss)) in enumerate(surfaces):
        ax = fig.add_subplot(1, len(surfaces), i + 1, projection="3d")
        e1, e2 = np.meshgrid(steps, steps, indexing="ij")
        ax.plot_surface(e1, e2, np.asarray(loss), cmap="viridis", vmin=0, vmax=zmax,
                        linewidth=0, antialiased=True)
        ax.set_zlim(0, zmax * 1.05 if zmax > 0 else 1)
        ax.set_xlabel("e1 · sign grad (own)", fontsize=7)
        ax.set_ylabel("e2 · sign grad (reference)", fontsize=7)
        ax.set_zlabel("loss", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(f"loss landscape: {name}")
    return _save(fig, path, tight=True)


@_styled
def training_curve(records: list[Record], reference: list[Record], path: Path) -> Path | None:
    """Validation accuracy per epoch (000 Fig. 4 counts epochs) and against wall-clock training
    time (the cost the epochs took), one line per seed; the reference dashed. A curve point is
    one epoch: ``[cumulative seconds, validation accuracy]`` (advarena.trainer)."""

    def curves(rs):
        return [(r["seed"], r["extra"]["curve"]) for r in rs
                if r["protocol"] == "training-cost" and r["metric"] == "final_val_accuracy"
                and r["extra"].get("curve")]

    own, ref = curves(records), curves(reference)
    if not own:
        return None
    fig = _figure(8.4, 3.2)
    by_epoch, by_time = fig.subplots(1, 2, sharey=True)
    for seeds, style, colour, name in ((own, "-", COLOURS[0], "this model"),
                                       (ref, "--", "#111111", "reference")):
        for i, (seed, curve) in enumerate(seeds):
            pts = [(e, s, a) for e, (s, a) in enumerate(curve, start=1)
                   if _finite(s) and _finite(a)]
            if not pts:
                continue
            epochs, secs, ys = zip(*pts)
            tag = f"{name} (seed {seed})" if len(seeds) > 1 else name
            for ax, xs in ((by_epoch, epochs), (by_time, secs)):
                ax.plot(xs, [100 * y for y in ys], style, color=colour, linewidth=1.4,
                        marker="o" if style == "-" else None, markersize=2.5,
                        label=tag if ax is by_epoch else None, alpha=1.0 if i == 0 else 0.6)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("validation accuracy (%)")
    by_epoch.set_title("per epoch")
    by_epoch.xaxis.get_major_locator().set_params(integer=True)
    by_time.set_xlabel("wall-clock training time (s)")
    by_time.set_title("against training time")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend()
    return _save(fig, path)


@_styled
def decision_boundary(models: list[tuple[str, Any]], points: Any, labels: Any,
                      bounds: tuple[float, float], path: Path) -> Path | None:
    """Decision boundaries with confidence contours of 2-D classifiers (001 Fig. 2): one panel
    per ``(name, classifier)``, the training points on top. ``points`` is N x 2."""
    import numpy as np
    import torch

    if points is None or len(points) == 0 or tuple(points.shape[1:]) != (2,):
        return None
    lo, hi = bounds
    x = points.detach().cpu().numpy()
    y = labels.detach().cpu().numpy()
    pad = 0.05 * (x.max(0) - x.min(0) + 1e-9)
    x0 = np.maximum(lo, x.min(0) - pad) if math.isfinite(lo) else x.min(0) - pad
    x1 = np.minimum(hi, x.max(0) + pad) if math.isfinite(hi) else x.max(0) + pad
    g0, g1 = np.meshgrid(np.linspace(x0[0], x1[0], 200), np.linspace(x0[1], x1[1], 200))
    grid = torch.tensor(np.stack([g0.ravel(), g1.ravel()], 1), dtype=points.dtype)
    fig = _figure(4.0 * len(models) + 0.8, 3.9)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    rng = np.random.default_rng(0)
    show = rng.permutation(len(x))[:800]
    classes = sorted(set(y.tolist()))
    binary = len(classes) <= 2
    point_colours = ["#2166ac", "#b2182b"] if binary else COLOURS
    for ax, (name, model) in zip(axes, models):
        device = next(iter(model.parameters()), torch.empty(0)).device
        with torch.no_grad():
            probs = torch.softmax(model(grid.to(device)), 1).cpu().numpy()
        pred = probs.argmax(1).reshape(g0.shape)
        if binary and probs.shape[1] == 2:
            # p(class 1): blue where class 0 is confident, red where class 1 is
            p1 = probs[:, 1].reshape(g0.shape)
            filled = ax.contourf(g0, g1, p1, levels=np.linspace(0, 1, 11), cmap="RdBu_r",
                                 alpha=0.45)
            lines = ax.contour(g0, g1, p1, levels=[0.1, 0.3, 0.7, 0.9], colors="#444444",
                               linewidths=0.5, linestyles="dotted")
            ax.clabel(lines, fmt="%.1f", fontsize=6)
            scale = "p(class 1)"
        else:
            conf = probs.max(1).reshape(g0.shape)
            filled = ax.contourf(g0, g1, conf, levels=np.linspace(1 / probs.shape[1], 1, 11),
                                 cmap="Greys", alpha=0.45)
            scale = "confidence (max softmax)"
        if len(np.unique(pred)) > 1:
            ax.contour(g0, g1, pred, levels=np.arange(probs.shape[1] - 1) + 0.5,
                       colors="#111111", linewidths=1.6)
        for k, c in enumerate(classes):
            m = y[show] == c
            ax.scatter(x[show][m, 0], x[show][m, 1], s=7, color=point_colours[k % len(
                point_colours)], edgecolors="white", linewidths=0.2, label=f"class {c}")
        ax.set_title(f"{label(name)}")
        ax.set_aspect("equal")
        ax.set_xlim(x0[0], x1[0])
        ax.set_ylim(x0[1], x1[1])
    fig.colorbar(filled, ax=list(axes), shrink=0.8, label=scale)
    axes[0].legend(loc="lower left", markerscale=2, frameon=True, framealpha=0.8)
    fig.suptitle("decision boundary (black) and confidence contours, training points")
    return _save(fig, path, tight=True)
