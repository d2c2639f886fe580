"""scripts/campaign.sh: status of a run folder (steps, hours over restarts, the lineage before it), stop, export's
refusal without a checkpoint, anneal's without its steps or a checkpoint, rebase's without its weights or lineage,
and refresh-ar's without its minutes. (start sets up data with the network and trains for hours: not run here.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _campaign(runs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/campaign.sh", *args], cwd=REPO, env={**os.environ, "MVIC_RUNS": str(runs)},
                          capture_output=True, text=True, timeout=60)


def test_status_sums_the_hours_of_every_process_start(tmp_path):
    assert "not running" in _campaign(tmp_path, "status").stdout
    run = tmp_path / "fast-lite"
    run.mkdir()
    rows = ["step,loss,bpp,mse,psnr_db,aux,lr,seconds,k"]
    rows += [f"{s},1,0.5,0.001,30,1,0.0001,{t},2" for s, t in ((20, 1800.0), (40, 3600.0),  # first process: 1 h
                                                                  (40, 900.0), (60, 1800.0))]  # resumed: 0.5 h more
    (run / "log.csv").write_text("\n".join(rows) + "\n")
    out = _campaign(tmp_path, "status").stdout
    assert "steps logged: 60" in out and "hours trained: 1.50" in out
    assert "lineage before this run: 12347 steps, 5.06 h" in out  # the run of 2026-11-30, from v3
    (tmp_path / "fast-lite.lineage").write_text("32758 16.31\n")  # what rebase writes
    assert "lineage before this run: 32758 steps, 16.31 h" in _campaign(tmp_path, "status").stdout


def test_rebase_refuses_before_it_touches_the_run(tmp_path):
    run = tmp_path / "fast-lite"
    run.mkdir()
    (run / "checkpoint.json").write_text('{"step": 7}')
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    for bad in ((), (str(weights),), (str(weights), "100"), (str(weights), "1e3", "2"), (str(weights), "100", "2h"),
                (str(weights), "100", "2", "extra")):
        refused = _campaign(tmp_path, "rebase", *bad)
        assert refused.returncode == 2 and "usage: campaign.sh rebase INIT STEPS HOURS" in refused.stderr, bad
    gone = _campaign(tmp_path, "rebase", str(tmp_path / "nowhere"), "100", "2.5")
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    (tmp_path / "fast-lite-until-step7").mkdir()  # an older rebase's folder is never overwritten
    taken = _campaign(tmp_path, "rebase", str(weights), "100", "2.5")
    assert taken.returncode == 1 and "exists already" in taken.stderr
    assert (run / "checkpoint.json").is_file() and not (tmp_path / "fast-lite.lineage").exists()


def test_stop_without_a_process_and_export_without_a_checkpoint(tmp_path):
    (tmp_path / "campaign.pid").write_text("999999\n")  # a stale pid: not running
    assert "not running" in _campaign(tmp_path, "stop").stdout
    done = _campaign(tmp_path, "export")
    assert done.returncode == 1 and "no checkpoint" in done.stderr
    assert _campaign(tmp_path, "bogus").returncode == 2
    for bad in ((), ("0",), ("12x",)):  # the annealing branch needs a positive number of steps, then a checkpoint
        refused = _campaign(tmp_path, "anneal", *bad)
        assert refused.returncode != 0 and "anneal STEPS" in refused.stderr
    no_run = _campaign(tmp_path, "anneal", "500")
    assert no_run.returncode == 1 and "no checkpoint" in no_run.stderr
    missing = _campaign(tmp_path, "refresh-ar")  # the AR refresh needs its training minutes
    assert missing.returncode != 0 and "usage: campaign.sh refresh-ar MINUTES" in missing.stderr
    no_data = _campaign(tmp_path, "refresh-ar", "5")  # and the campaign's training data
    assert no_data.returncode == 1 and "campaign.sh start builds it" in no_data.stderr
    assert not (tmp_path / "exports").exists()  # refused before anything was made
