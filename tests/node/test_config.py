"""Node configuration: YAML + flags, errors that name the key path, --validate-config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mvic.node.cli import build_parser, config_from_args, main, parse_bytes
from mvic.node.config import ConfigError, NodeConfig, load_config, to_dict


def write(tmp_path, text: str):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_yaml_and_flags_combine(tmp_path):
    path = write(tmp_path, "camera: C2\nsource:\n  fps: 10\n  synthetic: {height: 64, width: 96}\nencode: {rate: 1}\n")
    args = build_parser().parse_args(["--config", str(path), "--rate", "3", "--spool-max-bytes", "1M",
                                      "--policy", "every"])
    config = config_from_args(args)
    assert isinstance(config, NodeConfig)
    assert config.camera == "C2" and config.source.fps == 10.0 and config.source.synthetic.height == 64
    assert config.encode.rate == 3 and config.encode.policy == "every"  # the flag wins over the file
    assert config.spool.max_bytes == 1 << 20
    assert config.source.file_timeline == "native" and config.source.max_side == 0  # the defaults


def test_timeline_and_resize_flags_override_yaml(tmp_path):
    path = write(tmp_path, "camera: C1\nsource: {file_timeline: native, max_side: 640}\n")
    args = build_parser().parse_args(["--config", str(path), "--file-timeline", "sequential", "--max-side", "1280"])
    config = config_from_args(args)
    assert config.source.file_timeline == "sequential" and config.source.max_side == 1280


def test_empty_weights_flag_means_the_installed_weights(tmp_path, monkeypatch):
    """--weights= (docker-compose passes it when MVIC_WEIGHTS is unset) selects the installed weights of --model,
    even over a file named in the YAML."""
    from mvic.node import encoder
    from mvic.shared.codec import registry

    def installed(model):  # stands for registry.default_weights: the weights installed with the package
        return f"installed:{model}"

    monkeypatch.setattr(registry, "default_weights", installed)
    monkeypatch.setattr(encoder, "load_model", lambda source, model=None: source)
    path = write(tmp_path, "camera: C1\nencode: {weights: /weights/mine.safetensors}\n")
    config = config_from_args(build_parser().parse_args(["--config", str(path)]))
    assert encoder.load_encoder(config.encode) == Path("/weights/mine.safetensors")
    config = config_from_args(build_parser().parse_args(["--config", str(path), "--weights=", "--model=ldmic-lite"]))
    assert config.encode.weights == "" and encoder.load_encoder(config.encode) == "installed:ldmic-lite"
    config = config_from_args(build_parser().parse_args(["--camera", "C1", "--weights="]))
    assert encoder.load_encoder(config.encode) == f"installed:{encoder.DEFAULT_MODEL}"


@pytest.mark.parametrize("text, key", [
    ("camera: C1\nsource: {fsp: 5}\n", "source.fsp"),
    ("camera: C1\nsource: {synthetic: {seeds: 1}}\n", "source.synthetic.seeds"),
    ("camera: C1\nspool: {when_full: explode}\n", "spool.when_full"),
    ("camera: C1\nencode: {rate: fast}\n", "encode.rate"),
    ("camera: C1\nsource: {loop: 'yes'}\n", "source.loop"),
    ("camera: C1\nsource: {file_timeline: realtime}\n", "source.file_timeline"),
    ("camera: C1\nsource: {max_side: 4}\n", "source.max_side"),
    ("camera: C1\nsource: {max_side: -1}\n", "source.max_side"),
    ("camera: C1\nlink: {backoff_initial_s: 5, backoff_max_s: 1}\n", "link.backoff_max_s"),
    ("camera: C1\nserver: nohostport\n", "server"),
    ("camera: C1\nbogus: 1\n", "bogus"),
    ("source: {fps: 5}\n", "camera"),
    ("camera: C1\nmetrics: 9100\n", "metrics"),
])
def test_errors_name_the_key_path(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(f"{key}:") or str(info.value).startswith(f"{key} "), str(info.value)


def test_validate_config_ok_and_bad(tmp_path, tiny_weights, capsys):
    good = write(tmp_path, "camera: C1\nsource: {synthetic: {height: 64, width: 64}}\n")
    weights = str(tiny_weights["test-tiny-fast"])
    assert main(["--config", str(good), "--weights", weights, "--validate-config"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out) == to_dict(load_config(good, {"encode.weights": weights}))
    assert captured.err.startswith("mvic-node: configuration OK")
    assert main(["--config", str(good), "--weights", str(tmp_path / "missing.safetensors"),
                 "--validate-config"]) == 2
    assert "encode.weights" in capsys.readouterr().err
    assert main(["--camera", "lobby", "--weights", str(tiny_weights["test-tiny-fast"]), "--validate-config"]) == 2
    assert "source.uri" in capsys.readouterr().err  # 'lobby' has no synthetic view: --source is needed
    assert main(["--camera", "C1", "--source", str(tmp_path / "nothing"), "--validate-config"]) == 2
    assert capsys.readouterr().err.startswith("mvic-node: configuration error: source.uri:")


def test_set_reaches_every_key_and_named_flags_win(tmp_path):
    path = write(tmp_path, "camera: C1\nlink: {max_in_flight: 8}\n")
    args = build_parser().parse_args(["--config", str(path), "--set", "link.max_in_flight=16",
                                      "--set", "source.synthetic.height=64", "--set", "group=",
                                      "--set", "encode.rate=1", "--rate", "3"])
    config = config_from_args(args)
    assert config.link.max_in_flight == 16 and config.source.synthetic.height == 64 and config.group == ""
    assert config.encode.rate == 3  # the named flag wins over --set, which wins over the file
    with pytest.raises(ConfigError, match="^link.max_in_flite: unknown key"):
        config_from_args(build_parser().parse_args(["--camera", "C1", "--set", "link.max_in_flite=1"]))
    with pytest.raises(ConfigError, match="null"):
        config_from_args(build_parser().parse_args(["--camera", "C1", "--set", "group=~"]))


@pytest.mark.parametrize("camera", ["lobby east", "a/b", "é" * 32])
def test_any_id_the_server_accepts_is_a_valid_camera(camera):
    """One id rule (mvic.shared.ids) on both ends: the node no longer refuses '/' (its spool folder is a safe
    name of the id), and refuses exactly what the server would."""
    assert load_config(None, {"camera": camera}).camera == camera


@pytest.mark.parametrize("camera", ["", "C\n1", "x" * 65])
def test_camera_ids_outside_the_shared_rule_are_refused(camera):
    with pytest.raises(ConfigError, match="^camera: camera id .* must be 1..64 printable UTF-8 bytes .*--camera"):
        load_config(None, {"camera": camera})


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "  0  " in out and "  1  " in out and "  2  " in out


def test_parse_bytes():
    assert parse_bytes("1024") == 1024
    assert parse_bytes("256M") == 256 << 20
    assert parse_bytes("1GiB") == 1 << 30
    assert parse_bytes("4k") == 4096


def test_the_default_model_has_one_home():
    """mvic.shared.model_table.DEFAULT_MODEL is imported, never re-typed, by the node, the server's config and CLI,
    and the demo (docstrings may name it)."""
    import ast

    from mvic.shared.model_table import DEFAULT_MODEL

    root = Path(__file__).resolve().parents[2]
    files = [*(root / "node").glob("*.py"), *(root / "fusion_server").glob("*.py"), root / "tools" / "demo.py"]
    for path in files:
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        literals = [node.value for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
        assert not [text for text in literals if DEFAULT_MODEL in text], f"{path.name} re-types {DEFAULT_MODEL}"


def test_tls_flags_are_all_or_nothing_and_name_existing_files(tmp_path):
    pem = tmp_path / "c1.crt"
    pem.write_text("x")
    args = build_parser().parse_args(["--camera", "C1", "--tls-ca", str(pem), "--tls-cert", str(pem), "--tls-key",
                                      str(pem), "--tls-server-name", "fusion.lan"])
    tls = config_from_args(args).tls
    assert tls.enabled and (tls.ca, tls.cert, tls.key, tls.server_name) == (str(pem),) * 3 + ("fusion.lan",)
    with pytest.raises(ConfigError, match="^tls: give all of tls.ca, tls.cert and tls.key"):
        load_config(overrides={"camera": "C1", "tls.cert": str(pem)})
    with pytest.raises(ConfigError, match="^tls.key: .* is not a file"):
        load_config(overrides={"camera": "C1", "tls.ca": str(pem), "tls.cert": str(pem),
                               "tls.key": str(tmp_path / "gone")})
    assert not load_config(overrides={"camera": "C1"}).tls.enabled  # plaintext by default


def test_server_may_name_several_servers_and_link_lb_is_checked():
    """Issue 15: a DNS name or an ipv4: list of every server; ring_hash (default) or pick_first."""
    for target in ("dns:///mvic-server.mvic.svc.cluster.local:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051",
                   "ipv6:[::1]:50051,[::1]:50052"):
        assert load_config(None, {"camera": "C1", "server": target}).server == target
    assert load_config(None, {"camera": "C1"}).link.lb == "ring_hash"
    assert load_config(None, {"camera": "C1", "link.lb": "pick_first"}).link.lb == "pick_first"
    with pytest.raises(ConfigError, match="^link.lb"):
        load_config(None, {"camera": "C1", "link.lb": "round_robin"})
