"""An exponential moving average of a model's parameters: what a run exports (issue 10's convergence aid).

The average costs one fused lerp per step. Its decay warms up as ``min(decay, (1 + n) / (10 + n))`` over the n
updates it has seen, so a fresh average follows the weights closely at first. Buffers (CDF tables, masks) are not
averaged: ``state_dict`` takes them from the model as they are.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightsEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.ema must be in (0, 1) (e.g. 0.999) or 0 for off, got {decay}")
        self.model, self.decay, self.updates = model, decay, 0
        named = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.shadow = [p.detach().clone().float() for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self._params], 1.0 - d)
        self.updates += 1

    def averaged(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by name (the tensors a checkpoint stores under ``ema/``)."""
        return dict(zip(self.names, self.shadow))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with every parameter replaced by its average."""
        state = dict(self.model.state_dict())
        for name, avg in zip(self.names, self.shadow):
            state[name] = avg.to(state[name].dtype)
        return state

    @torch.no_grad()
    def load(self, averaged: dict[str, torch.Tensor], updates: int) -> None:
        missing = [n for n in self.names if n not in averaged]
        if missing:
            raise ValueError(f"the checkpoint's average lacks {len(missing)} parameters (e.g. {missing[0]})")
        for name, shadow in zip(self.names, self.shadow):
            shadow.copy_(averaged[name])
        self.updates = updates
