"""Moving the rate gains to another lambda ladder: log-linear per channel, on resume and on init from a folder."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mvic.tools.training.reladder import GAIN_TABLES, reladder_table, trained_lambdas
from mvic.tools.training.train import main

OLD = [96, 206, 443, 952, 2048]
NEW = [24, 72, 220, 660, 2048]
CONFIG = """
model: test-tiny-fast
log_every: 1
checkpoint_every: 1000
data: {kind: synthetic, cameras: 2, frames: 2, scenes: 1, height: 64, width: 64, k_min: 1, k_max: 2}
optim: {batch_size: 2, crop: 64, lr: 1.0e-3, max_steps: MAX, ema: 0.9, lambdas: LADDER}
"""


def _config(tmp_path, ladder, max_steps: int):
    path = tmp_path / f"cfg-{max_steps}.yaml"
    path.write_text(CONFIG.replace("LADDER", str(list(ladder))).replace("MAX", str(max_steps)))
    return path


def test_the_same_ladder_changes_nothing_and_learnt_points_stay():
    table = torch.rand(5, 7) + 0.1
    assert torch.allclose(reladder_table(table, OLD, OLD), table)
    moved = reladder_table(table, OLD, [OLD[0], 300, OLD[4]])
    assert torch.allclose(moved[[0, 2]], table[[0, 4]])


def test_log_linear_between_and_beyond_the_learnt_points():
    table = torch.tensor([[1.0, 2.0], [2.0, 2.0], [8.0, 2.0]])  # lambdas 1, 4, 16
    moved = reladder_table(table, [1, 4, 16], [0.25, 2, 8, 64])
    # log2 gain of channel 0 is 0.5 * log2(lambda) up to 4, then log2(lambda) - 1: extended with each end's slope
    expected = [2 ** (0.5 * math.log2(x)) if x <= 4 else 2 ** (math.log2(x) - 1) for x in (0.25, 2, 8, 64)]
    assert torch.allclose(moved[:, 0], torch.tensor(expected))
    assert torch.allclose(moved[:, 1], torch.full((4,), 2.0))


@pytest.mark.parametrize("table,old,match", [(torch.ones(3, 2) * -1, [1, 2, 3], "positive"),
                                             (torch.ones(3, 2), [1, 3, 2], "increase"),
                                             (torch.ones(3, 2), [1, 2], "needs 3")])
def test_what_cannot_be_moved_is_refused(table, old, match):
    with pytest.raises(ValueError, match=match):
        reladder_table(table, old, [1, 2, 3])


def test_a_resumed_run_under_a_new_ladder_carries_its_gains_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(_config(tmp_path, OLD, 3)), "--quiet"]) == 0
    before = load_file(str(run / "checkpoint.safetensors"))
    assert trained_lambdas(run, (1.0,) * 5) == tuple(map(float, OLD))
    # max_steps reached already: the resume trains no step, so the checkpoint holds exactly the moved gains
    assert main(["--run", str(run), "--config", str(_config(tmp_path, NEW, 3)), "--quiet"]) == 0
    assert "rate gains moved from lambdas" in capsys.readouterr().err
    after = load_file(str(run / "checkpoint.safetensors"))
    for name in GAIN_TABLES:
        for part in ("model", "ema"):
            key = f"{part}/gains.{name}"
            assert torch.allclose(after[key], reladder_table(before[key], OLD, NEW), rtol=1e-5), key
    assert trained_lambdas(run, (1.0,) * 5) == tuple(map(float, NEW))
    other = "model/g_a.0.weight"
    assert torch.equal(after[other], before[other])  # only the gains move


def test_a_run_started_from_a_run_folder_follows_the_new_ladder(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["--run", str(first), "--config", str(_config(tmp_path, OLD, 2)), "--quiet"]) == 0
    assert main(["--run", str(tmp_path / "second"), "--config", str(_config(tmp_path, NEW, 1)),
                 "--init-from", str(first), "--quiet"]) == 0
    assert "rate gains moved from lambdas" in capsys.readouterr().err


def test_a_weights_file_moves_only_when_its_ladder_is_given(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["--run", str(first), "--config", str(_config(tmp_path, OLD, 1)), "--quiet"]) == 0
    weights = tmp_path / "w.safetensors"
    assert main(["--run", str(first), "--export", str(weights)]) == 0
    capsys.readouterr()
    assert main(["--run", str(tmp_path / "silent"), "--config", str(_config(tmp_path, NEW, 1)),
                 "--init-from", str(weights), "--quiet"]) == 0
    assert "rate gains moved" not in capsys.readouterr().err  # a file does not say its ladder
    told = _config(tmp_path, NEW, 1).read_text().replace("ema: 0.9,", f"ema: 0.9, init_lambdas: {OLD},")
    (tmp_path / "told.yaml").write_text(told)
    assert main(["--run", str(tmp_path / "told"), "--config", str(tmp_path / "told.yaml"), "--init-from", str(weights),
                 "--quiet"]) == 0
    assert "rate gains moved from lambdas [96.0, 206.0, 443.0, 952.0, 2048.0]" in capsys.readouterr().err
