"""Commands that code nothing start fast: they must not import torch, CompressAI or OpenCV (a second or more).

Each command runs in a fresh interpreter, as from the shell; what it imported is read from ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "shared" / "codec" / "golden" / "test-tiny-fast.mvic"
HEAVY = ("torch", "compressai", "cv2")

COMMANDS = {
    "mvic-node --help": ("mvic.node.cli", ["--help"]),
    "mvic-node --validate-config (synthetic source)": ("mvic.node.cli", ["--camera", "C1", "--validate-config"]),
    "mvic-server --help": ("mvic.fusion_server.cli", ["--help"]),
    "mvic-codec --help": ("mvic.tools.codec_cli", ["--help"]),
    "mvic-codec info": ("mvic.tools.codec_cli", ["info", str(GOLDEN)]),
    "mvic-rig --help": ("mvic.tools.rig_cli", ["--help"]),
}

_PROBE = """
import contextlib, importlib, io, json, sys
module, argv = sys.argv[1], sys.argv[2:]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_that_code_nothing_import_no_heavy_library(command):
    module, argv = COMMANDS[command]
    out = subprocess.run([sys.executable, "-c", _PROBE, module, *argv], capture_output=True, text=True, timeout=120,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), out.stderr
    allowed = {"cv2"} if "validate-config" in command else set()  # it opens the source: OpenCV reads cameras
    assert {m.split(".")[0] for m in result["modules"]} <= allowed, f"{command} imported {result['modules']}"
