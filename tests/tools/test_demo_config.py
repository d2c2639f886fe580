"""mvic-demo's server configuration (issue 16): one torch thread per decode thread and bf16 synthesis by default."""

from __future__ import annotations

import yaml

from mvic.tools.demo import Demo, build_parser


def _server_decode(tmp_path, monkeypatch, *flags: str) -> dict:
    """The ``decode`` section of the server.yaml mvic-demo writes with these flags (no process is started)."""
    args = build_parser().parse_args(["--out", str(tmp_path), "--http-port", "0", *flags])
    (tmp_path / "config").mkdir()
    demo = Demo(args)
    monkeypatch.setattr(demo, "_spawn", lambda name, argv: None)
    demo.start_server("weights.safetensors")
    return yaml.safe_load((tmp_path / "config" / "server.yaml").read_text())["decode"]


def test_the_server_gets_one_torch_thread_and_auto_precision(tmp_path, monkeypatch):
    assert _server_decode(tmp_path, monkeypatch) == {"torch_threads": 1, "precision": "auto", "fusion": True}


def test_the_old_server_settings_stay_one_flag_away(tmp_path, monkeypatch):
    assert _server_decode(tmp_path, monkeypatch, "--server-threads", "0", "--decode-precision", "fp32",
                          "--no-fusion") == {"torch_threads": 0, "precision": "fp32", "fusion": False}
