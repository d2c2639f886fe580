"""server.yaml loading and the mvic-server command line (without starting a server)."""

from __future__ import annotations

from pathlib import Path

import pytest

import yaml

from mvic.fusion_server import cli
from mvic.fusion_server.config import ConfigError, load_config
from mvic.shared.config import to_dict
from mvic.shared.scene import SceneConfig, write_scene


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("cameras: [C1, C2]\ngrouping: {tolerance_ms: 15}\nsinks: {video: true}\n")
    c = load_config(path, {"device": "cpu", "listen": None})
    assert c.cameras == ("C1", "C2") and c.grouping.tolerance_ms == 15.0 and c.sinks.video
    assert c.device == "cpu" and c.listen == "127.0.0.1:50051" and not c.insecure and not c.tls.enabled


def test_empty_weights_flag_means_the_installed_weights(tmp_path, monkeypatch):
    """--weights= (docker-compose passes it when MVIC_WEIGHTS is unset) selects the installed weights of --model,
    even over a file named in server.yaml."""
    from mvic.shared.codec import registry

    def installed(model):  # stands for registry.default_weights: the weights installed with the package
        return f"installed:{model}"

    monkeypatch.setattr(registry, "default_weights", installed)
    path = tmp_path / "server.yaml"
    path.write_text("weights: /weights/mine.safetensors\n")
    c = load_config(path, cli.overrides(cli.build_parser().parse_args([])))
    assert registry.weights_source(c.weights, c.model) == Path("/weights/mine.safetensors")  # what app loads
    c = load_config(path, cli.overrides(cli.build_parser().parse_args(["--weights=", "--model=ldmic-lite"])))
    assert c.weights == "" and registry.weights_source(c.weights, c.model) == "installed:ldmic-lite"


@pytest.mark.parametrize("text, key", [
    ("grouping: {tolerence_ms: 5}\n", "grouping.tolerence_ms: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("decode: {workers: two}\n", "decode.workers"),
    ("decode: {entropy_threads: 0}\n", "decode.entropy_threads: must be 1..64"),
    ("decode: {fusion_max_side: 16}\n", "decode.fusion_max_side: must be 32.."),
    ("decode: {fusion: maybe}\n", "decode.fusion"),
    ("decode: {rig: /nonexistent/rig.yaml}\n", "decode.rig: /nonexistent/rig.yaml is not a file"),
    ("sinks: {png: 1}\n", "sinks.png"),
    ("device: gpu0\n", "device"),
    ("cameras: [C1, C1]\n", "cameras"),
    ("listen: nowhere\n", "listen"),
    ("limits: {max_view_pixels: 100}\n", "limits.max_view_pixels: must be 4096.."),
    ("limits: {max_set_pixels: 4096}\n", "limits.max_set_pixels: must be >= limits.max_view_pixels"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_a_rig_file_is_read_at_load_and_a_bad_one_refused_naming_its_key(tmp_path):
    rig = tmp_path / "rig.yaml"
    write_scene(SceneConfig(seed=1, cameras=2, height=64, width=96), 0, tmp_path)
    path = tmp_path / "server.yaml"
    path.write_text(f"decode: {{rig: {rig}}}\n")
    assert load_config(path).decode.rig == str(rig)
    rig.write_text("cameras: {C1: {size: [96, 64], intrinsics: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}\n")
    with pytest.raises(ConfigError, match=r"decode\.rig: .*cameras\.C1: needs exactly"):
        load_config(path)


def test_cli_validate_config_prints_the_effective_config_as_yaml(tmp_path, capsys, tiny_weights):
    path = tmp_path / "server.yaml"
    path.write_text("grouping: {max_wait_ms: 100}\n")
    weights = str(tiny_weights["test-tiny-fast"])
    assert cli.main(["--config", str(path), "--gpu", "1", "--camera", "C1", "--model", "test-tiny-fast",
                     "--weights", weights, "--set", "decode.workers=3", "--validate-config"]) == 0
    captured = capsys.readouterr()
    effective = yaml.safe_load(captured.out)
    assert effective == to_dict(load_config(path, {"device": "cuda:1", "cameras": ["C1"], "model": "test-tiny-fast",
                                                   "weights": weights, "decode.workers": 3}))
    assert effective["device"] == "cuda:1" and effective["cameras"] == ["C1"]
    assert effective["grouping"]["max_wait_ms"] == 100.0 and effective["decode"]["workers"] == 3
    assert captured.err.startswith("mvic-server: configuration OK")
    path.write_text("grouping: {wait: 1}\n")
    assert cli.main(["--config", str(path), "--validate-config"]) == 2
    assert capsys.readouterr().err.startswith("mvic-server: configuration error: grouping.wait: unknown key")


def test_set_reaches_every_key_and_named_flags_win(tmp_path):
    args = cli.build_parser().parse_args(["--set", "grouping.max_wait_ms=500", "--set", "cameras=[C1, C2]",
                                          "--set", "sinks.video=true", "--set", "device=cpu", "--gpu", "0"])
    c = cli.config_from_args(args)
    assert c.grouping.max_wait_ms == 500.0 and c.cameras == ("C1", "C2") and c.sinks.video
    assert c.device == "cuda:0"  # the named flag wins over --set
    bad_lines = [(["--set", "grouping.wait=1"], "grouping.wait"), (["--set", "decode.workers=two"], "decode.workers"),
                 (["--set", "nokey"], "--set nokey"), (["--set", 'cameras=["C\\t1"]'], r"U\+0009")]
    for bad, key in bad_lines:
        with pytest.raises(ConfigError, match=key):
            cli.config_from_args(cli.build_parser().parse_args(bad))


def test_camera_list_follows_the_shared_id_rule(tmp_path):
    shown_cut = r"cameras: camera id 'x{48}'…\(\+17 chars\) must be 1..64 .* \(it is 65 bytes\)"
    with pytest.raises(ConfigError, match=shown_cut):
        load_config(None, {"cameras": ["x" * 65]})
    assert load_config(None, {"cameras": ["lobby east", "é" * 32]}).cameras == ("lobby east", "é" * 32)


def test_cli_without_weights_says_what_to_do(tmp_path, capsys, no_installed_weights):
    assert cli.main(["--model", "ldmic-fast-lite", "--out", str(tmp_path)]) == 2  # did not start
    err = capsys.readouterr().err
    assert err.startswith("mvic-server: configuration error: weights:") and "--weights" in err
    assert cli.main(["--weights", str(tmp_path / "missing.safetensors"), "--validate-config"]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "  0  " in out and "  1  " in out and "  2  " in out


@pytest.mark.parametrize("key, value", [
    ("admission.hello_timeout_s", 0), ("admission.idle_timeout_s", -1), ("admission.max_streams_per_peer", 0),
    ("admission.max_capture_ahead_s", 0), ("admission.max_capture_age_s", -1), ("grouping.max_drops", -1),
])
def test_admission_limits_are_checked_by_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, {key: value})


def test_admission_defaults_are_the_documented_ones():
    """configs/server.yaml states the defaults of the bounded-admission keys; they must agree with the code."""
    shipped = yaml.safe_load((Path(__file__).parents[2] / "configs" / "server.yaml").read_text())
    c = load_config(None)
    assert shipped["admission"] == to_dict(c)["admission"]
    assert shipped["grouping"]["max_drops"] == c.grouping.max_drops
