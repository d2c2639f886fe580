"""Addresses in configs: ``host:port`` splitting and the loopback test behind the safe defaults (issue 14).

Used by the server (its gRPC, live page and metrics addresses) and the node (its metrics address): anything that
binds another address than loopback either needs TLS/a token or says loudly that it is open.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``(host, port)``; a bare port (``http: "8080"``) is on ``default_host``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or default_host, int(port)
