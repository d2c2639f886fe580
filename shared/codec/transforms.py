"""Analysis and synthesis transforms of LDMIC (paper Fig. 2; Minnen et al. 2018 shapes).

Per view, with shared weights: ``analysis`` g_a (x -> y, stride 16) and ``hyper_analysis`` h_a (y -> z, stride 4)
run on the camera. ``hyper_synthesis`` h_s (z -> entropy parameters) runs on both sides in exact integer form
(see fixedpoint.py). The joint decoder's two synthesis halves live here too; the JCT modules between them are in
jct.py and the assembly in model.py.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mvic.shared.codec._compressai import GDN, conv, deconv
from mvic.shared.codec.fixedpoint import LEAKY_SLOPE


def analysis(n: int, m: int) -> nn.Sequential:
    """g_a: (B, 3, H, W) -> (B, M, H/16, W/16)."""
    return nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))


def hyper_analysis(n: int, m: int) -> nn.Sequential:
    """h_a: (B, M, h, w) -> (B, N, h/4, w/4). No abs(), as in LDMIC."""
    return nn.Sequential(
        conv(m, n, kernel_size=3, stride=1), nn.LeakyReLU(LEAKY_SLOPE),
        conv(n, n), nn.LeakyReLU(LEAKY_SLOPE),
        conv(n, n),
    )


def hyper_synthesis(n: int, m: int) -> nn.Sequential:
    """h_s: (B, N, h/4, w/4) -> (B, 2M, h, w). Only convolutions and LeakyReLU, so it has an integer form."""
    mid = m * 3 // 2
    return nn.Sequential(
        deconv(n, n), nn.LeakyReLU(LEAKY_SLOPE),
        deconv(n, mid), nn.LeakyReLU(LEAKY_SLOPE),
        conv(mid, 2 * m, kernel_size=3, stride=1),
    )


def entropy_parameters(m: int) -> nn.Sequential:
    """EP: 1x1 convolutions cat(hyper params, context) (4M) -> (scales, means) (2M)."""
    return nn.Sequential(
        nn.Conv2d(4 * m, m * 10 // 3, 1), nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(m * 10 // 3, m * 8 // 3, 1), nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(m * 8 // 3, 2 * m, 1),
    )


def synthesis_first_half(n: int, m: int) -> nn.Sequential:
    """decoder_1: (B*V, M, h, w) -> (B*V, N, 4h, 4w)."""
    return nn.Sequential(deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True))


def synthesis_second_half(n: int) -> nn.Sequential:
    """decoder_2: (B*V, N, 4h, 4w) -> (B*V, 3, 16h, 16w)."""
    return nn.Sequential(deconv(n, n), GDN(n, inverse=True), deconv(n, 3))


def last_in_float32(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` with its last layer in float32, outside any autocast: under bf16 autocast the latents (outputs of
    g_a and h_a) would otherwise be rounded to 8 significant bits before the entropy model sees them."""
    hidden = seq[:-1](x)
    with torch.autocast(x.device.type, enabled=False):
        return seq[-1](hidden.float())
