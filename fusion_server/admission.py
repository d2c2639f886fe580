"""Bounded admission: what a client may hold and send before the data path takes it.

    node -> **admission** -> receive -> group -> joint decode -> sink -> ack

Hop before: a camera node opens Fusion.Stream from its address, sends a Hello, then ViewPackets.
Hop after: the servicer (``servicer.FusionServicer``) serves a stream only while ``PeerStreams`` has room for its
address; the core (``core.FusionCore``) admits a view only when ``check_capture_time`` passes, and asks
``DropCounts`` whether a camera's broken streams still make its camera group wait for it.

The policies, each with a bound (the numbers: ``admission`` and ``grouping.max_drops`` in server.yaml):

* **streams**: at most ``max_streams_per_peer`` open per client address, counted from the stream's start (before
  its Hello). The Hello must come within ``hello_timeout_s`` (the servicer ends the stream otherwise) and some message
  within every ``idle_timeout_s`` after it (the core's timeout task ends it otherwise), both DEADLINE_EXCEEDED.
* **capture window**: a view captured more than ``max_capture_ahead_s`` after the server's clock at its arrival, or
  (when ``max_capture_age_s`` is set) longer ago than that, is refused alone (PacketError MALFORMED, reason
  ``capture_time``). The grouper reads a camera's newest capture time as proof that it skipped every earlier
  timestamp, so a single view stamped 2^63 ns, or a camera clock that jumped ahead, kept that camera's views from
  ever joining the others'. A camera clock ahead by less than the window still costs its group up to that long.
* **drops**: a camera whose stream broke ``max_drops`` times in a row with none of its frames stored in between is
  neither expected while connected nor awaited (``away_wait_ms``) after it leaves, until one of its frames is
  stored: a client that connects as a camera and drops every few seconds no longer makes every view set wait.

Pure logic: no gRPC, no asyncio, no clock of its own.
"""

from __future__ import annotations

from collections import OrderedDict

from mvic.fusion_server.errors import CaptureTimeError, TooManyStreamsError

#: Cameras whose drop counts are kept (the ones that dropped last): bounds memory against ever-new camera ids.
DROP_RECORDS = 1024


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string, without its port: ``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``,
    ``ipv6:[::1]:51234`` -> ``[::1]``; anything else (``unix:...``) as it is."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rpartition(":")[0]
    return peer


class PeerStreams:
    """Open streams per client address, at most ``limit`` each."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, address: str) -> None:
        """Count one more stream of ``address``, or raise TooManyStreamsError (nothing is counted then)."""
        count = self._open.get(address, 0)
        if count >= self.limit:
            raise TooManyStreamsError(
                f"{count} streams from this address are open already (admission.max_streams_per_peer); close "
                "streams that are not needed, or raise the limit in server.yaml when more cameras share one address"
            )
        self._open[address] = count + 1

    def close(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)


def check_capture_time(sequence: int, capture_ns: int, now_ns: int, max_ahead_s: float,
                       max_age_s: float = 0.0) -> None:
    """Raise CaptureTimeError when ``capture_ns`` (camera clock) is more than ``max_ahead_s`` after ``now_ns`` (the
    server's clock), or more than ``max_age_s`` (0 = no limit) before it."""
    ahead_s = (capture_ns - now_ns) / 1e9
    if ahead_s > max_ahead_s:
        raise CaptureTimeError(sequence, f"packet #{sequence} was captured {ahead_s:.1f} s after the server's clock "
                                         f"(admission.max_capture_ahead_s = {max_ahead_s:g}); set the camera's "
                                         "clock (NTP): views from the future never join the other cameras' views")
    if max_age_s and -ahead_s > max_age_s:
        raise CaptureTimeError(sequence, f"packet #{sequence} was captured {-ahead_s:.1f} s before the server's "
                                         f"clock (admission.max_capture_age_s = {max_age_s:g}); set the camera's "
                                         "clock (NTP), or raise the limit to take older backlogs")


class DropCounts:
    """Broken streams in a row per camera, with none of its frames stored in between. A camera at ``max_drops``
    (0 = never) is ``excluded``: its camera group neither expects nor awaits it until it delivers."""

    def __init__(self, max_drops: int, capacity: int = DROP_RECORDS):
        self.max_drops = max_drops
        self._capacity = capacity
        self._drops: OrderedDict[str, int] = OrderedDict()

    def dropped(self, camera: str) -> None:
        """The camera's stream broke (the node did not end it)."""
        self._drops[camera] = self._drops.pop(camera, 0) + 1
        while len(self._drops) > self._capacity:
            self._drops.popitem(last=False)

    def delivered(self, camera: str) -> None:
        """A frame of the camera was stored: it counts from zero again."""
        self._drops.pop(camera, None)

    def excluded(self, camera: str) -> bool:
        return self.max_drops > 0 and self._drops.get(camera, 0) >= self.max_drops
