"""mvic-demo's server configuration (issue 16): one torch thread per decode thread and bf16 synthesis by default."""

from __future__ import annotations

import numpy as np
import yaml

from mvic.shared.rig import load_rig
from mvic.shared.scene import Scene, SceneConfig
from mvic.tools.demo import DEMO_SEED, Demo, build_parser


def _server_decode(tmp_path, monkeypatch, *flags: str) -> dict:
    """The ``decode`` section of the server.yaml mvic-demo writes with these flags (no process is started)."""
    args = build_parser().parse_args(["--out", str(tmp_path), "--http-port", "0", *flags])
    (tmp_path / "config").mkdir(parents=True)
    demo = Demo(args)
    monkeypatch.setattr(demo, "_spawn", lambda name, argv: None)
    demo.start_server("weights.safetensors")
    return yaml.safe_load((tmp_path / "config" / "server.yaml").read_text())["decode"]


def test_the_server_gets_one_torch_thread_auto_precision_and_the_scenes_rig(tmp_path, monkeypatch):
    rig = str(tmp_path.resolve() / "config" / "rig.yaml")
    assert _server_decode(tmp_path, monkeypatch) == {"torch_threads": 1, "precision": "auto", "fusion": True,
                                                     "rig": rig}
    scene = Scene(SceneConfig(seed=DEMO_SEED, cameras=7, height=270, width=480))
    np.testing.assert_allclose(load_rig(rig).ground("C4", 270, 480), scene.rig().ground("C4", 270, 480), rtol=1e-12)


def test_the_old_server_settings_stay_one_flag_away(tmp_path, monkeypatch):
    assert _server_decode(tmp_path, monkeypatch, "--server-threads", "0", "--decode-precision", "fp32",
                          "--no-fusion") == {"torch_threads": 0, "precision": "fp32", "fusion": False,
                                             "rig": str(tmp_path.resolve() / "config" / "rig.yaml")}


def test_wildtrack_videos_get_no_rig_unless_one_is_given(tmp_path, monkeypatch):
    assert _server_decode(tmp_path / "a", monkeypatch, "--wildtrack", "/data/wt")["rig"] == ""
    assert _server_decode(tmp_path / "c", monkeypatch, "--no-rig")["rig"] == ""
    given = tmp_path / "wt-rig.yaml"
    assert _server_decode(tmp_path / "b", monkeypatch, "--wildtrack", "/data/wt", "--rig", str(given))["rig"] == \
        str(given.resolve())
