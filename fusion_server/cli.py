"""``mvic-server``: the fusion server's command line (receive -> group -> joint decode -> sink).

    mvic-server --gpu 0 --weights W.safetensors --out out/ --http 127.0.0.1:8080 --metrics-port 9101
    mvic-server --listen 0.0.0.0:50051 --set tls.cert=server.crt --set tls.key=server.key --set tls.client_ca=ca.crt
    mvic-server --device cpu --config server.yaml --set grouping.max_wait_ms=500
    mvic-server --config server.yaml --validate-config                # check, print the effective config, exit
    mvic-server --listen 0.0.0.0:50051 --insecure --cluster-peers dns:///mvic-server.mvic.svc.cluster.local:50051 \
                --cluster-self 10.1.2.3:50051                         # one of N servers (README: Scaling out)

Settings come from ``--config server.yaml`` (``config.ServerConfig`` documents every key), then ``--set KEY=VALUE``,
then the named flags below: the command-line dialect of ``mvic.shared.config``, the same as ``mvic-node``'s.
SIGTERM/SIGINT drain in-flight groups, acknowledge what was written and exit 0. Exit status (also in ``--help``):
0 stopped cleanly; 1 failed while serving; 2 did not start (configuration, weights, listen address).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from mvic.fusion_server.config import ConfigError, ServerConfig, load_config
from mvic.shared.config import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    LOG_LEVELS,
    add_config_arguments,
    config_error,
    exit_status_epilog,
    print_validated,
)
from mvic.shared.config import overrides as config_overrides
from mvic.shared.errors import MVICError
from mvic.shared.model_table import DEFAULT_MODEL

PROG = "mvic-server"
log = logging.getLogger("mvic.fusion_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=exit_status_epilog(
                                    failed="the server failed while serving (the log says why)",
                                    unusable="weights that cannot be found, or an address that cannot be listened on"))
    add_config_arguments(p, "server.yaml")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", type=int, metavar="N", help="decode on CUDA device N (CPU fallback when absent)")
    dev.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="gRPC address (default 127.0.0.1:50051); any other address needs tls or --insecure")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="serve plaintext gRPC on a non-loopback --listen address (no tls; any client can claim any "
                        "camera): for a private network only, logged as a WARNING")
    tls = p.add_argument_group("camera links (mutual TLS; all three files or none)")
    tls.add_argument("--tls-cert", metavar="FILE", help="gRPC server certificate chain (PEM); re-read when it changes")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    tls.add_argument("--tls-client-ca", metavar="FILE",
                     help="CA bundle (PEM) that signs the camera certificates; every camera must present one whose "
                          "URI SAN names its camera and group")
    tls.add_argument("--tls-revoked", metavar="FILE",
                     help="revoked certificate serials (hex) or camera ids, one per line; re-read when it changes")
    tls.add_argument("--tls-tokens", metavar="FILE",
                     help="optional per-camera bearer tokens on top of the certificates: '<camera> sha256:<hex>' "
                          "lines (mvic-certs token); re-read when it changes")
    p.add_argument("--model", help=f"architecture the nodes code with (default {DEFAULT_MODEL})")
    p.add_argument("--weights", metavar="FILE",
                   help="weights .safetensors (default: the installed weights of --model); an empty value "
                        "(--weights=) selects the installed weights even where --config names a file")
    p.add_argument("--out", metavar="DIR", help="output folder: PNGs, videos, ack journal (default mvic-out)")
    p.add_argument("--camera", dest="cameras", action="append", metavar="ID",
                   help="allow only this camera (repeat); default: any camera")
    p.add_argument("--video", action="store_true", default=None, help="also write one video per camera")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve the live page here, e.g. 127.0.0.1:8080 (a bare port: on 127.0.0.1); another "
                        "address than loopback should have --http-token-file")
    p.add_argument("--http-token-file", metavar="FILE",
                   help="the live page requires the token in this file (Bearer, or basic auth password)")
    p.add_argument("--http-cert", metavar="FILE", help="serve the live page over HTTPS with this certificate (PEM)")
    p.add_argument("--http-key", metavar="FILE", help="... and this private key (PEM)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus /metrics port")
    p.add_argument("--metrics-host", metavar="HOST", help="address /metrics binds (default 127.0.0.1)")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    cl = p.add_argument_group("cluster (several servers; README: Scaling out)")
    cl.add_argument("--cluster-peers", metavar="NAME",
                    help="the name the nodes connect to, resolving to every server: dns:///host:port or "
                         "ipv4:a:port,b:port (default: none, this server owns every camera group)")
    cl.add_argument("--cluster-self", metavar="HOST:PORT",
                    help="this server's address as --cluster-peers resolves it (e.g. the pod IP:50051)")
    cl.add_argument("--cluster-name", metavar="NAME",
                    help="a stable name for this server's ack journal (out/.servers/NAME; default: --cluster-self), "
                         "e.g. the StatefulSet pod's name, whose IP changes across restarts")
    return p


_FLAG_KEYS = {
    "device": "device", "listen": "listen", "insecure": "insecure", "tls_cert": "tls.cert", "tls_key": "tls.key",
    "tls_client_ca": "tls.client_ca", "tls_revoked": "tls.revoked", "tls_tokens": "tls.tokens", "model": "model", "weights": "weights",
    "out": "out",
    "cameras": "cameras", "video": "sinks.video", "http": "http", "http_token_file": "http_token_file",
    "http_cert": "http_cert", "http_key": "http_key", "metrics_port": "metrics_port", "metrics_host": "metrics_host",
    "log_level": "log_level", "cluster_peers": "cluster.peers", "cluster_self": "cluster.self", "cluster_name": "cluster.name",
}


def overrides(args: argparse.Namespace) -> dict:
    """The command line as dotted-key overrides: --set, then the named flags (--gpu N is device cuda:N)."""
    out = config_overrides(args, _FLAG_KEYS)
    if args.gpu is not None:
        out["device"] = f"cuda:{args.gpu}"
    return out


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The effective configuration: --config, then --set, then the named flags."""
    return load_config(args.config, overrides(args))


def preflight(config: ServerConfig) -> None:
    """Checks that need no model load, before any port is opened: the weights file exists, or trained weights are
    installed for the model. Raises ConfigError naming the key."""
    from mvic.shared.codec.registry import weights_source

    try:
        source = weights_source(config.weights, config.model)
    except MVICError as exc:
        raise ConfigError(f"weights: {exc}") from None
    if isinstance(source, Path) and not source.is_file():
        raise ConfigError(f"weights: {source} is not a file; give an existing .safetensors file, or --weights= for "
                          "the installed weights")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        preflight(config)
    except ConfigError as exc:
        return config_error(PROG, exc)
    if args.validate_config:
        return print_validated(PROG, config, f"(model {config.model}, device {config.device})")
    logging.basicConfig(level=config.log_level, format=f"%(asctime)s %(levelname)s {PROG} %(name)s: %(message)s")
    try:
        return asyncio.run(_serve(config))
    except (MVICError, OSError) as exc:
        log.error("failed while serving: %s", exc)
        return EXIT_FAILED


async def _serve(config: ServerConfig) -> int:
    """Start, serve until SIGTERM/SIGINT, stop (also after a failed start); EXIT_CONFIG when it could not start."""
    from mvic.fusion_server.app import FusionApp

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = FusionApp(config)
    try:
        try:
            await app.start()
        except (MVICError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        await stop.wait()
        return EXIT_OK
    finally:
        await app.stop()


if __name__ == "__main__":
    sys.exit(main())
