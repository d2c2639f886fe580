"""Prometheus metrics of the fusion server, declared once per registry.

Every stage reports here: receive (packets, bytes, rejections, duplicates), group (waits, sizes), joint decode
(seconds per ``stage``: entropy, synthesis; groups per device batch), sink (write seconds, errors), ack (latency).
Names have the ``mvic_server_`` prefix and base units; labels come from bounded sets only: ``camera`` (at most
``max_cameras`` values), ``reason`` (the PacketRejected kinds), ``outcome`` (complete / partial), ``stage``
(``DECODE_STAGES``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_REASONS = ("malformed", "too_large", "model_mismatch", "decode_failed", "out_of_order")
DECODE_STAGES = ("entropy", "synthesis")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


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
        self.groups = Counter(p + "groups_decoded_total", "Groups decoded", ["outcome"], registry=registry)
        self.group_views = Histogram(p + "group_views", "Views per decoded group", buckets=(1, 2, 3, 4, 5, 6, 7, 8,
                                     12, 16), registry=registry)
        self.group_wait = Histogram(p + "group_wait_seconds", "First view of a group to its decode start",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.decode_seconds = Histogram(p + "decode_seconds", "Decode stages: entropy (one group, CPU worker), "
                                        "synthesis (one batch of groups, device)", ["stage"],
                                        buckets=LATENCY_BUCKETS, registry=registry)
        for stage in DECODE_STAGES:
            self.decode_seconds.labels(stage)  # both series exist from the start
        self.decode_batch = Histogram(p + "decode_batch_groups", "Groups synthesized together in one device pass",
                                      buckets=BATCH_BUCKETS, registry=registry)
        self.write_seconds = Histogram(p + "write_seconds", "Writing one group's reconstructions",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.ack_latency = Histogram(p + "ack_latency_seconds", "Packet received to its ack (server clock)",
                                     ["camera"], buckets=LATENCY_BUCKETS, registry=registry)
        self.capture_latency = Histogram(p + "capture_to_ack_seconds",
                                         "Capture (camera clock) to ack (server clock); includes clock offset",
                                         ["camera"], buckets=LATENCY_BUCKETS, registry=registry)
        self.device_faults = Counter(p + "device_faults_total",
                                     "Device (CUDA) faults in synthesis; the first moves synthesis to the CPU",
                                     registry=registry)
        self.sink_errors = Counter(p + "sink_errors_total", "Groups whose reconstructions could not be written",
                                   registry=registry)
        self.acked_sequence = Gauge(p + "acked_sequence", "Cumulative acked sequence", ["camera"], registry=registry)
        self.connected = Gauge(p + "connected_cameras", "Cameras with an open stream", registry=registry)
        self.open_groups = Gauge(p + "open_groups", "Groups waiting for views", registry=registry)
        self.inflight_groups = Gauge(p + "inflight_groups", "Groups between the grouper and their ack",
                                     registry=registry)
        self.refused = Counter(p + "streams_refused_total", "Streams refused at the handshake", ["code"],
                               registry=registry)
        self.model_loaded = Gauge(p + "model_loaded", "1 once the model is loaded and streams are taken",
                                  registry=registry)
