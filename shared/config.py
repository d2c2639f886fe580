"""Configuration files: frozen dataclasses built from YAML by one function, for the node, the server and training.

``build(cls, raw)`` turns a parsed YAML mapping into the dataclass ``cls`` (nested dataclasses, tuples, numbers,
strings, booleans), rejecting unknown keys and wrong types with the key path (``source.synthetic.seeds``); each
dataclass's own ``__post_init__`` (or its loader) checks values with ``require``. ``read_yaml`` reads a file,
``set_dotted`` puts command-line overrides (``{"source.fps": 10.0}``) into the mapping, ``to_dict`` /
``dump_yaml`` go back for ``--validate-config`` output. Errors are ``ConfigError`` (mvic.shared.errors) and start with
the key path.

One command-line dialect for ``mvic-node`` and ``mvic-server`` (``add_config_arguments``, ``overrides``):

    --config FILE            the YAML file (every key optional; unknown keys are errors)
    --set KEY=VALUE          one key by its dotted path, VALUE in YAML (10, true, [C1, C2], text); repeatable
    --<flag> VALUE           named shortcuts for the common keys; they win over --set, which wins over the file
    --validate-config        check everything (and that the files named exist), print the effective config as
                             YAML on stdout, exit

and one set of exit statuses (``EXIT_OK`` 0, ``EXIT_FAILED`` 1, ``EXIT_CONFIG`` 2), written out in each program's
``--help`` by ``exit_status_epilog``.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from mvic.shared.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

EXIT_OK = 0  # done: stopped on request, or finished its work
EXIT_FAILED = 1  # started, then failed (what failed is in the log)
EXIT_CONFIG = 2  # did not start: a bad flag, key or value, or a file it names is missing or unusable


def require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError("key: message") unless ``ok``: the one way config checks report a value."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false (any case). PyYAML's YAML 1.1 also reads yes/no/on/off as
    booleans, which would make ``amp: off`` or ``channels_last: on`` a type error instead of the word."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def parse_yaml(text: str) -> Any:
    """One YAML document, with YAML 1.2's booleans (see ``_Loader``)."""
    return yaml.load(text, _Loader)  # noqa: S506 - a SafeLoader subclass: plain data only


def read_yaml(path: str | Path | None) -> dict:
    """The mapping in a YAML file ({} for no file or an empty one)."""
    if path is None:
        return {}
    try:
        raw = parse_yaml(Path(path).read_text())
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


def dump_yaml(config: Any) -> str:
    """The config as YAML, keys in declaration order (``--validate-config`` output)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# ------------------------------------------------------------------------------------ the command-line dialect
def add_config_arguments(parser: argparse.ArgumentParser, file_name: str) -> None:
    """``--config``, ``--set`` and ``--validate-config``, the same in mvic-node and mvic-server."""
    parser.add_argument("--config", metavar=file_name,
                        help=f"YAML configuration ({file_name}); --set and the flags below override it")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="set one config key by its dotted path, VALUE in YAML (10, true, [C1, C2], text; "
                             "KEY= sets an empty string); repeat for more keys; a named flag wins over it")
    parser.add_argument("--validate-config", action="store_true",
                        help="check the configuration and the files it names, print the effective config as YAML, "
                             f"exit ({EXIT_OK} when valid, {EXIT_CONFIG} when not)")


def exit_status_epilog(failed: str, unusable: str) -> str:
    """The exit statuses for a program's --help: ``failed`` is what makes it exit EXIT_FAILED, ``unusable`` what
    else keeps it from starting (EXIT_CONFIG)."""
    return ("exit status:\n"
            f"  {EXIT_OK}  done: stopped by SIGTERM/SIGINT, or finished its work; --validate-config: the configuration "
            "is valid\n"
            f"  {EXIT_FAILED}  {failed}\n"
            f"  {EXIT_CONFIG}  did not start: a bad flag, config key or value (the message names its key path),\n"
            f"     or {unusable}")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["a.b=10", "c=[x, y]"]`` -> ``{"a.b": 10, "c": ["x", "y"]}``: each value read as YAML, ``k=`` as ""."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set source.fps=10")
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: --set value {text!r} is not valid YAML ({exc.problem}); quote it") from None
        if value is None:
            raise ConfigError(f"{key}: --set value {text!r} is null; write {key}= for an empty string")
        out[key] = value
    return out


def overrides(args: argparse.Namespace, flag_keys: Mapping[str, str]) -> dict[str, Any]:
    """Command-line overrides as dotted keys: ``--set`` entries, then the named flags that were given
    (``flag_keys``: argparse dest -> dotted key) on top."""
    out = parse_settings(getattr(args, "settings", None) or [])
    out.update({key: getattr(args, dest) for dest, key in flag_keys.items() if getattr(args, dest) is not None})
    return out


def config_error(prog: str, exc: ConfigError) -> int:
    """Report a configuration error the same way in every program; EXIT_CONFIG."""
    print(f"{prog}: configuration error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def print_validated(prog: str, config: Any, what: str = "") -> int:
    """``--validate-config`` success: the effective config as YAML on stdout, one line on stderr; EXIT_OK."""
    print(dump_yaml(config), end="")
    print(f"{prog}: configuration OK{' ' + what if what else ''}", file=sys.stderr)
    return EXIT_OK
