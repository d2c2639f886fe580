"""The one YAML -> frozen dataclass builder shared by the node, the server and training."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import argparse

import yaml

from mvic.shared.config import (
    EXIT_CONFIG,
    add_config_arguments,
    build,
    dump_yaml,
    exit_status_epilog,
    overrides,
    parse_settings,
    read_yaml,
    set_dotted,
    to_dict,
)
from mvic.shared.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class Outer:
    count: int = 1
    on: bool = False
    inner: Inner = field(default_factory=Inner)
    many: tuple[Inner, ...] = ()
    steps: tuple[int, ...] = ()


def test_build_converts_nested_values_and_round_trips():
    c = build(Outer, {"count": 3, "inner": {"rate": "1e-4", "name": 7}, "many": [{"rate": 2}], "steps": [1, 2]})
    assert c == Outer(3, False, Inner(1e-4, "7"), (Inner(2.0),), (1, 2))
    assert build(Outer, to_dict(c)) == c


@pytest.mark.parametrize("raw, key", [
    ({"inner": {"rat": 1}}, "inner.rat: unknown key"),
    ({"many": [{}, {"x": 1}]}, "many[1].x: unknown key"),
    ({"on": "yes"}, "on: expected true or false"),
    ({"count": 1.5}, "count: expected an integer"),
    ({"inner": {"rate": "fast"}}, "inner.rate: expected a number"),
    ({"steps": 3}, "steps: expected a list"),
    ({"inner": 3}, "inner: expected a mapping"),
])
def test_errors_start_with_the_key_path(raw, key):
    with pytest.raises(ConfigError) as info:
        build(Outer, raw)
    assert str(info.value).startswith(key), str(info.value)


def test_yaml_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("count: 2\ninner: {rate: 0.5}\n")
    raw = set_dotted(read_yaml(path), {"inner.name": "x", "count": None})
    assert build(Outer, raw) == Outer(2, False, Inner(0.5, "x"))
    assert read_yaml(None) == {}
    path.write_text("count: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)


def test_only_true_and_false_are_booleans_so_words_like_on_and_off_stay_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("on: true\ninner: {name: off}\nmany: [{name: yes}, {name: On}]\n")
    assert build(Outer, read_yaml(path)) == Outer(on=True, inner=Inner(name="off"), many=(Inner(name="yes"),
                                                                                         Inner(name="On")))
    assert parse_settings(["a=on", "b=FALSE", "c=no"]) == {"a": "on", "b": False, "c": "no"}
    path.write_text("on: yes\n")  # a bool key still takes true/false only
    with pytest.raises(ConfigError, match="on: expected true or false"):
        build(Outer, read_yaml(path))


def test_set_values_are_yaml_and_key_equals_nothing_is_an_empty_string():
    assert parse_settings(["a.b=10", "c=[x, y]", "d=true", "e=", "f=1e-4", "g=text with spaces"]) == {
        "a.b": 10, "c": ["x", "y"], "d": True, "e": "", "f": "1e-4", "g": "text with spaces"}
    for bad, words in (["novalue"], "expected KEY=VALUE"), (["=3"], "expected KEY=VALUE"), \
                      (["a=[1, 2"], "not valid YAML"), (["a=~"], "null"):
        with pytest.raises(ConfigError, match=words):
            parse_settings(bad)


def test_the_command_line_dialect_file_then_set_then_named_flags(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, "x.yaml")
    parser.add_argument("--count", type=int)
    path = tmp_path / "x.yaml"
    path.write_text("count: 2\ninner: {rate: 0.5}\n")
    args = parser.parse_args(["--config", str(path), "--set", "inner.name=n", "--set", "count=5", "--count", "7"])
    raw = set_dotted(read_yaml(args.config), overrides(args, {"count": "count"}))
    config = build(Outer, raw)
    assert config == Outer(7, False, Inner(0.5, "n"))  # the named flag wins over --set, --set over the file
    assert yaml.safe_load(dump_yaml(config)) == to_dict(config) and dump_yaml(config).startswith("count: 7")
    assert not parser.parse_args([]).validate_config


def test_exit_statuses_read_the_same_in_every_program():
    text = exit_status_epilog(failed="it crashed", unusable="a port in use")
    assert text.splitlines()[0] == "exit status:" and "  1  it crashed" in text and "or a port in use" in text
    assert f"  {EXIT_CONFIG}  did not start" in text
