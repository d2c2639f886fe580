"""The decoder-only refinement head: more synthesis capacity where the lite transforms run out, for the server alone.

Hop before: ``synthesis_2`` up to its last deconvolution gives f, (B*V, N, H/2, W/2) (after the second JCT).
Hop after: x_hat = last_deconvolution(f) + head(f), (B*V, 3, H, W), then the sinks.

Why: on rendered plazas the lite synthesis (N = 96) stops ~0.4 dB above its top rate point whatever the latent is
(benchmarks/transform_ceiling.py), and training its transforms further trades the photos for the plazas. The head
adds capacity at the one place that decides the picture, on the decoder only: the cameras' encoder, the entropy
model and the bitstream stay those of the weights it was started from. Its last convolution starts at zero, so a
model started from head-less weights decodes exactly their pictures until the head has learnt something::

    f (N, H/2, W/2) ─conv3x3─▶ C ─LeakyReLU─▶ [conv3x3 C ─LeakyReLU─] x depth ─conv3x3─▶ 12 ─pixel shuffle 2─▶ 3, H, W
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RefineHead(nn.Module):
    """(B, N, H/2, W/2) features -> (B, 3, H, W) correction added to the synthesis's output."""

    def __init__(self, n: int, channels: int, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(n, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        for _ in range(depth):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        layers += [nn.Conv2d(channels, 12, 3, padding=1), nn.PixelShuffle(2)]
        self.layers = nn.Sequential(*layers)
        self.reset_output()

    @torch.no_grad()
    def reset_output(self) -> None:
        """Zero the last convolution: the head then adds nothing (a start from head-less weights)."""
        last = self.layers[-2]
        last.weight.zero_()
        last.bias.zero_()

    def forward(self, f: Tensor) -> Tensor:
        return self.layers(f)
