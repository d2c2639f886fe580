"""Gain units (Cui et al., CVPR 2021): one set of weights covers every rate point.

For rate point q the encoder scales y by ``y_gain[q]`` and z by ``z_gain[q]`` before quantization; the decoder
multiplies the decoded z by ``z_inverse[q]`` before h_s and the decoded y by ``y_inverse[q]`` before synthesis.
The z inverse gain sits in the path that drives the entropy coder, so it is applied in exact integer arithmetic:
``z_inverse_fixed`` rounds it to GAIN_BITS fractional bits (a power-of-two product and a rounding, hence the same
integers on every device). Gains are plain (Q, C) parameters, initialised so that higher q means finer quantization.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GAIN_BITS = 16


class RateGains(nn.Module):
    def __init__(self, lambdas: tuple[float, ...], n: int, m: int):
        super().__init__()
        lam = torch.tensor(lambdas, dtype=torch.float32)
        step = (lam / lam.max()).sqrt().view(-1, 1)  # quantization finer as lambda grows, (Q, 1)
        self.y_gain = nn.Parameter(step.repeat(1, m))
        self.y_inverse = nn.Parameter(step.reciprocal().repeat(1, m))
        self.z_gain = nn.Parameter(torch.ones(len(lambdas), n))
        self.z_inverse = nn.Parameter(torch.ones(len(lambdas), n))

    @property
    def num_rates(self) -> int:
        return self.y_gain.shape[0]

    @staticmethod
    def pick(table: Tensor, rate: Tensor) -> Tensor:
        """Rows of a (Q, C) table for a (B,) rate-index tensor, shaped (B, C, 1, 1) for broadcasting."""
        return table[rate].unsqueeze(-1).unsqueeze(-1)

    def z_inverse_fixed(self, rate: Tensor) -> Tensor:
        """(B, N, 1, 1) float64 integers: z_inverse in units of 2**-GAIN_BITS."""
        return torch.round(self.pick(self.z_inverse.detach().double(), rate) * float(2**GAIN_BITS))
