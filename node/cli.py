"""``mvic-node``: one camera's encoder process (capture -> encode -> spool -> send to the fusion server).

    mvic-node --camera C1 --server fusion:50051                       # synthetic scene, this camera's view
    mvic-node --camera C3 --server fusion:50051 --source rtsp://cam3/stream --fps 10 --rate 3
    mvic-node --config node.yaml --set link.max_in_flight=16 --set spool.when_full=block
    mvic-node --config node.yaml --validate-config                    # check, print the effective config, exit

Settings come from ``--config node.yaml`` (see ``mvic.node.config``), then ``--set KEY=VALUE``, then the named flags
below: the command-line dialect of ``mvic.shared.config``, the same as ``mvic-server``'s. Exit status (also in
``--help``): 0 stopped cleanly (SIGTERM/SIGINT, or the source ended and everything was acknowledged); 1 packets left
unacknowledged after the source ended, or a stage crashed; 2 did not start (configuration, weights, spool, source).
Signal handlers are installed here and nowhere else: SIGTERM/SIGINT stop the node gracefully. The environment is
touched here only too: with ``link.lb: ring_hash`` (the default) ``main`` sets
``GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY=true`` before any channel exists, so that grpcio's ring_hash
policy hashes the ``mvic-group`` header, and checks that it took effect (``channel.enable_ring_hash_header``).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
from dataclasses import replace
from pathlib import Path

from mvic.node.config import (FILE_TIMELINES, POLICIES, PRECISIONS, WHEN_FULL, ConfigError, NodeConfig,
                              load_config)
from mvic.shared.config import (
    EXIT_CONFIG,
    LOG_LEVELS,
    add_config_arguments,
    config_error,
    exit_status_epilog,
    overrides,
    print_validated,
)
from mvic.shared.model_table import DEFAULT_MODEL

PROG = "mvic-node"
log = logging.getLogger("mvic.node")

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """'268435456', '256M', '256MiB', '1G' -> bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (examples: 268435456, 256M, 1G)")
    return int(m.group(1)) * 1024 ** ("kmgt".find(m.group(2).lower()) + 1) if m.group(2) else int(m.group(1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=exit_status_epilog(
                                    failed="packets were left unacknowledged after the source ended, or a stage "
                                           "crashed",
                                    unusable="weights, spool folder or source that cannot be used"))
    add_config_arguments(p, "node.yaml")
    p.add_argument("--camera", help="camera id, e.g. C1 (C1..C7 also pick the synthetic scene's view)")
    p.add_argument("--server", help="fusion server host:port (default localhost:50051), or the name of several: "
                                    "dns:///host:port, ipv4:a:port,b:port (README: Scaling out)")
    p.add_argument("--group", help="camera group at the server (default: the server's default group)")
    tls = p.add_argument_group("mutual TLS to the server (all three files or none)")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA bundle (PEM) that signs the server's certificate")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="this camera's certificate (PEM, from mvic-certs camera); a renewed file is picked up "
                          "without a restart")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="name the server's certificate must carry (default: the host of --server)")
    tls.add_argument("--tls-token-file", metavar="FILE",
                     help="bearer token (mvic-certs token) for a server that requires one on top of the "
                          "certificate (its --tls-tokens)")
    src = p.add_argument_group("capture")
    src.add_argument("--source", help="video file, rtsp://... URL, webcam index or image folder "
                                      "(default: the synthetic scene)")
    src.add_argument("--fps", type=float, help="frames per second to capture (0 = as fast as files can be read)")
    src.add_argument("--frames", type=int, help="stop at frame N of the schedule (0 = run until stopped)")
    src.add_argument("--start-at", type=int, metavar="NS",
                     help="capture schedule origin, ns since the Unix epoch: frame i of a file/folder/synthetic "
                          "source is stamped start_at + i/fps, so nodes started together agree (default: now); "
                          "a restart with the same value resumes after the last spooled frame")
    src.add_argument("--loop", action="store_true", default=None, help="restart a file or folder at its end")
    src.add_argument("--file-timeline", choices=FILE_TIMELINES,
                     help="video files: 'native' (default) takes the frame at i/fps on the file's own clock "
                          "(--fps 2 on a 60 fps file: every 30th frame); 'sequential' the next frame per capture")
    src.add_argument("--max-side", type=int, metavar="PX",
                     help="downscale images whose long side exceeds PX (aspect kept; default 0 = off); use the "
                          "same value on every camera of a group")
    enc = p.add_argument_group("encode")
    enc.add_argument("--rate", type=int, help="rate index, 0 (smallest) .. 4 (best quality); default 2")
    enc.add_argument("--model", help=f"architecture (default: the one the weights file names; {DEFAULT_MODEL})")
    enc.add_argument("--weights", metavar="FILE",
                     help="weights .safetensors (default: the installed weights of --model); an empty value "
                          "(--weights=) selects the installed weights even where --config names a file")
    enc.add_argument("--threads", type=int, help="torch CPU threads for the encoder (default 1)")
    enc.add_argument("--precision", choices=PRECISIONS,
                     help="analysis transforms: auto (default: bf16 where the CPU has AMX / AVX512-BF16, else "
                          "fp32), fp32 or bf16; the bitstream stays decodable everywhere")
    enc.add_argument("--policy", choices=POLICIES,
                     help="slow encoder: 'latest' keeps only the newest frame (drops counted; default), "
                          "'every' queues frames and makes capture wait")
    sp = p.add_argument_group("spool")
    sp.add_argument("--spool", metavar="DIR", help="spool folder; packets wait here until acked (default mvic-spool)")
    sp.add_argument("--spool-max-bytes", type=parse_bytes, metavar="BYTES", help="spool bound, e.g. 256M (default)")
    sp.add_argument("--spool-when-full", choices=WHEN_FULL,
                    help="'drop-oldest' unacked packet (default, ERROR logged) or 'block' capture")
    ops = p.add_argument_group("operations")
    ops.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default 0 = off)")
    ops.add_argument("--metrics-host", metavar="HOST",
                     help="address the metrics bind (default 127.0.0.1; no auth: another host logs a WARNING)")
    ops.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    return p


_FLAG_KEYS = {
    "camera": "camera", "server": "server", "group": "group", "source": "source.uri", "fps": "source.fps",
    "frames": "source.frames", "start_at": "source.start_at_ns", "loop": "source.loop",
    "file_timeline": "source.file_timeline", "max_side": "source.max_side", "rate": "encode.rate",
    "model": "encode.model", "weights": "encode.weights", "threads": "encode.threads", "precision": "encode.precision", "policy": "encode.policy",
    "spool": "spool.dir", "spool_max_bytes": "spool.max_bytes", "spool_when_full": "spool.when_full",
    "metrics_port": "metrics.port", "metrics_host": "metrics.host", "log_level": "log_level", "tls_ca": "tls.ca", "tls_cert": "tls.cert",
    "tls_key": "tls.key", "tls_server_name": "tls.server_name", "tls_token_file": "tls.token_file",
}


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """The effective configuration: --config, then --set, then the named flags."""
    return load_config(args.config, overrides(args, _FLAG_KEYS))


def preflight(config: NodeConfig) -> None:
    """Checks that need no model load: the source resolves, the weights file exists or trained weights are
    installed. Raises ConfigError naming the key."""
    from mvic.node.sources import SourceError, open_source
    from mvic.shared.codec.registry import weights_source
    from mvic.shared.errors import MVICError

    try:
        open_source(config.source, config.camera)
    except SourceError as exc:
        raise ConfigError(f"source.uri: {exc}") from None
    try:
        source = weights_source(config.encode.weights, config.encode.model or DEFAULT_MODEL)
    except MVICError as exc:
        raise ConfigError(f"encode.weights: {exc}") from None
    if isinstance(source, Path) and not source.is_file():
        raise ConfigError(f"encode.weights: {source} is not a file; give an existing .safetensors file, or "
                          "--weights= for the installed weights")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.validate_config:
            preflight(config)
    except ConfigError as exc:
        return config_error(PROG, exc)
    if args.validate_config:
        return print_validated(PROG, config, f"for camera {config.camera}")
    logging.basicConfig(level=config.log_level, force=True,
                        format=f"%(asctime)s %(levelname)s {PROG}[{config.camera}] %(name)s: %(message)s")

    from mvic.node.app import NodeApp  # torch is imported only when the node really runs
    from mvic.shared.errors import MVICError

    config = _choose_lb(config)

    app = NodeApp(config)

    def request_stop(signum, _frame):
        log.info("%s received; stopping (a second one exits at once)", signal.Signals(signum).name)
        app.stop_event.set()
        signal.signal(signum, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return app.run()
    except (MVICError, OSError) as exc:  # SpoolError, SourceError, weights: the node never started
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _choose_lb(config: NodeConfig) -> NodeConfig:
    """Before any channel exists: let grpcio's ring_hash hash the mvic-group header (an environment variable), check
    that it does, and fall back to pick_first (an ERROR) when this grpcio ignores it."""
    if config.link.lb != "ring_hash":
        return config
    from mvic.node.channel import enable_ring_hash_header
    from mvic.shared.rpc import RING_HASH_HEADER_ENV

    if enable_ring_hash_header():
        log.info("link: ring_hash on the mvic-group header over the addresses of %s (%s=true set and checked)",
                 config.server, RING_HASH_HEADER_ENV)
        return config
    log.error("this grpcio ignores %s=true: ring_hash cannot hash the mvic-group header; using pick_first (with "
              "several servers behind %s, upgrade grpcio)", RING_HASH_HEADER_ENV, config.server)
    return replace(config, link=replace(config.link, lb="pick_first"))


if __name__ == "__main__":
    raise SystemExit(main())
