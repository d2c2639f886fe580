"""The Prometheus ``/metrics`` endpoint of the node and of the server (a thread of prometheus_client).

It has no auth: loopback by default (``metrics.host`` / ``metrics_host``), and any other address is logged as a
WARNING at start, because camera ids and rates are readable there.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

from mvic.shared.addresses import is_loopback

log = logging.getLogger(__name__)


def start_metrics(host: str, port: int, registry: CollectorRegistry):
    """Serve ``registry`` on ``host:port``; the server, to ``shutdown()``. OSError says what to change."""
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); stop the program that holds "
                      "it or choose another --metrics-port / --metrics-host") from None
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    if not is_loopback(host):
        log.warning("metrics on %s:%d are open to anyone who can reach this host (no auth; camera ids and rates): "
                    "keep the port off public networks or bind --metrics-host 127.0.0.1", host, server.server_port)
    return server
