"""Hypothesis strategies for hostile input: packets that are random, truncated, bit-flipped, or tampered and then
given a valid CRC, at sizes up to what the receiver allows. Used by the in-process fuzz tests and by
``benchmarks/fuzz.py`` (the longer campaign, also against a running server)."""

from __future__ import annotations

import struct
import zlib

from hypothesis import strategies as st

from mvic.shared.bitstream import MAX_SIDE, PAD_MULTIPLE, ViewBitstream, pack

# byte offsets in the fixed header (shared/bitstream.py's layout table)
_FIELDS = {  # name: (offset, struct format)
    "flags": (5, "!B"), "model_id": (6, "!H"), "rate_index": (16, "!B"), "cam_len": (17, "!B"),
    "sequence": (18, "!Q"), "capture_ns": (26, "!Q"), "height": (34, "!H"), "width": (36, "!H"),
    "pad_bottom": (38, "!B"), "pad_right": (39, "!B"), "symbol_crc": (40, "!I"), "n_streams": (44, "!B"),
}


def with_valid_crc(body: bytes) -> bytes:
    """``body`` (a packet without its last 4 bytes) followed by its CRC: passes the transport check."""
    return body + struct.pack("!I", zlib.crc32(body))


def _retyped(packet: bytes, name: str, value: int) -> bytes:
    offset, fmt = _FIELDS[name]
    size = struct.calcsize(fmt)
    value &= (1 << (8 * size)) - 1
    body = packet[:-4]
    return with_valid_crc(body[:offset] + struct.pack(fmt, value) + body[offset + size:])


def _size_within(max_pixels: int):
    """(height, width, pad_bottom, pad_right) valid for the header, area at most ``max_pixels``."""
    side = st.integers(1, MAX_SIDE)
    return st.tuples(side, side).filter(lambda hw: hw[0] * hw[1] <= max_pixels).map(
        lambda hw: (*hw, (-hw[0]) % PAD_MULTIPLE, (-hw[1]) % PAD_MULTIPLE))


@st.composite
def hostile_packets(draw, valid: list[ViewBitstream], max_pixels: int = 512 * 512, max_stream: int = 1 << 16):
    """A packet derived from one of ``valid`` views, or from nothing; every kind the transport could deliver."""
    base = draw(st.sampled_from(valid))
    packet = pack(base)
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "field", "resized", "stream", "ff-run"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "truncated":
        return packet[: draw(st.integers(0, len(packet) - 1))]
    if kind == "flipped":  # transport damage: the CRC no longer matches
        buf = bytearray(packet)
        for bit in draw(st.lists(st.integers(0, 8 * len(buf) - 1), min_size=1, max_size=6)):
            buf[bit // 8] ^= 1 << (bit % 8)
        return bytes(buf)
    if kind == "field":  # any header field set to any value, CRC made valid again
        name = draw(st.sampled_from(sorted(_FIELDS)))
        return _retyped(packet, name, draw(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 255, 2**63])))
    if kind == "resized":  # a plausible, valid header declaring another size than the stream holds
        h, w, pb, pr = draw(_size_within(max_pixels))
        for name, value in (("height", h), ("width", w), ("pad_bottom", pb), ("pad_right", pr)):
            packet = _retyped(packet, name, value)
        return packet
    streams = list(base.streams)
    if kind == "stream":  # the entropy-coded data replaced, bit-flipped or cut; CRC valid
        i = draw(st.integers(0, len(streams) - 1))
        how = draw(st.sampled_from(["replace", "flip", "cut"]))
        if how == "replace":
            streams[i] = draw(st.binary(max_size=max_stream))
        elif how == "flip" and streams[i]:
            buf = bytearray(streams[i])
            for bit in draw(st.lists(st.integers(0, 8 * len(buf) - 1), min_size=1, max_size=6)):
                buf[bit // 8] ^= 1 << (bit % 8)
            streams[i] = bytes(buf)
        else:
            streams[i] = streams[i][: draw(st.integers(0, len(streams[i])))]
    else:  # "ff-run": issue 13's crashing stream: a state word, then a long run of 0xFF
        streams[0] = b"\x00\x00\x00\x80" + b"\xff" * draw(st.integers(4, max_stream))
    return pack(ViewBitstream(base.header, tuple(streams)))
