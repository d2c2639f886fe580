"""Server configuration: frozen dataclasses loaded from YAML by one function; unknown keys are errors.

Read by ``mvic.fusion_server.cli`` (YAML file, then ``--set KEY=VALUE`` and the named flags on top: the dialect of
``mvic.shared.config``, the same as the node's) and handed to ``mvic.fusion_server.app.FusionApp``, which gives each
stage (receive -> group -> joint decode -> sink) its section. Errors start with the key path
(``grouping.tolerance_ms: ...``) so an operator can find the line in ``server.yaml``.

    listen: 127.0.0.1:50051        # gRPC address, host:port. Without tls only a loopback address, unless insecure
    insecure: false                # true: serve plaintext gRPC on a non-loopback address (a loud WARNING at start);
                                   # any camera can then claim any camera id (see README: Security)
    tls:                           # mutual TLS (all of cert, key and client_ca, or none): every camera proves its id
      cert: ""                     # server certificate chain (PEM); re-read when it changes, no restart
      key: ""                      # its private key (PEM)
      client_ca: ""                # CA bundle (PEM) that signs the camera certificates; re-read when it changes
      trust_domain: mvic.local     # the cameras' URI SAN spiffe://<trust_domain>/group/<g>/camera/<id>; other
                                   # domains are refused (mvic.shared.identity)
      revoked: ""                  # file of revoked certificate serials (hex) or camera ids, one per line, '#'
                                   # comments; re-read when it changes; a revoked camera is cut off at its next message
      tokens: ""                   # optional, on top of the certificates: file of "<camera> sha256:<hex>" lines
                                   # (mvic-certs token); every camera must then send its bearer token; re-read on change
      reload_s: 2.0                # look at the files for changes at most this often, seconds
    device: auto                   # auto (cuda:0 when present, else cpu), cpu, cuda, cuda:N
    model: ldmic-fast-lite         # architecture the nodes code with
    weights: ""                    # weights file; "" = the installed weights of the model
    out: mvic-out                  # reconstructions and the ack journal
    cameras: []                    # allowed camera ids (mvic.shared.ids' rule); [] = any camera (up to max_cameras)
    max_cameras: 64                # distinct cameras served (bounds metric labels and memory)
    max_packet_bytes: 8388608      # largest ViewPacket.bitstream taken, bytes
    log_level: INFO
    admission:                     # what a peer may hold and send before anything else sees it
      hello_timeout_s: 10.0        # a stream that sends no Hello within this long ends (DEADLINE_EXCEEDED)
      idle_timeout_s: 300.0        # a stream that sends nothing for this long ends (DEADLINE_EXCEEDED; the node
                                   # reconnects when it has frames again); 0 = no idle deadline
      max_streams_per_peer: 64     # open streams per client address, Hello or not (RESOURCE_EXHAUSTED beyond);
                                   # raise it when more cameras than this share one address (NAT)
      max_capture_ahead_s: 60.0    # a view captured further ahead of the server's clock is refused (PacketError
                                   # MALFORMED): a camera clock set in the future would stop its views joining others
      max_capture_age_s: 0.0       # a view captured longer ago is refused; 0 = any age (a node's spool may resend
                                   # a backlog of days after an outage)
    grouping:
      tolerance_ms: 30.0           # views whose capture times differ by at most this belong to one group
      max_wait_ms: 250.0           # wait at most this long for missing views, then decode those present
      max_open_groups: 64          # more open groups than this: the oldest is decoded at once
      away_wait_ms: 5000.0         # a camera that dropped its stream (or every camera after a restart) is
                                   # awaited this long: its backlog still joins the others' views
      max_drops: 3                 # a camera whose stream broke this many times in a row without a frame stored
                                   # is neither awaited nor expected until one of its frames is stored; 0 = always
    limits:                        # what one view or view set may cost to decode, whatever its packet declares
      max_view_pixels: 9437184     # padded pixels of one view (4096x2304: UHD and DCI 4K); a larger view is refused
                                   # at receipt (PacketError TOO_LARGE, reason too_many_pixels)
      max_set_pixels: 75497472     # padded pixels decoded jointly (8 such views); a view set holding more is
                                   # decoded in parts of at most this many pixels, each part jointly
    decode:
      workers: 2                   # CPU threads entropy-decoding groups at the same time (a CPU copy of the model
                                   # when the device is a GPU)
      max_batch: 4                 # groups of one shape (views, size) synthesized together in one device pass;
                                   # the device takes what is ready, it never waits for a batch to fill
      max_inflight_groups: 8       # groups between the grouper and the ack; more makes streams wait
      torch_threads: 0             # torch intra-op threads (0 = torch's default)
      entropy_threads: 1           # threads sharing the views of one group's entropy decoding (the same integers);
                                   # more helps a GPU server whose CPU has cores to spare, not a 2-core CPU server
      precision: auto              # synthesis arithmetic: auto (bf16 on a CPU with native bf16, 3-4x faster for
                                   # under 0.1 dB; fp32 elsewhere), fp32, bf16; entropy decoding is exact anyway
      fusion: true                 # the views of a set lend each other detail where optical flow aligns them
                                   # (mvic.shared.codec.view_fusion; CPU, in the synthesis stage); false = JCT only
      fusion_max_side: 1024        # flows for the fusion are estimated at most at this long side (cost ~ its square)
      rig: ""                      # the cameras' calibration (YAML, mvic.shared.rig; mvic-scene writes one): the
                                   # fusion also aligns the ground exactly between calibrated cameras ("" = none)
    sinks:
      png: true                    # out/<camera>/<name>.png, written atomically; acks wait for it
      png_name: sequence           # sequence (zero-padded) or capture_ns
      video: false                 # out/<camera>.mp4 (OpenCV, mp4v), frames appended in capture order
      video_fps: 10.0
    http: ""                       # live page host:port ("" = none); a bare port is 127.0.0.1:port. Another host
                                   # than loopback without http_token_file: a WARNING at start (camera pictures)
    http_token_file: ""            # file holding the live page's token ("" = no auth): requests need
                                   # "Authorization: Bearer <token>" or basic auth with the token as the password
                                   # (any user name), else 401; /healthz stays open
    http_cert: ""                  # serve the live page over HTTPS with this certificate chain (PEM) ...
    http_key: ""                   # ... and its private key (PEM); both or neither
    http_max_connections: 32       # live page sockets open at once; at the cap a new one replaces the longest idle
    http_timeout_s: 10.0           # live page deadline for a whole request head, for an idle kept-alive connection
                                   # and for a client to take a response; a client that misses it is closed
    metrics_port: 0                # Prometheus /metrics port (0 = none)
    metrics_host: 127.0.0.1        # address the metrics bind (no auth there: another host logs a WARNING)
    shutdown_grace_s: 10.0         # SIGTERM: time to drain in-flight groups and deliver the last acks
    cluster:                       # several servers sharing the cameras, one camera group per server (README:
                                   # "Scaling out"; mvic.fusion_server.cluster)
      peers: ""                    # "" = one server that owns every group; else the name the nodes connect to,
                                   # resolving to every server: dns:///mvic-server.mvic.svc.cluster.local:50051 or
                                   # ipv4:10.0.0.1:50051,10.0.0.2:50051 (a bare host:port is a DNS name)
      self: ""                     # this server's address as it appears in that membership (host:port, e.g. the
                                   # pod IP:50051); required with peers
      name: ""                     # this server's stable name for its ack journal, out/.servers/<name>/acks.json
                                   # (one per server of a shared output store); "" = self. Give it where self
                                   # changes across restarts (a StatefulSet pod's name), so a restart finds its journal
      refresh_s: 2.0               # re-resolve and re-probe the membership this often, seconds
      probe_timeout_s: 1.0         # a member is alive when a TCP connect to it succeeds within this long
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvic.fusion_server.errors import ConfigError as ConfigError  # re-exported: config errors are the shared kind
from mvic.shared.addresses import is_loopback, split_host_port
from mvic.shared.bitstream import MAX_SIDE, PAD_MULTIPLE
from mvic.shared.config import LOG_LEVELS, build, read_yaml, require, set_dotted
from mvic.shared.errors import IdError
from mvic.shared.fileio import safe_name
from mvic.shared.identity import DEFAULT_TRUST_DOMAIN, camera_identity
from mvic.shared.ids import display, validate_camera_id
from mvic.shared.model_table import DEFAULT_MODEL, MODELS_BY_NAME
from mvic.shared.rig import load_rig
from mvic.shared.rpc import DEFAULT_MAX_PACKET_BYTES, DEFAULT_PORT

PNG_NAMES = ("sequence", "capture_ns")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[\w.\-]+):\d{1,5}$")
_HOST = re.compile(r"^(\[?[0-9a-fA-F:]+\]?|[\w.\-]+)$")
_PORT = re.compile(r"^\d{1,5}$")
_ADDRESS = r"(\[[0-9a-fA-F:.]+\]|[\w.\-]+):\d{1,5}"
_PEERS = re.compile(rf"^(dns:(///?|//[\w.\-:]+/)?{_ADDRESS}|ipv[46]:{_ADDRESS}(,{_ADDRESS})*|{_ADDRESS})$")
_JOURNAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class GroupingConfig:
    tolerance_ms: float = 30.0
    max_wait_ms: float = 250.0
    max_open_groups: int = 64
    away_wait_ms: float = 5000.0
    max_drops: int = 3


@dataclass(frozen=True)
class AdmissionConfig:
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    max_streams_per_peer: int = 64
    max_capture_ahead_s: float = 60.0
    max_capture_age_s: float = 0.0


@dataclass(frozen=True)
class LimitsConfig:
    max_view_pixels: int = 4096 * 2304
    max_set_pixels: int = 8 * 4096 * 2304


@dataclass(frozen=True)
class DecodeConfig:
    workers: int = 2
    max_batch: int = 4
    max_inflight_groups: int = 8
    torch_threads: int = 0
    entropy_threads: int = 1
    precision: str = "auto"
    fusion: bool = True
    fusion_max_side: int = 1024
    rig: str = ""


@dataclass(frozen=True)
class SinkConfig:
    png: bool = True
    png_name: str = "sequence"
    video: bool = False
    video_fps: float = 10.0


@dataclass(frozen=True)
class TlsConfig:
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    revoked: str = ""
    tokens: str = ""
    reload_s: float = 2.0

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


@dataclass(frozen=True)
class ClusterConfig:
    peers: str = ""
    self: str = ""
    refresh_s: float = 2.0
    probe_timeout_s: float = 1.0
    name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.peers)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    insecure: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)
    device: str = "auto"
    model: str = DEFAULT_MODEL
    weights: str = ""
    out: str = "mvic-out"
    cameras: tuple[str, ...] = ()
    max_cameras: int = 64
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES
    log_level: str = "INFO"
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    http: str = ""
    http_max_connections: int = 32
    http_timeout_s: float = 10.0
    http_token_file: str = ""
    http_cert: str = ""
    http_key: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    shutdown_grace_s: float = 10.0
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def journal_dir(self) -> Path:
        """Where the ack journal lives: ``out``, or ``out/.servers/<cluster.name or cluster.self>`` in a cluster
        (each server its own journal in a shared output store; the PNGs themselves stay shared)."""
        if not self.cluster.enabled:
            return Path(self.out)
        return Path(self.out) / ".servers" / safe_name(self.cluster.name or self.cluster.self)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServerConfig:
    """The one loader: ``server.yaml`` (or defaults), then dotted-key overrides from the command line on top
    (``{"grouping.max_wait_ms": 100}``; None values are left out), then every check. Raises ConfigError naming the
    key path."""
    config = build(ServerConfig, set_dotted(read_yaml(path), overrides or {}))
    validate(config)
    return config


def validate(c: ServerConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot be used."""
    require(bool(_HOST_PORT.match(c.listen)), "listen", f"{c.listen!r} is not host:port")
    _validate_tls(c)
    require(bool(_DEVICE.match(c.device)), "device", f"{c.device!r} is not auto, cpu, cuda or cuda:N")
    require(c.model in MODELS_BY_NAME, "model", f"{c.model!r} is unknown; known: {', '.join(MODELS_BY_NAME)}")
    require(bool(c.out), "out", "an output folder is required")
    for cam in c.cameras:
        try:
            validate_camera_id(cam)
        except IdError as exc:
            raise ConfigError(f"cameras: {exc}; fix the list in server.yaml or --camera") from None
    require(len(set(c.cameras)) == len(c.cameras), "cameras", "a camera is listed twice")
    require(c.max_cameras >= max(1, len(c.cameras)), "max_cameras", "must be >= 1 and >= the number of cameras")
    require(1024 <= c.max_packet_bytes <= 256 << 20, "max_packet_bytes", "must be 1 KiB .. 256 MiB")
    require(c.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    g = c.grouping
    require(0 <= g.tolerance_ms <= 10_000, "grouping.tolerance_ms", "must be 0..10000")
    require(0 <= g.max_wait_ms <= 60_000, "grouping.max_wait_ms", "must be 0..60000")
    require(g.max_open_groups >= 1, "grouping.max_open_groups", "must be >= 1")
    require(0 <= g.away_wait_ms <= 600_000, "grouping.away_wait_ms", "must be 0..600000")
    require(g.max_drops >= 0, "grouping.max_drops", "must be >= 0")
    a = c.admission
    require(0 < a.hello_timeout_s <= 600, "admission.hello_timeout_s", "must be in (0, 600]")
    require(a.idle_timeout_s >= 0, "admission.idle_timeout_s", "must be >= 0 (0 = no idle deadline)")
    require(a.max_streams_per_peer >= 1, "admission.max_streams_per_peer", "must be >= 1")
    require(a.max_capture_ahead_s > 0, "admission.max_capture_ahead_s", "must be > 0")
    require(a.max_capture_age_s >= 0, "admission.max_capture_age_s", "must be >= 0 (0 = any age)")
    lim = c.limits
    require(PAD_MULTIPLE**2 <= lim.max_view_pixels <= MAX_SIDE**2, "limits.max_view_pixels",
            f"must be {PAD_MULTIPLE**2}..{MAX_SIDE**2} ({PAD_MULTIPLE}x{PAD_MULTIPLE} .. {MAX_SIDE}x{MAX_SIDE})")
    require(lim.max_set_pixels >= lim.max_view_pixels, "limits.max_set_pixels", "must be >= limits.max_view_pixels")
    d = c.decode
    require(1 <= d.workers <= 64, "decode.workers", "must be 1..64")
    require(1 <= d.max_batch <= 64, "decode.max_batch", "must be 1..64")
    require(d.max_inflight_groups >= d.workers, "decode.max_inflight_groups", "must be >= decode.workers")
    require(d.torch_threads >= 0, "decode.torch_threads", "must be >= 0")
    require(1 <= d.entropy_threads <= 64, "decode.entropy_threads", "must be 1..64")
    require(d.precision in ("auto", "fp32", "bf16"), "decode.precision", "must be auto, fp32 or bf16")
    require(32 <= d.fusion_max_side <= MAX_SIDE, "decode.fusion_max_side", f"must be 32..{MAX_SIDE}")
    if d.rig:
        require(Path(d.rig).is_file(), "decode.rig", f"{d.rig} is not a file")
        try:
            load_rig(d.rig)
        except ConfigError as exc:
            raise ConfigError(f"decode.rig: {exc}; fix the file or leave decode.rig empty") from None
    require(c.sinks.png_name in PNG_NAMES, "sinks.png_name", f"must be one of {', '.join(PNG_NAMES)}")
    require(0 < c.sinks.video_fps <= 1000, "sinks.video_fps", "must be in (0, 1000]")
    require(not c.http or bool(_HOST_PORT.match(c.http) or _PORT.match(c.http)), "http",
            f"{c.http!r} is not host:port or a port")
    require(bool(c.http_cert) == bool(c.http_key), "http_cert", "give both http_cert and http_key, or neither")
    for key in ("http_token_file", "http_cert", "http_key"):
        path = getattr(c, key)
        require(not path or Path(path).is_file(), key, f"{path} is not a file")
    require(1 <= c.http_max_connections <= 4096, "http_max_connections", "must be 1..4096")
    require(0 < c.http_timeout_s <= 600, "http_timeout_s", "must be in (0, 600]")
    require(0 <= c.metrics_port < 65536, "metrics_port", "must be 0..65535")
    require(bool(_HOST.match(c.metrics_host)), "metrics_host", f"{c.metrics_host!r} is not a host name or address")
    require(c.shutdown_grace_s >= 0, "shutdown_grace_s", "must be >= 0")
    _validate_cluster(c.cluster)


def _validate_cluster(k: ClusterConfig) -> None:
    if not k.peers:
        require(not k.self, "cluster.self", "only used with cluster.peers")
        require(not k.name, "cluster.name", "only used with cluster.peers")
        return
    require(bool(_PEERS.match(k.peers)), "cluster.peers",
            f"{k.peers!r} is not dns:///host:port, ipv4:a:port,b:port, ipv6:[a]:port,... or host:port")
    require(bool(k.self), "cluster.self", "required with cluster.peers: this server's address as the peers name "
                                          "resolves it (host:port, e.g. the pod IP:50051); --cluster-self")
    require(bool(_HOST_PORT.match(k.self)), "cluster.self", f"{k.self!r} is not host:port")
    require(0 < k.refresh_s <= 3600, "cluster.refresh_s", "must be in (0, 3600] seconds")
    require(0 < k.probe_timeout_s <= 60, "cluster.probe_timeout_s", "must be in (0, 60] seconds")
    require(not k.name or bool(_JOURNAL_NAME.match(k.name)), "cluster.name",
            f"{display(k.name)} must be 1..63 letters, digits, '.', '_' or '-'")


def _validate_tls(c: ServerConfig) -> None:
    t = c.tls
    given = [bool(t.cert), bool(t.key), bool(t.client_ca)]
    require(all(given) or not any(given), "tls", "give all of tls.cert, tls.key and tls.client_ca, or none of them")
    try:
        camera_identity(t.trust_domain, "", "x")
    except IdError as exc:
        raise ConfigError(f"tls.trust_domain: {exc}") from None
    require(0 < t.reload_s <= 3600, "tls.reload_s", "must be in (0, 3600] seconds")
    require(not t.revoked or t.enabled, "tls.revoked", "revocation needs tls (certificates to revoke)")
    require(not t.tokens or t.enabled, "tls.tokens", "bearer tokens need tls (they must not travel in the clear)")
    for key in ("cert", "key", "client_ca", "revoked", "tokens"):
        path = getattr(t, key)
        require(not path or Path(path).is_file(), f"tls.{key}", f"{path} is not a file")
    if not t.enabled and not c.insecure:
        require(is_loopback(split_host_port(c.listen)[0]), "listen",
                f"{c.listen} is not a loopback address and tls is not configured: configure tls (cert, key, "
                "client_ca; mvic-certs makes them) or pass --insecure (insecure: true) to serve plaintext anyway")
