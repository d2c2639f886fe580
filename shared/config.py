"""Configuration files: frozen dataclasses built from YAML by one function, for the node, the server and training.

``build(cls, raw)`` turns a parsed YAML mapping into the dataclass ``cls`` (nested dataclasses, tuples, numbers,
strings, booleans), rejecting unknown keys and wrong types with the key path (``source.synthetic.seeds``); each
dataclass's own ``__post_init__`` checks values. ``read_yaml`` reads a file, ``set_dotted`` puts command-line
overrides (``{"source.fps": 10.0}``) into the mapping, ``to_dict`` goes back for ``--validate-config`` output.
Errors are ``ConfigError`` (mvic.shared.errors) and start with the key path.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from mvic.shared.errors import ConfigError


def read_yaml(path: str | Path | None) -> dict:
    """The mapping in a YAML file ({} for no file or an empty one)."""
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from None
    return {} if raw is None else raw


def set_dotted(raw: dict, overrides: dict[str, Any]) -> dict:
    """Put ``{"a.b": value}`` overrides into a nested mapping (values of None are left out)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        section = raw
        *parents, leaf = dotted.split(".")
        for name in parents:
            if not isinstance(section.setdefault(name, {}), dict):
                raise ConfigError(f"{name}: expected a mapping, got {type(section[name]).__name__}")
            section = section[name]
        section[leaf] = value
    return raw


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types and bad values name their key path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for name in raw:
        if name not in known:
            key = f"{path}.{name}" if path else str(name)
            raise ConfigError(f"{key}: unknown key; known keys{' of ' + path if path else ''}: {', '.join(known)}")
    return cls(**{name: _convert(hints[name], value, f"{path}.{name}" if path else name)
                  for name, value in raw.items()})


def _convert(hint: Any, value: Any, key: str) -> Any:
    if is_dataclass(hint):
        return build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(typing.get_args(hint)[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no optional fields are declared
        raise ConfigError(f"{key}: optional fields are not supported")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = hint(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and isinstance(value, float)):
            raise ConfigError(f"{key}: expected {'an integer' if hint is int else 'a number'}, got {value!r}")
        return hint(value)
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `camera: 1`, `source: {uri: 0}` (a webcam index)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - only the types above are declared


def to_dict(config: Any) -> dict:
    """Plain nested dict (and lists) of a config, for --validate-config output, logs and checkpoints."""
    def plain(value):
        if is_dataclass(value):
            return to_dict(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(config, f.name)) for f in fields(config)}
