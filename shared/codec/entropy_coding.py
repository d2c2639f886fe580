"""rANS coding of latent symbols, one stream per view, behind one ``code`` call for encoder, decoder and estimate.

The context models call ``session.code(target, means, indexes, table)`` block by block (z, then anchors, then
non-anchors; or one latent pixel at a time). The same model code therefore runs for encoding (target = the real
latent; symbols = round(target - means) are written), decoding (symbols are read from the stream) and estimation
(symbols are only computed): encoder and decoder cannot drift apart by running different code.

Each session keeps every view's symbols in coding order so ``symbol_crc`` can detect a desync after decoding.
CDF tables come from the model's EntropyBottleneck / GaussianConditional buffers, which are stored with the
weights: they are never recomputed on the decoding machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyModel
from torch import Tensor

from mvic.shared.bitstream import symbol_crc
from mvic.shared.errors import CorruptBitstreamError


@dataclass(frozen=True)
class CdfTable:
    """Quantized CDFs of one entropy model, as lists for the C++ coder."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, model: EntropyModel) -> "CdfTable":
        if model._offset.numel() == 0 or model._quantized_cdf.numel() == 0:
            raise RuntimeError("entropy model has no CDF tables: call model.update(force=True) before coding")
        lengths = model._cdf_length.reshape(-1).int().tolist()
        cdfs = [row[:n] for row, n in zip(model._quantized_cdf.tolist(), lengths)]  # drop the padding
        return cls(cdfs, lengths, model._offset.reshape(-1).int().tolist())

    def subset(self, indexes: np.ndarray) -> tuple[list[int], list[list[int]], list[int], list[int]]:
        """Only the CDF rows a block uses, with its indexes renumbered: the C++ coder converts every row it is
        given on each call, so a 64-row table costs milliseconds per latent pixel in the serial context model."""
        used, remapped = np.unique(indexes, return_inverse=True)
        rows = used.tolist()
        return (remapped.reshape(-1).tolist(), [self.cdfs[u] for u in rows], [self.lengths[u] for u in rows],
                [self.offsets[u] for u in rows])


class CodingSession:
    """Base: computes symbols = round(target - means) and keeps them; writes and reads nothing."""

    def __init__(self, batch: int):
        self.batch = batch
        self._symbols: list[list[np.ndarray]] = [[] for _ in range(batch)]

    def code(self, target: Tensor | None, means: Tensor, indexes: Tensor, table: CdfTable) -> Tensor:
        """Code one block; all tensors are (B, ...) with the same shape. Returns float64 integer symbols."""
        if target is None:
            raise ValueError("an encoding session needs the latent to code")
        symbols = torch.round(target.double() - means)
        self._record(symbols)
        return symbols

    def _record(self, symbols: Tensor) -> None:
        arr = symbols.detach().to("cpu", torch.int32).numpy()
        for b in range(self.batch):
            self._symbols[b].append(np.ascontiguousarray(arr[b]).reshape(-1))

    def symbol_crc(self, b: int) -> int:
        return symbol_crc(*(s.astype("<i4").tobytes() for s in self._symbols[b]))


class EncodeSession(CodingSession):
    """Writes each view's symbols to its own rANS stream."""

    def __init__(self, batch: int):
        super().__init__(batch)
        self._encoders = [BufferedRansEncoder() for _ in range(batch)]

    def code(self, target, means, indexes, table):
        symbols = super().code(target, means, indexes, table)
        sym = symbols.to("cpu", torch.int32).reshape(self.batch, -1).tolist()
        idx = indexes.to("cpu", torch.int32).reshape(self.batch, -1).numpy()
        for b, enc in enumerate(self._encoders):
            enc.encode_with_indexes(sym[b], *table.subset(idx[b]))
        return symbols

    def finish(self) -> list[bytes]:
        return [enc.flush() for enc in self._encoders]


class DecodeSession(CodingSession):
    """Reads each view's symbols from its rANS stream."""

    def __init__(self, streams: list[bytes]):
        super().__init__(len(streams))
        self._decoders = []
        for s in streams:
            if len(s) < 4 or len(s) % 4:
                raise CorruptBitstreamError(f"entropy-coded stream of {len(s)} bytes is not a whole rANS stream")
            dec = RansDecoder()
            dec.set_stream(s)
            self._decoders.append(dec)

    def code(self, target, means, indexes, table):
        idx = indexes.to("cpu", torch.int32).reshape(self.batch, -1).numpy()
        rows = [dec.decode_stream(*table.subset(idx[b])) for b, dec in enumerate(self._decoders)]
        symbols = torch.tensor(rows, dtype=torch.float64).view(means.shape).to(means.device)
        self._record(symbols)
        return symbols
