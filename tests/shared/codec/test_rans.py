"""The bounds-checked rANS decoder: bit-compatible with CompressAI's coder, and no input makes it read outside."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from compressai.ans import BufferedRansEncoder, RansDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvic.shared.codec.rans import RANS_L, CdfArrays, RansStream, Status, decode_block

# decode_block's own Python source compiled with bounds checks: any index outside an array raises IndexError
checked_decode = numba.njit(boundscheck=True)(decode_block.py_func)


def _tables(rng: np.random.Generator, count: int = 5) -> tuple[list[list[int]], list[int], list[int]]:
    """Random strictly increasing 16-bit CDFs like CompressAI's (first 0, last 65536)."""
    cdfs, lengths, offsets = [], [], []
    for _ in range(count):
        symbols = int(rng.integers(2, 40))
        freqs = rng.integers(1, 1000, symbols).astype(np.float64)
        q = np.maximum(1, np.floor(freqs / freqs.sum() * (65536 - symbols))).astype(np.int64)
        q[np.argmax(q)] += 65536 - q.sum()
        cdf = np.concatenate([[0], np.cumsum(q)]).tolist()
        cdfs.append(cdf)
        lengths.append(len(cdf))
        offsets.append(int(rng.integers(-20, 5)))
    return cdfs, lengths, offsets


def _encode(blocks, cdfs, lengths, offsets) -> bytes:
    enc = BufferedRansEncoder()
    for symbols, indexes in blocks:
        enc.encode_with_indexes(symbols.tolist(), indexes.tolist(), cdfs, lengths, offsets)
    return enc.flush()


def _blocks(rng, n_tables, sizes=(300, 1, 2000)):
    """Symbols well inside and far outside each table's range (the latter are bypass-coded)."""
    out = []
    for n in sizes:
        idx = rng.integers(0, n_tables, n).astype(np.int32)
        sym = rng.integers(-40, 40, n).astype(np.int32)
        far = rng.random(n) < 0.05
        sym[far] = rng.integers(-(1 << 20), 1 << 20, far.sum())
        out.append((sym, idx))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_decodes_what_compressai_encodes_and_agrees_with_its_decoder(seed):
    rng = np.random.default_rng(seed)
    cdfs, lengths, offsets = _tables(rng)
    blocks = _blocks(rng, len(cdfs))
    data = _encode(blocks, cdfs, lengths, offsets)
    ours, theirs = RansStream(data), RansDecoder()
    theirs.set_stream(data)
    table = CdfArrays(cdfs, lengths, offsets)
    for symbols, indexes in blocks:
        got = ours.decode(indexes, table)
        np.testing.assert_array_equal(got, symbols)
        np.testing.assert_array_equal(got, theirs.decode_stream(indexes.tolist(), cdfs, lengths, offsets))
    assert ours.status is Status.OK and ours.intact


def test_a_stream_with_symbols_left_over_or_missing_is_not_intact():
    rng = np.random.default_rng(7)
    cdfs, lengths, offsets = _tables(rng)
    blocks = _blocks(rng, len(cdfs), sizes=(500, 500))
    data = _encode(blocks, cdfs, lengths, offsets)
    table = CdfArrays(cdfs, lengths, offsets)
    partial = RansStream(data)
    partial.decode(blocks[0][1], table)  # the second block is never read
    assert partial.status is Status.OK and not partial.intact
    padded = RansStream(data + bytes(8))
    for _, indexes in blocks:
        padded.decode(indexes, table)
    assert not padded.intact  # decodes the same symbols, but two words are left unread
    assert padded.pos == len(padded.words) - 2


def test_the_segfaulting_stream_fails_cleanly_after_reading_nothing_past_its_end():
    """CompressAI's decoder reads ~15x past this buffer (bypass nibbles of 0xFF never end) and crashes."""
    rng = np.random.default_rng(1)
    cdfs, lengths, offsets = _tables(rng)
    table = CdfArrays(cdfs, lengths, offsets)
    data = b"\x00\x00\x00\x80" + b"\xff" * (1 << 20)
    stream = RansStream(data)
    indexes = np.full(10_000, len(cdfs) - 1, dtype=np.int32)
    out = np.zeros(len(indexes), dtype=np.int64)
    pos, _, status = checked_decode(stream.words, 2, stream.state, indexes, table.cdfs, table.lengths,
                                    table.offsets, out)
    assert status != Status.OK and pos <= len(stream.words)
    assert not np.any(stream.decode(indexes, table)) and stream.status is not Status.OK and not stream.intact


def test_a_table_index_outside_the_table_fails_the_view():
    cdfs, lengths, offsets = _tables(np.random.default_rng(2))
    stream = RansStream(bytes(16))
    stream.decode(np.array([0, len(cdfs)], dtype=np.int32), CdfArrays(cdfs, lengths, offsets))
    assert stream.status is Status.BAD_INDEX


def test_short_or_ragged_streams_are_refused_before_decoding():
    for n in (0, 4, 7, 9):
        with pytest.raises(ValueError, match="whole number of 32-bit words"):
            RansStream(bytes(n))


_FUZZ_TABLES = _tables(np.random.default_rng(3))
_FUZZ_ARRAYS = CdfArrays(*_FUZZ_TABLES)
_VALID = _encode(_blocks(np.random.default_rng(4), len(_FUZZ_TABLES[0]), sizes=(400,)), *_FUZZ_TABLES)


@st.composite
def _hostile_streams(draw):
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "ff-run", "zeros"]))
    if kind == "random":
        data = draw(st.binary(min_size=8, max_size=4096))
    elif kind == "truncated":
        data = _VALID[: draw(st.integers(8, len(_VALID) - 1))]
    elif kind == "flipped":
        buf = bytearray(_VALID)
        for bit in draw(st.lists(st.integers(0, 8 * len(buf) - 1), min_size=1, max_size=8)):
            buf[bit // 8] ^= 1 << (bit % 8)
        data = bytes(buf)
    elif kind == "ff-run":
        data = draw(st.binary(min_size=4, max_size=4)) + b"\xff" * draw(st.integers(4, 65536))
    else:
        data = bytes(draw(st.integers(8, 4096)))
    return data[: len(data) // 4 * 4] if len(data) >= 8 else bytes(8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=_hostile_streams(), n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_no_stream_makes_the_decoder_index_outside_its_arrays(data, n, seed):
    indexes = np.random.default_rng(seed).integers(0, len(_FUZZ_TABLES[0]), n).astype(np.int32)
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    state = np.uint64(int(words[0]) | (int(words[1]) << 32))
    out = np.zeros(n, dtype=np.int64)
    pos, _, status = checked_decode(words, 2, state, indexes, _FUZZ_ARRAYS.cdfs, _FUZZ_ARRAYS.lengths,
                                    _FUZZ_ARRAYS.offsets, out)  # an IndexError here is an out-of-bounds read
    assert 2 <= pos <= len(words) and status in {s.value for s in Status}


def test_the_reported_packet_is_a_decode_error_not_a_crash():
    """Issue 13's reproduction with the shipped weights, in a child process so a segfault fails this test instead
    of killing the suite: a valid 128x128 header whose stream is 00 00 00 80 then 1 MiB of 0xFF."""
    script = textwrap.dedent("""
        import dataclasses, numpy as np
        from mvic.shared.bitstream import ViewBitstream
        from mvic.shared.codec.registry import load_model
        from mvic.shared.errors import MVICError
        from mvic.shared.codec.registry import default_weights
        model = load_model(default_weights("ldmic-fast-lite"))
        real = model.compress_view(np.full((128, 128, 3), 90, np.uint8), 1, camera_id="C1")
        forged = ViewBitstream(real.header, (b"\\x00\\x00\\x00\\x80" + b"\\xff" * (1 << 20),))
        try:
            model.decompress([forged])
        except MVICError as e:
            print("refused:", type(e).__name__)
    """)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: DesyncError" in proc.stdout


def test_the_encoders_initial_state_is_what_a_whole_stream_ends_in():
    data = _encode([(np.array([1, 2], np.int32), np.array([0, 0], np.int32))], *_FUZZ_TABLES)
    stream = RansStream(data)
    stream.decode(np.array([0, 0], np.int32), _FUZZ_ARRAYS)
    assert int(stream.state) == RANS_L and stream.intact
