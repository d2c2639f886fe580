"""Staged training: several configs trained in order, each stage starting from the one before, resumable anywhere.

    mvic-train --run runs/staged --stages configs/stages/fast-lite-1-single.yaml \\
        configs/stages/fast-lite-2-rates.yaml configs/stages/fast-lite-3-joint.yaml [--device cuda]

Stage i trains in ``<run>/<i>-<config stem>/`` until its ``optim.max_steps``. The first stage starts from its
config's ``init_from`` (or ``--init-from``); every later one starts from the stage before it (its weights' average
when that stage keeps one), whatever its own config's ``init_from`` says. Run again, the command skips the stages
that reached their steps and resumes the one it stopped in. ``--max-minutes`` and ``--stop-at`` bound the whole
sequence, not each stage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from mvic.tools.training.config import RunConfig, load_config


@dataclass(frozen=True)
class Stage:
    index: int  # 1-based
    config: RunConfig
    run: Path  # this stage's run folder


def plan_stages(paths: list[Path], root: Path) -> list[Stage]:
    """Load every stage's config (any error stops here, before training); one model for all stages."""
    if not paths:
        raise ValueError("--stages needs at least one config")
    stages = [Stage(i, load_config(path), root / f"{i}-{path.stem}") for i, path in enumerate(paths, start=1)]
    models = {s.config.model for s in stages}
    if len(models) > 1:
        raise ValueError(f"the stages train different models ({', '.join(sorted(models))}); a stage starts from the "
                         "one before it, so they must share one")
    return stages


def checkpoint_step(run: Path) -> int:
    """The step of a run folder's checkpoint, 0 when it has none."""
    path = run / "checkpoint.json"
    return int(json.loads(path.read_text())["step"]) if path.is_file() else 0


def run_stages(stages: list[Stage], train: Callable[..., int], device: str = "cpu", max_minutes: float | None = None,
               progress: bool = True, stop_at: float | None = None, init_from: str | None = None) -> Stage | None:
    """Train the stages in order with ``train`` (train.train); returns the stage that stopped short of its steps
    (time up or a signal), None when all are done."""
    if max_minutes is not None:
        stop_at = min(stop_at or math.inf, time.time() + 60 * max_minutes)
    before: Stage | None = None
    for stage in stages:
        cfg = stage.config
        if before is not None:
            cfg = replace(cfg, init_from=str(before.run))
        elif init_from:
            cfg = replace(cfg, init_from=init_from)
        if checkpoint_step(stage.run) < cfg.optim.max_steps:
            if stop_at is not None and time.time() >= stop_at:
                return stage
            if train(cfg, stage.run, device, None, progress=progress, stop_at=stop_at) < cfg.optim.max_steps:
                return stage
        before = stage
    return None
