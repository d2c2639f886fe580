"""Prometheus metrics of a camera node, declared once here; every stage (capture -> encode -> spool -> send) gets
this object and updates its own series. Names carry the ``mvic_node_`` prefix and base units; labels come only from
bounded sets (the camera, a drop reason, an error code, a connection state), never from frame or sequence numbers.

    metrics = NodeMetrics("C1", registry)       # a fresh CollectorRegistry in tests, the default one in mvic-node
    metrics.dropped("latest_policy")            # one frame dropped for that reason
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Why a frame or packet never reached the server. Fixed so the label set stays bounded.
DROP_REASONS = (
    "latest_policy",  # capture -> encode: a newer frame replaced one the encoder had not taken (policy latest)
    "rate_limit",  # capture: a live source delivered faster than --fps
    "shutdown",  # capture -> encode or encode -> spool: the node stopped while the frame waited for room
    "encode_error",  # encode: the codec refused the image
    "spool_full",  # spool: the oldest unacked packet was dropped to make room (or the newest, while stopping)
    "disk_full",  # spool: the node stopped while the disk was still too full to store the packet
    "too_large",  # send: the packet exceeds the server's max_packet_bytes
    "rejected",  # send: the server answered PacketError for it
    "corrupt",  # spool: a spooled file failed its checks after a restart
    "stale_model",  # spool: spooled with another model or other weights than the node now uses
)
SOURCE_FAILURES = ("hung", "error", "eof", "open_failed")
#: Server replies the node refuses because they name sequences it never sent (mvic.node.errors.ImplausibleAckError).
IMPLAUSIBLE_REPLIES = ("welcome", "ack", "packet_error")
CONNECTION_STATES = ("disconnected", "connecting", "connected", "refused")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class NodeMetrics:
    """Every series of one node, bound to its camera label."""

    def __init__(self, camera: str, registry: CollectorRegistry | None = None):
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.camera = camera
        cam = ("camera",)
        self.frames_captured = Counter("mvic_node_frames_captured_total", "Frames read from the source and handed "
                                       "to the encoder queue", cam, registry=r).labels(camera)
        self.frames_encoded = Counter("mvic_node_frames_encoded_total", "Frames coded and written to the spool", cam,
                                      registry=r).labels(camera)
        self.packets_sent = Counter("mvic_node_packets_sent_total", "ViewPackets written to the stream, resends "
                                    "included", cam, registry=r).labels(camera)
        self.packets_resent = Counter("mvic_node_packets_resent_total", "ViewPackets sent again after a reconnect",
                                      cam, registry=r).labels(camera)
        self.packets_acked = Counter("mvic_node_packets_acked_total", "Spooled packets acknowledged by the server "
                                     "(durably stored there) and deleted", cam, registry=r).labels(camera)
        self._dropped = Counter("mvic_node_frames_dropped_total", "Frames or packets that will never reach the "
                                "server, by reason", ("camera", "reason"), registry=r)
        self._rejected = Counter("mvic_node_packets_rejected_total", "PacketErrors received, by error code",
                                 ("camera", "code"), registry=r)
        self._source_failures = Counter("mvic_node_source_failures_total", "Source reads that hung, failed or ended "
                                        "on a live source, and failed opens; each leads to a reopen",
                                        ("camera", "reason"), registry=r)
        self.source_reopens = Counter("mvic_node_source_reopens_total", "Successful reopens of the source after a "
                                      "failure", cam, registry=r).labels(camera)
        self.capture_blocked_seconds = Counter("mvic_node_capture_blocked_seconds_total", "Time capture waited for "
                                               "room in the encoder queue (policy every)", cam,
                                               registry=r).labels(camera)
        self.encode_seconds = Histogram("mvic_node_encode_seconds", "compress_view + pack time per frame", cam,
                                        buckets=_LATENCY_BUCKETS, registry=r).labels(camera)
        self.ack_latency_seconds = Histogram("mvic_node_ack_latency_seconds", "Capture time to ack arrival per "
                                             "packet, both on this node's clock",
                                             cam, buckets=_LATENCY_BUCKETS, registry=r).labels(camera)
        self.spool_bytes = Gauge("mvic_node_spool_bytes", "Bytes of unacked packets in the spool", cam,
                                 registry=r).labels(camera)
        self.spool_packets = Gauge("mvic_node_spool_packets", "Unacked packets in the spool", cam,
                                   registry=r).labels(camera)
        self.last_sequence = Gauge("mvic_node_last_sequence", "Highest sequence number given to a packet", cam,
                                   registry=r).labels(camera)
        self.acked_sequence = Gauge("mvic_node_acked_sequence", "Highest sequence number the server acknowledged",
                                    cam, registry=r).labels(camera)
        self._connection = Gauge("mvic_node_connection_state", "1 for the link's current state, 0 for the others",
                                 ("camera", "state"), registry=r)
        self._implausible = Counter("mvic_node_implausible_replies_total", "Server replies refused because they "
                                    "name sequences this node never sent (a Welcome or Ack above the highest sent, "
                                    "a PacketError for an unsent one); nothing was deleted", ("camera", "kind"),
                                    registry=r)
        self.reconnects = Counter("mvic_node_reconnects_total", "Stream attempts after the first", cam,
                                  registry=r).labels(camera)
        for reason in DROP_REASONS:
            self._dropped.labels(camera, reason)
        for reason in SOURCE_FAILURES:
            self._source_failures.labels(camera, reason)
        for kind in IMPLAUSIBLE_REPLIES:
            self._implausible.labels(camera, kind)
        self.set_connection("disconnected")

    def dropped(self, reason: str, count: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; add it to DROP_REASONS")
        self._dropped.labels(self.camera, reason).inc(count)

    def rejected(self, code: str) -> None:
        self._rejected.labels(self.camera, code).inc()

    def source_failure(self, reason: str) -> None:
        if reason not in SOURCE_FAILURES:
            raise ValueError(f"unknown source failure {reason!r}; add it to SOURCE_FAILURES")
        self._source_failures.labels(self.camera, reason).inc()

    def implausible(self, kind: str) -> None:
        if kind not in IMPLAUSIBLE_REPLIES:
            raise ValueError(f"unknown reply kind {kind!r}; add it to IMPLAUSIBLE_REPLIES")
        self._implausible.labels(self.camera, kind).inc()

    def set_connection(self, state: str) -> None:
        if state not in CONNECTION_STATES:
            raise ValueError(f"unknown connection state {state!r}")
        for s in CONNECTION_STATES:
            self._connection.labels(self.camera, s).set(1.0 if s == state else 0.0)

    # ---------------------------------------------------------------- reading back (logs, tests, summaries)
    def value(self, name: str, **labels: str) -> float:
        """Current value of one series, 0.0 when it was never set."""
        got = self.registry.get_sample_value(name, {"camera": self.camera, **labels})
        return 0.0 if got is None else got

    def dropped_count(self, reason: str | None = None) -> int:
        reasons = DROP_REASONS if reason is None else (reason,)
        return int(sum(self.value("mvic_node_frames_dropped_total", reason=r) for r in reasons))
