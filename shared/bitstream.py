"""The per-view bitstream container: ``pack(ViewBitstream) -> bytes`` and ``unpack(bytes) -> ViewBitstream``.

Hop before: the encoder (``mvic.shared.codec.model.LDMIC.compress_view``) fills a ``ViewBitstream``.
Hop after: the node sends ``pack(...)`` over gRPC or writes it to a ``.mvic`` file; the decoder ``unpack``s it.

Pure functions over bytes, no torch import. Layout (big-endian), format version 1::

    offset size field
    0      4    magic            b"MVIC"
    4      1    format version   1
    5      1    flags            0 (reserved; a set bit is an error)
    6      2    model id         from mvic.shared.model_table
    8      8    weights hash     first 8 bytes of the weights file's sha256
    16     1    rate index       0 = lowest rate
    17     1    camera id length 1..64
    18     8    sequence number  per camera, increasing
    26     8    capture time     ns since the Unix epoch (camera clock)
    34     2    height           original image height, pixels
    36     2    width            original image width, pixels
    38     1    pad bottom       rows added before coding (crop them after decoding)
    39     1    pad right        columns added before coding
    40     4    symbol CRC       CRC-32 of the latent symbols (int32 LE, in coding order: z, then y); detects desync
    44     1    stream count     1..8
    45     L    camera id        UTF-8
    ...    4*n  stream lengths   bytes
    ...         streams          entropy-coded data
    end-4  4    packet CRC       CRC-32 of every byte before it

Every declared size is checked against the packet's real length and against fixed bounds before any allocation.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from mvic.shared.errors import (
    CorruptBitstreamError,
    IdError,
    TruncatedBitstreamError,
    UnsupportedVersionError,
)
from mvic.shared.ids import MAX_ID_BYTES, validate_camera_id

MAGIC = b"MVIC"
FORMAT_VERSION = 1
WEIGHTS_HASH_BYTES = 8
MAX_CAMERA_ID_BYTES = MAX_ID_BYTES  # the id rule is mvic.shared.ids'; the length takes one byte
MAX_STREAMS = 8
MAX_SIDE = 16384  # pixels; larger images must be tiled by the caller
PAD_MULTIPLE = 64  # the codec pads each side up to a multiple of this
MAX_STREAM_BYTES = 64 << 20
MAX_PACKET_BYTES = 256 << 20

_FIXED = struct.Struct("!4sBBH8sBBQQHHBBIB")  # everything up to the camera id
_U32 = struct.Struct("!I")
assert _FIXED.size == 45


@dataclass(frozen=True)
class ViewHeader:
    """Everything a decoder needs to know about one coded view, besides the entropy-coded streams."""

    model_id: int
    weights_hash: bytes  # WEIGHTS_HASH_BYTES bytes
    rate_index: int
    camera_id: str
    sequence: int
    capture_ns: int
    height: int
    width: int
    pad_bottom: int
    pad_right: int
    symbol_crc: int
    version: int = FORMAT_VERSION

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.height + self.pad_bottom, self.width + self.pad_right

    def validate(self) -> None:
        """Raise CorruptBitstreamError if a field is out of range."""
        _check(self.version == FORMAT_VERSION, f"format version {self.version} is not {FORMAT_VERSION}")
        _check(0 <= self.model_id < 1 << 16, f"model id {self.model_id} does not fit 16 bits")
        _check(len(self.weights_hash) == WEIGHTS_HASH_BYTES, "weights hash prefix must be 8 bytes")
        _check(0 <= self.rate_index < 256, f"rate index {self.rate_index} out of range 0..255")
        try:
            validate_camera_id(self.camera_id)
        except IdError as exc:
            raise CorruptBitstreamError(str(exc)) from None
        _check(0 <= self.sequence < 1 << 64, f"sequence number {self.sequence} does not fit 64 bits")
        _check(0 <= self.capture_ns < 1 << 64, f"capture time {self.capture_ns} does not fit 64 bits")
        _check(1 <= self.height <= MAX_SIDE and 1 <= self.width <= MAX_SIDE,
               f"image size {self.height}x{self.width} outside 1..{MAX_SIDE}")
        for name, pad, side in (("bottom", self.pad_bottom, self.height), ("right", self.pad_right, self.width)):
            _check(0 <= pad < PAD_MULTIPLE and (side + pad) % PAD_MULTIPLE == 0,
                   f"pad {name} {pad} does not make {side} a multiple of {PAD_MULTIPLE}")
        _check(0 <= self.symbol_crc < 1 << 32, "symbol CRC does not fit 32 bits")


@dataclass(frozen=True)
class ViewBitstream:
    """One view of one timestamp, entropy coded: the unit a camera sends."""

    header: ViewHeader
    streams: tuple[bytes, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(len(s) for s in self.streams)


def padding_for(height: int, width: int) -> tuple[int, int]:
    """(pad_bottom, pad_right) that bring an image up to multiples of PAD_MULTIPLE."""
    return (-height) % PAD_MULTIPLE, (-width) % PAD_MULTIPLE


def pack(view: ViewBitstream) -> bytes:
    """Serialise a view; raises CorruptBitstreamError on a field out of range (nothing half-written)."""
    h = view.header
    h.validate()
    _check(1 <= len(view.streams) <= MAX_STREAMS, f"a packet holds 1..{MAX_STREAMS} streams")
    for s in view.streams:
        _check(len(s) <= MAX_STREAM_BYTES, f"stream of {len(s)} bytes exceeds {MAX_STREAM_BYTES}")
    cam = h.camera_id.encode("utf-8")
    parts = [
        _FIXED.pack(MAGIC, h.version, 0, h.model_id, h.weights_hash, h.rate_index, len(cam), h.sequence,
                    h.capture_ns, h.height, h.width, h.pad_bottom, h.pad_right, h.symbol_crc, len(view.streams)),
        cam,
        b"".join(_U32.pack(len(s)) for s in view.streams),
        *view.streams,
    ]
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def unpack(data: bytes) -> ViewBitstream:
    """Parse and verify a packet made by ``pack``."""
    data = bytes(data)
    if len(data) > MAX_PACKET_BYTES:
        raise CorruptBitstreamError(
            f"packet of {len(data)} bytes exceeds the {MAX_PACKET_BYTES}-byte limit; it is not an MVIC view"
        )
    if data[:4] != MAGIC[: len(data[:4])]:
        raise CorruptBitstreamError(
            f"not an MVIC bitstream (magic {data[:4]!r}, expected {MAGIC!r}); check that the file is a .mvic view"
        )
    if len(data) < 6:
        raise TruncatedBitstreamError(f"packet of {len(data)} bytes is too short for an MVIC header; resend it")
    version = data[4]
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise UnsupportedVersionError(
            f"bitstream format version {version} is not supported (this build reads version {FORMAT_VERSION}); "
            + ("upgrade MVIC on the decoder" if newer else "re-encode the view with this MVIC release")
        )
    if len(data) < _FIXED.size + _U32.size:
        raise TruncatedBitstreamError(
            f"packet of {len(data)} bytes ends inside the {_FIXED.size}-byte header; the transfer was cut, resend it"
        )
    (_, version, flags, model_id, whash, rate_index, cam_len, sequence, capture_ns, height, width, pad_b, pad_r,
     symbol_crc, n_streams) = _FIXED.unpack_from(data, 0)
    _check(flags == 0, f"reserved flags {flags:#04x} are set; the packet is corrupt or from a newer MVIC")
    _check(1 <= cam_len <= MAX_CAMERA_ID_BYTES, f"camera id length {cam_len} out of range")
    _check(1 <= n_streams <= MAX_STREAMS, f"stream count {n_streams} out of range 1..{MAX_STREAMS}")
    offset = _FIXED.size
    table_end = offset + cam_len + _U32.size * n_streams
    if len(data) < table_end + _U32.size:
        raise TruncatedBitstreamError(f"packet of {len(data)} bytes ends inside its stream table; resend it")
    crc_stored = _U32.unpack_from(data, len(data) - _U32.size)[0]
    # Sizes are checked against the real length before the CRC so that truncation is reported as such.
    lengths = [_U32.unpack_from(data, offset + cam_len + 4 * i)[0] for i in range(n_streams)]
    for n in lengths:
        _check(n <= MAX_STREAM_BYTES, f"declared stream of {n} bytes exceeds {MAX_STREAM_BYTES}")
    expected = table_end + sum(lengths) + _U32.size
    if len(data) < expected:
        raise TruncatedBitstreamError(
            f"packet is {len(data)} bytes but declares {expected}; the transfer was cut, resend the view"
        )
    if zlib.crc32(data[:-4]) != crc_stored:
        raise CorruptBitstreamError("packet CRC mismatch: the view was damaged in transit or on disk; resend it")
    if len(data) != expected:
        raise CorruptBitstreamError(f"packet is {len(data)} bytes but declares {expected}")
    try:
        camera_id = data[offset: offset + cam_len].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptBitstreamError("camera id is not valid UTF-8") from None
    streams, pos = [], table_end
    for n in lengths:
        streams.append(data[pos: pos + n])
        pos += n
    header = ViewHeader(model_id, whash, rate_index, camera_id, sequence, capture_ns, height, width, pad_b, pad_r,
                        symbol_crc, version)
    header.validate()
    return ViewBitstream(header, tuple(streams))


def symbol_crc(*symbol_blocks: bytes) -> int:
    """CRC-32 over the latent symbols' bytes, in the order given (z first, then y)."""
    crc = 0
    for block in symbol_blocks:
        crc = zlib.crc32(block, crc)
    return crc


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise CorruptBitstreamError(message)
