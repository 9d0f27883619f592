"""A shipped suite re-targeted and shrunk, as TOML text: the reduced paper suites on another
dataset of the same family (Fashion-MNIST for MNIST, in CI) and at smoke-test sizes
(``benchmarks/gpu_check.sh --smoke``, ``tests/test_real_data.py``)."""

from __future__ import annotations

import copy
import json
import tomllib
from importlib import resources
from typing import Any

from ..errors import SuiteError


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def to_toml(data: dict[str, Any]) -> str:
    """TOML for a suite: tables of scalars, lists and nested tables (JSON strings, numbers,
    booleans and arrays are TOML too; keys are quoted)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix and (scalars or not table):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{json.dumps(k)} = {json.dumps(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k), v)

    emit("", data)
    return "\n".join(lines) + "\n"


def derived_suite(name: str, *, dataset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Shipped suite ``name`` with its (single) dataset replaced by ``dataset`` (its
    ``dataset_params`` follow) and ``overrides`` merged in table by table."""
    res = resources.files("advarena.suites") / f"{name}.toml"
    if not res.is_file():
        raise SuiteError(f"unknown suite '{name}'")
    raw = tomllib.loads(res.read_text())
    if dataset is not None:
        old = raw["datasets"]
        params = raw.get("dataset_params", {})
        raw["dataset_params"] = {dataset: params[old[0]]} if old and old[0] in params else {}
        raw["datasets"] = [dataset]
    return _merge(raw, overrides or {})


# Smoke-test sizes of paper-004-t1-reduced (004 Tables 1-2) with every protocol of the matrix
# added: LeNet-5 for 004's larger CNN, 500 training images, 2 epochs, 100 evaluation examples,
# few attack steps. (A validation split: the training-cost protocol needs one.)
SMOKE = {
    "architectures": ["lenet5"],
    "dataset_params": {"*": {"limit_train": 500, "limit_test": 100}},
    "train": {"epochs": 2, "batch_size": 25, "val_fraction": 0.1},
    "eval": {"n_examples": 100, "batch_size": 100},
    "defenses": ["none", "e2sad"],
    "defense_params": {"ifgsm-at": {"steps": 3}},
    "attacks": {"ifgsm": {"steps": 5}, "cw-l2": {"steps": 10, "binary_search_steps": 2},
                "deepfool": {"max_iter": 10}},
    "protocols": {
        "black-box": {"substitutes": ["none"]},
        "ensemble-transfer": {"members": 2, "sizes": [1], "eps": [0.2]},
        "minimal-perturbation": {"attacks": ["deepfool", "fgsm-minimal"]},
        "loss-sensitivity": {"fgsm_eps": [0.0, 0.1], "landscape_points": 3,
                             "landscape_examples": 8},
        "training-cost": {"thresholds": [0.5], "timing_examples": 100, "timing_repeats": 1},
    },
}


def smoke_suite(dataset: str = "fashion-mnist", name: str = "paper-004-t1-reduced") -> str:
    """:data:`SMOKE` applied to ``name`` on ``dataset``, as TOML text."""
    overrides = copy.deepcopy(SMOKE)
    overrides["dataset_params"] = {dataset: overrides["dataset_params"]["*"]}
    return to_toml(derived_suite(name, dataset=dataset, overrides=overrides))
