"""One camera's open stream as the core sees it: the outbox of events going back to the node.

Hop before: the core (``core.FusionCore``) pushes acks (after the ack book journalled them), packet rejections and
the close.
Hop after: the servicer (``servicer.FusionServicer``) awaits ``next_event`` and turns each into a ServerMessage.

Bounded: acks are cumulative, so only the highest waiting one is kept; rejections wait in a deque of at most
``max_rejections`` (the oldest is dropped and counted beyond that). Rejections go out before the ack that covers
them; the close goes out last, after everything else.
"""

from __future__ import annotations

import asyncio
from collections import deque

from mvic.fusion_server.errors import PacketRejected, ServerError
from mvic.fusion_server.peer import NO_PEER, Peer
from mvic.fusion_server.records import AckEvent, CloseEvent, Outgoing, RejectEvent
from mvic.shared.rpc.hello import Hello


class Session:
    def __init__(self, hello: Hello, peer: Peer = NO_PEER, max_rejections: int = 1024):
        self.hello = hello
        self.peer = peer  # address and certificate of the stream: who may replace it, what may be revoked
        self.camera = hello.camera_id
        self.group = hello.group_id
        self.input_done = False  # the node half-closed its side; the stream ends once its frames are acked
        self.last_message_s = 0.0  # monotonic time of the node's last message, set by the core (idle deadline)
        self.first_sequence = 0  # sequence of the stream's first packet (0: none yet): where the node resumed
        self.rejections_dropped = 0
        self._ack: int | None = None
        self._rejections: deque[PacketRejected] = deque()
        self._max_rejections = max_rejections
        self._close: CloseEvent | None = None
        self._wake = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def close_error(self) -> ServerError | None:
        """Why the server ended the stream (None: it did not, or it ended it normally)."""
        return self._close.error if self._close is not None else None

    def push_ack(self, acked: int) -> None:
        self._ack = acked if self._ack is None else max(self._ack, acked)
        self._wake.set()

    def push_reject(self, error: PacketRejected) -> None:
        if len(self._rejections) >= self._max_rejections:
            self._rejections.popleft()
            self.rejections_dropped += 1
        self._rejections.append(error)
        self._wake.set()

    def close(self, reason: str, error: ServerError | None = None) -> None:
        if self._close is None:
            self._close = CloseEvent(reason, error)
            self._wake.set()

    async def next_event(self) -> Outgoing:
        while (event := self._take()) is None:
            self._wake.clear()
            await self._wake.wait()
        return event

    def take_events(self) -> list[Outgoing]:
        """Every event waiting now, in the order ``next_event`` gives them (the close, once, last)."""
        events = []
        while (event := self._take()) is not None:
            events.append(event)
            if isinstance(event, CloseEvent):
                break
        return events

    def _take(self) -> Outgoing | None:
        if self._rejections:
            return RejectEvent(self._rejections.popleft())
        if self._ack is not None:
            acked, self._ack = self._ack, None
            return AckEvent(acked)
        return self._close
