"""A rANS decoder that cannot read outside its input, bit-compatible with CompressAI's ``RansDecoder``.

Streams are written by CompressAI's ``BufferedRansEncoder`` (ryg_rans ``rans64``: 64-bit state, 32-bit words, 16-bit
probability precision; a value outside a CDF's range is sent as its last symbol followed by 4-bit "bypass" nibbles).
CompressAI's C++ decoder trusts the stream: it never compares its read pointer with the end of the buffer, so a run
of ``0xFF`` keeps its bypass loop reading far past the input (a segfault in the server, CompressAI issue #300), and a
short stream decodes whatever memory follows it. This decoder performs the same arithmetic and checks every read:

* a word past the end of the stream                 -> the view fails (``Status.OVERRUN``);
* more bypass nibbles than a 32-bit value can need  -> the view fails (``Status.BYPASS``);
* a CDF index outside the table                      -> the view fails (``Status.BAD_INDEX``).

After the last symbol, a stream that an encoder wrote is consumed exactly and the state is back at ``RANS_L`` (rANS
is exactly invertible, and the encoder starts from ``RANS_L``): ``RansStream.intact`` checks both, which catches
truncated, padded and tampered streams that happen to decode.

The loop is compiled with numba (``nogil``, so views can decode in parallel threads). ``decode_block.py_func`` is the
same code in plain Python, and tests compile it with ``boundscheck=True`` to prove no index leaves its array.
"""

from __future__ import annotations

import enum
import logging

import numpy as np

try:
    import numba
except ImportError:  # a dependency (pyproject); only a bare machine such as the GPU lending one lacks it
    numba = None

log = logging.getLogger(__name__)

PRECISION = 16  # bits of CDF precision (CompressAI: ``precision``)
BYPASS_BITS = 4  # bits per bypass nibble (CompressAI: ``bypass_precision``)
MAX_BYPASS_NIBBLES = 8  # a 32-bit raw value needs at most 8 nibbles; an encoder never writes more
RANS_L = 1 << 31  # lower bound of the normalised state (ryg_rans ``RANS64_L``)


def _compiled(fn):
    """numba's on-disk cache where a cache folder is writable (a read-only install compiles at first use); without
    numba, the same code in plain Python: as safe, ~100x slower."""
    if numba is None:
        log.warning("numba is not installed: rANS decoding runs in plain Python (slow); pip install numba")
        fn.py_func = fn
        return fn
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "no locator available": no writable folder for the cache
        return numba.njit(nogil=True)(fn)


class Status(enum.IntEnum):
    OK = 0
    OVERRUN = 1  # the stream ended before its symbols did
    BYPASS = 2  # a bypass-coded value longer than any encoder writes
    BAD_INDEX = 3  # a CDF index outside the table (a model/table mismatch, not the stream)


@_compiled
def decode_block(words, pos, state, indexes, cdfs, lengths, offsets, out):
    """Decode ``len(indexes)`` symbols into ``out`` from ``words[pos:]`` starting in ``state``.

    words: (W,) uint32; indexes: (N,) int32 rows of ``cdfs`` (T, L) int32 with ``lengths`` (T,) and ``offsets`` (T,);
    out: (N,) int64. Returns (pos, state, status); on a failure ``out`` holds the symbols decoded before it.
    """
    n_words = words.shape[0]
    n_tables = lengths.shape[0]
    low = np.uint64(RANS_L)
    prob_mask = np.uint64((1 << PRECISION) - 1)
    nibble_mask = np.uint64((1 << BYPASS_BITS) - 1)
    max_nibble = (1 << BYPASS_BITS) - 1
    for i in range(indexes.shape[0]):
        t = indexes[i]
        if t < 0 or t >= n_tables:
            return pos, state, 3
        size = lengths[t]
        max_value = size - 2
        if max_value < 0 or size > cdfs.shape[1]:
            return pos, state, 3
        cum = np.int64(state & prob_mask)
        lo = 1  # cdfs[t, 0] == 0 <= cum; cdfs[t, size - 1] == 1 << PRECISION > cum
        hi = size - 1
        while lo < hi:  # the first entry above cum (std::find_if over a non-decreasing CDF)
            mid = (lo + hi) // 2
            if cdfs[t, mid] > cum:
                hi = mid
            else:
                lo = mid + 1
        s = lo - 1
        start = np.uint64(cdfs[t, s])
        freq = np.uint64(cdfs[t, s + 1] - cdfs[t, s])
        state = freq * (state >> np.uint64(PRECISION)) + (state & prob_mask) - start  # wraps like C's uint64_t
        if state < low:
            if pos >= n_words:
                return pos, state, 1
            state = (state << np.uint64(32)) | np.uint64(words[pos])
            pos += 1
        value = np.int64(s)
        if s == max_value:  # bypass: the nibble count (a run of 15s extends it), then the nibbles, low first
            count = 0  # nibbles of the value, once known
            counting = True
            raw = np.int64(0)
            j = 0
            while counting or j < count:
                nibble = np.int64(state & nibble_mask)
                state = state >> np.uint64(BYPASS_BITS)
                if state < low:
                    if pos >= n_words:
                        return pos, state, 1
                    state = (state << np.uint64(32)) | np.uint64(words[pos])
                    pos += 1
                if counting:
                    count += nibble
                    if count > MAX_BYPASS_NIBBLES:
                        return pos, state, 2
                    counting = nibble == max_nibble
                else:
                    raw |= nibble << (BYPASS_BITS * j)
                    j += 1
            if raw >= np.int64(1) << 31:  # CompressAI's int32 raw value is never negative in a written stream
                return pos, state, 2
            value = raw >> 1
            if raw & 1:
                value = -value - 1
            else:
                value += max_value
        out[i] = value + offsets[t]
    return pos, state, 0


class CdfArrays:
    """A CDF table as the arrays ``decode_block`` reads: (T, L) int32 CDFs padded with their last value."""

    def __init__(self, cdfs: list[list[int]], lengths: list[int], offsets: list[int]):
        width = max(lengths)
        self.cdfs = np.full((len(cdfs), width), 1 << PRECISION, dtype=np.int32)
        for row, cdf in zip(self.cdfs, cdfs):
            row[: len(cdf)] = cdf
        self.lengths = np.asarray(lengths, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)


class RansStream:
    """One view's entropy-coded stream, decoded block by block; a failure is kept, never raised mid-batch."""

    def __init__(self, data: bytes):
        if len(data) < 8 or len(data) % 4:
            raise ValueError(f"a rANS stream is a whole number of 32-bit words, at least 2; got {len(data)} bytes")
        self.words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self.state = np.uint64(int(self.words[0]) | (int(self.words[1]) << 32))
        self.pos = 2
        self.status = Status.OK

    def decode(self, indexes: np.ndarray, table: CdfArrays) -> np.ndarray:
        """(N,) int64 symbols for (N,) CDF indexes; zeros from the first failure on (``status`` says which)."""
        out = np.zeros(indexes.shape[0], dtype=np.int64)
        if self.status is Status.OK:
            pos, state, status = decode_block(self.words, self.pos, self.state,
                                              np.ascontiguousarray(indexes, dtype=np.int32), table.cdfs,
                                              table.lengths, table.offsets, out)
            self.pos, self.state, self.status = int(pos), np.uint64(state), Status(int(status))
            if self.status is not Status.OK:
                out[:] = 0  # what a failed view yields is never half-decoded data
        return out

    @property
    def intact(self) -> bool:
        """Every block decoded, every word read, and the state back where the encoder started."""
        return self.status is Status.OK and self.pos == len(self.words) and int(self.state) == RANS_L
