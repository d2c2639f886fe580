"""Moving the rate points to another lambda ladder without starting over (issue 10: rates that really differ).

The five rate points of a run are fixed by ``optim.lambdas``; its gains (``RateGains``: y/z gains and their
inverses, one (Q, C) table each) are what the weights learnt for them. Each gain moves smoothly with lambda (the
y gains start on a sqrt(lambda) ladder and stay near one), so when a run resumes, or starts from a run or pieces
folder, under another ladder, every gain table is carried over to it: per channel, log(gain) piecewise linear in
log(lambda) through the learnt points, extended beyond the end points with the end segments' slopes. Training then
refines the new points instead of relearning them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from mvic.tools.training.compressai_init import parse_source
from mvic.tools.training.config import RunConfig

GAIN_TABLES = ("y_gain", "y_inverse", "z_gain", "z_inverse")


def reladder_table(table: Tensor, old: Sequence[float], new: Sequence[float]) -> Tensor:
    """(Q, C) positive gains learnt at lambdas ``old`` (increasing) -> (Q', C) gains at lambdas ``new``."""
    if table.shape[0] != len(old) or len(old) < 2:
        raise ValueError(f"a ({table.shape[0]}, C) gain table needs {table.shape[0]} >= 2 lambdas, got {list(old)}")
    if not bool((table > 0).all()):
        raise ValueError("gains that are not all positive cannot be moved along the lambda ladder")
    x_old = torch.tensor(old, dtype=torch.float64).log()
    x_new = torch.tensor(new, dtype=torch.float64).log()
    if bool((x_old[1:] <= x_old[:-1]).any()):
        raise ValueError(f"lambdas must increase, got {list(old)}")
    y_old = table.detach().double().log()  # (Q, C)
    seg = torch.bucketize(x_new, x_old[1:-1])  # the segment each new point uses (the end ones beyond the ends)
    x0, x1 = x_old[seg], x_old[seg + 1]
    t = ((x_new - x0) / (x1 - x0)).unsqueeze(1)  # (Q', 1): < 0 or > 1 beyond the ends
    y_new = y_old[seg] + t * (y_old[seg + 1] - y_old[seg])
    return y_new.exp().to(table.dtype)


@torch.no_grad()
def reladder_gains(tables: dict[str, Tensor], old: Sequence[float], new: Sequence[float]) -> None:
    """Move the gain tables named ``gains.<table>`` in ``tables`` (parameters or their averages) in place."""
    for name in GAIN_TABLES:
        tensor = tables[f"gains.{name}"]
        tensor.copy_(reladder_table(tensor, old, new))


def trained_lambdas(folder: Path, default: Sequence[float]) -> tuple[float, ...] | None:
    """The lambda ladder a run folder (checkpoint.json) or pieces folder (pieces.json) was trained at: its config's
    ``optim.lambdas``, ``default`` (the model's) when the config has none; None when the folder has no config."""
    for name in ("checkpoint.json", "pieces.json"):
        path = folder / name
        if path.is_file():
            config = json.loads(path.read_text()).get("config") or {}
            if not config:
                return None
            lambdas = config.get("optim", {}).get("lambdas") or default
            return tuple(float(x) for x in lambdas)
    return None


def follow_ladder(model: torch.nn.Module, old: Sequence[float] | None, new: Sequence[float],
                  averaged: dict[str, Tensor] | None = None) -> bool:
    """Move the model's gains (and their average, when given) from ladder ``old`` to ``new``; True if they moved."""
    if old is None or tuple(old) == tuple(new):
        return False
    if len(old) != len(new):
        raise ValueError(f"the starting weights were trained at {len(old)} lambdas {list(old)}, this run has "
                         f"{len(new)}; optim.init_lambdas must list one lambda per rate point")
    reladder_gains(dict(model.named_parameters()), old, new)
    if averaged is not None:
        reladder_gains(averaged, old, new)
    return True


def starting_ladder(cfg: RunConfig, resumed: Path | None, default: tuple[float, ...]) -> tuple[float, ...] | None:
    """The lambda ladder the starting weights were trained at: a resumed run's checkpoint's, an init_from run or
    pieces folder's own, else ``optim.init_lambdas`` for a weights file; None when unknown (the gains stay)."""
    if resumed is not None:
        return trained_lambdas(resumed, default)
    if not cfg.init_from or parse_source(cfg.init_from) is not None:
        return None
    source = Path(cfg.init_from)
    if source.is_dir():
        return trained_lambdas(source, default)
    return cfg.optim.init_lambdas or None
