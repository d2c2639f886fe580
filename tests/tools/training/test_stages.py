"""Staged training (issue 10, item 2): rate points and frozen parameters per config, JCTs that start as the
identity, and mvic-train --stages: stages in order, each from the one before, resumed in the stage that stopped."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mvic.tools.training.checkpoint import load_state
from mvic.tools.training.config import load_config
from mvic.tools.training.data import GroupBatcher
from mvic.tools.training.stages import checkpoint_step, plan_stages, run_stages
from mvic.tools.training.train import main, train

REPO = Path(__file__).resolve().parents[3]

STAGE = """
model: test-tiny-fast
seed: {seed}
log_every: 1
checkpoint_every: 1000
{extra}
data: {{kind: synthetic, cameras: 3, frames: 2, scenes: 1, height: 64, width: 64, k_min: 1, k_max: {k_max}}}
optim: {{batch_size: 2, crop: 64, lr: 1.0e-3, max_steps: 3{optim}}}
"""

JCT_LAST = ("jct_1.refine.0.conv2.weight", "jct_1.refine.0.skip.weight", "jct_2.refine.1.conv2.weight")


def _stages(tmp_path) -> list[Path]:
    texts = {"1-single": STAGE.format(seed=0, extra="jct_identity: true", k_max=1,
                                      optim=", rates: [4], frozen: [jct_1., jct_2.]"),
             "2-rates": STAGE.format(seed=1, extra="", k_max=1, optim=", frozen: [jct_1., jct_2.]"),
             "3-joint": STAGE.format(seed=2, extra="", k_max=3, optim=", frozen: [g_a.]")}
    paths = []
    for name, text in texts.items():
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(text)
    return paths


def _log_steps(run: Path) -> list[int]:
    with open(run / "log.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


class _Noise:
    """A group source of noise: 4 groups of 2 cameras at 64 x 64."""
    cameras = ["A", "B"]

    def __len__(self) -> int:
        return 4

    def group(self, i: int) -> np.ndarray:
        return np.random.default_rng(i).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def test_a_batcher_draws_only_the_rates_it_is_given():
    source = _Noise()
    top = GroupBatcher(source, batch_size=8, crop=64, k_min=1, k_max=2, num_rates=5, seed=0, rates=[4])
    assert {int(r) for _ in range(5) for r in top.next().rate} == {4}
    every = GroupBatcher(source, batch_size=8, crop=64, k_min=1, k_max=2, num_rates=5, seed=0)
    assert {int(r) for _ in range(20) for r in every.next().rate} == set(range(5))
    for bad in ([5], [-1], [2, 2]):
        with pytest.raises(ValueError, match="optim.rates"):
            GroupBatcher(source, batch_size=2, crop=64, k_min=1, k_max=2, num_rates=5, rates=bad)


def test_frozen_parameters_stay_and_unknown_prefixes_are_refused(tmp_path):
    cfg = load_config(_stages(tmp_path)[0])
    run = tmp_path / "run"
    assert train(cfg, run, progress=False) == 3
    state = load_state(run)
    for name in JCT_LAST:  # jct_identity zeroed them and optim.frozen kept them so: the JCTs are the identity
        assert torch.count_nonzero(state[name]) == 0, name
    assert torch.count_nonzero(state["g_a.0.weight"]) > 0
    with pytest.raises(ValueError, match=r"optim.frozen: \['jct_9.'\] name no parameter"):
        train(replace(cfg, optim=replace(cfg.optim, frozen=("jct_9.",))), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "log.csv").exists()


def test_identity_jcts_make_joint_decoding_equal_separate(tmp_path):
    cfg = load_config(_stages(tmp_path)[0])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    main(["--run", str(run), "--export", str(tmp_path / "w.safetensors")])
    from mvic.shared.codec.registry import load_model

    model = load_model(tmp_path / "w.safetensors").eval()
    x = torch.rand(1, 3, model.jct_1.attention.keys.in_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.jct_1(x), x)  # the group's other views change nothing
        assert torch.equal(model.jct_1(x[:, :1]), x[:, :1])


def test_stages_run_in_order_each_from_the_one_before_and_resume_where_they_stopped(tmp_path):
    paths = _stages(tmp_path)
    root = tmp_path / "staged"
    stages = plan_stages(paths, root)
    calls = []

    def interrupted(cfg, run, *args, **kwargs):  # stage 2 is stopped after one step (a signal, the time)
        calls.append(run.name)
        if run.name == "2-2-rates":
            cfg = replace(cfg, optim=replace(cfg.optim, max_steps=1))
        return train(cfg, run, *args, **kwargs)

    short = run_stages(stages, interrupted, progress=False)
    assert short is not None and short.index == 2 and calls == ["1-1-single", "2-2-rates"]
    assert checkpoint_step(root / "1-1-single") == 3 and checkpoint_step(root / "2-2-rates") == 1
    first_log = (root / "1-1-single" / "log.csv").read_text()

    assert main(["--run", str(root), "--stages", *map(str, paths), "--quiet"]) == 0
    assert (root / "1-1-single" / "log.csv").read_text() == first_log  # a finished stage is not trained again
    assert _log_steps(root / "2-2-rates") == [1, 2, 3]  # resumed at step 1 (anew, it would log 1, 1, 2, 3)
    assert checkpoint_step(root / "3-3-joint") == 3
    two, three = load_state(root / "2-2-rates"), load_state(root / "3-3-joint")
    # stage 3 started from stage 2: its frozen g_a is stage 2's exactly; the JCTs, identity until then, now train
    assert all(torch.equal(two[k], three[k]) for k in two if k.startswith("g_a."))
    assert all(torch.count_nonzero(two[k]) == 0 for k in JCT_LAST)
    assert all(torch.count_nonzero(three[k]) > 0 for k in JCT_LAST)

    again = [p.read_text() for p in root.glob("*/log.csv")]
    assert main(["--run", str(root), "--stages", *map(str, paths), "--quiet"]) == 0  # all done: nothing trains
    assert [p.read_text() for p in root.glob("*/log.csv")] == again


def test_stages_are_checked_whole_before_any_training(tmp_path, capsys):
    paths = _stages(tmp_path)
    root = tmp_path / "staged"
    assert main(["--run", str(root), "--stages", *map(str, paths), "--validate-config"]) == 0
    assert "config ok: 3 stages" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    other.write_text(STAGE.format(seed=0, extra="", k_max=1, optim="").replace("test-tiny-fast", "test-tiny-ar"))
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(STAGE.format(seed=0, extra="jct_identiy: true", k_max=1, optim=""))
    for argv in (["--stages", str(paths[0]), str(other)],  # a stage starts from the one before: one model
                 ["--stages", str(paths[0]), str(bad_key)],  # a typo in the last stage fails before the first
                 ["--stages", str(paths[0]), str(tmp_path / "missing.yaml")],
                 ["--stages", *map(str, paths), "--config", str(paths[0])],
                 ["--stages", *map(str, paths), "--lr", "1e-5"]):
        assert main(["--run", str(root), *argv, "--quiet"]) == 2, argv
    assert not root.exists()


def test_the_shipped_stage_configs_are_valid():
    paths = sorted((REPO / "configs" / "stages").glob("fast-lite-*.yaml"))
    stages = plan_stages(paths, Path("unused"))
    assert [s.run.name for s in stages] == ["1-fast-lite-1-single", "2-fast-lite-2-rates", "3-fast-lite-3-joint"]
    first, *_, last = (s.config for s in stages)
    assert first.jct_identity and first.optim.rates == (4,) and first.data.k_max == 1
    assert last.data.k_max > 1 and not last.optim.frozen
    assert np.isclose(last.optim.lr * last.optim.lr_gamma, 1e-5)
