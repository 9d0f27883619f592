"""Running one cell. A cell's function reads its inputs (datasets, stored weights) and returns
data; only the driver writes the store, so executors (local or Ray) can run cells anywhere."""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .api.data import Splits, TensorData
from .api.records import Measurement
from .device import seed_everything
from .evaluation import EvalContext
from .models import Classifier
from .plan import Cell
from .plugins import Registry
from .store import Store
from .trainer import TrainConfig, TrainingSession

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class CellOutput:
    result: dict[str, Any]
    measurements: list[Measurement]
    tensors: dict[str, dict[str, torch.Tensor]]  # artifact name -> tensors
    provenance: dict[str, Any]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("advarena", "torch", "torchvision", "numpy", "scikit-learn", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class Environment:
    """What cells share within one process: the registry, the store (read), the device and a
    cache of loaded datasets and models."""

    def __init__(self, registry: Registry, store: Store, device: torch.device,
                 data_dir: Path | None = None, download: bool = False) -> None:
        self.registry = registry
        self.store = store
        self.device = device
        self.data_dir = data_dir
        self.download = download
        self._datasets: dict[str, Splits] = {}
        self._specs: dict[str, dict] = {}

    def splits(self, spec: dict) -> Splits:
        key = repr((spec["name"], sorted(spec["params"].items())))
        if key not in self._datasets:
            ds = self.registry.create("datasets", spec["name"], **spec["params"])
            self._datasets[key] = ds.load(self.data_dir, self.download)
        return self._datasets[key]

    def remember(self, cell: Cell) -> None:
        self._specs[cell.key] = cell.spec

    def train_spec(self, train_key: str) -> dict:
        spec = self._specs.get(train_key)
        if spec is None:
            spec = self.store.cell(train_key)["spec"]
            self._specs[train_key] = spec
        return spec

    def train_record(self, train_key: str) -> dict:
        """The spec and stored result (cost, history) of a finished train cell."""
        row = self.store.cell(train_key) or {}
        return {"spec": self.train_spec(train_key), "result": row.get("result"),
                "device": row.get("device"), "run_id": row.get("run_id")}

    def defense_of(self, spec: dict):
        return self.registry.create("defenses", spec["defense"]["name"],
                                    **spec["defense"]["params"])

    def build_classifier(self, spec: dict) -> Classifier:
        """An untrained classifier of a train cell's spec (architecture, activation, transform)."""
        info = self.splits(spec["dataset"]).info
        defense = self.defense_of(spec)
        arch = self.registry.create("architectures", spec["architecture"]["name"],
                                    **spec["architecture"]["params"])
        net = arch.build(info, defense.activation(info) or nn.ReLU)
        return Classifier(net, info.bounds, defense.input_transform(info))

    def load_classifier(self, train_key: str) -> Classifier:
        """The trained classifier of a train cell, from hash-verified safetensors."""
        model = self.build_classifier(self.train_spec(train_key))
        digest = self.store.artifacts(train_key)["model"]
        model.load_state_dict(self.store.get_tensors(digest), strict=True)
        return model.to(self.device).eval()

    def provenance(self, cell: Cell) -> dict[str, Any]:
        plugins = {}
        for role in ("dataset", "architecture", "defense", "protocol"):
            if role in cell.spec:
                s = cell.spec[role]
                kind = {"dataset": "datasets", "architecture": "architectures",
                        "defense": "defenses", "protocol": "protocols"}[role]
                names = s["code"].keys()
                plugins[role] = [self._dist(kind, n) for n in names]
        if cell.spec.get("attacks"):
            plugins["attacks"] = [self._dist("attacks", n) for n in cell.spec["attacks"]]
        return {"cell_key": cell.key, "device": str(self.device),
                "device_name": torch.cuda.get_device_name(self.device)
                if self.device.type == "cuda" else platform.processor() or platform.machine(),
                "versions": package_versions(), "plugins": plugins,
                "platform": sys.platform}

    def _dist(self, kind: str, name: str) -> dict[str, str]:
        e = self.registry.entry(kind, name)
        return {"name": name, "distribution": e.distribution, "version": e.version}


def eval_examples(splits: Splits, n: int) -> TensorData:
    """The first ``n`` test examples of a fixed permutation (seed 0, not the run seed), so every
    defense and every seed is scored on the same examples and records pair up."""
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(splits.test), generator=gen)
    if n and n < len(order):
        order = order[:n]
    return splits.test.subset(order)


def split_validation(train: TensorData, fraction: float, seed: int) -> tuple[TensorData,
                                                                            TensorData]:
    if fraction <= 0:
        return train, train.subset(slice(0, 0))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(fraction * len(train))))
    return train.subset(order[n_val:]), train.subset(order[:n_val])


def run_train(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    spec = cell.spec
    splits = env.splits(spec["dataset"])
    info = splits.info
    config = TrainConfig(**spec["train"])
    seed = spec["seed"]
    train, val = split_validation(splits.train, config.val_fraction, seed)
    seed_everything(seed)
    classifier = env.build_classifier(spec)
    defense = env.defense_of(spec)
    reference = None
    if "reference" in cell.deps:
        reference = env.load_classifier(cell.deps["reference"])
        # Fine-tuning defenses start from the reference network's weights.
        classifier.net.load_state_dict(reference.net.state_dict())
    session = TrainingSession(classifier.net, info, train, val, config, defense,
                              device=env.device, seed=seed, reference=reference,
                              transform=classifier.transform, progress=progress)
    defense.fit(session)
    model = Classifier(session.model, info.bounds, session.transform).to(env.device).eval()
    result = {"cost": session.cost(), "history": [dataclasses.asdict(h) for h in session.history],
              "num_parameters": sum(p.numel() for p in model.parameters()),
              "train_examples": len(train), "val_examples": len(val), "notes": session.notes}
    return CellOutput(result, [], {"model": model.state_dict()}, {})


def _attacks(cell: Cell, env: Environment) -> dict[str, Any]:
    return {name: env.registry.create("attacks", name, **s["params"])
            for name, s in cell.spec.get("attacks", {}).items()}


def _context(cell: Cell, env: Environment, progress: Progress, with_model: bool) -> EvalContext:
    spec = cell.spec
    splits = env.splits(spec["dataset"])
    data = eval_examples(splits, spec["eval"]["n_examples"]).to(env.device)
    shared = {role.split(":", 1)[1]: env.load_classifier(key)
              for role, key in cell.deps.items() if role.startswith("shared:")}
    prepared = {}
    if "prepared" in cell.deps:
        digest = env.store.artifacts(cell.deps["prepared"])["prepared"]
        prepared = {k: v.to(env.device) for k, v in env.store.get_tensors(digest).items()}
    return EvalContext(
        info=splits.info, data=data, train=splits.train.to(env.device), device=env.device,
        seed=spec["seed"], attacks=_attacks(cell, env),
        batch_size=spec["eval"]["batch_size"] or len(data),
        model=env.load_classifier(cell.deps["model"]) if with_model else None,
        reference=env.load_classifier(cell.deps["reference"]) if "reference" in cell.deps
        else None,
        shared=shared, prepared=prepared, progress=progress,
        train_records={role: env.train_record(key) for role, key in cell.deps.items()
                       if role in ("model", "reference") or role.startswith("shared:")},
        fresh_model=lambda role: env.build_classifier(env.train_spec(cell.deps[role]))
        .to(env.device),
        defense_of=lambda role: env.defense_of(env.train_spec(cell.deps[role])),
        splits=splits)


def run_prepare(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    proto = env.registry.create("protocols", cell.spec["protocol"]["name"],
                                **cell.spec["protocol"]["params"])
    seed_everything(cell.spec["seed"])
    tensors = proto.prepare(_context(cell, env, progress, with_model=False))
    return CellOutput({"tensors": sorted(tensors)}, [], {"prepared": tensors}, {})


def run_eval(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    proto = env.registry.create("protocols", cell.spec["protocol"]["name"],
                                **cell.spec["protocol"]["params"])
    seed_everything(cell.spec["seed"])
    ms = proto.evaluate(_context(cell, env, progress, with_model=True))
    return CellOutput({"records": len(ms)}, ms, {}, {})


def run_flags(cell: Cell, env: Environment, progress: Progress) -> CellOutput:
    from .sanity import compute_flags

    own = [k for role, k in cell.deps.items() if not role.startswith("reference-")]
    ref = [k for role, k in cell.deps.items() if role.startswith("reference-")]
    flags = compute_flags(env.store.metrics(own), env.store.metrics(ref),
                          set(cell.spec["single_step"]))
    return CellOutput({"raised": [f.metric for f in flags if f.value]}, flags, {}, {})


RUNNERS = {"train": run_train, "prepare": run_prepare, "eval": run_eval, "flags": run_flags}


def run_cell(cell: Cell, env: Environment, progress: Progress) -> tuple[CellOutput, float]:
    start = time.perf_counter()
    out = RUNNERS[cell.kind](cell, env, progress)
    out.provenance = env.provenance(cell)
    return out, time.perf_counter() - start
