"""The orchestrator: one start order, the reverse stop order, one stop event from ``main``.

Start: metrics endpoint -> core (ack book and its journal, sink and timeout tasks) -> cluster membership (with
``cluster.peers``: resolved and probed once, then every ``cluster.refresh_s``; ``cluster.Membership``) -> gRPC
server (mutual TLS with ``tls``; plaintext on loopback, or anywhere with ``insecure``: a WARNING) with health
NOT_SERVING -> live page ->
model load (on a thread; plus a CPU copy for the entropy workers when decoding on a GPU) -> decode pipeline; health
turns SERVING and streams are taken once it is in memory. A damaged ack journal stops the start with
``errors.AckJournalError``, which ``mvic-server`` reports in one line.
Stop (SIGTERM/SIGINT in ``cli.main`` set the stop event): health NOT_SERVING -> membership -> core drain (open
view sets decoded, written, acked; streams told to reconnect) -> gRPC server stop -> live page -> core (decode
pipeline, sinks) -> metrics.

The data path itself is receive (``servicer``) -> group (``grouper``) -> joint decode (``decoder``: entropy on CPU
workers, batched synthesis on the device) -> sink (``sinks``) -> ack (``acks``), wired by ``core.FusionCore``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from mvic.fusion_server.cluster import Membership
from mvic.fusion_server.config import ServerConfig
from mvic.fusion_server.core import FusionCore
from mvic.fusion_server.decoder import GroupDecoder, resolve_device
from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.servicer import FusionServicer, add_to_server
from mvic.fusion_server.tls import server_credentials
from mvic.fusion_server.webpage import LivePage, read_token, tls_context
from mvic.shared.codec.model import LDMIC
from mvic.shared.addresses import is_loopback, split_host_port
from mvic.shared.codec.registry import load_model, weights_source
from mvic.shared.codec.view_fusion import FusionOptions
from mvic.shared.ids import display
from mvic.shared.rig import load_rig
from mvic.shared.metrics_endpoint import start_metrics
from mvic.shared.rpc import SERVICE_NAME, server_options
from mvic.shared.rpc.hello import mvic_version

log = logging.getLogger(__name__)


class FusionApp:
    def __init__(self, config: ServerConfig, registry: CollectorRegistry | None = None,
                 model_loader: Callable[[str], LDMIC] | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = ServerMetrics(self.registry)
        self.live = LiveView(config.max_cameras)
        self._model_loader = model_loader or self._load_model
        self.core: FusionCore | None = None
        self.membership: Membership | None = None
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._page: LivePage | None = None
        self._metrics_server = None
        self._fault_task: asyncio.Task | None = None
        self.port = 0  # bound gRPC port (useful with listen port 0)
        self.http_port = 0

    def _load_model(self, device: str) -> LDMIC:
        return load_model(weights_source(self.config.weights, self.config.model), model=self.config.model, device=device)

    async def start(self) -> None:
        c = self.config
        if c.metrics_port:
            self._metrics_server = start_metrics(c.metrics_host, c.metrics_port, self.registry)
        if c.cluster.enabled:
            self.membership = Membership(c.cluster, on_change=self._rehome)
        self.core = FusionCore(c, self.metrics, self.live, server_version=mvic_version(), membership=self.membership)
        await self.core.start()
        if self.membership is not None:
            await self.membership.start()
            log.info("cluster: this server is %s of %s (%s); it serves the camera groups the ring assigns it; ack "
                     "journal %s", self.membership.self_address, c.cluster.peers, ", ".join(self.membership.members),
                     self.core.acks.path)
        self._server = grpc.aio.server(options=server_options(c.max_packet_bytes))
        add_to_server(FusionServicer(self.core), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if c.tls.enabled:
                self.port = self._server.add_secure_port(c.listen, server_credentials(c.tls))
            else:
                self.port = self._server.add_insecure_port(c.listen)
        except RuntimeError:  # gRPC's words for a port that cannot be bound
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {c.listen}: the port is in use (another mvic-server?) or the host is not "
                          "an address of this machine; stop the program that holds it or choose another --listen")
        await self._server.start()
        if c.tls.enabled:
            log.info("gRPC with mutual TLS on %s (port %d): cameras of trust domain %s, certificates signed by %s; "
                     "health NOT_SERVING until the model is loaded", c.listen, self.port, c.tls.trust_domain,
                     c.tls.client_ca)
        else:
            log.info("gRPC on %s (port %d), plaintext; health NOT_SERVING until the model is loaded", c.listen,
                     self.port)
            if not is_loopback(split_host_port(c.listen)[0]):
                log.warning("INSECURE: plaintext gRPC on %s (insecure: true). Anyone who can reach this port can send "
                            "frames as any camera and read nothing is encrypted; configure tls (mvic-certs) outside "
                            "a private network", c.listen)
        if c.http:
            host, port = split_host_port(c.http)
            token = read_token(c.http_token_file) if c.http_token_file else None
            if token is None and not is_loopback(host):
                log.warning("the live page on %s shows the cameras' pictures to anyone who can reach it: set "
                            "http_token_file (and http_cert/http_key), or bind it to 127.0.0.1", c.http)
            self._page = LivePage(self.live, host, port, lambda: self.core is not None and self.core.ready,
                                  self.metrics, max_connections=c.http_max_connections, timeout_s=c.http_timeout_s,
                                  token=token, tls=tls_context(c.http_cert, c.http_key) if c.http_cert else None)
            await self._page.start()
            self.http_port = self._page.port
        device = resolve_device(c.device)
        if c.decode.torch_threads:
            torch.set_num_threads(c.decode.torch_threads)
        if device.startswith("cuda"):
            # Full float32 synthesis, no TF32: the GPU's reconstructions then stay within one grey level of the
            # CPU's (measured on an H200: 1 level in fp32 and TF32, 3-4 in bf16); synthesis is a small share of the
            # time (0.21 s of 3.2 s for 7 views at 1080p, the rest being CPU entropy decoding).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        log.info("loading model %s on %s", c.model, device)
        model = await asyncio.to_thread(self._model_loader, device)
        # Entropy decoding runs on CPU workers: with a GPU for synthesis they get a CPU copy of the same weights.
        entropy_model = model if device == "cpu" else await asyncio.to_thread(self._model_loader, "cpu")
        rig = load_rig(c.decode.rig) if c.decode.rig else None
        if rig is not None:
            log.info("rig %s: %d calibrated camera(s) (%s); the fusion aligns their ground", c.decode.rig,
                     len(rig.cameras), display(", ".join(rig.cameras)))
        fusion = FusionOptions(enabled=c.decode.fusion, max_side=c.decode.fusion_max_side, rig=rig)
        decoder = GroupDecoder(model, entropy_model, precision=c.decode.precision,
                               entropy_threads=c.decode.entropy_threads, fusion=fusion)
        self.core.attach_decoder(decoder, on_device_fault=self._device_fault)
        self.metrics.model_loaded.set(1)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("model %s (weights %s) loaded: entropy decoding on %d CPU worker(s) of %d thread(s), synthesis on %s "
                 "in %s in batches of up to %d view sets: serving", model.spec.name, model.weights_hash.hex(),
                 c.decode.workers, c.decode.entropy_threads, device, decoder.synthesis_precision.value,
                 c.decode.max_batch)

    async def stop(self) -> None:
        """Reverse order; safe after a partial start."""
        log.info("stopping: draining in-flight view sets (up to %.1f s)", self.config.shutdown_grace_s)
        await self.health.enter_graceful_shutdown()
        self.metrics.model_loaded.set(0)
        if self.membership is not None:
            await self.membership.stop()
        if self.core is not None:
            await self.core.drain(self.config.shutdown_grace_s)
        if self._server is not None:
            await self._server.stop(grace=min(2.0, self.config.shutdown_grace_s))
        if self._page is not None:
            await self._page.stop()
        if self.core is not None:
            await self.core.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("stopped")

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()

    async def _rehome(self) -> None:
        if self.core is not None:
            await self.core.rehome()

    def _device_fault(self, reason: str) -> None:
        """Synthesis left the GPU for the CPU: frames keep flowing, slower; health says NOT_SERVING so that an
        orchestrator restarts this server or routes cameras elsewhere."""
        log.error("health NOT_SERVING: %s", reason)
        self._fault_task = asyncio.get_running_loop().create_task(
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
