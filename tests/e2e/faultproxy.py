"""A fault-injecting TCP proxy for the end-to-end tests: node -> **proxy** -> fusion server, all on loopback.

The node dials the proxy instead of the server (``Cluster.start_node(..., server=proxy.target)``); the proxy opens
one upstream connection per accepted one and copies bytes both ways. The test steers it from its own thread while
the proxy runs on an asyncio loop in a daemon thread (one task per connection and direction, as in grpc's asyncio
examples); every control call returns once the fault is in force:

    cut()                 every live connection is reset (RST) and the port stops listening: a connect is refused
                          (ECONNREFUSED) until ``restore()``; ``cut_for(seconds)`` is a context manager doing both
    set_latency(d, j)     each chunk is held ``d`` +- ``j`` seconds (uniform, seeded), order kept as TCP does
    reset()               RST every live connection now (SO_LINGER 0, then close), both sides; new ones are taken
    stall(direction)      stop forwarding "up" (node -> server), "down" (server -> node) or "both": the proxy
                          stops reading that side, so the kernel buffers fill and the sender blocks, as on a dead
                          route; connections stay open (keepalive must notice). ``unstall()`` lets it flow again

``stats`` counts accepted connections, resets and bytes each way, so a test can tell that the node came back
through the proxy. Nothing here knows gRPC: the faults are the network's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

DIRECTIONS = ("up", "down")  # up: node -> server; down: server -> node
CHUNK_BYTES = 64 << 10
QUEUE_CHUNKS = 64  # per direction: a slow (delayed) direction stops reading beyond this, like a full TCP window


@dataclass
class ProxyStats:
    accepted: int = 0  # connections taken (and forwarded upstream)
    upstream_failed: int = 0  # taken, but the server could not be reached: reset at once
    resets: int = 0  # connections reset by cut() or reset()
    bytes_up: int = 0
    bytes_down: int = 0


class _Conn:
    """One proxied connection: the node's side and the server's side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter):
        self.writers = {"client": client, "upstream": upstream}
        self.tasks: list[asyncio.Task] = []

    def reset(self) -> None:
        """RST both sides: linger 0, then close without flushing."""
        for writer in self.writers.values():
            _rst(writer)
        for task in self.tasks:
            task.cancel()


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """TCP proxy ``127.0.0.1:<port>`` -> ``upstream_host:upstream_port`` with injectable faults; a context manager."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", port: int = 0, seed: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.port = port or _free_port()
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._latency = (0.0, 0.0)
        self._conns: set[_Conn] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._flowing: dict[str, asyncio.Event] = {}

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -------------------------------------------------------------------------------------------- control
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._setup())
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def cut(self) -> None:
        """Reset every connection and refuse new ones until ``restore``."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again after a ``cut`` (same port)."""
        self._call(self._listen())

    @contextlib.contextmanager
    def cut_for(self, seconds: float) -> Iterator[None]:
        """Cut at entry; restore after ``seconds`` or at exit, whichever is later (the body may check things)."""
        import time

        self.cut()
        until = time.monotonic() + seconds
        try:
            yield
            time.sleep(max(0.0, until - time.monotonic()))
        finally:
            self.restore()

    def reset(self) -> int:
        """RST every live connection; how many were reset."""
        return self._call(self._reset_all())

    def set_latency(self, delay_s: float, jitter_s: float = 0.0) -> None:
        if not 0 <= jitter_s <= delay_s:
            raise ValueError(f"jitter {jitter_s} must be within 0..delay {delay_s} s")
        self._latency = (delay_s, jitter_s)  # read by the loop's tasks; a tuple swap is atomic

    def stall(self, direction: str = "both") -> None:
        self._call(self._set_flow(direction, False))

    def unstall(self, direction: str = "both") -> None:
        self._call(self._set_flow(direction, True))

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ----------------------------------------------------------------------------------------- on the loop
    async def _setup(self) -> None:
        self._flowing = {d: asyncio.Event() for d in DIRECTIONS}
        for event in self._flowing.values():
            event.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()  # stops listening; a connect now gets ECONNREFUSED
            self._server = None
        await self._reset_all()

    async def _reset_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.reset()
        self._conns.difference_update(conns)
        self.stats.resets += len(conns)
        await asyncio.sleep(0)  # let the cancelled tasks unwind
        return len(conns)

    async def _set_flow(self, direction: str, flowing: bool) -> None:
        if direction not in (*DIRECTIONS, "both"):
            raise ValueError(f"direction must be up, down or both, got {direction!r}")
        for d in DIRECTIONS if direction == "both" else (direction,):
            (self._flowing[d].set if flowing else self._flowing[d].clear)()

    async def _shutdown(self) -> None:
        """Cut, then wait for the connection handlers to finish (cancelling them would upset asyncio's streams)."""
        await self._cut()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5.0)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.upstream_failed += 1
            _rst(client_writer)
            return
        if self._server is None:  # cut while this connection was being made: it must not outlive the cut
            _rst(client_writer)
            _rst(up_writer)
            return
        self.stats.accepted += 1
        conn = _Conn(client_writer, up_writer)
        self._conns.add(conn)
        pumps = [asyncio.create_task(self._pump(client_reader, up_writer, "up")),
                 asyncio.create_task(self._pump(up_reader, client_writer, "down"))]
        conn.tasks = pumps
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() for t in done):
                for writer in conn.writers.values():  # one side failed (reset by its peer): so does the other
                    _rst(writer)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._conns.discard(conn)
            for writer in conn.writers.values():
                if not writer.transport.is_closing():
                    writer.close()

    def _delay(self) -> float:
        delay, jitter = self._latency
        return delay + self._rng.uniform(-jitter, jitter) if delay else 0.0

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Copy one direction: read (unless stalled), hold each chunk its latency, write in order; EOF -> half-close."""
        loop = asyncio.get_running_loop()
        flowing = self._flowing[direction]
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await flowing.wait()
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

        async def receive() -> None:
            last_due = 0.0
            while True:
                await flowing.wait()
                data = await reader.read(CHUNK_BYTES)
                last_due = max(last_due, loop.time() + self._delay())  # jitter never reorders bytes
                await chunks.put((last_due, data))
                if not data:
                    return

        async with asyncio.TaskGroup() as tasks:  # either one failing ends both
            tasks.create_task(receive())
            tasks.create_task(deliver())

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
