"""server.yaml loading and the mvic-server command line (without starting a server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvic.fusion_server import app, cli
from mvic.fusion_server.config import ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("cameras: [C1, C2]\ngrouping: {tolerance_ms: 15}\nsinks: {video: true}\n")
    c = load_config(path, {"device": "cpu", "listen": None})
    assert c.cameras == ("C1", "C2") and c.grouping.tolerance_ms == 15.0 and c.sinks.video
    assert c.device == "cpu" and c.listen == "0.0.0.0:50051"


def test_empty_weights_flag_means_the_installed_weights(tmp_path, monkeypatch):
    """--weights= (docker-compose passes it when MVIC_WEIGHTS is unset) selects the installed weights of --model,
    even over a file named in server.yaml."""
    monkeypatch.setattr(app, "default_weights", lambda model: f"installed:{model}")
    path = tmp_path / "server.yaml"
    path.write_text("weights: /weights/mine.safetensors\n")
    c = load_config(path, cli._overrides(cli.build_parser().parse_args([])))
    assert app.weights_source(c) == Path("/weights/mine.safetensors")
    c = load_config(path, cli._overrides(cli.build_parser().parse_args(["--weights=", "--model=ldmic-lite"])))
    assert c.weights == "" and app.weights_source(c) == "installed:ldmic-lite"


@pytest.mark.parametrize("text, key", [
    ("grouping: {tolerence_ms: 5}\n", "grouping.tolerence_ms: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("decode: {workers: two}\n", "decode.workers"),
    ("sinks: {png: 1}\n", "sinks.png"),
    ("device: gpu0\n", "device"),
    ("cameras: [C1, C1]\n", "cameras"),
    ("listen: nowhere\n", "listen"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_cli_validate_config(tmp_path, capsys):
    path = tmp_path / "server.yaml"
    path.write_text("grouping: {max_wait_ms: 100}\n")
    assert cli.main(["--config", str(path), "--gpu", "1", "--camera", "C1", "--validate-config"]) == 0
    out = capsys.readouterr().out
    assert "device='cuda:1'" in out and "cameras=('C1',)" in out and "max_wait_ms=100.0" in out
    path.write_text("grouping: {wait: 1}\n")
    assert cli.main(["--config", str(path), "--validate-config"]) == 2
    assert "grouping.wait" in capsys.readouterr().err


def test_cli_without_weights_says_what_to_do(tmp_path, caplog, no_installed_weights):
    assert cli.main(["--model", "ldmic-fast-lite", "--out", str(tmp_path)]) == 1
    assert "--weights" in caplog.text
