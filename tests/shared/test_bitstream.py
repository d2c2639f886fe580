"""The per-view container: round trips, golden bytes, and every malformed input named."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvic.shared import bitstream as bs
from mvic.shared.errors import (
    BitstreamError,
    CorruptBitstreamError,
    TruncatedBitstreamError,
    UnsupportedVersionError,
)


def _view(**over) -> bs.ViewBitstream:
    fields = dict(model_id=1, weights_hash=bytes(range(8)), rate_index=3, camera_id="C1", sequence=42,
                  capture_ns=1_700_000_000_123_456_789, height=1080, width=1920, pad_bottom=8, pad_right=0,
                  symbol_crc=0xDEADBEEF)
    fields.update(over)
    streams = fields.pop("streams", (b"\x01\x02\x03\x04",))
    return bs.ViewBitstream(bs.ViewHeader(**fields), streams)


# Catches accidental format changes: these bytes are format version 1.
GOLDEN = bytes.fromhex(
    "4d564943" "01" "00" "0001" "0001020304050607" "03" "02" "000000000000002a" "17979cfe3d85cd15"
    "0438" "0780" "08" "00" "deadbeef" "01" "4331" "00000004" "01020304" "728a1594"
)


def test_golden_bytes_are_stable():
    assert bs.pack(_view()) == GOLDEN
    assert bs.unpack(GOLDEN) == _view()


@settings(max_examples=200, deadline=None)
@given(
    model_id=st.integers(0, 0xFFFF), rate=st.integers(0, 255), seq=st.integers(0, 2**64 - 1),
    ts=st.integers(0, 2**64 - 1), h=st.integers(1, bs.MAX_SIDE), w=st.integers(1, bs.MAX_SIDE),
    cam=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, categories=["L", "N", "P"]),
                min_size=1, max_size=16),
    streams=st.lists(st.binary(max_size=64), min_size=1, max_size=bs.MAX_STREAMS),
)
def test_round_trip_any_header(model_id, rate, seq, ts, h, w, cam, streams):
    pb, pr = bs.padding_for(h, w)
    view = _view(model_id=model_id, rate_index=rate, sequence=seq, capture_ns=ts, height=h, width=w,
                 pad_bottom=pb, pad_right=pr, camera_id=cam, streams=tuple(streams))
    assert bs.unpack(bs.pack(view)) == view


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_damage_raises_a_bitstream_error(data):
    packet = bytearray(bs.pack(_view(streams=(b"abcdefgh", b"xyz"))))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(packet) - 1))
        packet[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        packet = packet[: data.draw(st.integers(0, len(packet) - 1))]
    else:
        packet += data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(BitstreamError):
        bs.unpack(bytes(packet))


def test_truncated_packet_is_named():
    packet = bs.pack(_view())
    with pytest.raises(TruncatedBitstreamError, match="resend"):
        bs.unpack(packet[:-7])
    with pytest.raises(TruncatedBitstreamError):
        bs.unpack(packet[:20])


def test_corrupt_packet_is_named():
    packet = bytearray(bs.pack(_view()))
    packet[-6] ^= 0x40
    with pytest.raises(CorruptBitstreamError, match="CRC"):
        bs.unpack(bytes(packet))


def test_not_mvic_data():
    with pytest.raises(CorruptBitstreamError, match="not an MVIC bitstream"):
        bs.unpack(b"\x89PNG\r\n\x1a\n" + bytes(60))


@pytest.mark.parametrize("version,hint", [(2, "upgrade"), (0, "re-encode")])
def test_other_versions_say_what_to_do(version, hint):
    packet = bytearray(bs.pack(_view()))
    packet[4] = version
    with pytest.raises(UnsupportedVersionError, match=hint):
        bs.unpack(bytes(packet))


def test_declared_sizes_are_bounded_before_allocation():
    packet = bytearray(bs.pack(_view()))
    table = bs._FIXED.size + len("C1")
    packet[table: table + 4] = struct.pack("!I", 0xFFFFFFF0)  # a 4 GiB stream
    with pytest.raises(CorruptBitstreamError, match="exceeds"):
        bs.unpack(bytes(packet))


@pytest.mark.parametrize("over", [
    dict(camera_id=""), dict(camera_id="x" * 65), dict(camera_id="a\nb"), dict(pad_bottom=9),
    dict(height=0), dict(width=bs.MAX_SIDE + 1), dict(rate_index=256), dict(weights_hash=b"123"),
    dict(streams=()), dict(streams=(b"",) * 9),
])
def test_pack_refuses_fields_out_of_range(over):
    with pytest.raises(CorruptBitstreamError):
        bs.pack(_view(**over))


def test_bitstream_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mvic.shared.bitstream, mvic.shared.model_table; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
