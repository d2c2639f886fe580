"""The node orchestrator: builds the data path and runs it with an explicit start order and the reverse stop.

    source -> Capture -> FrameHandoff -> EncoderWorker -> Spool -> Link -> fusion server
    (sources.py)  (capture.py)  (handoff.py)  (encoder.py)  (spool.py)  (link.py)

Start order, downstream first so nothing produced is ever without a consumer: model, spool (recovers what a previous
run left), metrics endpoint, link, encoder, capture. Stop, in reverse: capture (no new frames), encoder (codes what
is queued, spools it), link (``drain``: sends and waits up to ``link.drain_timeout_s`` for acks, closes the stream),
metrics endpoint, spool (state written, lock released). One ``threading.Event`` is passed down to every stage; only
``mvic.node.cli.main`` installs signal handlers, which set it.

A restarted node on the same explicit schedule (``--start-at``, source, fps) resumes it after the last frame it
spooled (``mvic.node.capture``: resume); sequence numbers continue in the spool as always.

When the source ends on its own (``--frames N``, the end of a file), the node waits up to ``link.finish_timeout_s``
for every packet to be acknowledged, then stops; ``run`` then returns 1 if packets are left unacknowledged (they
stay spooled and are sent by the next start). A requested stop returns 0, a stage that crashed 1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from mvic.node.capture import Capture, capture_schedule, resume_index
from mvic.node.config import NodeConfig
from mvic.node.encoder import EncoderWorker, compatibility_check, configure_torch, load_encoder
from mvic.node.handoff import FrameHandoff
from mvic.node.link import Link
from mvic.node.metrics import DROP_REASONS, NodeMetrics
from mvic.node.sources import Source, open_source
from mvic.node.spool import Spool
from mvic.shared.bitstream import FORMAT_VERSION
from mvic.shared.codec.model import LDMIC
from mvic.shared.heap import pin_mmap_threshold
from mvic.shared.metrics_endpoint import start_metrics
from mvic.shared.rpc.hello import Hello, mvic_version

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0


class NodeApp:
    """One camera node. ``run()`` starts it, blocks until the source ends or ``stop_event`` is set, and stops it."""

    def __init__(self, config: NodeConfig, *, registry: CollectorRegistry | None = None, model: LDMIC | None = None,
                 source: Source | None = None, stop_event: threading.Event | None = None):
        self.config = config
        self.stop_event = stop_event or threading.Event()
        self.metrics = NodeMetrics(config.camera, registry)
        self.session_ns = time.time_ns()
        self.model = model
        self.source = source
        self.spool: Spool | None = None
        self.link: Link | None = None
        self.capture: Capture | None = None
        self.encoder: EncoderWorker | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._metrics_server = None
        self._failed: list[str] = []
        self._stopped = False

    # ------------------------------------------------------------------------------------------- start
    def start(self) -> None:
        cfg = self.config
        pin_mmap_threshold()  # frame-sized buffers go back to the OS after each frame
        if self.model is None:
            self.model = load_encoder(cfg.encode)
        configure_torch(cfg.encode.threads)
        if self.source is None:
            self.source = open_source(cfg.source, cfg.camera)
        schedule = capture_schedule(cfg.source, self.source.live)
        spool = Spool(cfg.spool.dir, cfg.camera, cfg.spool.max_bytes, cfg.spool.when_full, self.metrics,
                      keep=compatibility_check(self.model), schedule=schedule)
        spool.open()  # may fail (locked by another node): then stop() must not touch it
        self.spool = spool
        first_index = 0
        if schedule and spool.resumed_capture_ns is not None:
            first_index = resume_index(spool.resumed_capture_ns, cfg.source.start_at_ns, cfg.source.fps)
            log.info("resuming the capture schedule (same start_at, source and fps) at frame %d, after the last "
                     "spooled frame; a new --start-at starts again at frame 0", first_index)
        if cfg.metrics.port:
            self._metrics_server = start_metrics(cfg.metrics.host, cfg.metrics.port, self.metrics.registry)
        hello = Hello(cfg.camera, cfg.group, self.model.spec.model_id, self.model.weights_hash, FORMAT_VERSION,
                      mvic_version(), self.session_ns)
        self.link = Link(cfg.server, hello, self.spool, cfg.link, self.metrics, self.stop_event, cfg.tls)
        self._spawn("link", self.link.run)
        handoff = FrameHandoff(cfg.encode.policy, cfg.encode.queue_frames, self.metrics)
        self.encoder = EncoderWorker(self.model, handoff, self.spool, cfg.camera, cfg.encode.rate, self.metrics,
                                     self.stop_event, precision=cfg.encode.precision)
        self._spawn("encoder", self.encoder.run)
        start_at = cfg.source.start_at_ns or self.session_ns
        self.capture = Capture(self.source, handoff, cfg.source, self.metrics, self.stop_event, start_at_ns=start_at,
                               first_index=first_index)
        self._spawn("capture", self.capture.run)
        log.info("camera %s (group %r) -> %s: %s, model %s weights %s, rate %d, %g fps, policy %s, spool %s "
                 "(max %d bytes, %s)", cfg.camera, cfg.group, cfg.server, self.source.name, self.model.spec.name,
                 self.model.weights_hash.hex(), cfg.encode.rate, cfg.source.fps, cfg.encode.policy,
                 self.spool.folder, cfg.spool.max_bytes, cfg.spool.when_full)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded():
            try:
                target()
            except Exception:
                log.exception("%s failed; stopping the node", name)
                self._failed.append(name)
                self.stop_event.set()

        thread = threading.Thread(target=guarded, name=f"mvic-node-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    # -------------------------------------------------------------------------------------------- wait
    def wait(self) -> None:
        """Block until a stop is requested, or the source ended and its packets were acked (or finish timed out)."""
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        while not self.stop_event.wait(0.1):
            if time.monotonic() >= next_progress:
                log.info("progress: %s", self.summary())
                next_progress += PROGRESS_EVERY_S
            if not self._threads["capture"].is_alive() and self.capture.finished_naturally:
                self._finish()
                return

    def _finish(self) -> None:
        """The source ended: let the encoder code what is queued and the link deliver it, within finish_timeout_s."""
        timeout = self.config.link.finish_timeout_s
        deadline = time.monotonic() + timeout
        log.info("source finished; waiting up to %g s for the last frames to be coded and acknowledged", timeout)
        encoder = self._threads["encoder"]
        while (encoder.is_alive() or self.spool.pending) and time.monotonic() < deadline:
            if self.stop_event.wait(0.05):
                return
        if encoder.is_alive() or self.spool.pending:
            log.warning("finish timeout (%g s): %d packet(s) not acknowledged", timeout, self.spool.pending)

    # -------------------------------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Reverse of start; safe to call twice or after a partial start."""
        if self._stopped:
            return
        self._stopped = True
        self.stop_event.set()
        for name in ("capture", "encoder"):
            if name in self._threads:
                self._threads[name].join()
        if self.link is not None and "link" in self._threads:
            self.link.drain(self.config.link.drain_timeout_s)
            self._threads["link"].join(self.config.link.drain_timeout_s + 10.0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.spool is not None:
            left = self.spool.pending
            self.spool.close()
            if left:
                log.warning("%d packet(s) remain unacknowledged in %s; the next start sends them", left,
                            self.spool.folder)
        log.info("stopped: %s", self.summary())

    def run(self) -> int:
        try:
            self.start()
            self.wait()
        finally:
            self.stop()
        if self._failed:
            return 1
        natural = self.capture is not None and self.capture.finished_naturally
        return 1 if natural and self.spool.pending else 0

    # ----------------------------------------------------------------------------------------- summary
    def summary(self) -> str:
        m = self.metrics
        drops = {r: m.dropped_count(r) for r in DROP_REASONS}
        drops = ", ".join(f"{r} {n}" for r, n in drops.items() if n) or "none"
        spool = f"{self.spool.pending} packet(s) / {self.spool.bytes} bytes" if self.spool else "closed"
        return (f"captured {m.value('mvic_node_frames_captured_total'):.0f}, "
                f"encoded {m.value('mvic_node_frames_encoded_total'):.0f}, "
                f"sent {m.value('mvic_node_packets_sent_total'):.0f} "
                f"(resent {m.value('mvic_node_packets_resent_total'):.0f}), "
                f"acked {m.value('mvic_node_packets_acked_total'):.0f}, dropped: {drops}; spool {spool}; "
                f"reconnects {m.value('mvic_node_reconnects_total'):.0f}")
