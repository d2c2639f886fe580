"""Test helpers: a FusionApp on a background loop, a minimal camera client built on the stubs, pre-coded views.

The client is deliberately small (no spool, no reconnect): the real node is mvic.node, which tests here never
import.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from mvic.fusion_server.app import FusionApp
from mvic.fusion_server.config import ServerConfig, validate
from mvic.shared.bitstream import FORMAT_VERSION, pack
from mvic.shared.codec.model import LDMIC
from mvic.shared.rpc import CAMERA_METADATA_KEY, GROUP_METADATA_KEY, channel_options, mvic_pb2 as pb, mvic_pb2_grpc
from tests.conftest import random_image

FRAME_NS = 100_000_000  # 10 fps
T0 = 1_700_000_000_000_000_000


def server_config(out: Path, weights: Path, **changes) -> ServerConfig:
    base = ServerConfig(listen="127.0.0.1:0", device="cpu", model="test-tiny-fast", weights=str(weights),
                        out=str(out), max_packet_bytes=4096)
    base = replace(base, grouping=replace(base.grouping, tolerance_ms=20.0, max_wait_ms=300.0),
                   shutdown_grace_s=5.0)
    config = replace(base, **changes)
    validate(config)
    return config


class ServerThread:
    """Runs FusionApp.run on its own event loop in a thread; ``stop`` drains like SIGTERM does."""

    def __init__(self, config: ServerConfig, **app_kwargs):
        self.app = FusionApp(config, **app_kwargs)
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main():
            self._stop = asyncio.Event()
            try:
                await self.app.start()
            finally:
                self._started.set()
            await self._stop.wait()

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            self._loop.run_until_complete(self.app.stop())
            self._loop.close()

    def start(self, wait_loaded: bool = True) -> ServerThread:
        self._thread.start()
        if wait_loaded:
            assert self._started.wait(60), "server did not start"
            if self._error:
                raise self._error
        return self

    @property
    def port(self) -> int:
        return self.app.port

    def call(self, coro_fn):
        """Run a coroutine function on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(30)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(lambda: self._stop and self._stop.set())
            self._thread.join(30)
            assert not self._thread.is_alive(), "server did not stop"


class MiniNode:
    """One camera's stream: send packets, read Welcome/Ack/PacketError on a reader thread."""

    def __init__(self, port: int, camera: str, model: LDMIC, *, group: str = "", metadata_camera: str | None = None,
                 model_id: int | None = None, weights_hash: bytes | None = None, format_version: int = FORMAT_VERSION,
                 first: pb.NodeMessage | None = None, credentials: grpc.ChannelCredentials | None = None,
                 server_name: str = ""):
        self.camera = camera
        target, options = f"127.0.0.1:{port}", list(channel_options())
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = grpc.secure_channel(target, credentials, options=options) if credentials else \
            grpc.insecure_channel(target, options=options)
        self._out: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.acked = 0
        self.packet_errors: list[pb.PacketError] = []
        md = ((CAMERA_METADATA_KEY, metadata_camera or camera), (GROUP_METADATA_KEY, group))
        self.call = mvic_pb2_grpc.FusionStub(self.channel).Stream(iter(self._out.get, None), metadata=md)
        hello = pb.Hello(camera_id=camera, group_id=group,
                         model_id=model.spec.model_id if model_id is None else model_id,
                         weights_hash=model.weights_hash if weights_hash is None else weights_hash,
                         format_version=format_version, node_version="test", session_ns=1)
        self._out.put(first or pb.NodeMessage(hello=hello))
        self._done = threading.Event()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                with self._cond:
                    if msg.HasField("ack"):
                        self.acked = max(self.acked, msg.ack.acked_sequence)
                    elif msg.HasField("error"):
                        self.packet_errors.append(msg.error)
                    self.messages.put(msg)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self._done.set()
            with self._cond:
                self._cond.notify_all()

    def welcome(self, timeout: float = 10) -> pb.Welcome:
        msg = self.messages.get(timeout=timeout)
        assert msg.HasField("welcome"), msg
        return msg.welcome

    def refused(self, timeout: float = 10) -> grpc.RpcError:
        assert self._done.wait(timeout), "stream was not ended by the server"
        assert self.error is not None, "stream ended without an error status"
        return self.error

    def send(self, sequence: int, bitstream: bytes, capture_ns: int) -> None:
        self._out.put(pb.NodeMessage(packet=pb.ViewPacket(sequence=sequence, capture_ns=capture_ns, sent_ns=0,
                                                          bitstream=bitstream)))

    def wait_acked(self, sequence: int, timeout: float = 20) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.acked >= sequence or self._done.is_set(), timeout) and \
                self.acked >= sequence

    def wait_errors(self, n: int, timeout: float = 20) -> list[pb.PacketError]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.packet_errors) >= n or self._done.is_set(), timeout)
            return list(self.packet_errors)

    def wait_end(self, timeout: float = 20) -> bool:
        return self._done.wait(timeout)

    def half_close(self) -> None:
        self._out.put(None)

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


def coded_views(model: LDMIC, cameras: list[str], frames: int, *, h: int = 64, w: int = 96, seed: int = 0,
                jitter_ns: int = 3_000_000) -> dict[str, list[tuple[int, int, bytes]]]:
    """{camera: [(sequence, capture_ns, packed bitstream)]}: camera clocks a few ms apart, sequences from 1."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[int, int, bytes]]] = {}
    for k, cam in enumerate(cameras):
        out[cam] = []
        for i in range(frames):
            capture = T0 + i * FRAME_NS + k * jitter_ns
            view = model.compress_view(random_image(rng, h, w), 1, camera_id=cam, sequence=i + 1, capture_ns=capture)
            out[cam].append((i + 1, capture, pack(view)))
    return out
