"""The live page: sink -> live view -> **HTTP** (stdlib ``http.server`` on its own thread).

Hop before: ``live.LiveView`` holds the newest reconstruction (JPEG) and running stats of every camera.
Hop after: a browser. Endpoints:

    GET /                      the page: a mosaic of the newest view per camera with its stats; refreshes itself
    GET /api/stats             JSON: {"ready", "uptime_s", "cameras": [{camera, fps, bpp, latency_s, ...}]}
    GET /cameras/<camera>.jpg  newest reconstruction of one camera (404 before its first frame)
    GET /healthz               200 "ok" once the model is loaded, else 503
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from mvic.fusion_server.live import LiveView

log = logging.getLogger(__name__)

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


class LivePage:
    """Serves the live page from a daemon thread; ``start`` / ``stop``."""

    def __init__(self, live: LiveView, host: str, port: int, ready: Callable[[], bool]):
        self._live, self._ready = live, ready
        handler = _make_handler(live, ready)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mvic-live-page", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()
        log.info("live page on http://%s:%d/", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _make_handler(live: LiveView, ready: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mvic-live"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
            elif path == "/api/stats":
                body = {"ready": ready(), **live.snapshot()}
                self._send(HTTPStatus.OK, "application/json", json.dumps(body).encode())
            elif path.startswith("/cameras/") and path.endswith(".jpg"):
                jpeg = live.jpeg(unquote(path[len("/cameras/"):-len(".jpg")]))
                if jpeg:
                    self._send(HTTPStatus.OK, "image/jpeg", jpeg)
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no frame from this camera yet\n")
            elif path == "/healthz":
                ok = ready()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                           b"ok\n" if ok else b"loading\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

        def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            log.debug("live page: " + format, *args)

    return Handler
