"""Declared, typed, validated plugin parameters.

Every plugin class is turned into a keyword-only dataclass (see :class:`Plugin`). Its annotated
class attributes are its parameters; :func:`param` attaches bounds, choices and a help line. The
CLI, the suites and the leaderboard read the declarations through :func:`describe_params`, and
construction validates every value, so a bad parameter fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, ClassVar, Literal

from .errors import ParameterError

_MISSING = dataclasses.MISSING


def param(default: Any = _MISSING, *, help: str = "", ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: tuple | None = None, finite: bool = True) -> Any:
    """Declare a plugin parameter with its paper default, bounds and a one-line description.
    Float values must be finite (no inf or nan) unless ``finite=False``."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
            "finite": finite}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults so parameters stay hashable")
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "Any"
        return f"tuple[{inner}, ...]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError``.

    Strings are parsed (values arrive as text from the CLI and from TOML overrides); an int is
    accepted for a float; a bool is never taken for a number.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"expected {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        raise TypeError(f"expected one of {', '.join(repr(a) for a in allowed)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected {_type_name(tp)}")
        return tuple(_coerce(v, args[0] if args else Any) for v in value)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        raise TypeError("expected None")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError("expected bool")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("expected int")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError("expected int")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("expected float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError("expected float")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError("expected str")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TypeError(f"expected {_type_name(tp)}")
    return value


def _check_bounds(name: str, value: Any, meta: dict) -> None:
    nums = value if isinstance(value, tuple) else (value,)
    for v in nums:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        # inf or nan would pass some bounds and then be stored (and exported) as null
        if isinstance(v, float) and meta.get("finite", True) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        if meta.get("ge") is not None and not v >= meta["ge"]:
            raise ValueError(f"must be >= {meta['ge']}, got {v}")
        if meta.get("gt") is not None and not v > meta["gt"]:
            raise ValueError(f"must be > {meta['gt']}, got {v}")
        if meta.get("le") is not None and not v <= meta["le"]:
            raise ValueError(f"must be <= {meta['le']}, got {v}")
        if meta.get("lt") is not None and not v < meta["lt"]:
            raise ValueError(f"must be < {meta['lt']}, got {v}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """What the CLI, suites and leaderboards show about one parameter."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Plugin:
    """Base of every plugin class: attacks, defenses, datasets, architectures, protocols.

    Subclasses declare ``name`` (the registry name users type), ``paper`` (citation) and their
    parameters as annotated class attributes; each subclass becomes a keyword-only dataclass, so
    ``FGSM(eps=0.1)`` works and ``FGSM(0.1)`` does not. Values are coerced and validated at
    construction and a :class:`ParameterError` names the plugin and the parameter.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    # The plugin API version this plugin was written against (major must match).
    api_version: ClassVar[str] = "1"
    # Set by the registry: where the plugin came from (distribution name and version).
    distribution: ClassVar[str] = ""
    distribution_version: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(kw_only=True, eq=True, repr=True)(cls)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                value = _coerce(value, hints.get(f.name, Any))
                _check_bounds(f.name, value, dict(f.metadata))
            except (TypeError, ValueError) as exc:
                raise ParameterError(
                    f"{self.display_name()}: parameter '{f.name}' {exc}") from None
            object.__setattr__(self, f.name, value)

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def describe_params(cls) -> list[ParamInfo]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not _MISSING else None
            out.append(ParamInfo(f.name, _type_name(hints.get(f.name, Any)), default,
                                 f.metadata.get("help", ""), f.metadata.get("choices")))
        return out

    @classmethod
    def create(cls, **params: Any) -> "Plugin":
        """Construct with a clear error for unknown parameter names (close matches listed)."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in params:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else (
                    f"; it takes {', '.join(sorted(known)) or 'no parameters'}")
                raise ParameterError(f"{cls.display_name()}: unknown parameter '{key}'{hint}")
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """The instance's parameter values, JSON-ready (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def spec(self) -> dict[str, Any]:
        """Name and parameters: what identifies this configured plugin in cell keys."""
        return {"name": self.name, "params": self.params()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v
