"""The one YAML -> frozen dataclass builder shared by the node, the server and training."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mvic.shared.config import build, read_yaml, set_dotted, to_dict
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
