"""Server configuration: frozen dataclasses loaded from YAML by one function; unknown keys are errors.

Read by ``mvic.fusion_server.cli`` (YAML file, then command-line flags on top) and handed to
``mvic.fusion_server.app.FusionApp``, which gives each stage (receive -> group -> joint decode -> sink) its section.
Errors name the key path (``grouping.tolerance_ms``) so an operator can find the line in ``server.yaml``.

    listen: 0.0.0.0:50051          # gRPC address, host:port
    device: auto                   # auto (cuda:0 when present, else cpu), cpu, cuda, cuda:N
    model: ldmic-fast-lite         # architecture the nodes code with
    weights: ""                    # weights file; "" = the installed weights of the model
    out: mvic-out                  # reconstructions and the ack journal
    cameras: []                    # allowed camera ids; [] = any camera (up to max_cameras)
    max_cameras: 64                # distinct cameras served (bounds metric labels and memory)
    max_packet_bytes: 8388608      # largest ViewPacket.bitstream taken, bytes
    log_level: INFO
    grouping:
      tolerance_ms: 30.0           # views whose capture times differ by at most this belong to one group
      max_wait_ms: 250.0           # wait at most this long for missing views, then decode those present
      max_open_groups: 64          # more open groups than this: the oldest is decoded at once
      away_wait_ms: 5000.0         # a camera that dropped its stream (or every camera after a restart) is
                                   # awaited this long: its backlog still joins the others' views
    decode:
      workers: 2                   # CPU threads entropy-decoding groups at the same time (a CPU copy of the model
                                   # when the device is a GPU)
      max_batch: 4                 # groups of one shape (views, size) synthesized together in one device pass;
                                   # the device takes what is ready, it never waits for a batch to fill
      max_inflight_groups: 8       # groups between the grouper and the ack; more makes streams wait
      torch_threads: 0             # torch intra-op threads (0 = torch's default)
    sinks:
      png: true                    # out/<camera>/<name>.png, written atomically; acks wait for it
      png_name: sequence           # sequence (zero-padded) or capture_ns
      video: false                 # out/<camera>.mp4 (OpenCV, mp4v), frames appended in capture order
      video_fps: 10.0
    http: ""                       # live page host:port ("" = none), e.g. 0.0.0.0:8080
    metrics_port: 0                # Prometheus /metrics port (0 = none)
    shutdown_grace_s: 10.0         # SIGTERM: time to drain in-flight groups and deliver the last acks
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mvic.fusion_server.errors import ConfigError
from mvic.shared.bitstream import MAX_CAMERA_ID_BYTES
from mvic.shared.config import build, read_yaml
from mvic.shared.model_table import DEFAULT_MODEL, MODELS_BY_NAME
from mvic.shared.rpc import DEFAULT_MAX_PACKET_BYTES, DEFAULT_PORT

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PNG_NAMES = ("sequence", "capture_ns")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[\w.\-]+):\d{1,5}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class GroupingConfig:
    tolerance_ms: float = 30.0
    max_wait_ms: float = 250.0
    max_open_groups: int = 64
    away_wait_ms: float = 5000.0


@dataclass(frozen=True)
class DecodeConfig:
    workers: int = 2
    max_batch: int = 4
    max_inflight_groups: int = 8
    torch_threads: int = 0


@dataclass(frozen=True)
class SinkConfig:
    png: bool = True
    png_name: str = "sequence"
    video: bool = False
    video_fps: float = 10.0


@dataclass(frozen=True)
class ServerConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    device: str = "auto"
    model: str = DEFAULT_MODEL
    weights: str = ""
    out: str = "mvic-out"
    cameras: tuple[str, ...] = ()
    max_cameras: int = 64
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES
    log_level: str = "INFO"
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    http: str = ""
    metrics_port: int = 0
    shutdown_grace_s: float = 10.0


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServerConfig:
    """The one way to build a ServerConfig: YAML file (or defaults), then flat overrides, then validation."""
    config = build(ServerConfig, read_yaml(path))
    if overrides:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    validate(config)
    return config


def validate(c: ServerConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot be used."""
    _need(bool(_HOST_PORT.match(c.listen)), "listen", f"{c.listen!r} is not host:port")
    _need(bool(_DEVICE.match(c.device)), "device", f"{c.device!r} is not auto, cpu, cuda or cuda:N")
    _need(c.model in MODELS_BY_NAME, "model", f"{c.model!r} is unknown; known: {', '.join(MODELS_BY_NAME)}")
    _need(bool(c.out), "out", "an output folder is required")
    for cam in c.cameras:
        _need(isinstance(cam, str) and 1 <= len(cam.encode()) <= MAX_CAMERA_ID_BYTES and cam.isprintable(),
              "cameras", f"camera id {cam!r} must be 1..{MAX_CAMERA_ID_BYTES} printable UTF-8 bytes")
    _need(len(set(c.cameras)) == len(c.cameras), "cameras", "a camera is listed twice")
    _need(c.max_cameras >= max(1, len(c.cameras)), "max_cameras", "must be >= 1 and >= the number of cameras")
    _need(1024 <= c.max_packet_bytes <= 256 << 20, "max_packet_bytes", "must be 1 KiB .. 256 MiB")
    _need(c.log_level in LOG_LEVELS, "log_level", f"one of {', '.join(LOG_LEVELS)}")
    g = c.grouping
    _need(0 <= g.tolerance_ms <= 10_000, "grouping.tolerance_ms", "must be 0..10000")
    _need(0 <= g.max_wait_ms <= 60_000, "grouping.max_wait_ms", "must be 0..60000")
    _need(g.max_open_groups >= 1, "grouping.max_open_groups", "must be >= 1")
    _need(0 <= g.away_wait_ms <= 600_000, "grouping.away_wait_ms", "must be 0..600000")
    d = c.decode
    _need(1 <= d.workers <= 64, "decode.workers", "must be 1..64")
    _need(1 <= d.max_batch <= 64, "decode.max_batch", "must be 1..64")
    _need(d.max_inflight_groups >= d.workers, "decode.max_inflight_groups", "must be >= decode.workers")
    _need(d.torch_threads >= 0, "decode.torch_threads", "must be >= 0")
    _need(c.sinks.png_name in PNG_NAMES, "sinks.png_name", f"one of {', '.join(PNG_NAMES)}")
    _need(0 < c.sinks.video_fps <= 1000, "sinks.video_fps", "must be in (0, 1000]")
    _need(not c.http or bool(_HOST_PORT.match(c.http)), "http", f"{c.http!r} is not host:port")
    _need(0 <= c.metrics_port < 65536, "metrics_port", "must be 0..65535")
    _need(c.shutdown_grace_s >= 0, "shutdown_grace_s", "must be >= 0")


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"server config: {key}: {message}")
