"""The live page: sink -> live view -> **HTTP** (a small asyncio HTTP/1.1 server on the app's event loop).

Hop before: ``live.LiveView`` holds the newest reconstruction (JPEG, encoded on the sink's thread) and running stats
of every camera. Hop after: a browser. Endpoints (GET and HEAD; anything else is 405):

    GET /                      the page: a mosaic of the newest view per camera with its stats; refreshes itself
    GET /api/stats             JSON: {"ready", "uptime_s", "cameras": [{camera, fps, bpp, latency_s, ...}]}
    GET /cameras/<camera>.jpg  newest reconstruction of one camera (404 before its first frame)
    GET /healthz               200 "ok" once the model is loaded, else 503

Resources are bounded whatever the clients do: no thread per connection (every connection is a coroutine on the
loop that runs the gRPC server), at most ``max_connections`` sockets, and deadlines:

* a request head (request line and headers) must arrive whole within ``timeout_s`` of the connection (or of the
  previous response, on a kept-alive connection) and fit in ``MAX_HEAD_BYTES``; a client that sends nothing, or
  dribbles its headers (slowloris), is closed at the deadline; an oversized head gets 431, a malformed one 400;
* a response must be taken by the client within ``timeout_s``;
* at the cap, a new connection takes the place of the one that has waited longest for its next request (an idle or
  stalled client); when every connection is being answered, the new one is closed at once.

Each connection the limits close is counted in ``mvic_server_http_connections_dropped_total{reason}``. Nothing is
read from disk: a camera id is a dictionary key, so a path such as ``/cameras/../x.jpg`` finds nothing (404).

The page shows people, so it can be closed to strangers (config ``http_token_file``, ``http_cert``/``http_key``):

* with a token, every request but ``/healthz`` needs ``Authorization: Bearer <token>`` or basic auth whose password
  is the token (what a browser's login prompt sends; the user name is ignored); anything else gets 401 with
  ``WWW-Authenticate``. The comparison is ``hmac.compare_digest``;
* with a certificate and key it speaks HTTPS only (TLS 1.2+); the handshake has the same ``timeout_s`` deadline, and
  a connection counts against ``max_connections`` once it is done.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import ssl
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

# Request line and headers, bytes. Browsers send under 2 KiB, but they also send every cookie of the host (of any
# port), which other web apps on the machine may have set; 16 KiB keeps those working, and the cap times
# max_connections bounds the memory (512 KiB at 32 connections).
MAX_HEAD_BYTES = 16 * 1024
METHODS = ("GET", "HEAD")
MIN_TOKEN_CHARS = 16
OPEN_PATHS = ("/healthz",)  # answered without the token: an orchestrator's probe learns only "ready or not"
CHALLENGES = (("WWW-Authenticate", 'Basic realm="mvic", charset="UTF-8"'), ("WWW-Authenticate", 'Bearer realm="mvic"'))

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MVIC fusion server</title>
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #ddd; margin: 1em; }
 h1 { font-size: 1.2em; margin: 0 0 .5em; } #status { color: #9c9; }
 #mosaic { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 10px; }
 .cam { background: #222; border-radius: 6px; padding: 6px; }
 .cam img { width: 100%; display: block; background: #000; min-height: 60px; }
 .cam h2 { font-size: 1em; margin: 2px 0 4px; } .off h2 { color: #c66; }
 .cam table { font-size: .8em; width: 100%; } .cam td:last-child { text-align: right; }
</style></head>
<body><h1>MVIC fusion server <span id="status">connecting…</span></h1>
<div id="mosaic"></div>
<script>
const cards = {};
function card(cam) {
  if (cards[cam]) return cards[cam];
  const div = document.createElement("div");
  div.className = "cam"; div.id = "cam-" + cam;
  div.innerHTML = "<h2></h2><img alt=''><table></table>";
  div.querySelector("h2").textContent = cam;
  div.querySelector("img").alt = "camera " + cam;
  document.getElementById("mosaic").appendChild(div);
  return (cards[cam] = div);
}
const rows = [["fps", "fps", 1], ["bpp", "bpp", 3], ["latency ms", "latency_s", 1, 1000],
              ["capture→ack ms", "capture_latency_s", 0, 1000], ["decoded", "frames_decoded", 0],
              ["rejected", "frames_rejected", 0], ["duplicates", "duplicates", 0], ["acked", "acked_sequence", 0]];
async function refresh() {
  try {
    const r = await fetch("/api/stats", {cache: "no-store"});
    const s = await r.json();
    document.getElementById("status").textContent =
      (s.ready ? "serving" : "loading model") + " · " + s.cameras.length + " camera(s) · up " + Math.round(s.uptime_s) + " s";
    for (const c of s.cameras) {
      const div = card(c.camera);
      div.classList.toggle("off", !c.connected);
      if (c.frames_decoded > 0 && div.dataset.updated !== String(c.updated_unix_s)) {
        div.dataset.updated = String(c.updated_unix_s);
        div.querySelector("img").src = "/cameras/" + encodeURIComponent(c.camera) + ".jpg?t=" + c.updated_unix_s;
      }
      div.querySelector("table").innerHTML = rows.map(([label, key, digits, scale]) =>
        "<tr><td>" + label + "</td><td>" + (c[key] * (scale || 1)).toFixed(digits) + "</td></tr>").join("") +
        "<tr><td>size</td><td>" + c.width + "×" + c.height + "</td></tr>";
    }
  } catch (err) {
    document.getElementById("status").textContent = "server unreachable";
  }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


class _Response(NamedTuple):
    status: HTTPStatus
    content_type: str
    body: bytes


class _Request(NamedTuple):
    method: str
    target: str
    version: str  # HTTP/1.0 or HTTP/1.1
    headers: dict[str, str]  # lower-case names


class _BadRequest(Exception):
    """A request head this server cannot parse or will not take (answered 400, then closed)."""


class _Connection:
    """One open socket; ``waiting_since`` (monotonic s) is set while it waits for a request head."""

    __slots__ = ("waiting_since", "writer")

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.waiting_since: float | None = time.monotonic()


class LivePage:
    """Serves the live page on the running event loop: ``await start()``, ``await stop()``."""

    def __init__(self, live: LiveView, host: str, port: int, ready: Callable[[], bool], metrics: ServerMetrics, *,
                 max_connections: int, timeout_s: float, token: bytes | None = None,
                 tls: ssl.SSLContext | None = None):
        self._live, self._ready, self._metrics = live, ready, metrics
        self._host, self._port = host, port
        self._token, self._tls = token, tls
        self._max, self._timeout_s = max_connections, timeout_s
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task, _Connection] = {}
        self._closing = False

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_HEAD_BYTES, ssl=self._tls,
            ssl_handshake_timeout=self._timeout_s if self._tls else None)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("live page on %s://%s:%d/ (%s; at most %d connections, %.1f s deadlines)",
                 "https" if self._tls else "http", self._host, self._port,
                 "token required" if self._token else "no auth", self._max, self._timeout_s)

    async def stop(self) -> None:
        """Stop listening, close every connection (a response being written is cut)."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    # --------------------------------------------------------------------------------------------- connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, from accept to close: requests answered in turn until a deadline, an error, a
        ``Connection: close`` or the server's stop."""
        if self._closing:
            writer.transport.abort()
            return
        if not self._make_room():
            self._metrics.http_dropped.labels("busy").inc()
            writer.transport.abort()
            return
        task = asyncio.current_task()
        conn = self._connections[task] = _Connection(writer)
        self._metrics.http_connections.set(len(self._connections))
        # drain() then returns only once the kernel has taken the whole response, so close() never waits on a
        # client that stopped reading: the response deadline covers every byte.
        writer.transport.set_write_buffer_limits(high=0)
        graceful = False
        try:
            graceful = await self._requests(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (or was evicted: counted there)
        finally:
            if self._connections.pop(task, None) is not None:
                self._metrics.http_connections.set(len(self._connections))
            if graceful:
                writer.close()
            else:
                writer.transport.abort()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection) -> bool:
        """Answer requests until the connection should close; True when it closes in good order (every byte
        of the last response taken by the client), False to cut it."""
        while True:
            conn.waiting_since = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout_s):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                self._metrics.http_dropped.labels("timeout").inc()
                return False
            except asyncio.LimitOverrunError:
                self._metrics.http_dropped.labels("too_large").inc()
                return await self._send(writer, "GET", _text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                                             "request head too large\n"), keep_alive=False)
            conn.waiting_since = None
            try:
                request = _parse_head(head)
            except _BadRequest as exc:
                self._metrics.http_dropped.labels("malformed").inc()
                return await self._send(writer, "GET", _text(HTTPStatus.BAD_REQUEST, f"{exc}\n"), keep_alive=False)
            if request.method not in METHODS:
                # Its body, if any, is never read: the connection closes after the answer.
                return await self._send(writer, "GET", _text(HTTPStatus.METHOD_NOT_ALLOWED, "GET or HEAD only\n"),
                                        keep_alive=False, extra=(("Allow", ", ".join(METHODS)),))
            keep_alive = request.version == "HTTP/1.1" and "close" not in request.headers.get("connection", "").lower()
            path = urlsplit(request.target).path
            if self._token is not None and path not in OPEN_PATHS and \
                    not _authorized(request.headers.get("authorization", ""), self._token):
                if not await self._send(writer, request.method, _text(HTTPStatus.UNAUTHORIZED, "token required\n"),
                                        keep_alive, extra=CHALLENGES):
                    return False
                if not keep_alive:
                    return True
                continue
            try:
                response = self._route(path)
            except Exception:
                log.exception("live page: %s %s failed", request.method, request.target[:200])
                response, keep_alive = _text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n"), False
            if not await self._send(writer, request.method, response, keep_alive):
                return False
            if not keep_alive:
                return True

    def _make_room(self) -> bool:
        """At the cap, close the connection that has waited longest for a request; False when none waits."""
        if len(self._connections) < self._max:
            return True
        waiting = [(c.waiting_since, task) for task, c in self._connections.items() if c.waiting_since is not None]
        if not waiting:
            return False
        _, task = min(waiting, key=lambda item: item[0])
        self._connections.pop(task).writer.transport.abort()  # its coroutine ends on the lost connection
        self._metrics.http_dropped.labels("evicted").inc()
        return True

    async def _send(self, writer: asyncio.StreamWriter, method: str, response: _Response, keep_alive: bool,
                    extra: tuple[tuple[str, str], ...] = ()) -> bool:
        """Write one response within the deadline; False (counted) when the client did not take it in time."""
        status, content_type, body = response
        lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Date: {formatdate(usegmt=True)}", "Server: mvic-live",
                 f"Content-Type: {content_type}", f"Content-Length: {len(body)}", "Cache-Control: no-store",
                 "X-Content-Type-Options: nosniff", f"Connection: {'keep-alive' if keep_alive else 'close'}",
                 *(f"{name}: {value}" for name, value in extra)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else body))
        try:
            async with asyncio.timeout(self._timeout_s):
                await writer.drain()
        except TimeoutError:
            self._metrics.http_dropped.labels("timeout").inc()
            return False
        return True

    # ------------------------------------------------------------------------------------------------- routes
    def _route(self, path: str) -> _Response:
        if path in ("/", "/index.html"):
            return _Response(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
        if path == "/api/stats":
            body = {"ready": self._ready(), **self._live.snapshot()}
            return _Response(HTTPStatus.OK, "application/json", json.dumps(body).encode())
        if path.startswith("/cameras/") and path.endswith(".jpg"):
            jpeg = self._live.jpeg(unquote(path[len("/cameras/"):-len(".jpg")]))
            return _Response(HTTPStatus.OK, "image/jpeg", jpeg) if jpeg else \
                _text(HTTPStatus.NOT_FOUND, "no frame from this camera yet\n")
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok\n") if self._ready() else \
                _text(HTTPStatus.SERVICE_UNAVAILABLE, "loading\n")
        return _text(HTTPStatus.NOT_FOUND, "not found\n")


def read_token(path: str) -> bytes:
    """The live page's token: the file's text without surrounding white space; OSError saying what to fix."""
    with open(path, "rb") as f:
        token = f.read(4096).strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or any(c <= 32 or c == 127 for c in token):
        raise OSError(f"http_token_file {path} must hold one token of at least {MIN_TOKEN_CHARS} printable ASCII "
                      "characters, e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the page (TLS 1.2+, the library's cipher defaults); OSError when the files do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"http_cert {cert} / http_key {key}: cannot serve HTTPS with them ({exc})") from None
    return context


def _authorized(header: str, token: bytes) -> bool:
    """Whether an Authorization header carries the token: ``Bearer <token>`` or ``Basic base64(user:<token>)``."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        given = value.encode("latin-1")
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value, validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
    else:
        return False
    return hmac.compare_digest(given, token)


def _text(status: HTTPStatus, text: str) -> _Response:
    return _Response(status, "text/plain; charset=utf-8", text.encode())


def _parse_head(head: bytes) -> _Request:
    """Request line and headers (RFC 9112); raises _BadRequest. A request with a body is refused: GET and HEAD
    have none, and an unread body would be taken for the next request."""
    lines = head.decode("latin-1").split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # empty lines before the request line are allowed
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].startswith("/"):
        raise _BadRequest("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest("bad header line")
        headers[name.lower()] = value.strip()
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise _BadRequest("a request body is not accepted")
    return _Request(parts[0], parts[1], parts[2], headers)
