"""The metrics endpoint both programs serve (issue 14: nothing open by default): loopback unless told otherwise,
and a WARNING whenever it is reachable from elsewhere."""

from __future__ import annotations

import logging
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from mvic.node.cli import build_parser, config_from_args
from mvic.node.config import NodeConfig
from mvic.shared.addresses import is_loopback, split_host_port
from mvic.shared.metrics_endpoint import start_metrics


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.5.0.1", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False), ("10.0.0.2", False),
                                            ("::", False), ("camera-7.local", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_split_host_port():
    assert split_host_port("[::1]:50051") == ("::1", 50051)
    assert split_host_port("8080") == ("127.0.0.1", 8080)
    assert split_host_port("0.0.0.0:9100") == ("0.0.0.0", 9100)


def test_node_metrics_bind_loopback_unless_a_host_is_given():
    assert NodeConfig(camera="C1").metrics.host == "127.0.0.1"
    args = build_parser().parse_args(["--camera", "C1", "--metrics-port", "9100"])
    assert config_from_args(args).metrics.host == "127.0.0.1"
    args = build_parser().parse_args(["--camera", "C1", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"])
    assert config_from_args(args).metrics.host == "0.0.0.0"


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_endpoint_serves_and_warns_off_loopback(host, warned, caplog):
    registry = CollectorRegistry()
    Counter("mvic_test_things", "things", registry=registry).inc()
    with caplog.at_level(logging.WARNING, logger="mvic.shared.metrics_endpoint"):
        server = start_metrics(host, 0, registry)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
        assert "mvic_test_things_total 1.0" in body
        assert any("open to anyone" in r.getMessage() for r in caplog.records) is warned
    finally:
        server.shutdown()


def test_a_taken_port_says_what_to_do():
    registry = CollectorRegistry()
    first = start_metrics("127.0.0.1", 0, registry)
    try:
        with pytest.raises(OSError, match="--metrics-port"):
            start_metrics("127.0.0.1", first.server_port, registry)
    finally:
        first.shutdown()
