"""Prometheus metrics of the fusion server, declared once per registry.

Every stage reports here: receive (packets, bytes, rejections, duplicates), group (waits, sizes), joint decode
(seconds per ``stage``: entropy, synthesis; view sets per device batch), sink (write seconds, errors), ack (latency).
The live page reports its open connections and the ones its limits closed.
Names have the ``mvic_server_`` prefix and base units; labels come from bounded sets only: ``camera`` (at most
``max_cameras`` values), ``group`` (the camera groups of those cameras), ``reason`` (``REJECT_REASONS``, the
PacketRejected kinds; ``HTTP_DROP_REASONS`` for the live page), ``outcome`` (``OUTCOMES``), ``stage``
(``DECODE_STAGES``). The stages report typed records (``view_set_decoded``, ``frame_written``,
``packet_rejected``); the metric names that say "group" predate the word "view set" and are kept so that
dashboards keep working: there, a group is one timestamp's views.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mvic.fusion_server.errors import PacketRejected
from mvic.fusion_server.records import DecodedFrame, ViewSet

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_REASONS = ("malformed", "capture_time", "too_large", "too_many_pixels",
                  "model_mismatch", "decode_failed", "out_of_order")
DECODE_STAGES = ("entropy", "synthesis")
OUTCOMES = ("complete", "partial")  # a view set with every expected camera, or decoded without some
VIEW_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
# Why the live page's HTTP server closed a connection itself (webpage.LivePage): the cap reached with none waiting
# (busy), the longest-waiting one closed to admit a new one (evicted), a deadline missed (timeout), a request head
# over the size cap (too_large), a request it cannot parse (malformed).
HTTP_DROP_REASONS = ("busy", "evicted", "timeout", "too_large", "malformed")


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry):
        p = "mvic_server_"
        self.packets = Counter(p + "packets_received_total", "ViewPackets received", ["camera"], registry=registry)
        self.packet_bytes = Counter(p + "bitstream_bytes_total", "Bitstream bytes received", ["camera"],
                                    registry=registry)
        self.rejected = Counter(p + "packets_rejected_total", "Packets rejected for good (PacketError sent)",
                                ["camera", "reason"], registry=registry)
        self.duplicates = Counter(p + "duplicates_dropped_total",
                                  "Resent packets not decoded again (already acked or in flight)", ["camera"],
                                  registry=registry)
        self.frames_written = Counter(p + "frames_written_total", "Reconstructed views durably written",
                                      ["camera"], registry=registry)
        self.pixels = Counter(p + "decoded_pixels_total", "Pixels of written views (bpp = 8*bytes/pixels)",
                              ["camera"], registry=registry)
        self.groups = Counter(p + "groups_decoded_total", "View sets (one timestamp's views) decoded",
                              ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.groups.labels(outcome)
        self.camera_group_views = Histogram(p + "camera_group_views", "Views per decoded view set, per camera group "
                                            "(in a cluster: which server decodes a group, and with how many views)",
                                            ["group"], buckets=VIEW_BUCKETS, registry=registry)
        self.group_views = Histogram(p + "group_views", "Views per decoded view set", buckets=VIEW_BUCKETS,
                                     registry=registry)
        self.group_wait = Histogram(p + "group_wait_seconds", "First view of a view set to its decode start",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.decode_seconds = Histogram(p + "decode_seconds", "Decode stages: entropy (one view set, CPU worker), "
                                        "synthesis (one batch of view sets, device, with its view fusion)", ["stage"],
                                        buckets=LATENCY_BUCKETS, registry=registry)
        for stage in DECODE_STAGES:
            self.decode_seconds.labels(stage)  # both series exist from the start
        self.decode_batch = Histogram(p + "decode_batch_groups", "View sets synthesized together in one device pass",
                                      buckets=BATCH_BUCKETS, registry=registry)
        self.write_seconds = Histogram(p + "write_seconds", "Writing one view set's reconstructions",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.ack_latency = Histogram(p + "ack_latency_seconds", "Packet received to its ack (server clock)",
                                     ["camera"], buckets=LATENCY_BUCKETS, registry=registry)
        self.capture_latency = Histogram(p + "capture_to_ack_seconds",
                                         "Capture (camera clock) to ack (server clock); includes clock offset",
                                         ["camera"], buckets=LATENCY_BUCKETS, registry=registry)
        self.device_faults = Counter(p + "device_faults_total",
                                     "Device (CUDA) faults in synthesis; the first moves synthesis to the CPU",
                                     registry=registry)
        self.sink_errors = Counter(p + "sink_errors_total", "View sets whose reconstructions (or acks) could not be "
                                   "written; their frames are resent", registry=registry)
        self.acked_sequence = Gauge(p + "acked_sequence", "Cumulative acked sequence", ["camera"], registry=registry)
        self.connected = Gauge(p + "connected_cameras", "Cameras with an open stream", registry=registry)
        self.open_groups = Gauge(p + "open_groups", "View sets waiting for views", registry=registry)
        self.inflight_groups = Gauge(p + "inflight_groups", "View sets between the grouper and their ack",
                                     registry=registry)
        self.refused = Counter(p + "streams_refused_total", "Streams refused at the handshake", ["code"],
                               registry=registry)
        self.revoked = Counter(p + "streams_revoked_total", "Open streams cut off at a message because their "
                               "certificate or camera was revoked (tls.revoked)", registry=registry)
        self.model_loaded = Gauge(p + "model_loaded", "1 once the model is loaded and streams are taken",
                                  registry=registry)
        self.owned_groups = Gauge(p + "owned_groups", "Camera groups with a camera streaming to this server (in a "
                                  "cluster: groups this server owns and serves)", registry=registry)
        self.streams_moved = Counter(p + "streams_moved_total", "Streams ended because their camera group moved to "
                                     "another server of the cluster", registry=registry)
        self.cluster_members = Gauge(p + "cluster_members", "Servers of the cluster as this one sees them (alive: a "
                                     "TCP connect succeeds; 0 and 0 outside a cluster)", ["state"], registry=registry)
        for state in ("alive", "dead"):
            self.cluster_members.labels(state)
        self.http_connections = Gauge(p + "http_connections", "Open connections to the live page",
                                      registry=registry)
        self.http_dropped = Counter(p + "http_connections_dropped_total",
                                    "Live-page connections closed by its limits (HTTP_DROP_REASONS)", ["reason"],
                                    registry=registry)
        for reason in HTTP_DROP_REASONS:
            self.http_dropped.labels(reason)

    # ------------------------------------------------------------------------------- typed reports of the stages
    def packet_rejected(self, camera: str, error: PacketRejected) -> None:
        self.rejected.labels(camera, error.reason).inc()

    def view_set_decoded(self, view_set: ViewSet) -> None:
        self.groups.labels(OUTCOMES[0] if view_set.complete else OUTCOMES[1]).inc()
        self.camera_group_views.labels(view_set.group_id).observe(len(view_set.views))
        self.group_views.observe(len(view_set.views))

    def frame_written(self, frame: DecodedFrame, acked_ns: int) -> None:
        """A frame stored and acknowledged at ``acked_ns`` (server clock, ns since the Unix epoch)."""
        src = frame.source
        self.frames_written.labels(src.camera_id).inc()
        self.pixels.labels(src.camera_id).inc(frame.image.shape[0] * frame.image.shape[1])
        self.ack_latency.labels(src.camera_id).observe(max(0.0, (acked_ns - src.received_ns) / 1e9))
        self.capture_latency.labels(src.camera_id).observe(max(0.0, (acked_ns - src.capture_ns) / 1e9))
