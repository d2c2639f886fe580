#!/usr/bin/env python3
"""``mvic-grpc-health [HOST:PORT] [--service NAME] [--ca F --cert F --key F]``: the fusion server's health check.

Asks the standard gRPC health service (grpc.health.v1, served by ``mvic-server`` through grpcio-health-checking) for
the Fusion service's status. Exit 0 when SERVING; 1 when NOT_SERVING (the model is still loading, or the server is
draining), unreachable or too slow. Like grpc_health_probe, without a separate binary in the image. With ``--ca``,
``--cert`` and ``--key`` it dials the mutual-TLS port (``tls:`` of the server) with that client certificate (the
compose demo's ``probe.crt`` from ``mvic-certs bundle``: signed by the camera CA, no camera identity).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mvic.shared.rpc import SERVICE_NAME


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mvic-grpc-health", description=__doc__.split("\n\n")[0])
    p.add_argument("address", nargs="?", default="localhost:50051", help="server host:port (default %(default)s)")
    p.add_argument("--service", default=SERVICE_NAME, help="service to ask about (default %(default)s)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default %(default)s)")
    p.add_argument("--ca", metavar="FILE", help="CA that signs the server's certificate (PEM): dial with TLS")
    p.add_argument("--cert", metavar="FILE", help="client certificate for mutual TLS (PEM)")
    p.add_argument("--key", metavar="FILE", help="its private key (PEM)")
    args = p.parse_args(argv)
    if args.ca:
        try:
            ca, key, cert = (Path(f).read_bytes() if f else None for f in (args.ca, args.key, args.cert))
        except OSError as exc:
            print(f"{args.address}: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
        channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials(ca, key, cert))
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address} {args.service}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
