"""One config mechanism for every stage: a dataclass, a YAML file, ``key=value`` overrides.

Each stage's options are a dataclass whose fields carry their help text in
``metadata={"help": ...}`` (trl's convention, so trl's own config classes plug in unchanged).
``parse_args`` reads ``--config FILE`` and any ``key=value`` pairs; values are parsed as YAML
scalars, so ``lr=1e-3``, ``parts=[sasrec,text]`` and ``k_core=null`` all work.

We write this ourselves rather than use ``transformers.HfArgumentParser`` / ``trl.TrlParser``
because those take ``--key value`` flags and reject unknown YAML keys without naming the valid
ones; our stages promise ``key=value`` overrides and an error that lists every valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import EtegrlError

T = TypeVar("T")


def option(default, help: str):
    """A dataclass field with its help text (list defaults are copied per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


class ConfigError(EtegrlError):
    """A config file or override that cannot be applied; the message names the file and key."""


def require(cfg: Any, low: float, *keys: str, above: bool = False, high: float | None = None,
            below_high: bool = False) -> None:
    """Range checks for ``__post_init__``: each key's value must be ≥ ``low`` (> with
    ``above``) and, with ``high``, ≤ ``high`` (< with ``below_high``); a ValueError names the
    key (``build_config`` adds the file or command line it came from)."""
    for key in keys:
        value = getattr(cfg, key)
        if value is None:
            continue
        bad = value <= low if above else value < low
        if high is not None:
            bad = bad or (value >= high if below_high else value > high)
        if bad or value != value:  # value != value: NaN
            lo = f"> {low}" if above else f"≥ {low}"
            hi = "" if high is None else f" and {'<' if below_high else '≤'} {high}"
            raise ValueError(f"key '{key}' must be {lo}{hi}, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError``; unknown shapes pass through."""
    origin = get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise TypeError
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):  # a single value where a list is expected: "parts=text"
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = get_args(tp)
        if args and origin is list:
            return [_coerce(v, args[0]) for v in value]
        return list(value) if origin is list or tp is list else tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    return value  # enums, nested classes from third-party configs: their own __post_init__ checks


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"command line: '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _unknown_key_error(source: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"{source}: unknown key '{key}'.{hint} Valid keys: {', '.join(sorted(valid))}"
    )


def build_config(cls: type[T], values: dict[str, Any], sources: dict[str, str]) -> T:
    """Instantiate ``cls`` from ``values``; ``sources`` maps each key to where it came from."""
    types_ = _field_types(cls)
    refused = getattr(cls, "unused_field_error", None)  # inherited fields a stage does not read
    kwargs = {}
    for key, value in values.items():
        source = sources.get(key, "config")
        if key not in types_:
            usable = [k for k in types_ if refused is None or not refused(k)]
            raise _unknown_key_error(source, key, usable)
        if refused is not None and (why := refused(key)):
            raise ConfigError(f"{source}: {why}")
        try:
            kwargs[key] = _coerce(value, types_[key])
        except TypeError:
            raise ConfigError(
                f"{source}: key '{key}' expects {_type_name(types_[key])}, got {value!r}"
            ) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        named = re.match(r"key '(\w+)'", str(err))  # a range check names its key: say where it came from
        where = (sources.get(named.group(1), "default value") if named else
                 ", ".join(sorted(set(sources.values()))) or "config")
        raise ConfigError(f"{where}: {err}") from err


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file, then apply ``key=value`` overrides."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of key: value")
        for key, value in data.items():
            values[str(key)] = value
            sources[str(key)] = str(path)
    for item in overrides:
        key, value = _parse_override(item)
        values[key] = value
        sources[key] = f"command line '{item}'"
    return build_config(cls, values, sources)


def config_help(cls: type) -> str:
    lines = [f"Options of {cls.__name__} (set in the YAML file or as key=value):"]
    types_ = _field_types(cls)
    refused = getattr(cls, "unused_field_error", None)
    hidden = 0
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if refused is not None and refused(f.name):
            hidden += 1
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"  {f.name} ({_type_name(types_[f.name])}, default {default!r})")
        if f.metadata.get("help"):
            lines.append(f"      {f.metadata['help']}")
    if hidden:
        lines.append(f"({hidden} inherited fields that this stage does not read are not listed; "
                     f"setting one is an error naming it.)")
    return "\n".join(lines)


def parse_args(cls: type[T], argv: list[str] | None = None, prog: str = "") -> T:
    """``[--config FILE] [key=value ...]`` → a config; ``--help`` lists every option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog or 'python -m <stage>'} [--config FILE] [key=value ...]\n")
        print(config_help(cls))
        raise SystemExit(0)
    path = None
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("command line: --config needs a file path")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return load_config(cls, path, rest)


def plain(value: Any) -> Any:
    """A YAML-safe copy of a config value (enums by value, unknown objects as text)."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_values(config: Any) -> dict[str, Any]:
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs, so a run can be repeated exactly."""
    Path(path).write_text(yaml.safe_dump(config_values(config), sort_keys=False))
