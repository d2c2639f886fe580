"""Streams a real node never opens, over a loopback gRPC server (issue 13, defects 9, 10 and 11): each ends with the
status that says what is wrong, one bounded log line and no traceback, and the server goes on.

Waits are bounded: a stream the server should end is read with a client deadline far above the server's own
deadline, and the status details tell the two apart."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from dataclasses import replace

import grpc
import pytest

from mvic.fusion_server.app import FusionApp
from mvic.fusion_server.config import AdmissionConfig
from mvic.shared.bitstream import FORMAT_VERSION
from mvic.shared.rpc import CAMERA_METADATA_KEY, mvic_pb2 as pb
from tests.fusion_server.harness import MiniNode, ServerThread, server_config

CLIENT_DEADLINE_S = 30.0  # far above every server deadline used here
LOG_BOUND = 4096  # characters of log a refused stream may cost


class RawStream:
    """A Fusion.Stream that sends bytes as they are: what the generated stubs would never serialize."""

    def __init__(self, port: int, *messages: bytes, metadata=()):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._out: queue.Queue = queue.Queue()
        for message in messages:
            self._out.put(message)
        stream = self.channel.stream_stream("/mvic.v1.Fusion/Stream", request_serializer=lambda raw: raw,
                                            response_deserializer=pb.ServerMessage.FromString)
        self.call = stream(iter(self._out.get, None), metadata=metadata, timeout=CLIENT_DEADLINE_S)

    def send(self, raw: bytes) -> None:
        self._out.put(raw)

    def next(self) -> pb.ServerMessage | grpc.RpcError:
        try:
            return next(self.call)
        except grpc.RpcError as exc:
            return exc

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


def _hello(encoder, camera: str = "C1", **changes) -> pb.Hello:
    fields = {"camera_id": camera, "group_id": "", "model_id": encoder.spec.model_id,
              "weights_hash": encoder.weights_hash, "format_version": FORMAT_VERSION, "node_version": "test",
              "session_ns": 1}
    return pb.Hello(**{**fields, **changes})


def _hello_bytes(encoder, **changes) -> bytes:
    return pb.NodeMessage(hello=_hello(encoder, **changes)).SerializeToString()


def _metric(srv: ServerThread, name: str, **labels) -> float:
    return srv.app.registry.get_sample_value(name, labels) or 0.0


def _server(tmp_path, weights, **admission) -> ServerThread:
    config = server_config(tmp_path / "out", weights)
    return ServerThread(replace(config, admission=replace(AdmissionConfig(), **admission))).start()


def _grpc_poller_noise(record: logging.LogRecord) -> bool:
    """grpc.aio's process-wide completion-queue poller waking an event loop that an earlier test's server closed
    (grpc/grpc#25364): an artefact of many servers on many loops in one test process, not of this message."""
    return record.name == "asyncio" and record.getMessage().startswith(
        "Exception in callback PollerCompletionQueue._handle_events")


def _assert_clean_log(caplog) -> None:
    """No error, no traceback, no forged line, and a bounded amount of text."""
    bad = [r for r in caplog.records if (r.levelno >= logging.ERROR or r.exc_info) and not _grpc_poller_noise(r)]
    assert not bad, [r.getMessage()[:200] for r in bad]
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "\n" in m], "a client-supplied line break reached the log"
    assert sum(map(len, messages)) < LOG_BOUND, f"{sum(map(len, messages))} characters of log"


@pytest.fixture
def server(tmp_path, weights):
    srv = _server(tmp_path, weights)
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------- undecodable messages
@pytest.mark.parametrize("field", ["camera_id", "group_id"])
def test_a_hello_id_that_is_not_utf8_is_invalid_argument_without_a_traceback(server, encoder, caplog, field):
    """Issue 13, defect 9: a camera or group id that is not UTF-8 used to fail inside gRPC's deserializer: UNKNOWN
    and an ERROR traceback. The Stream method's own deserializer turns it into INVALID_ARGUMENT."""
    raw = _hello_bytes(encoder, **{field: "ZZ"}).replace(b"ZZ", b"\xff\xfe")
    stream = RawStream(server.port, raw)
    try:
        with caplog.at_level(logging.INFO):
            end = stream.next()
            assert isinstance(end, grpc.RpcError), end
            assert end.code() == grpc.StatusCode.INVALID_ARGUMENT and "NodeMessage" in end.details(), end.details()
        _assert_clean_log(caplog)
        assert _metric(server, "mvic_server_streams_refused_total", code="INVALID_ARGUMENT") == 1
    finally:
        stream.close()


def test_bytes_that_do_not_parse_after_the_welcome_are_invalid_argument_without_a_traceback(server, encoder, caplog):
    """Issue 13, defect 9: a malformed protobuf message after the Welcome used to end the stream with INTERNAL and a
    traceback; it is a protocol error like any other now."""
    stream = RawStream(server.port, _hello_bytes(encoder), metadata=((CAMERA_METADATA_KEY, "C1"),))
    try:
        with caplog.at_level(logging.INFO):
            assert stream.next().WhichOneof("kind") == "welcome"
            stream.send(b"\xff\xff\xff\xff")
            end = stream.next()
            assert isinstance(end, grpc.RpcError), end
            assert end.code() == grpc.StatusCode.INVALID_ARGUMENT and "NodeMessage" in end.details(), end.details()
        _assert_clean_log(caplog)
    finally:
        stream.close()
    again = MiniNode(server.port, "C1", encoder)  # the server goes on
    again.welcome()
    again.close()


# ------------------------------------------------------------------------------- oversized and forged fields
@pytest.mark.parametrize("change, words", [
    ({"camera_id": "x" * (1 << 20)}, "camera id"),
    ({"node_version": "v" * (4 << 20)}, "node_version"),
    ({"weights_hash": b"\1" * (1 << 20)}, "weights_hash"),
], ids=["1MiB-camera-id", "4MiB-node-version", "1MiB-weights-hash"])
def test_an_oversized_hello_field_is_invalid_argument_with_a_bounded_refusal_and_log(tmp_path, weights, encoder,
                                                                                    caplog, change, words):
    """Issue 13, defects 9 and 10: a 1 MiB camera id was refused with RESOURCE_EXHAUSTED (the refusal echoed the whole
    id into the status metadata) and wrote 2 MB of log; a 4 MiB node_version was logged whole on every connect. Now
    each is INVALID_ARGUMENT, with a refusal and a log line of bounded size."""
    config = server_config(tmp_path / "out", weights, max_packet_bytes=8 << 20)  # room for the message itself
    srv = ServerThread(config).start()
    try:
        with caplog.at_level(logging.INFO):
            node = MiniNode(srv.port, "C1", encoder, first=pb.NodeMessage(hello=_hello(encoder, **change)))
            err = node.refused()
            node.close()
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details()[:200])
        assert words in err.details() and len(err.details()) < 1000, err.details()[:200]
        _assert_clean_log(caplog)
    finally:
        srv.stop()


def test_a_line_break_in_node_version_cannot_forge_a_log_line(server, encoder, caplog):
    """Issue 13, defect 10: node_version went into the connect line as it came, so a newline in it started a log line
    of the client's choosing. It is escaped now."""
    forged = "1.0\n2030-01-01 00:00:00 ERROR mvic-server: forged"
    with caplog.at_level(logging.INFO):
        node = MiniNode(server.port, "C1", encoder, first=pb.NodeMessage(hello=_hello(encoder, node_version=forged)))
        node.welcome()
        node.close()
    connect_lines = [r.getMessage() for r in caplog.records if "connected" in r.getMessage()]
    assert connect_lines and "\\n2030-01-01" in connect_lines[0], connect_lines
    _assert_clean_log(caplog)


# ------------------------------------------------------------------------------------------ stream admission
def test_a_stream_that_never_sends_its_hello_ends_at_the_hello_deadline(tmp_path, weights, encoder):
    """Issue 13, defect 11: a stream that never sent its Hello was kept forever. It ends after
    admission.hello_timeout_s with DEADLINE_EXCEEDED, and gives back its place among its address's streams."""
    srv = _server(tmp_path, weights, hello_timeout_s=0.5, max_streams_per_peer=1)
    try:
        silent = RawStream(srv.port)
        end = silent.next()
        silent.close()
        assert isinstance(end, grpc.RpcError) and end.code() == grpc.StatusCode.DEADLINE_EXCEEDED, end
        assert "admission.hello_timeout_s" in end.details(), end.details()  # the server's deadline, not the client's
        assert _metric(srv, "mvic_server_streams_refused_total", code="DEADLINE_EXCEEDED") == 1
        node = MiniNode(srv.port, "C1", encoder)  # the only place of 127.0.0.1 is free again
        node.welcome()
        node.close()
    finally:
        srv.stop()


def test_streams_per_peer_address_are_bounded(tmp_path, weights, encoder):
    srv = _server(tmp_path, weights, max_streams_per_peer=2)
    try:
        c1, c2 = MiniNode(srv.port, "C1", encoder), MiniNode(srv.port, "C2", encoder)
        c1.welcome(), c2.welcome()
        c3 = MiniNode(srv.port, "C3", encoder)
        err = c3.refused()
        c3.close()
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams_per_peer" in err.details()
        c1.close()
        assert c1.wait_end()
        _wait_for(lambda: _metric(srv, "mvic_server_connected_cameras") == 1, "C1's stream to end at the server")
        c3 = MiniNode(srv.port, "C3", encoder)
        c3.welcome()
        c3.close(), c2.close()
    finally:
        srv.stop()


def test_a_second_server_on_a_busy_port_fails_to_start_with_one_clear_error(tmp_path, weights):
    """Issue 13, defect 9: a busy port was an uncaught RuntimeError traceback; and with gRPC's default SO_REUSEPORT a
    second server could even bind the same port and take half the cameras. Now the start fails with one OSError that
    names the address and what to do (mvic-server prints it as one line and exits 2: test_cli.py)."""
    first = _server(tmp_path, weights)
    try:
        second = FusionApp(server_config(tmp_path / "second", weights, listen=f"127.0.0.1:{first.port}"))

        async def start_second():
            try:
                await second.start()
            finally:
                await second.stop()

        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}.*--listen"):
            asyncio.run(start_second())
    finally:
        first.stop()


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)
