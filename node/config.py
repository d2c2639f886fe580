"""Node configuration: frozen dataclasses loaded from YAML by one function; unknown keys are errors.

Read by ``mvic.node.cli`` (YAML file, then command-line flags on top) and handed to ``mvic.node.app.NodeApp``,
which gives each stage of the data path (capture -> encode -> spool -> send) its own section. Every error names the
key path (``source.fps``, ``spool.when_full``), so an operator can find the line in ``node.yaml``.

    camera: C1                     # required: the camera id sent to the server (C1..C7 pick the synthetic view)
    group: ""                      # camera group; "" = the server's default group
    server: localhost:50051        # fusion server address, host:port; or a name of several servers (README:
                                   # Scaling out): dns:///mvic-server.mvic.svc.cluster.local:50051 (every address
                                   # it resolves to) or ipv4:10.0.0.1:50051,10.0.0.2:50051
    tls:                           # mutual TLS to the server (ca, cert and key together, or none = plaintext)
      ca: ""                       # CA bundle (PEM) that signs the server's certificate
      cert: ""                     # this camera's certificate (PEM; its URI SAN names camera and group); when it or
      key: ""                      # its key (PEM) changes, the link finishes its stream and reconnects with them
      server_name: ""              # name to check the server's certificate against ("" = the host of server:)
      token_file: ""               # optional bearer token (mvic-certs token), sent as call credentials when the
                                   # server requires one (tls.tokens); re-read with the certificate files
      reload_s: 2.0                # look at the three files for changes at most this often, seconds
    log_level: INFO
    source:
      uri: ""                      # "" = synthetic scene; a video file, rtsp://..., a webcam index, an image folder
      fps: 5.0                     # frames per second captured (0 = as fast as a file/folder/scene can be read)
      frames: 0                    # stop at frame N of the schedule (0 = run until stopped); a resumed schedule
                                   # counts the frames captured before the restart
      start_at_ns: 0               # capture schedule origin, ns since the Unix epoch (0 = node start). Given, a
                                   # restarted node (same spool, uri, fps) resumes the schedule after its last
                                   # spooled frame instead of replaying a file/folder/scene from the start
      loop: false                  # files/folders: start again at the end instead of finishing
      file_timeline: native        # video files: native = capture i takes the frame at i/fps of the file's own
                                   # clock (a 60 fps file at fps 2: every 30th frame); sequential = the next frame
      max_side: 0                  # downscale (INTER_AREA, aspect kept) images whose long side exceeds this, before
                                   # coding (0 = off); give every camera of a group the same value
      read_timeout_s: 5.0          # a read longer than this means the source hangs: it is reopened
      open_timeout_s: 20.0         # same for opening (RTSP handshakes can be slow)
      reopen_backoff_s: 0.5        # first wait before reopening a hung/dead source; doubles up to the max
      reopen_backoff_max_s: 30.0
      synthetic: {seed: 0, cameras: 7, height: 270, width: 480}
    encode:
      model: ""                    # architecture; "" = the one the weights file names (ldmic-fast-lite without one)
      weights: ""                  # weights file; "" = the installed weights of the model
      rate: 2                      # rate index 0 (lowest) .. 4
      threads: 1                   # torch CPU threads of the encoder worker
      precision: auto              # arithmetic of the analysis transforms: auto (bf16 where the CPU has AMX or
                                   # AVX512-BF16, else fp32), fp32 or bf16; the bitstream decodes exactly either way
      policy: latest               # latest: keep only the newest frame; every: bounded queue, capture waits
      queue_frames: 4              # queue length under policy 'every'
    spool:
      dir: mvic-spool              # packets wait here (one sub-folder per camera) until the server acks them
      max_bytes: 268435456
      when_full: drop-oldest       # drop-oldest: drop the oldest unacked packet (ERROR); block: stop capturing
    link:
      backoff_initial_s: 0.5       # reconnect: full-jitter exponential backoff from this ...
      backoff_max_s: 20.0          # ... capped here
      refused_backoff_s: 60.0      # wait after the server refused the camera or its model
      max_in_flight: 64            # packets sent and not yet acked
      handshake_timeout_s: 10.0    # no Welcome within this time: drop the stream and reconnect
      drain_timeout_s: 5.0         # on SIGTERM: wait this long for the last acks (the rest stays spooled)
      finish_timeout_s: 120.0      # after --frames / the end of a file: wait this long for every ack
      lb: ring_hash                # how the channel picks among the addresses of server: ring_hash (every camera
                                   # of a group to the same server, hashing the mvic-group header; harmless with
                                   # one address) or pick_first (the first address that connects)
    metrics:
      port: 0                      # Prometheus /metrics port (0 = no endpoint)
      host: 127.0.0.1              # address the endpoint binds (no auth there: another host logs a WARNING;
                                   # 0.0.0.0 for a Prometheus on another machine or container)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvic.shared.config import LOG_LEVELS, build, read_yaml, require, set_dotted
from mvic.shared.config import to_dict as to_dict  # re-exported for the CLI
from mvic.shared.errors import ConfigError as ConfigError  # re-exported: config errors are the shared kind
from mvic.shared.errors import IdError
from mvic.shared.ids import validate_camera_id, validate_group_id
from mvic.shared.model_table import PAPER_LAMBDAS
from mvic.shared.rpc import LB_POLICIES

POLICIES = ("latest", "every")
PRECISIONS = ("auto", "fp32", "bf16")  # mvic.shared.codec.transforms.Precision (not imported here: it needs torch)
WHEN_FULL = ("drop-oldest", "block")
FILE_TIMELINES = ("native", "sequential")
_DIAL_TARGET = re.compile(r"^(unix:\S+|\S+:\d{1,5})$")  # host:port, [v6]:port, dns:///host:port, unix:/path


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded synthetic scene (mvic.shared.scene); every node must use the same values to see one scene."""

    seed: int = 0
    cameras: int = 7
    height: int = 270
    width: int = 480

    def __post_init__(self):
        require(1 <= self.cameras <= 64, "source.synthetic.cameras", f"must be 1..64, got {self.cameras}")
        require(self.height >= 8 and self.width >= 8, "source.synthetic.height",
                f"view {self.height}x{self.width} is too small; use at least 8x8")


@dataclass(frozen=True)
class SourceConfig:
    uri: str = ""
    fps: float = 5.0
    frames: int = 0
    start_at_ns: int = 0
    loop: bool = False
    file_timeline: str = "native"
    max_side: int = 0
    read_timeout_s: float = 5.0
    open_timeout_s: float = 20.0
    reopen_backoff_s: float = 0.5
    reopen_backoff_max_s: float = 30.0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        require(0 <= self.fps <= 1000, "source.fps", f"must be 0..1000 frames/s, got {self.fps}")
        require(self.frames >= 0, "source.frames", f"must be >= 0 (0 = unlimited), got {self.frames}")
        require(self.start_at_ns >= 0, "source.start_at_ns", f"must be >= 0 ns, got {self.start_at_ns}")
        require(self.file_timeline in FILE_TIMELINES, "source.file_timeline",
                f"must be one of {', '.join(FILE_TIMELINES)}, got {self.file_timeline!r}")
        require(self.max_side == 0 or 8 <= self.max_side <= 65535, "source.max_side",
                f"must be 0 (off) or 8..65535 pixels, got {self.max_side}")
        require(self.read_timeout_s > 0, "source.read_timeout_s", f"must be > 0 s, got {self.read_timeout_s}")
        require(self.open_timeout_s > 0, "source.open_timeout_s", f"must be > 0 s, got {self.open_timeout_s}")
        require(self.reopen_backoff_s > 0, "source.reopen_backoff_s", f"must be > 0 s, got {self.reopen_backoff_s}")
        require(self.reopen_backoff_max_s >= self.reopen_backoff_s, "source.reopen_backoff_max_s",
                f"must be >= source.reopen_backoff_s ({self.reopen_backoff_s}), got {self.reopen_backoff_max_s}")


@dataclass(frozen=True)
class EncodeConfig:
    model: str = ""
    weights: str = ""
    rate: int = 2
    threads: int = 1
    policy: str = "latest"
    queue_frames: int = 4
    precision: str = "auto"

    def __post_init__(self):
        top = len(PAPER_LAMBDAS) - 1
        require(0 <= self.rate <= top, "encode.rate", f"must be a rate index 0..{top}, got {self.rate}")
        require(1 <= self.threads <= 256, "encode.threads", f"must be 1..256, got {self.threads}")
        require(self.policy in POLICIES, "encode.policy", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        require(1 <= self.queue_frames <= 1024, "encode.queue_frames", f"must be 1..1024, got {self.queue_frames}")
        require(self.precision in PRECISIONS, "encode.precision",
                f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = "mvic-spool"
    max_bytes: int = 256 << 20
    when_full: str = "drop-oldest"

    def __post_init__(self):
        require(bool(self.dir), "spool.dir", "must name a folder")
        require(self.max_bytes >= 1 << 16, "spool.max_bytes", f"must be >= 65536 bytes, got {self.max_bytes}")
        require(self.when_full in WHEN_FULL, "spool.when_full",
                f"must be one of {', '.join(WHEN_FULL)}, got {self.when_full!r}")


@dataclass(frozen=True)
class LinkConfig:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 20.0
    refused_backoff_s: float = 60.0
    max_in_flight: int = 64
    handshake_timeout_s: float = 10.0
    drain_timeout_s: float = 5.0
    finish_timeout_s: float = 120.0
    lb: str = "ring_hash"

    def __post_init__(self):
        require(self.backoff_initial_s > 0, "link.backoff_initial_s", f"must be > 0 s, got {self.backoff_initial_s}")
        require(self.backoff_max_s >= self.backoff_initial_s, "link.backoff_max_s",
                f"must be >= link.backoff_initial_s ({self.backoff_initial_s}), got {self.backoff_max_s}")
        require(self.refused_backoff_s > 0, "link.refused_backoff_s", f"must be > 0 s, got {self.refused_backoff_s}")
        require(1 <= self.max_in_flight <= 100_000, "link.max_in_flight",
                f"must be 1..100000, got {self.max_in_flight}")
        require(self.handshake_timeout_s > 0, "link.handshake_timeout_s",
                f"must be > 0 s, got {self.handshake_timeout_s}")
        require(self.finish_timeout_s >= 0, "link.finish_timeout_s", f"must be >= 0 s, got {self.finish_timeout_s}")
        require(self.drain_timeout_s >= 0, "link.drain_timeout_s", f"must be >= 0 s, got {self.drain_timeout_s}")
        require(self.lb in LB_POLICIES, "link.lb", f"must be one of {', '.join(LB_POLICIES)}, got {self.lb!r}")


@dataclass(frozen=True)
class TlsConfig:
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""
    token_file: str = ""
    reload_s: float = 2.0

    def __post_init__(self):
        require(0 < self.reload_s <= 3600, "tls.reload_s", f"must be in (0, 3600] seconds, got {self.reload_s}")
        given = [bool(self.ca), bool(self.cert), bool(self.key)]
        require(all(given) or not any(given), "tls", "give all of tls.ca, tls.cert and tls.key, or none of them")
        require(not self.server_name or self.enabled, "tls.server_name", "only used with tls.ca, tls.cert, tls.key")
        require(not self.token_file or self.enabled, "tls.token_file",
                "a bearer token is only sent over TLS: give tls.ca, tls.cert and tls.key too")
        for key in ("ca", "cert", "key", "token_file"):
            path = getattr(self, key)
            require(not path or Path(path).is_file(), f"tls.{key}", f"{path} is not a file")

    @property
    def enabled(self) -> bool:
        return bool(self.ca)


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0
    host: str = "127.0.0.1"

    def __post_init__(self):
        require(0 <= self.port <= 65535, "metrics.port", f"must be 0..65535 (0 = off), got {self.port}")


@dataclass(frozen=True)
class NodeConfig:
    camera: str = ""
    group: str = ""
    server: str = "localhost:50051"
    log_level: str = "INFO"
    tls: TlsConfig = field(default_factory=TlsConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self):
        try:
            validate_camera_id(self.camera)
        except IdError as exc:
            raise ConfigError(f"camera: {exc}; set --camera or camera: in node.yaml") from None
        try:
            validate_group_id(self.group)
        except IdError as exc:
            raise ConfigError(f"group: {exc}; fix --group or group: in node.yaml") from None
        require(bool(_DIAL_TARGET.match(self.server)), "server",
                f"must be host:port, dns:///host:port or ipv4:a:port,b:port, got {self.server!r}")
        require(self.log_level in LOG_LEVELS, "log_level",
                f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """The one loader: ``node.yaml`` (or defaults), then dotted-key overrides from the command line on top
    (``{"source.fps": 10.0}``), then every check. Raises ConfigError naming the key path."""
    raw = set_dotted(read_yaml(path), overrides or {})
    return build(NodeConfig, raw)
