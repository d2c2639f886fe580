"""The GPU-window command (scripts/device-train.sh) dry-run on this CPU within its limits: a hard deadline, at most
8 files of at most 16 MiB no more than two folders down, weights that start a new run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mvic.tools.training.config import load_config
from mvic.tools.training.train import main as train_main

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
model: test-tiny-fast
log_every: 1
checkpoint_every: 100000
checkpoint_minutes: 0.05
data: {kind: synthetic, cameras: 3, frames: 2, scenes: 1, height: 64, width: 64, k_min: 1, k_max: 3}
optim: {batch_size: 2, crop: 64, lr: 1.0e-3, max_steps: 100000, lr_time_fractions: [0.85], lr_gamma: 0.1,
        ema: 0.99, amp: bf16}
"""


def test_device_configs_are_valid():
    for path in sorted((REPO / "configs").glob("device-*.yaml")):
        cfg = load_config(path)
        assert cfg.optim.amp == "bf16" and cfg.checkpoint_minutes > 0 and cfg.optim.ema > 0, path


def test_dry_run_fits_the_window_and_the_file_cap(tmp_path):
    name = f"dry-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OUT": str(out),
           "MVIC_DEVICE": "cpu", "MVIC_DEVICE_WHEELS": "none", "MVIC_BENCH_SECONDS": "10"}
    t0 = time.monotonic()
    window_s = 75  # 25 s export reserve + 10 s benchmark leave training 40 s, imports included (slow on a busy CPU)
    done = subprocess.run(["bash", "scripts/device-train.sh", str(window_s), str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3 * window_s)
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert seconds < window_s + 10  # the budget holds (a little slack for the process start)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8
    assert all(p.stat().st_size <= 16 << 20 and len(p.relative_to(out).parts) <= 3 for p in files)
    log = (out / "device.log").read_text()
    # exit 124: the hard stop ended a run that overran its stop while finishing (a busy CPU); it had checkpointed
    assert re.search(r"training ended \(exit (0|124)\)", log) and "done; files:" in log
    pieces = out / name
    assert (pieces / "pieces.json").is_file() and (pieces / "log.csv").is_file()
    # what comes back starts the next run (as campaign.sh and a second window do)
    cfg2 = tmp_path / "next.yaml"
    cfg2.write_text(CONFIG.replace("max_steps: 100000", "max_steps: 1"))
    assert train_main(["--run", str(tmp_path / "next"), "--config", str(cfg2), "--init-from", str(pieces),
                       "--quiet"]) == 0


def test_the_window_links_every_part_of_the_mvic_namespace(tmp_path):
    """The device machine has no MVIC install: device-train.sh links each top-level part that pyproject.toml maps
    (mvic.shared -> shared/, ..., mvic.tools -> tools/) into a namespace folder. The dry run above cannot see a
    missing link (this checkout's editable install finds the part anyway), so compare with pyproject here."""
    import tomllib

    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = {path for name, path in mapped.items() if name.count(".") == 1}
    script = (REPO / "scripts" / "device-train.sh").read_text()
    line = next(line for line in script.splitlines() if line.startswith("for part in $(sed"))
    sed = line[line.index("sed"):line.rindex(")")]  # the script's own extraction
    linked = subprocess.run(["bash", "-c", f"{sed}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert set(linked.split()) == top == {"shared", "node", "fusion_server", "tools"}
