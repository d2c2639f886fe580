"""Joint Context Transfer (JCT, paper Sec. 3.2): each view attends to the mean of the other views' features.

For V views of one group, x is (B, V, C, H, W). Per view k: f_k = RB2(RB1(x_k)); the context is the average of the
other views' features, f~_k = 1/(V-1) sum_{i != k} f_i; a = EfficientAttention(query f_k, key/value f~_k);
out_k = x_k + Refine(cat(a, f_k)). One set of weights serves every view and every V.

V = 1 (a frame whose neighbours never arrived) is defined: the context is the view's own features, so the module
becomes self-attention with the same weights, and training samples single views so it learns that case.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mvic.shared.codec._compressai import ResidualBlock


class EfficientAttention(nn.Module):
    """Efficient multi-head attention (Shen et al. 2021), linear in H*W.

    Keys are softmax-normalised over positions, queries over channels within a head; no internal residual.
    """

    def __init__(self, channels: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        # C/8 key and C/4 value channels (paper), rounded down to a multiple of the head count
        self.key_channels = max(1, channels // 8 // heads) * heads
        self.value_channels = max(1, channels // 4 // heads) * heads
        self.keys = nn.Conv2d(channels, self.key_channels, 1)
        self.queries = nn.Conv2d(channels, self.key_channels, 1)
        self.values = nn.Conv2d(channels, self.value_channels, 1)
        self.reprojection = nn.Conv2d(self.value_channels, channels, 1)

    def forward(self, query_src: Tensor, kv_src: Tensor) -> Tensor:
        n, _, h, w = query_src.shape
        hd = self.heads
        keys = self.keys(kv_src).view(n, hd, self.key_channels // hd, h * w)  # (n, heads, dk, HW)
        queries = self.queries(query_src).view(n, hd, self.key_channels // hd, h * w)  # (n, heads, dk, HW)
        values = self.values(kv_src).view(n, hd, self.value_channels // hd, h * w)  # (n, heads, dv, HW)
        keys = keys.softmax(dim=-1)  # over positions
        queries = queries.softmax(dim=2)  # over channels of the head
        context = keys @ values.transpose(-1, -2)  # (n, heads, dk, dv)
        out = context.transpose(-1, -2) @ queries  # (n, heads, dv, HW)
        return self.reprojection(out.reshape(n, self.value_channels, h, w))


class JointContextTransfer(nn.Module):
    def __init__(self, channels: int, heads: int = 2):
        super().__init__()
        self.features = nn.Sequential(ResidualBlock(channels, channels), ResidualBlock(channels, channels))
        self.attention = EfficientAttention(channels, heads)
        self.refine = nn.Sequential(ResidualBlock(2 * channels, channels), ResidualBlock(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, v, c, h, w = x.shape
        flat = x.reshape(b * v, c, h, w)  # (B*V, C, H, W)
        f = self.features(flat).view(b, v, c, h, w)  # (B, V, C, H, W)
        if v > 1:
            context = (f.sum(dim=1, keepdim=True) - f) / (v - 1)  # mean of the other views, (B, V, C, H, W)
        else:
            context = f
        f = f.reshape(b * v, c, h, w)  # (B*V, C, H, W)
        attended = self.attention(f, context.reshape(b * v, c, h, w))  # (B*V, C, H, W)
        out = flat + self.refine(torch.cat([attended, f], dim=1))  # (B*V, C, H, W)
        return out.view(b, v, c, h, w)
