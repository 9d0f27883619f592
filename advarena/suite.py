"""Suites: TOML files naming datasets, architectures, defenses, seeds, training settings and
each protocol's attacks and eps values. The shipped suites live in ``advarena/suites/``.

Values are validated at load, before any work: every number is finite and fits in 64 bits,
seeds are integers in 0..2**63-1, the [eval] counts are integers >= 0; plugin parameters are
validated by the plugins' own declarations when the plan is made."""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SuiteError

_TOP_KEYS = {"name", "description", "datasets", "architectures", "seeds", "defenses",
             "reference", "train", "dataset_params", "architecture_params", "defense_params",
             "attacks", "protocols", "eval"}
# Seeds go to torch (which takes at most 64 bits), NumPy and SQLite (signed 64-bit integers).
SEED_MAX = 2**63 - 1
_INT_RANGE = (-2**63, 2**63 - 1)  # TOML's integers (tomllib reads larger ones, SQLite cannot)
# [eval] counts: name -> what 0 means.
_EVAL_COUNTS = {"n_examples": "every test example", "batch_size": "one batch of all examples"}


@dataclasses.dataclass
class Suite:
    name: str
    description: str
    datasets: list[str]
    architectures: list[str]
    seeds: list[int]
    defenses: list[str]
    reference: str
    train: dict[str, Any]
    dataset_params: dict[str, dict]
    architecture_params: dict[str, dict]
    defense_params: dict[str, dict]
    attacks: dict[str, dict]
    protocols: dict[str, dict]
    eval: dict[str, Any]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self, dataset: str, architecture: str) -> dict[str, Any]:
        """The suite's [train] table with per-dataset ([train.<dataset>]) and per-architecture
        ([train.<architecture>]) overrides applied."""
        base = {k: v for k, v in self.train.items() if not isinstance(v, dict)}
        for key in (dataset, architecture):
            base.update(self.train.get(key, {}))
        return base


def shipped_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("advarena.suites").iterdir()
                  if p.name.endswith(".toml"))


def load_suite(name_or_path: str) -> Suite:
    """Load a shipped suite by name, or a TOML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise SuiteError(f"cannot read suite file {path} ({exc.strerror}); pass --suite with "
                             f"a readable TOML file or one of: {', '.join(shipped_suites())}") \
                from None
        source = str(path)
    else:
        res = resources.files("advarena.suites") / f"{name_or_path}.toml"
        if not res.is_file():
            raise SuiteError(f"unknown suite '{name_or_path}'; shipped suites: "
                             f"{', '.join(shipped_suites())} (or pass a .toml path)")
        text = res.read_text()
        source = f"advarena/suites/{name_or_path}.toml"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite {source} is not valid TOML: {exc}") from None
    return parse_suite(raw, source)


def check_seed(seed: Any, where: str) -> int:
    """``seed`` if it is an integer torch, NumPy and the store all accept, else a
    :class:`SuiteError` naming ``where`` (a suite's 'seeds', or ``--seed``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SuiteError(f"{where}: seeds must be integers, got {seed!r}")
    if not 0 <= seed <= SEED_MAX:
        raise SuiteError(f"{where}: seed {seed} is outside 0..2**63-1 (what torch, NumPy and the "
                         f"store accept); use a smaller seed")
    return seed


def _check_numbers(value: Any, path: str, source: str) -> None:
    """No value anywhere in a suite is a non-finite float (TOML's inf and nan: an eps of inf
    would be exported as null) or an integer beyond 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{path}.{k}" if path else str(k), source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{path}[{i}]", source)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SuiteError(f"suite {source}: '{path}' is {value}; every number in a suite must be "
                         f"finite: give a finite value")
    elif isinstance(value, int) and not isinstance(value, bool) and not (
            _INT_RANGE[0] <= value <= _INT_RANGE[1]):
        raise SuiteError(f"suite {source}: '{path}' = {value} does not fit in 64 bits; give a "
                         f"smaller integer")


def _check_eval(table: dict[str, Any], source: str) -> None:
    for key, zero in _EVAL_COUNTS.items():
        if key not in table:
            continue
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SuiteError(f"suite {source}: [eval] {key} must be an integer >= 0 (0: {zero}), "
                             f"got {v!r}")


def parse_suite(raw: dict[str, Any], source: str = "<dict>") -> Suite:
    raw = copy.deepcopy(raw)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SuiteError(f"suite {source}: unknown key(s) {', '.join(sorted(unknown))}")
    _check_numbers(raw, "", source)

    def strings(key: str, default: list | None = None) -> list:
        value = raw.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise SuiteError(f"suite {source}: '{key}' must be a non-empty list of names")
        return value

    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SuiteError(f"suite {source}: 'seeds' must be a non-empty list of integers")
    for seed in seeds:
        check_seed(seed, f"suite {source}: 'seeds'")
    tables = {}
    for key in ("train", "dataset_params", "architecture_params", "defense_params", "attacks",
                "protocols", "eval"):
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise SuiteError(f"suite {source}: [{key}] must be a table")
        tables[key] = value
    if not tables["protocols"]:
        raise SuiteError(f"suite {source}: no [protocols.*] table")
    _check_eval(tables["eval"], source)
    return Suite(name=str(raw.get("name", Path(source).stem)),
                 description=str(raw.get("description", "")),
                 datasets=strings("datasets"), architectures=strings("architectures"),
                 seeds=seeds, defenses=strings("defenses", ["none"]),
                 reference=str(raw.get("reference", "none")), source=source, **tables)
