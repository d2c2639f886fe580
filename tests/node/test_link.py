"""spool -> server: the gRPC link against a tiny fake server on loopback (generated stubs only)."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import replace

import grpc
import pytest

from mvic.node.channel import ChannelFactory, enable_ring_hash_header
from mvic.node.config import LinkConfig
from mvic.node.link import Link
from mvic.node.metrics import NodeMetrics
from mvic.node.spool import Spool
from mvic.shared.bitstream import FORMAT_VERSION, unpack
from mvic.shared.rpc import OWNER_METADATA_KEY, RING_HASH_HEADER_ENV
from mvic.shared.rpc.hello import Hello
from mvic.shared.rpc.mvic_pb2_grpc import add_FusionServicer_to_server
from tests.node.fakes import FakeFusion, FakeServer, Store, wait_for
from tests.node.test_spool import HASH, packet

FAST = LinkConfig(backoff_initial_s=0.05, backoff_max_s=0.2, refused_backoff_s=0.3, handshake_timeout_s=2.0,
                  drain_timeout_s=2.0)
IDENTITY = Hello("C1", "plaza", 0xF001, HASH, FORMAT_VERSION, "test", 123)


class Harness:
    def __init__(self, tmp_path, target: str, config: LinkConfig = FAST, tls=None):
        self.metrics = NodeMetrics("C1")
        self.spool = Spool(tmp_path / "spool", "C1", 1 << 20, "drop-oldest", self.metrics)
        self.spool.open()
        self.stop = threading.Event()
        self.link = Link(target, IDENTITY, self.spool, config, self.metrics, self.stop, tls)
        self.thread = threading.Thread(target=self.link.run)

    def add(self, n: int, size: int = 1000) -> None:
        for _ in range(n):
            seq = self.spool.next_sequence()
            assert self.spool.put(seq, 1_000_000 + seq, packet(seq, size), threading.Event())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.link.drain(0.5)
        self.thread.join(10)
        assert not self.thread.is_alive(), "link did not stop"
        self.spool.close()


@pytest.fixture
def server():
    srv = FakeServer().start()
    yield srv
    srv.stop()


def test_sends_in_order_with_hello_metadata_and_acks_empty_the_spool(tmp_path, server):
    with Harness(tmp_path, server.target) as h:
        h.add(3)
        assert wait_for(lambda: h.spool.pending == 0)
        h.add(2)  # packets spooled while connected go out on the same stream
        assert wait_for(lambda: h.spool.pending == 0)
    stored = server.store.packets["C1"]
    assert sorted(stored) == [1, 2, 3, 4, 5]
    assert all(unpack(p.bitstream).header.sequence == s == p.sequence for s, p in stored.items())
    assert stored[3].capture_ns == 1_000_003 and stored[3].sent_ns > 0
    hello = server.store.hellos[0]
    assert (hello.camera_id, hello.group_id, hello.model_id, hello.weights_hash, hello.format_version,
            hello.session_ns) == ("C1", "plaza", 0xF001, HASH, FORMAT_VERSION, 123)
    md = server.store.metadata[0]
    assert md["mvic-camera"] == "C1" and md["mvic-group"] == "plaza"
    assert h.metrics.value("mvic_node_packets_acked_total") == 5
    assert h.metrics.value("mvic_node_packets_sent_total") == 5
    assert h.metrics.value("mvic_node_connection_state", state="disconnected") == 1  # after stop


def test_server_restart_resends_unacked_in_order(tmp_path):
    srv = FakeServer(ack=False).start()  # receives, then "dies" before storing or acking
    try:
        with Harness(tmp_path, srv.target) as h:
            h.add(3)
            assert wait_for(lambda: len(srv.store.received) == 3)
            srv.stop()
            assert wait_for(lambda: h.metrics.value("mvic_node_connection_state", state="connected") == 0)
            h.add(2)  # spooled while the server is down
            srv.start(ack=True)
            assert wait_for(lambda: h.spool.pending == 0, timeout=15)
        assert sorted(srv.store.packets["C1"]) == [1, 2, 3, 4, 5]
        assert [s for _, s in srv.store.received[3:]] == [1, 2, 3, 4, 5]  # resent in order, then the new ones
        assert h.metrics.value("mvic_node_packets_resent_total") >= 3  # 4 too if it went into the dying stream
        assert h.metrics.value("mvic_node_reconnects_total") >= 1
    finally:
        srv.stop()


def test_node_started_before_the_server_connects_when_it_comes(tmp_path):
    srv = FakeServer()
    srv.start()
    port = srv.port
    srv.stop()  # a free port nobody listens on (yet)
    with Harness(tmp_path, f"127.0.0.1:{port}") as h:
        h.add(2)
        assert wait_for(lambda: h.metrics.value("mvic_node_reconnects_total") >= 2)
        srv.start()
        assert wait_for(lambda: h.spool.pending == 0, timeout=15)
    srv.stop()
    assert sorted(srv.store.packets["C1"]) == [1, 2]


def test_welcome_resumes_above_the_servers_acked_sequence(tmp_path):
    store = Store()
    srv = FakeServer(store).start()
    try:
        with Harness(tmp_path, srv.target) as h:
            h.add(2)
            assert wait_for(lambda: h.spool.pending == 0)
        # the node crashed after the server stored 1..2 but before the acks reached it: simulate with a copy whose
        # packets 1..4 were spooled by an earlier run (which may have sent them), 1 and 2 stored at the server
        early = Harness(tmp_path / "other", srv.target)
        early.add(4)
        early.spool.close()
        h2 = Harness(tmp_path / "other", srv.target)
        assert h2.spool.sequences() == [1, 2, 3, 4]
        with h2:
            assert wait_for(lambda: h2.spool.pending == 0)
        assert [s for _, s in store.received] == [1, 2, 3, 4]  # 1 and 2 were not sent again
        assert h2.metrics.value("mvic_node_packets_acked_total") == 4
    finally:
        srv.stop()


def test_packet_error_drops_the_packet_and_counts_it(tmp_path, caplog):
    srv = FakeServer(reject={2}).start()
    try:
        with caplog.at_level(logging.ERROR), Harness(tmp_path, srv.target) as h:
            h.add(3)
            assert wait_for(lambda: h.spool.pending == 0)
        assert sorted(srv.store.packets["C1"]) == [1, 3]
        assert h.metrics.value("mvic_node_packets_rejected_total", code="malformed") == 1
        assert h.metrics.dropped_count("rejected") == 1
        assert "rejected packet 2 (malformed)" in caplog.text
    finally:
        srv.stop()


def test_packets_over_max_packet_bytes_are_dropped_not_sent(tmp_path):
    srv = FakeServer(max_packet_bytes=2000).start()
    try:
        with Harness(tmp_path, srv.target) as h:
            h.add(1, 500)
            h.add(1, 5000)
            h.add(1, 500)
            assert wait_for(lambda: h.spool.pending == 0)
        assert sorted(srv.store.packets["C1"]) == [1, 3]
        assert h.metrics.dropped_count("too_large") == 1
    finally:
        srv.stop()


def test_in_flight_window_bounds_unacked_packets(tmp_path):
    srv = FakeServer(ack=False).start()
    try:
        config = LinkConfig(**{**FAST.__dict__, "max_in_flight": 2})
        with Harness(tmp_path, srv.target, config) as h:
            h.add(5)
            assert wait_for(lambda: len(srv.store.received) == 2)
            assert not wait_for(lambda: len(srv.store.received) > 2, timeout=0.5)
    finally:
        srv.stop()


@pytest.mark.parametrize("code, advice", [
    (grpc.StatusCode.PERMISSION_DENIED, "camera list"),
    (grpc.StatusCode.FAILED_PRECONDITION, "same MVIC release"),
])
def test_refusal_is_an_error_with_advice_and_retried_slowly(tmp_path, caplog, code, advice):
    srv = FakeServer(refuse=(code, "camera C1 is not configured")).start()
    try:
        with caplog.at_level(logging.ERROR), Harness(tmp_path, srv.target) as h:
            h.add(1)
            assert wait_for(lambda: h.metrics.value("mvic_node_connection_state", state="refused") == 1)
            assert "refused camera C1" in caplog.text and advice in caplog.text
            assert "camera C1 is not configured" in caplog.text
            srv.stop()
            srv.start(refuse=None)  # fixed at the server: the node comes back by itself
            assert wait_for(lambda: h.spool.pending == 0, timeout=10)
        gaps = [b - a for a, b in zip(srv.store.hello_times, srv.store.hello_times[1:])]
        assert gaps and min(gaps) >= 0.8 * FAST.refused_backoff_s - 0.01  # slow retries, not a tight loop
    finally:
        srv.stop()


# ------------------------------------------------------------------------ issue 13: implausible server replies
def test_a_welcome_claiming_more_than_was_sent_is_refused_and_the_spool_kept(tmp_path, caplog):
    """A server whose Welcome says "stored up to 2**64-1" used to make the node renumber to 2**64, drop every frame
    and delete spooled packets it never received. Now the Welcome is refused like a refusal, nothing changes."""
    srv = FakeServer(welcome_acked=2**64 - 1).start()
    try:
        with caplog.at_level(logging.ERROR), Harness(tmp_path, srv.target) as h:
            h.add(3)
            assert wait_for(lambda: h.metrics.value("mvic_node_connection_state", state="refused") == 1)
            assert wait_for(lambda: len(srv.store.hellos) >= 2)  # retried after refused_backoff_s, refused again
            assert h.spool.sequences() == [1, 2, 3] and len(list(h.spool.folder.glob("*.mvic"))) == 3
            assert h.spool.last_sequence == 3 and h.spool.acked_sequence == 0  # numbering untouched
            assert srv.store.received == []  # nothing was sent into a server that claims the impossible
            # the server logs the second Hello before the node has read its Welcome: wait for the node's count
            assert wait_for(lambda: h.metrics.value("mvic_node_implausible_replies_total", kind="welcome") >= 2)
            assert h.metrics.dropped_count() == 0
            assert f"up to sequence {2**64 - 1}, but this node has sent only up to 0" in caplog.text
            assert "--camera" in caplog.text  # what to do
            srv.stop()
            srv.start(welcome_acked=None)  # a sane server: everything is delivered
            assert wait_for(lambda: h.spool.pending == 0, timeout=10)
        assert sorted(srv.store.packets["C1"]) == [1, 2, 3]
        assert h.spool.next_sequence() == 4
    finally:
        srv.stop()


def test_an_ack_above_the_highest_sent_sequence_deletes_nothing(tmp_path, caplog):
    """One packet in flight; the server acks two above it. That used to delete packets 2 and 3 unsent; now the ack
    is refused (counted, logged at most every 10 s), the stream reset, and every packet reaches the server."""
    srv = FakeServer(ack_ahead=2).start()
    try:
        config = LinkConfig(**{**FAST.__dict__, "max_in_flight": 1})
        with caplog.at_level(logging.ERROR), Harness(tmp_path, srv.target, config) as h:
            h.add(3)
            assert wait_for(lambda: sorted(srv.store.packets.get("C1", {})) == [1, 2, 3], timeout=15)
            assert wait_for(lambda: h.spool.pending == 0, timeout=10)  # each Welcome (plausible) acks what was sent
        refused = h.metrics.value("mvic_node_implausible_replies_total", kind="ack")
        assert refused >= 2 and h.metrics.dropped_count() == 0
        assert 1 <= caplog.text.count("implausible reply from server") < refused  # bounded: a line per 10 s
    finally:
        srv.stop()


def test_a_packet_error_for_an_unsent_sequence_is_ignored(tmp_path):
    srv = FakeServer(reject_ahead=1).start()  # with each packet's ack, a PacketError for the next one
    try:
        config = LinkConfig(**{**FAST.__dict__, "max_in_flight": 1})
        with Harness(tmp_path, srv.target, config) as h:
            h.add(3)
            assert wait_for(lambda: h.spool.pending == 0)
        assert sorted(srv.store.packets["C1"]) == [1, 2, 3]  # packets 2 and 3 were not discarded before sending
        assert h.metrics.dropped_count("rejected") == 0
        assert h.metrics.value("mvic_node_implausible_replies_total", kind="packet_error") >= 2
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ mutual TLS
def _tls_server(tmp_path):
    from tests.pki import CA

    ca = CA()
    issued = ca.server()
    creds = grpc.ssl_server_credentials([(issued.key, issued.cert)], root_certificates=ca.pem,
                                        require_client_auth=True)
    return ca, FakeServer(credentials=creds).start()


def test_tls_link_presents_the_camera_certificate(tmp_path):
    from cryptography import x509

    from mvic.node.config import TlsConfig

    ca, server = _tls_server(tmp_path)
    try:
        cert, key = ca.camera("C1", "plaza").write(tmp_path / "pki", "c1")
        tls = TlsConfig(ca=str(ca.write(tmp_path / "pki")), cert=str(cert), key=str(key), server_name="localhost")
        h = Harness(tmp_path, server.target, tls=tls)
        with h:
            h.add(3)
            assert wait_for(lambda: h.spool.pending == 0)
        sans = x509.load_pem_x509_certificate(server.store.client_certs[0]).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://mvic.test/group/plaza/camera/C1"]
    finally:
        server.stop()


def test_a_renewed_certificate_opens_a_new_channel_and_every_packet_arrives_once(tmp_path):
    """The node's certificate files are replaced while it streams: it finishes the stream (half-close, all acked),
    reconnects on a new channel presenting the new certificate, and no packet is lost or sent twice."""
    from cryptography import x509

    from mvic.node.config import TlsConfig

    ca, server = _tls_server(tmp_path)
    try:
        cert, key = ca.camera("C1", "plaza").write(tmp_path / "pki", "c1")
        tls = TlsConfig(ca=str(ca.write(tmp_path / "pki")), cert=str(cert), key=str(key), reload_s=0.1)
        h = Harness(tmp_path, server.target, tls=tls)
        with h:
            h.add(5)
            assert wait_for(lambda: server.store.acked("C1") == 5)
            renewed = ca.camera("C1", "plaza")
            renewed.write(tmp_path / "pki", "c1")
            h.add(5)
            assert wait_for(lambda: len(server.store.hellos) >= 2)
            h.add(5)
            assert wait_for(lambda: h.spool.pending == 0 and server.store.acked("C1") == 15)
        assert sorted(server.store.received) == [("C1", s) for s in range(1, 16)]  # each exactly once
        serials = [x509.load_pem_x509_certificate(pem).serial_number for pem in server.store.client_certs]
        assert len(serials) == 2 and serials[-1] == renewed.serial != serials[0]
    finally:
        server.stop()


# ------------------------------------------------------------------------------- issue 15: several servers
class _NotOwner(FakeFusion):
    """A cluster server that does not own the camera's group for its first ``refusals`` Hellos: UNAVAILABLE, the
    owner in the mvic-owner trailer (what mvic.fusion_server answers)."""

    def __init__(self, store, refusals: int):
        super().__init__(store)
        self.refusals = refusals

    def Stream(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        if self.refusals > 0:
            self.refusals -= 1
            next(request_iterator)
            self.store.hello_times.append(time.monotonic())
            context.set_trailing_metadata(((OWNER_METADATA_KEY, "10.0.0.9:50051"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "camera group 'plaza' is served by 10.0.0.9:50051")
        yield from super().Stream(request_iterator, context)


def test_a_not_owner_refusal_reconnects_at_once_through_a_new_channel(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(RING_HASH_HEADER_ENV, "true")
    store = Store()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_FusionServicer_to_server(_NotOwner(store, refusals=2), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    config = replace(FAST, refused_backoff_s=30.0)
    try:
        with caplog.at_level(logging.INFO), Harness(tmp_path, f"ipv4:127.0.0.1:{port}", config) as h:
            h.add(2)
            assert wait_for(lambda: h.spool.pending == 0, timeout=10)  # not 30 s of refused backoff
            assert h.link._channels.lb == "ring_hash"
        assert caplog.text.count("camera group served elsewhere") == 2
        assert "refused camera" not in caplog.text
        assert sorted(store.packets["C1"]) == [1, 2]
    finally:
        server.stop(0)


def test_mvic_node_turns_on_grpcs_ring_hash_header_and_checks_it(monkeypatch):
    """mvic-node's main sets the environment variable before any channel exists and checks with a loopback call
    that grpcio honours it; a channel opened without it falls back to pick_first instead of failing every call."""
    monkeypatch.delenv(RING_HASH_HEADER_ENV, raising=False)
    assert ChannelFactory("127.0.0.1:1", [], lb="ring_hash").lb == "pick_first"
    assert enable_ring_hash_header()
    assert os.environ[RING_HASH_HEADER_ENV] == "true"
    assert ChannelFactory("127.0.0.1:1", [], lb="ring_hash").lb == "ring_hash"
    assert ChannelFactory("127.0.0.1:1", [], lb="pick_first").lb == "pick_first"
