"""The live page's HTTP server under hostile or careless clients, over real loopback sockets (no model needed).

Issue 13 #6: one thread and one fd per idle connection, no timeout; under a limit of 300 fds, 289 idle connections
exhausted them, a server thread spun at 100 % CPU and every PNG write failed. Each test here waits for an outcome
with a deadline (never a fixed sleep followed by "nothing happened").
"""

from __future__ import annotations

import asyncio
import http.client
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Self

import pytest
from prometheus_client import CollectorRegistry

from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.webpage import MAX_HEAD_BYTES, LivePage

SLACK_S = 10.0  # deadlines allow this much on a loaded machine


class PageThread:
    """A LivePage on its own event loop in a thread (in the app it shares the gRPC server's loop)."""

    def __init__(self, max_connections: int, timeout_s: float, **security):
        self.registry = CollectorRegistry()
        self.live = LiveView()
        self.page = LivePage(self.live, "127.0.0.1", 0, lambda: True, ServerMetrics(self.registry),
                             max_connections=max_connections, timeout_s=timeout_s, **security)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-live-page", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.page.start(), self.loop).result(SLACK_S)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.page.stop(), self.loop).result(SLACK_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(SLACK_S)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.page.port

    def dropped(self, reason: str) -> float:
        return self.registry.get_sample_value("mvic_server_http_connections_dropped_total", {"reason": reason})

    def open_connections(self) -> float:
        return self.registry.get_sample_value("mvic_server_http_connections")


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=SLACK_S)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SLACK_S)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _wait_closed(sock: socket.socket, deadline: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection (True) or the deadline passes (False); returns what came."""
    got = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def _closed_by_server(socks: list[socket.socket], want: int, deadline: float) -> set[int]:
    """Indexes of the sockets the server closed, waiting until ``want`` of them are or the deadline passes."""
    closed: set[int] = set()
    while len(closed) < want and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], left)
        for s in ready:
            try:
                data = s.recv(1024)
            except ConnectionResetError:
                data = b""
            if not data:
                closed.add(socks.index(s))
    return closed


def test_an_idle_connection_is_closed_at_the_deadline():
    with PageThread(max_connections=8, timeout_s=0.5) as srv, _connect(srv.port) as sock:
        t0 = time.monotonic()
        closed, got = _wait_closed(sock, t0 + 0.5 + SLACK_S)
        assert closed, "an idle connection was still open 10 s after its 0.5 s deadline"
        assert got == b"" and time.monotonic() - t0 >= 0.4
        assert srv.dropped("timeout") == 1 and srv.open_connections() == 0


def test_a_slowloris_head_is_dropped_at_the_deadline():
    """Headers dribbled one line every 0.25 s never complete the head: the deadline covers the whole head, not
    each read, so the connection is closed after timeout_s without an answer."""
    with PageThread(max_connections=8, timeout_s=1.0) as srv, _connect(srv.port) as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        closed, got, n = False, b"", 0
        while not closed and time.monotonic() < t0 + 1.0 + SLACK_S:
            try:
                sock.sendall(b"X-Pad-%d: a\r\n" % n)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            n += 1
            closed, chunk = _wait_closed(sock, time.monotonic() + 0.25)
            got += chunk
        assert closed, f"a head dribbled for {time.monotonic() - t0:.0f} s was still being read"
        assert got == b"" and time.monotonic() - t0 >= 0.8 and n >= 3
        assert srv.dropped("timeout") == 1


def test_a_client_that_does_not_read_is_cut_at_the_deadline():
    """Pipelined requests whose answers (megabytes) are never read: the server's write waits at most timeout_s,
    then the connection is cut (not closed gracefully, which would wait for the client forever)."""
    with PageThread(max_connections=8, timeout_s=1.0) as srv, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(SLACK_S)
        sock.connect(("127.0.0.1", srv.port))
        t0 = time.monotonic()
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)  # about 25 MB of answers
        except (TimeoutError, ConnectionError):
            pass  # the server stopped reading requests while its answers were stuck, or has cut the connection
        poller = select.poll()
        poller.register(sock, select.POLLERR | select.POLLHUP)  # reported without reading a byte
        assert poller.poll((t0 + 1.0 + 2 * SLACK_S - time.monotonic()) * 1000), "the stuck connection was kept"
        assert srv.dropped("timeout") == 1 and srv.open_connections() == 0


def test_idle_connections_beyond_the_cap_do_not_lock_out_a_browser():
    """20 idle sockets against a cap of 4 (and a deadline far away): each new connection replaces the longest-idle
    one, so a GET is answered at once and the server never holds more than 4 sockets."""
    with PageThread(max_connections=4, timeout_s=60.0) as srv:
        socks = [_connect(srv.port) for _ in range(20)]
        try:
            t0 = time.monotonic()
            status, _, body = _get(srv.port, "/healthz")
            assert status == 200 and body == b"ok\n" and time.monotonic() - t0 < SLACK_S
            # 16 idle ones made room for the later idle ones, one more for the GET
            closed = _closed_by_server(socks, 17, time.monotonic() + SLACK_S)
            assert len(closed) == 17 and closed == set(range(17)), sorted(closed)
            assert srv.dropped("evicted") == 17 and srv.dropped("busy") == 0
            assert srv.open_connections() <= 4
        finally:
            for s in socks:
                s.close()


def test_threads_do_not_grow_with_connections():
    with PageThread(max_connections=64, timeout_s=60.0) as srv:
        before = threading.active_count()
        socks = [_connect(srv.port) for _ in range(50)]
        try:
            # answered after every earlier connection was accepted (the accept queue is first in, first out)
            assert _get(srv.port, "/api/stats")[0] == 200
            assert threading.active_count() <= before + 1, threading.enumerate()
            assert srv.open_connections() >= 50  # all held, none by a thread
        finally:
            for s in socks:
                s.close()


def test_stop_closes_open_connections():
    srv = PageThread(max_connections=8, timeout_s=60.0).__enter__()
    try:
        sock = _connect(srv.port)
        assert _get(srv.port, "/healthz")[0] == 200  # the idle one is accepted by now
        srv.stop()
        assert _wait_closed(sock, time.monotonic() + SLACK_S)[0]
        sock.close()
        with pytest.raises(OSError):
            _connect(srv.port).close()
    finally:
        srv.stop()


def test_http_details():
    """HEAD, keep-alive, methods, oversized and malformed heads, requests with a body, paths that try to escape."""
    with PageThread(max_connections=8, timeout_s=5.0) as srv:
        status, headers, body = _get(srv.port, "/", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
        assert headers["Content-Type"].startswith("text/html") and headers["Cache-Control"] == "no-store"

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=SLACK_S)
        try:
            socks = set()
            for path in ("/api/stats", "/healthz", "/api/stats"):
                conn.request("GET", path)
                r = conn.getresponse()
                assert r.status == 200 and r.read() and r.headers["Connection"] == "keep-alive"
                socks.add(conn.sock)
            assert len(socks) == 1  # one socket, three answers
        finally:
            conn.close()

        status, headers, _ = _get(srv.port, "/", "POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD" and headers["Connection"] == "close"
        for path in ("/cameras/../../etc/passwd.jpg", "/cameras/..%2F..%2Fetc%2Fpasswd.jpg", "/../../etc/passwd",
                     "/cameras/%00.jpg", "/cameras/.jpg", "/nope"):
            assert _get(srv.port, path)[0] == 404, path

        def raw(request: bytes) -> bytes:
            with _connect(srv.port) as sock:
                sock.sendall(request)
                closed, got = _wait_closed(sock, time.monotonic() + SLACK_S)
                assert closed
                return got

        assert raw(b"GET / HTTP/1.1\r\nCookie: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
        assert raw(b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")  # HTTP/1.0: closed after it
        assert raw(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        assert raw(b"BREW / HTCPCP/1.0\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(b"GET http://x/ HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(b"GET / HTTP/1.1\r\nBad header\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").startswith(b"HTTP/1.1 400 ")
        assert srv.dropped("too_large") == 1 and srv.dropped("malformed") == 4


_FD_LIMITED_SERVER = textwrap.dedent("""
    import asyncio, resource
    from prometheus_client import CollectorRegistry
    from mvic.fusion_server.live import LiveView
    from mvic.fusion_server.metrics import ServerMetrics
    from mvic.fusion_server.webpage import LivePage

    async def main():
        page = LivePage(LiveView(), "127.0.0.1", 0, lambda: True, ServerMetrics(CollectorRegistry()),
                        max_connections=16, timeout_s=60.0)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        await page.start()
        print(page.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_idle_connections_cannot_exhaust_file_descriptors():
    """The issue's scenario in a server process limited to 64 fds: 200 idle connections, then a GET."""
    proc = subprocess.Popen([sys.executable, "-c", _FD_LIMITED_SERVER], stdout=subprocess.PIPE, text=True)
    socks: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(200):
            socks.append(_connect(port))
        status, _, body = _get(port, "/healthz")
        assert status == 200 and body == b"ok\n"
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(SLACK_S)
