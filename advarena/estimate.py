"""What a plan will cost before it runs (``advarena run --dry-run``): cells, passes, time.

Everything here is an **estimate**, built without running a cell or touching the store:

* **Cells** come from the plan itself; a cell whose key the store already holds (read-only, the
  check the executor makes) costs nothing and is counted as reused.
* **Passes** are example-passes through a network, the trainer's unit
  (:data:`advarena.trainer.PASS_UNIT`), counted by :class:`advarena.trainer.PassCounter` on
  *probes*: each defense's real ``fit`` runs under the suite's training settings on
  :data:`PROBE_TRAIN` synthetic examples of the dataset's shape with a tiny network
  (:func:`probe_defense`), and each attack's real ``run`` on :data:`PROBE_EVAL` examples of a
  probe network it cannot fool (a large logit margin for the true class), so that no attack
  stops on success: attack counts are their budgets (steps x restarts x binary-search steps
  ...), an upper bound for attacks that stop once an example is broken; stopping rules that
  watch the loss (C&W's ``abort_early``) still apply. Passes per example are multiplied by
  the cell's examples: a train cell's training examples (the training split less the
  validation fraction; passes per example depend neither on the network nor, but for caps
  such as ``max_examples``, on the set's size), an eval cell's evaluation examples, per
  protocol (:data:`PROTOCOL_ESTIMATORS`, each documented). Cells run one after another: the
  total is what one device spends; an executor running cells side by side divides the time.
* **Time** is passes x seconds per example-pass of the cell's architecture, from a short
  calibration on the device (:func:`calibrate`: forward and forward+backward of each
  architecture of the plan at the suite's training batch size, capped on a CPU). Work that is
  no pass through a network (the nearest-neighbour training-set distance, an input
  transform's own cost, loading data, the store) is not in it; neither is mixed precision.

Sizes of the datasets come from a plugin's declared ``sizes`` (a class attribute
``{"train": n, "test": n, "input_shape": (...), "num_classes": k}``), else from loading it
(embedded sets, or on-disk ones whose files are present), else from :data:`KNOWN_SIZES`, the
sizes of the official distributions, with a note that no data was read.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .api.data import DatasetInfo, TensorData
from .models import Classifier
from .plan import Cell, Plan
from .plugins import Registry
from .trainer import PASS_UNIT, PassCounter, TrainConfig, TrainingSession

PROBE_TRAIN = 32  # synthetic training examples of a defense probe (one batch)
PROBE_EVAL = 4  # examples an attack probe attacks

# Official split sizes, for on-disk datasets whose files are absent and whose plugin declares
# none (MNIST and Fashion-MNIST: LeCun et al. 1998 / Xiao et al. 2017; CIFAR-10: Krizhevsky
# 2009; SVHN: Netzer et al. 2011, without "extra").
KNOWN_SIZES = {
    "mnist": {"train": 60_000, "test": 10_000, "input_shape": (1, 28, 28), "num_classes": 10},
    "fashion-mnist": {"train": 60_000, "test": 10_000, "input_shape": (1, 28, 28),
                      "num_classes": 10},
    "cifar10": {"train": 50_000, "test": 10_000, "input_shape": (3, 32, 32),
                "num_classes": 10},
    "svhn": {"train": 73_257, "test": 26_032, "input_shape": (3, 32, 32), "num_classes": 10},
}


@dataclasses.dataclass
class DataSizes:
    info: DatasetInfo
    train: int
    test: int
    source: str  # "declared", "loaded" or "official sizes (no data read)"


@dataclasses.dataclass
class CellEstimate:
    key: str
    kind: str
    title: str
    architecture: str | None
    stored: bool
    examples: int  # training examples (train) or evaluation examples (eval, prepare)
    forward: float  # example-passes (PASS_UNIT), 0 when stored
    backward: float
    seconds: float
    protocol: str | None = None  # eval and prepare cells


@dataclasses.dataclass
class Estimate:
    """The plan's cost: one :class:`CellEstimate` per cell, the calibration it used, notes."""

    cells: list[CellEstimate]
    calibration: dict[str, dict[str, float]]  # arch -> seconds per forward / backward pass
    datasets: dict[str, DataSizes]
    device: str
    notes: list[str]
    probe_seconds: float
    unit: str = PASS_UNIT

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Cells, stored cells, passes and seconds per cell kind."""
        return self._group(lambda c: c.kind)

    def by_protocol(self) -> dict[str, dict[str, float]]:
        """The same per protocol, over its prepare and eval cells."""
        return self._group(lambda c: c.protocol)

    def _group(self, by: Callable[[CellEstimate], str | None]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for c in self.cells:
            if by(c) is None:
                continue
            row = out.setdefault(by(c), {"cells": 0, "stored": 0, "forward": 0.0,
                                          "backward": 0.0, "seconds": 0.0})
            row["cells"] += 1
            row["stored"] += c.stored
            row["forward"] += c.forward
            row["backward"] += c.backward
            row["seconds"] += c.seconds
        return out

    def totals(self) -> dict[str, float]:
        rows = self.by_kind().values()
        return {k: sum(r[k] for r in rows) for k in ("cells", "stored", "forward", "backward",
                                                     "seconds")}


# --- dataset sizes ----------------------------------------------------------------------------


def dataset_sizes(reg: Registry, name: str, params: dict, data_dir: Path | None) -> DataSizes:
    """Sizes of one dataset of the suite (see the module docstring for where they come from)."""
    cls = reg.get("datasets", name)
    plugin = reg.create("datasets", name, **params)
    declared = getattr(cls, "sizes", None)
    source = "declared"
    if not isinstance(declared, dict):
        declared = None
        can_load = not cls.needs_data_dir or data_dir is not None
        if can_load:
            try:
                splits = plugin.load(data_dir, False)
            except Exception:  # noqa: BLE001 - absent or unreadable files: fall back below
                splits = None
            if splits is not None:
                return DataSizes(splits.info, len(splits.train), len(splits.test), "loaded")
        declared = KNOWN_SIZES.get(cls.name)
        source = "official sizes (no data read)"
        if declared is None:
            from .errors import DataError

            raise DataError(f"cannot estimate dataset '{name}': its plugin declares no sizes "
                            f"and its data cannot be read; pass --data-dir DIR with its files")
    info = DatasetInfo(cls.name, tuple(declared["input_shape"]), int(declared["num_classes"]),
                       family=getattr(cls, "family", "mnist"))
    limit = lambda n, k: n if k is None else min(n, k)  # noqa: E731 - limit_* parameters
    return DataSizes(info, limit(int(declared["train"]), getattr(plugin, "limit_train", None)),
                     limit(int(declared["test"]), getattr(plugin, "limit_test", None)), source)


# --- probes -----------------------------------------------------------------------------------


def _tiny(info: DatasetInfo, activation=nn.ReLU) -> nn.Module:
    """The probe network: one small hidden layer (pass counts do not depend on the network,
    and a probe must be quick)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(info.input_shape), 16), activation(),
                         nn.Linear(16, info.num_classes))


class _Unfoolable(nn.Module):
    """Logits with a margin of 50 for class 0 that the input barely moves: every attack runs
    its whole budget against it (used with labels 0)."""

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(math.prod(info.input_shape), info.num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(1e-3 * torch.randn(self.linear.weight.shape, generator=g))
            self.linear.bias.zero_()
            self.linear.bias[0] = 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _counted(fn: Callable[[], Any], module: nn.Module) -> tuple[int, int]:
    counter = PassCounter(module)
    counter.active = True
    try:
        fn()
    finally:
        counter.active = False
        counter.remove()
    return counter.forward_examples, counter.backward_examples


def probe_attack(reg: Registry, name: str, params: dict, info: DatasetInfo,
                 eps: float | None, members: int = 1) -> tuple[float, float]:
    """(forward, backward) example-passes per attacked example of attack ``name`` at ``eps``,
    its whole budget (against :class:`_Unfoolable`); ``members`` > 1 attacks an ensemble of
    that many models and counts the passes through all of them."""
    from .threat import run_checked

    attack = reg.create("attacks", name, **params)
    net = _Unfoolable(info)
    lo, hi = info.bounds
    x = torch.rand((PROBE_EVAL, *info.input_shape), generator=torch.Generator().manual_seed(0))
    x = lo + (hi - lo) * x
    y = torch.zeros(PROBE_EVAL, dtype=torch.long)
    model = Classifier(net, info.bounds)
    target: Any = [model] * members if members > 1 else model
    fwd, bwd = _counted(lambda: run_checked(attack, target, x, y, eps=eps, seed=0), net)
    return fwd / PROBE_EVAL, bwd / PROBE_EVAL


def probe_defense(reg: Registry, name: str, params: dict, info: DatasetInfo,
                  config: TrainConfig) -> tuple[float, float]:
    """(forward, backward) example-passes per original training example over a defense's whole
    ``fit`` (every stage, one-off work included) under ``config``.

    A defense's stages last either a fixed number of epochs (002's fine-tuning) or the suite's
    ``epochs`` (every other stage), so its passes are affine in ``epochs``: probed at 1 and 2
    epochs and extended to ``config.epochs`` (exact where each epoch costs the same; RAD's
    growing set makes it an approximation)."""
    if config.epochs <= 2:
        return _probe_fit(reg, name, params, info, config)
    one = _probe_fit(reg, name, params, info, dataclasses.replace(config, epochs=1))
    two = _probe_fit(reg, name, params, info, dataclasses.replace(config, epochs=2))
    return tuple(max(0.0, a + (b - a) * (config.epochs - 1)) for a, b in zip(one, two))


def _probe_fit(reg: Registry, name: str, params: dict, info: DatasetInfo,
               config: TrainConfig) -> tuple[float, float]:
    """One probe fit on :data:`PROBE_TRAIN` synthetic examples of the dataset's shape."""
    from .testing import _preserved_rng

    defense = reg.create("defenses", name, **params)
    g = torch.Generator().manual_seed(0)
    lo, hi = info.bounds
    x = lo + (hi - lo) * torch.rand((PROBE_TRAIN, *info.input_shape), generator=g)
    y = torch.arange(PROBE_TRAIN) % info.num_classes
    empty = TensorData(x[:0], y[:0])
    config = dataclasses.replace(config, batch_size=PROBE_TRAIN, amp="off")
    with _preserved_rng([]):
        torch.manual_seed(0)
        net = _tiny(info, defense.activation(info) or nn.ReLU)
        reference = Classifier(_tiny(info), info.bounds) if defense.needs_reference else None
        if reference is not None:
            net.load_state_dict(reference.net.state_dict())
        session = TrainingSession(net, info, TensorData(x, y), empty, config, defense,
                                  device=torch.device("cpu"), seed=0, reference=reference,
                                  transform=defense.input_transform(info))
        defense.fit(session)
    fwd = session.forward_examples + sum(r["forward_examples"] for r in session.one_off.values())
    bwd = session.backward_examples + sum(r["backward_examples"]
                                          for r in session.one_off.values())
    return fwd / PROBE_TRAIN, bwd / PROBE_TRAIN


class _Probes:
    """Memoised probes of one estimate."""

    def __init__(self, reg: Registry, suite) -> None:
        self.reg = reg
        self.suite = suite
        self._cache: dict[str, tuple[float, float]] = {}
        self.failures: list[str] = []

    def _memo(self, key: str, fn: Callable[[], tuple[float, float]],
              label: str = "") -> tuple[float, float]:
        """A probe that fails counts nothing and leaves a note: an estimate never fails on a
        plugin (the run will say what is wrong with it)."""
        if key not in self._cache:
            try:
                self._cache[key] = fn()
            except Exception as exc:  # noqa: BLE001 - any plugin failure
                self._cache[key] = (0.0, 0.0)
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                self.failures.append(f"could not probe {label}: {reason}; its passes are "
                                     f"not in the estimate")
        return self._cache[key]

    def attack(self, name: str, info: DatasetInfo, eps: float | None,
               members: int = 1) -> tuple[float, float]:
        params = self.suite.attacks.get(name, {})
        key = repr(("attack", name, sorted(params.items()), info, eps, members))
        return self._memo(key, lambda: probe_attack(self.reg, name, params, info, eps, members),
                          f"attack '{name}' at eps {eps}")

    def defense(self, spec: dict, info: DatasetInfo) -> tuple[float, float]:
        d = spec["defense"]
        config = TrainConfig(**spec["train"])
        key = repr(("defense", d["name"], d["params"], info, config))
        # A composition's spec keeps its parts' parameters by part: it is recreated from the
        # suite's parameters, as the planner created it.
        params = (self.suite.defense_params.get(d["name"], {}) if "+" in d["name"]
                  else d["params"])
        return self._memo(key, lambda: probe_defense(self.reg, d["name"], params, info, config),
                          f"defense '{d['name']}'")


# --- protocols --------------------------------------------------------------------------------

Passes = tuple[float, float]


def _add(*terms: Passes) -> Passes:
    return sum(t[0] for t in terms), sum(t[1] for t in terms)


def _white_box(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """Every attack at every eps of the sweep (score-based ones at ``score_eps`` only where it is
    set), one forward scoring each output; the clean scoring and the gradient shares (1 + 1);
    each ``repeated`` attack once at its default budget."""
    reg = probes.reg
    terms = [(2.0, 1.0)]
    score_eps = tuple(p.get("score_eps", ()))
    for eps in p["eps"]:
        for a in p["attacks"]:
            if reg.get("attacks", a).threat_model.access == "score" and score_eps and \
                    eps not in score_eps:
                continue
            terms += [probes.attack(a, info, eps), (1.0, 0.0)]
    for a in p.get("repeated", ()):
        attack = reg.create("attacks", a, **probes.suite.attacks.get(a, {}))
        eps = None if attack.threat_model.budget == "minimal" else attack.default_eps()
        terms += [probes.attack(a, info, eps), (1.0, 0.0)]
    return _add(*terms)


def _black_box(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """prepare: every attack at every eps on every substitute (passes through the substitute
    architecture); eval: one forward of the clean set and of each transfer set."""
    sets = len(p["substitutes"]) * len(p["attacks"]) * len(p["eps"])
    if kind == "prepare":
        return _add(*(probes.attack(a, info, e) for _ in p["substitutes"] for a in p["attacks"]
                      for e in p["eps"]))
    return 1.0 + sets, 0.0


def _ensemble_transfer(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """prepare: the ensemble attack on each size x eps (passes through every member), and one
    forward per member to keep what all misclassify; eval: at most two forwards (adversarial
    and clean) of each kept set, counted in full."""
    archs = max(1, len(p.get("architectures", ())))
    if kind == "prepare":
        return _add(*(_add(probes.attack(p["attacks"][0], info, e, members=n), (float(n), 0.0))
                      for n in p["sizes"] for e in p["eps"] for _ in range(archs)))
    return 2.0 * archs * len(p["sizes"]) * len(p["eps"]), 0.0


def _minimal(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """Each minimal attack once, a forward scoring it; eps_ref's FGSM grid on the reference (one
    gradient, ``eps_ref_max / 1e-3`` forwards) and FGSM at each fraction of it."""
    terms = [(1.0, 0.0)]
    for a in p["attacks"]:
        terms += [probes.attack(a, info, None), (1.0, 0.0)]
    grid = p.get("eps_ref_max", 1.0) / 1e-3 + 1
    terms += [(1.0 + grid, 1.0), (1.0, 0.0)]
    for _ in p.get("eps_ref_fractions", ()):
        terms += [probes.attack("fgsm", info, 0.1), (1.0, 0.0)]
    return _add(*terms)


def _loss_sensitivity(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """One input gradient, a forward per FGSM eps; the landscape (``points^2`` forwards and one
    reference gradient on ``landscape_examples``) is spread over the evaluation examples by
    :func:`_estimate_cell` (it does not grow with them)."""
    return 1.0 + len(p["fgsm_eps"]), 1.0


def _training_cost(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """No attack; its timing refits are added per cell by :func:`_estimate_cell`."""
    return 0.0, 0.0


# name -> f(protocol params, probes, dataset info, cell kind) -> passes per evaluation example
PROTOCOL_ESTIMATORS: dict[str, Callable[..., Passes]] = {
    "white-box": _white_box, "black-box": _black_box, "ensemble-transfer": _ensemble_transfer,
    "minimal-perturbation": _minimal, "loss-sensitivity": _loss_sensitivity,
    "training-cost": _training_cost}


def _generic(p: dict, probes: _Probes, info: DatasetInfo, kind: str) -> Passes:
    """A protocol without an estimator: each of its attacks at each of its eps (once if it has
    none), one forward scoring each."""
    terms = [(1.0, 0.0)]
    for a in p.get("attacks", ()):
        for e in p.get("eps", (None,)) or (None,):
            terms += [probes.attack(a, info, e), (1.0, 0.0)]
    return _add(*terms)


# --- calibration ------------------------------------------------------------------------------


def calibrate(reg: Registry, suite, architectures: list[str], info: DatasetInfo,
              device: torch.device, *, repeats: int = 3, cap: int | None = None
              ) -> dict[str, dict[str, float]]:
    """Seconds per example of one forward and of one backward pass of each architecture, on
    ``device``: the median of ``repeats`` timed forward and forward+backward passes (input and
    weight gradients) at the suite's training batch size, after one warm-up. ``cap`` bounds the
    batch (on a CPU time per example is about flat above a few hundred)."""
    batch = int(suite.train.get("batch_size", 64))
    batch = min(batch, cap) if cap else batch
    out = {}
    for name in architectures:
        arch = reg.create("architectures", name, **suite.architecture_params.get(name, {}))
        torch.manual_seed(0)
        net = arch.build(info, nn.ReLU).to(device)
        x = torch.rand((batch, *info.input_shape), device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        fwd, both = [], []
        for r in range(repeats + 1):
            xg = x.clone().requires_grad_(True)
            _sync(device)
            t0 = time.perf_counter()
            logits = net(xg)
            _sync(device)
            t1 = time.perf_counter()
            nn.functional.cross_entropy(logits, y).backward()
            _sync(device)
            t2 = time.perf_counter()
            if r:  # the first is a warm-up
                fwd.append(t1 - t0)
                both.append(t2 - t0)
            net.zero_grad(set_to_none=True)
        f = sorted(fwd)[len(fwd) // 2] / batch
        b = max(sorted(both)[len(both) // 2] / batch - f, 0.0)
        out[name] = {"forward_seconds": f, "backward_seconds": b, "batch_size": batch}
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the estimate -----------------------------------------------------------------------------


def stored_keys(store_dir: Path, keys: list[str]) -> set[str]:
    """The keys among ``keys`` whose finished cells the store at ``store_dir`` holds, read
    without writing (an absent store holds none)."""
    from .store import Store

    if not (Path(store_dir) / "results.sqlite").is_file():
        return set()
    store = Store.open(store_dir, readonly=True)
    try:
        return {k for k in keys if store.done_cell(k) is not None}
    finally:
        store.close()


def estimate_plan(plan: Plan, reg: Registry, *, store_dir: Path | None, device: torch.device,
                  data_dir: Path | None = None, calibration_cap: int | None = None,
                  calibration: dict[str, dict[str, float]] | None = None) -> Estimate:
    """The :class:`Estimate` of ``plan``: nothing runs but the probes and the calibration, and
    the store is only read. ``calibration`` (architecture -> seconds per pass) skips
    :func:`calibrate` (tests)."""
    s = plan.suite
    start = time.perf_counter()
    stored = stored_keys(store_dir, [c.key for c in plan.cells]) if store_dir else set()
    sizes = {d: dataset_sizes(reg, d, s.dataset_params.get(d, {}), data_dir) for d in s.datasets}
    probes = _Probes(reg, s)
    by_key = plan.by_key()
    cells = [_estimate_cell(c, by_key, stored, sizes, probes, s) for c in plan.cells]
    probe_seconds = time.perf_counter() - start
    archs = sorted({c.architecture for c in cells if c.architecture})
    unknown = [a for a in archs if not _registered(reg, a)]
    archs = [a for a in archs if a not in unknown]
    if calibration is None:
        calibration = {}
        for d in sizes.values():  # one dataset's shape per architecture (the first)
            todo = [a for a in archs if a not in calibration]
            calibration.update(calibrate(reg, s, todo, d.info, device, cap=calibration_cap))
    for c in cells:
        cal = calibration.get(c.architecture or "")
        if cal and not c.stored:
            c.seconds = c.forward * cal["forward_seconds"] + c.backward * cal["backward_seconds"]
    notes = [f"dataset {d}: {z.train} training and {z.test} test examples ({z.source})"
             for d, z in sizes.items()]
    notes += probes.failures
    notes += [f"no calibration for architecture '{a}' (an external model's): the time of its "
              f"cells is not in the estimate" for a in unknown]
    return Estimate(cells, calibration, sizes, str(device), notes, probe_seconds)


def _registered(reg: Registry, architecture: str) -> bool:
    from .errors import UnknownPluginError

    try:
        reg.entry("architectures", architecture)
    except UnknownPluginError:
        return False
    return True


def _architecture_of(cell: Cell, by_key: dict[str, Cell]) -> str | None:
    if cell.kind == "train":
        return cell.labels.get("architecture")
    if cell.kind == "prepare":  # passes through the shared models
        shared = [by_key[k] for r, k in cell.deps.items() if r.startswith("shared:")]
        return shared[0].labels.get("architecture") if shared else None
    if cell.kind == "eval":
        return by_key[cell.deps["model"]].labels.get("architecture")
    return None


def _estimate_cell(cell: Cell, by_key: dict[str, Cell], stored: set[str],
                   sizes: dict[str, DataSizes], probes: _Probes, suite) -> CellEstimate:
    arch = _architecture_of(cell, by_key)
    dataset = cell.labels.get("dataset")
    z = sizes.get(dataset) if dataset else None
    fwd = bwd = 0.0
    examples = 0
    if z is not None and cell.kind == "train" and "external" not in cell.spec:
        val = float(cell.spec["train"].get("val_fraction", 0.1))
        examples = z.train - (max(1, round(val * z.train)) if val > 0 else 0)
        f, b = probes.defense(cell.spec, z.info)
        fwd, bwd = f * examples, b * examples
    elif z is not None and cell.kind in ("eval", "prepare"):
        n = int(cell.spec["eval"]["n_examples"]) or z.test
        examples = min(n, z.test)
        pname = cell.spec["protocol"]["name"]
        params = cell.spec["protocol"]["params"]
        fn = PROTOCOL_ESTIMATORS.get(pname, _generic)
        f, b = fn(params, probes, z.info, cell.kind)
        fwd, bwd = f * examples, b * examples
        if pname == "loss-sensitivity":
            k = min(int(params["landscape_examples"]), examples)
            fwd += k * (params["landscape_points"] ** 2 + 1)
            bwd += k
        if pname == "training-cost" and cell.kind == "eval":
            runs = int(params["timing_repeats"]) + 1
            n_time = min(int(params["timing_examples"]), z.train)
            for role in ("model", "reference"):
                spec = by_key[cell.deps[role]].spec
                if "external" in spec:
                    continue
                tspec = {**spec, "train": {**spec["train"], "epochs": 1}}
                f, b = probes.defense(tspec, z.info)
                fwd += runs * n_time * f
                bwd += runs * n_time * b
    if cell.key in stored:
        fwd = bwd = 0.0
    protocol = cell.spec["protocol"]["name"] if cell.kind in ("eval", "prepare") else None
    return CellEstimate(cell.key, cell.kind, cell.title, arch, cell.key in stored, examples,
                        fwd, bwd, 0.0, protocol)
