"""``mvic-server``: the fusion server's command line (receive -> group -> joint decode -> sink).

    mvic-server --gpu 0 --weights W.safetensors --out out/ --http 0.0.0.0:8080 --metrics-port 9101
    mvic-server --device cpu --config server.yaml
    mvic-server --config server.yaml --validate-config

Flags override the YAML file (``config.ServerConfig`` documents every key). SIGTERM/SIGINT drain in-flight groups,
acknowledge what was written and exit 0. Exit codes: 0 done, 1 cannot start (weights, port), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from mvic.fusion_server.app import FusionApp, weights_source
from mvic.fusion_server.config import LOG_LEVELS, load_config
from mvic.fusion_server.errors import ConfigError
from mvic.shared.errors import MVICError

log = logging.getLogger("mvic.fusion_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-server", description="MVIC fusion server: joint decoding of camera views")
    p.add_argument("--config", metavar="server.yaml", help="YAML configuration (flags override it)")
    p.add_argument("--validate-config", action="store_true", help="check the configuration, print it and exit")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", type=int, metavar="N", help="decode on CUDA device N (CPU fallback when absent)")
    dev.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--listen", metavar="HOST:PORT", help="gRPC address (default 0.0.0.0:50051)")
    p.add_argument("--model", help="architecture the nodes code with (default ldmic-fast-lite)")
    p.add_argument("--weights", metavar="FILE",
                   help="weights .safetensors (default: the installed weights of --model); an empty value "
                        "(--weights=) selects the installed weights even where --config names a file")
    p.add_argument("--out", metavar="DIR", help="output folder: PNGs, videos, ack journal (default mvic-out)")
    p.add_argument("--camera", dest="cameras", action="append", metavar="ID",
                   help="allow only this camera (repeat); default: any camera")
    p.add_argument("--video", action="store_true", default=None, help="also write one video per camera")
    p.add_argument("--http", metavar="HOST:PORT", help="serve the live page here, e.g. 0.0.0.0:8080")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus /metrics port")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default INFO")
    return p


def _overrides(args: argparse.Namespace) -> dict:
    device = f"cuda:{args.gpu}" if args.gpu is not None else args.device
    return {"device": device, "listen": args.listen, "model": args.model, "weights": args.weights, "out": args.out,
            "cameras": tuple(args.cameras) if args.cameras else None, "http": args.http,
            "metrics_port": args.metrics_port, "log_level": args.log_level}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, _overrides(args))
        if args.video:
            from dataclasses import replace
            config = replace(config, sinks=replace(config.sinks, video=True))
    except ConfigError as exc:
        print(f"mvic-server: {exc}", file=sys.stderr)
        return 2
    if args.validate_config:
        print(f"configuration OK: {config}")
        return 0
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        weights_source(config)  # fail fast, before opening ports, when no weights are installed
    except MVICError as exc:
        log.error("%s", exc)
        return 1
    try:
        asyncio.run(_serve(config))
    except (MVICError, OSError) as exc:
        log.error("cannot run the server: %s", exc)
        return 1
    return 0


async def _serve(config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await FusionApp(config).run(stop)


if __name__ == "__main__":
    sys.exit(main())
