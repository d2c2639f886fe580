"""rANS coding of latent symbols, one stream per view, behind one ``code`` call for encoder, decoder and estimate.

The context models call ``session.code(target, means, indexes, table)`` block by block (z, then anchors, then
non-anchors; or one latent pixel at a time). The same model code therefore runs for encoding (target = the real
latent; symbols = round(target - means) are written), decoding (symbols are read from the stream) and estimation
(symbols are only computed): encoder and decoder cannot drift apart by running different code.

Each session keeps every view's symbols in coding order so ``symbol_crc`` can detect a desync after decoding.
CDF tables come from the model's EntropyBottleneck / GaussianConditional buffers, which are stored with the
weights: they are never recomputed on the decoding machine.

Encoding uses CompressAI's rANS encoder (its input is our own latent); decoding uses ``mvic.shared.codec.rans``, a
bit-compatible decoder that checks every read against the end of the stream, because the stream is hostile input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from mvic.shared.bitstream import symbol_crc
from mvic.shared.codec._compressai import BufferedRansEncoder, EntropyModel
from mvic.shared.codec.rans import CdfArrays, RansStream, Status
from mvic.shared.errors import CorruptBitstreamError, DesyncError


@dataclass(frozen=True)
class CdfTable:
    """Quantized CDFs of one entropy model: lists for CompressAI's C++ encoder, arrays for our decoder."""

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

    @cached_property
    def entries(self) -> int:
        """CDF values in the whole table: what the C++ encoder converts per call when given every row."""
        return sum(self.lengths)

    @cached_property
    def arrays(self) -> CdfArrays:
        return CdfArrays(self.cdfs, self.lengths, self.offsets)


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
            if idx[b].size < table.entries:  # small block (a serial context model's pixel): convert only its rows
                enc.encode_with_indexes(sym[b], *table.subset(idx[b]))
            else:  # a large block: converting the whole table costs less than finding the rows it uses
                enc.encode_with_indexes(sym[b], idx[b].tolist(), table.cdfs, table.lengths, table.offsets)
        return symbols

    def finish(self) -> list[bytes]:
        return [enc.flush() for enc in self._encoders]


class DecodeSession(CodingSession):
    """Reads each view's symbols from its rANS stream; a view whose stream fails yields zeros and is not ``intact``."""

    def __init__(self, streams: list[bytes]):
        super().__init__(len(streams))
        self._streams = []
        for s in streams:
            if len(s) < 8 or len(s) % 4:
                raise CorruptBitstreamError(f"entropy-coded stream of {len(s)} bytes is not a whole rANS stream "
                                            "(a multiple of 4 bytes, at least 8): the bitstream is damaged")
            self._streams.append(RansStream(s))

    def code(self, target, means, indexes, table):
        idx = indexes.to("cpu", torch.int32).reshape(self.batch, -1).numpy()
        arrays = table.arrays
        rows = np.stack([stream.decode(idx[b], arrays) for b, stream in enumerate(self._streams)])  # (B, N)
        if not any(stream.status is Status.OK for stream in self._streams):  # nothing left worth decoding
            raise DesyncError(
                f"the entropy-coded stream of every view ({self.batch}) is malformed or ends early: the bitstream is "
                "damaged, or was not coded with these weights; resend or drop these views",
                list(range(self.batch)),
            )
        symbols = torch.from_numpy(rows).to(torch.float64).view(means.shape).to(means.device)
        self._record(symbols)
        return symbols

    def intact(self, b: int) -> bool:
        """View b's stream decoded without a bounds failure, was read to its last word, and ended in the
        encoder's initial state: anything else means the stream is damaged (or not from this model)."""
        return self._streams[b].intact
