"""Suite settings from the command line, without a suite file.

Every override is applied to the suite's raw table (what its TOML file parses to) and the result
goes through :func:`advarena.suite.parse_suite` again, then the planner validates plugin
parameters as it does for any suite: a value given on the command line is checked exactly as the
same value written in a TOML file, and since it changes the suite before planning, it enters the
keys of the cells it affects.

* ``--defense NAME:KEY=VALUE[,KEY=VALUE]``: ``[defense_params.NAME]`` (``a+b:b.eps=0.1`` sets a
  part's parameter of a composition);
* ``--set DOTTED.KEY=VALUE``: any suite value, e.g. ``attacks.pgd.steps=100``,
  ``protocols.white-box.eps=[0.05, 0.1]``, ``eval.batch_size=50``;
* ``--eps LIST``: the ``eps`` sweep of every configured protocol that has one (white-box,
  black-box, ensemble-transfer); white-box's ``headline_eps`` moves to the listed value closest
  to it when the list leaves it out;
* ``--examples N``: ``[eval] n_examples``; ``--epochs N``: ``[train] epochs``, also in its
  per-dataset and per-architecture tables.

Values are read as TOML values (``100``, ``0.2``, ``true``, ``[0.1, 0.2]``, ``"text"``); text that
is not a TOML value is taken as a string (so ``optimizer=sgd`` works); ``a/b`` is read as a
fraction in eps lists (``8/255``).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from .errors import SuiteError
from .suite import Suite, parse_suite

# A comma that starts the next KEY=VALUE (so list values may hold commas).
_NEXT_PAIR = re.compile(r",(?=\s*[A-Za-z_][\w.\-]*\s*=)")


def parse_value(text: str) -> Any:
    """A TOML value, or the text itself when it is not one."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _assignment(text: str, option: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    path = [p.strip() for p in key.split(".")]
    if not sep or not all(path) or not value.strip():
        raise SuiteError(f"{option} {text}: expected KEY=VALUE (e.g. {option} "
                         f"{'attacks.pgd.steps=100' if option == '--set' else 'sigma=0.2'})")
    return path, parse_value(value)


def _put(table: dict, path: list[str], value: Any, what: str) -> None:
    for i, part in enumerate(path[:-1]):
        nxt = table.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise SuiteError(f"{what}: '{'.'.join(path[:i + 1])}' is a value, not a table")
        table = nxt
    table[path[-1]] = value


def split_defense(text: str) -> tuple[str, list[tuple[list[str], Any]]]:
    """``gda-brelu:sigma=0.2,n=2`` -> ("gda-brelu", [(["sigma"], 0.2), (["n"], 2)])."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise SuiteError(f"--defense {text}: no defense name before ':'")
    if not sep:
        return name, []
    if not rest.strip():
        raise SuiteError(f"--defense {text}: no KEY=VALUE after ':' (e.g. {name}:sigma=0.2)")
    return name, [_assignment(p, f"--defense {name}:") for p in _NEXT_PAIR.split(rest)]


def parse_eps(text: str | float | list[float]) -> list[float]:
    """``0.05,0.1`` or ``4/255,8/255`` (or, from Python, a number or a list) -> floats."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    if isinstance(text, (list, tuple)):
        text = ",".join(str(v) for v in text)
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            num, sep, den = part.partition("/")
            out.append(float(num) / float(den) if sep else float(num))
        except (ValueError, ZeroDivisionError):
            raise SuiteError(f"--eps {text}: '{part}' is not a number (e.g. --eps 0.05,0.1 or "
                             f"--eps 8/255)") from None
    if not out:
        raise SuiteError("--eps needs at least one value")
    return out


def _protocols_with(registry: Any, raw: dict, param: str) -> list[str]:
    out = []
    for name in raw.get("protocols", {}):
        try:
            declared = {p.name for p in registry.get("protocols", name).describe_params()}
        except Exception:  # an unknown protocol is reported by the planner
            continue
        if param in declared:
            out.append(name)
    return out


def apply_overrides(suite: Suite, registry: Any, defenses: list[str] = (), *,
                    sets: list[str] = (), eps: str | None = None, examples: int | None = None,
                    epochs: int | None = None) -> tuple[Suite, list[str]]:
    """The suite with the command line's overrides, reparsed; and the defense names with
    their ``:KEY=VALUE`` parts removed."""
    raw = suite.to_dict()
    source = raw.pop("source") or "<suite>"
    names = []
    changed = False
    for text in defenses:
        name, pairs = split_defense(text)
        names.append(name)
        for path, value in pairs:
            params = raw["defense_params"].setdefault(name, {})
            _put(params, path, value, f"--defense {text}")
            changed = True
    for text in sets:
        path, value = _assignment(text, "--set")
        _put(raw, path, value, f"--set {text}")
        changed = True
    if eps is not None:
        values = parse_eps(eps)
        for name in _protocols_with(registry, raw, "eps"):
            table = raw["protocols"][name]
            table["eps"] = list(values)
            if name in _protocols_with(registry, raw, "headline_eps"):
                head = table.get("headline_eps")
                if head is None:
                    head = next(p.default for p in registry.get("protocols", name)
                                .describe_params() if p.name == "headline_eps")
                if head not in values:
                    table["headline_eps"] = min(values, key=lambda v: (abs(v - head), -v))
        changed = True
    if examples is not None:
        raw["eval"]["n_examples"] = int(examples)
        changed = True
    if epochs is not None:
        raw["train"]["epochs"] = int(epochs)
        for sub in raw["train"].values():
            if isinstance(sub, dict) and "epochs" in sub:
                sub["epochs"] = int(epochs)
        changed = True
    if not changed:
        return suite, names
    return parse_suite(raw, f"{source} (with command-line overrides)"), names
