"""The codec's typed records: what ``LDMIC`` returns from training, from decoding, and between the decoder's stages.

``RDOutput`` (``LDMIC.forward``), ``DecodedView`` (``decompress`` / ``synthesize``), ``GroupLatents`` (from
``entropy_decode`` to ``synthesize``, maybe on another device). ``ExactLatents`` (in ``latent_codec``) is what the
latent codec coded for each view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import Tensor

from mvic.shared.bitstream import ViewHeader
from mvic.shared.codec.latent_codec import ExactLatents


@dataclass(frozen=True)
class RDOutput:
    """Forward pass of a batch of view groups."""

    x_hat: Tensor | None  # (B, V, 3, H, W); None from forward(..., synthesize=False)
    likelihoods_y: Tensor  # (B, V, M, H/16, W/16)
    likelihoods_z: Tensor  # (B, V, N, H/64, W/64)


@dataclass(frozen=True)
class DecodedView:
    header: ViewHeader
    image: np.ndarray  # (height, width, 3) uint8


@dataclass(frozen=True)
class GroupLatents:
    """Equal-size views of one group after ``entropy_decode``, ready for ``synthesize`` (maybe on another device).

    The tensors stay where entropy decoding ran (a CPU copy of the model, say); ``synthesize`` moves what it needs.
    """

    headers: tuple[ViewHeader, ...]
    latents: ExactLatents  # one row per view, in the order of ``headers``
    rate_indexes: tuple[int, ...]
    padded_size: tuple[int, int]  # (Hp, Wp), multiples of 64
    payload_bytes: tuple[int, ...]  # each view's entropy-coded bytes: its rate, for the view fusion

    @property
    def bpp(self) -> tuple[float, ...]:
        """Each view's coded size in bits per pixel of its image."""
        return tuple(8 * n / (h.height * h.width) for n, h in zip(self.payload_bytes, self.headers))

    @property
    def shape(self) -> tuple[int, tuple[int, int]]:
        """(views, padded size): groups of one shape are synthesized together."""
        return len(self.headers), self.padded_size

    def select(self, rows: Sequence[int]) -> GroupLatents:
        """The same group restricted to some of its views (to synthesize a view alone, say)."""
        rows = list(rows)
        lat = self.latents
        return GroupLatents(tuple(self.headers[i] for i in rows),
                            ExactLatents(lat.y_hat_fx[rows], lat.scales[rows], lat.means[rows], lat.z_hat[rows]),
                            tuple(self.rate_indexes[i] for i in rows), self.padded_size,
                            tuple(self.payload_bytes[i] for i in rows))
