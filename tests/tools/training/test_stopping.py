"""A signal ends a training run after its step with a checkpoint; nothing since the last checkpoint is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mvic.tools.training.stopping import StopSignals
from tests.tools.training.test_training import CONFIG as TRAINING_CONFIG

# test_training's run, made endless and without a checkpoint by steps: only the signal can end it with one
CONFIG = TRAINING_CONFIG.replace("max_steps: 40", "max_steps: 100000").replace("checkpoint_every: 1000",
                                                                              "checkpoint_every: 100000")


def test_the_first_signal_asks_the_second_interrupts():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # restored


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_checkpoints_the_steps_it_made(tmp_path, sig):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mvic.tools.training.train", "--run", str(run), "--config",
                             str(tmp_path / "cfg.yaml"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = run / "log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)  # a few steps logged, no checkpoint yet (checkpoint_every is far away)
    assert not (run / "checkpoint.json").exists()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    logged = int(log.read_text().splitlines()[-1].split(",")[0])
    assert step >= logged >= 3 and f"stopped at step {step}" in out
    assert "stopping after this step" in err


def test_ctrl_c_to_the_whole_process_group_still_checkpoints(tmp_path):
    """A terminal's Ctrl-C signals the DataLoader workers too; the run still ends with its checkpoint."""
    (tmp_path / "cfg.yaml").write_text(CONFIG.replace("max_steps: 100000}", "max_steps: 100000, workers: 1}"))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mvic.tools.training.train", "--run", str(run), "--config",
                             str(tmp_path / "cfg.yaml"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = run / "log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    assert step >= 3 and f"stopped at step {step}" in out
